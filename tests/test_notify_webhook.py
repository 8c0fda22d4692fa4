"""The webhook channel against a real aiohttp receiver: payloads, signatures, auth.
Channels run on `now_clock`: Standard Webhooks verification checks the signed timestamp
against real time."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks import Webhook

from tests.notify_fixtures import FAKE_SECRET, Receiver, make_event
from watcher.clock import ManualClock
from watcher.config.channels import WebhookChannelConfig
from watcher.events import PAYLOAD_VERSION, EventType, RuleRef
from watcher.notify.base import Failed, Retry, Sent
from watcher.notify.webhook import WebhookChannel


def channel(receiver: Receiver, clock: ManualClock, **options: object) -> WebhookChannel:
    config = WebhookChannelConfig.model_validate(
        {"type": "webhook", "url": f"{receiver.url}/hook", **options}
    )
    return WebhookChannel("hook", config, clock=clock, workspace_ids={"prod": "99"})


async def test_watcher_payload_is_signed_with_standard_webhooks(
    receiver: Receiver, now_clock: ManualClock
) -> None:
    """The `watcher` payload carries version, id, type, job, run with state and durations
    in seconds and the rule; webhook-id is the event id and the signature verifies with
    the standardwebhooks library."""
    hook = channel(receiver, now_clock, secret=FAKE_SECRET, headers={"X-Team": "data"})
    rule = RuleRef(name="job", value=3600, source="job")
    event = make_event(EventType.RUN_DURATION_EXCEEDED, rule=rule)
    assert await hook.send(event) == Sent("HTTP 200: ok")
    await hook.close()

    (request,) = receiver.requests
    assert request.headers["webhook-id"] == event.id
    assert request.headers["X-Team"] == "data"
    assert request.headers["Content-Type"] == "application/json"
    body = Webhook(FAKE_SECRET).verify(request.body, request.headers)
    assert body["version"] == PAYLOAD_VERSION
    assert body["id"] == event.id
    assert body["type"] == "run_duration_exceeded"
    assert body["occurred_at"] == "2023-11-14T22:13:20Z"
    assert body["job"] == {"job_id": 42, "name": "nightly-etl", "tags": {}}
    assert body["run"]["run_id"] == 1001
    assert body["run"]["state"]["life_cycle_state"] == "RUNNING"
    assert body["run"]["durations"]["setup_seconds"] == 60.0
    assert body["rule"] == {
        "name": "job",
        "metric": "RUN_DURATION_SECONDS",
        "op": "GREATER_THAN",
        "value": 3600,
        "source": "job",
        "task_key": None,
    }
    assert body["observed_seconds"] == 4000.0


async def test_tampered_body_fails_verification(receiver: Receiver, now_clock: ManualClock) -> None:
    """The signature covers the exact body bytes: a changed body does not verify."""
    hook = channel(receiver, now_clock, secret=FAKE_SECRET)
    await hook.send(make_event())
    await hook.close()
    (request,) = receiver.requests
    with pytest.raises(Exception, match="signature"):
        Webhook(FAKE_SECRET).verify(request.body.replace(b"nightly", b"daily"), request.headers)


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        (EventType.RUN_STARTED, "jobs.on_start"),
        (EventType.RUN_SUCCEEDED, "jobs.on_success"),
        (EventType.RUN_FAILED, "jobs.on_failure"),
        (EventType.RUN_CANCELED, "jobs.on_failure"),
        (EventType.RUN_SKIPPED, "jobs.on_failure"),
        (EventType.RUN_DURATION_EXCEEDED, "jobs.on_duration_warning_threshold_exceeded"),
    ],
)
async def test_databricks_format(
    receiver: Receiver, now_clock: ManualClock, type_: EventType, expected: str
) -> None:
    """`format: databricks` sends exactly Databricks' notification body; the workspace id
    comes from the run page URL."""
    hook = channel(receiver, now_clock, format="databricks")
    await hook.send(make_event(type_))
    await hook.close()
    assert receiver.requests[0].json() == {
        "event_type": expected,
        "workspace_id": "1234567890123456",
        "run": {"run_id": "1001"},
        "job": {"job_id": "42", "name": "nightly-etl"},
    }


async def test_databricks_format_has_nothing_for_recovery(
    receiver: Receiver, now_clock: ManualClock
) -> None:
    """Databricks has no recovery notification: nothing is posted, the delivery is done."""
    hook = channel(receiver, now_clock, format="databricks")
    result = await hook.send(make_event(EventType.JOB_RECOVERED))
    assert isinstance(result, Sent)
    assert receiver.requests == []


async def test_bearer_and_basic_auth(receiver: Receiver, now_clock: ManualClock) -> None:
    """bearer_token and basic credentials reach the receiver as Authorization headers."""
    bearer = channel(receiver, now_clock, bearer_token="fake-bearer-token")
    basic = channel(
        receiver, now_clock, basic_username="watcher", basic_password="fake-basic-password"
    )
    await bearer.send(make_event())
    await basic.send(make_event())
    await bearer.close()
    await basic.close()
    assert receiver.requests[0].headers["Authorization"] == "Bearer fake-bearer-token"
    expected = base64.b64encode(b"watcher:fake-basic-password").decode()
    assert receiver.requests[1].headers["Authorization"] == f"Basic {expected}"


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "7"}, Retry("HTTP 429: slow down", after=7.0)),
        (503, {}, Retry("HTTP 503: slow down", after=None)),
        (500, {}, Retry("HTTP 500: slow down")),
        (408, {}, Retry("HTTP 408: slow down")),
        (400, {}, Failed("HTTP 400: slow down")),
        (404, {}, Failed("HTTP 404: slow down")),
    ],
)
async def test_status_codes_become_results(
    receiver: Receiver,
    now_clock: ManualClock,
    status: int,
    headers: dict[str, str],
    expected: object,
) -> None:
    """429/503 are retried after Retry-After, 408 and 5xx with back-off, other 4xx are
    permanent."""
    receiver.default = (status, headers, "slow down")
    hook = channel(receiver, now_clock)
    assert await hook.send(make_event()) == expected
    await hook.close()


async def test_connection_refused_is_retried_and_names_no_url(now_clock: ManualClock) -> None:
    """A receiver that is down is a transient failure; the error names host and port, not
    the URL's path or query (which may hold a token)."""
    config = WebhookChannelConfig.model_validate(
        {"type": "webhook", "url": "http://127.0.0.1:9/hook?token=fake-query-secret"}
    )
    hook = WebhookChannel("hook", config, clock=now_clock)
    result = await hook.send(make_event())
    await hook.close()
    assert isinstance(result, Retry)
    assert "127.0.0.1:9" in result.error
    assert "fake-query-secret" not in result.error


def test_invalid_secret_is_a_config_error() -> None:
    """A signing secret that is not base64 fails validation, naming the field."""
    with pytest.raises(ValueError, match="secret"):
        WebhookChannelConfig.model_validate(
            {"type": "webhook", "url": "https://x.invalid", "secret": "whsec_***"}
        )


async def test_a_receiver_echoing_the_urls_token_does_not_put_it_in_the_error(
    receiver: Receiver, now_clock: ManualClock
) -> None:
    """A token in the URL's query or user info, echoed back by the receiver in its
    refusal, is redacted from the error (which the status page and `alerts list` show)."""
    receiver.default = (401, {}, "bad apiKey not-a-real-key for user:not-a-real-password")
    config = WebhookChannelConfig.model_validate(
        {
            "type": "webhook",
            "url": receiver.url.replace("http://", "http://user:not-a-real-password@")
            + "/hook?apiKey=not-a-real-key",
        }
    )
    hook = WebhookChannel("hook", config, clock=now_clock)
    result = await hook.send(make_event())
    await hook.close()
    assert isinstance(result, Failed)
    assert "401" in result.error
    assert "not-a-real-key" not in result.error
    assert "not-a-real-password" not in result.error
