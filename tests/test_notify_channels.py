"""Slack, Teams, PagerDuty and console channels against real receivers (or a stream)."""

from __future__ import annotations

import io

import structlog

from tests.notify_fixtures import Receiver, make_event
from watcher.clock import ManualClock
from watcher.config.channels import (
    ConsoleChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    TeamsChannelConfig,
)
from watcher.events import EventType, RuleRef
from watcher.notify.base import Retry, Sent
from watcher.notify.console import ConsoleChannel
from watcher.notify.pagerduty import PagerDutyChannel, dedup_key
from watcher.notify.slack import SlackChannel
from watcher.notify.teams import TeamsChannel

ROUTING_KEY = "fake-routing-key-0000"


async def test_slack_message_has_text_and_blocks(receiver: Receiver, clock: ManualClock) -> None:
    """Slack gets a fallback text plus header, mrkdwn details, context and a button."""
    config = SlackChannelConfig(type="slack", url=f"{receiver.url}/services/T0/B0/fake")
    slack = SlackChannel("slack", config, clock=clock)
    assert isinstance(await slack.send(make_event()), Sent)
    await slack.close()
    body = receiver.requests[0].json()
    assert receiver.requests[0].path == "/services/T0/B0/fake"
    assert body["text"] == "nightly-etl FAILED"
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds == ["header", "section", "context", "actions"]
    assert "*State:* TERMINATED / FAILED" in body["blocks"][1]["text"]["text"]
    assert body["blocks"][3]["elements"][0]["url"].endswith("#job/42/run/1001")


async def test_slack_error_never_contains_the_webhook_url(
    receiver: Receiver, clock: ManualClock
) -> None:
    """A failing Slack webhook yields an error and log lines without the secret URL, even
    when the response body echoes it."""
    secret_path = "/services/T0/B0/fake-secret-path"
    receiver.default = (500, {}, f"rollup_error for {receiver.url}{secret_path}")
    config = SlackChannelConfig(type="slack", url=f"{receiver.url}{secret_path}")
    slack = SlackChannel("slack", config, clock=clock)
    with structlog.testing.capture_logs() as logs:
        result = await slack.send(make_event())
    await slack.close()
    assert isinstance(result, Retry)
    assert "fake-secret-path" not in result.error
    assert "***" in result.error
    assert "fake-secret-path" not in repr(logs)
    assert "fake-secret-path" not in repr(config)


async def test_teams_adaptive_card(receiver: Receiver, clock: ManualClock) -> None:
    """Teams gets a Workflows message with one Adaptive Card and an Open run action."""
    receiver.default = (202, {}, "")
    config = TeamsChannelConfig(type="teams", url=f"{receiver.url}/workflows/fake")
    teams = TeamsChannel("teams", config, clock=clock)
    assert isinstance(await teams.send(make_event()), Sent)
    await teams.close()
    body = receiver.requests[0].json()
    assert body["type"] == "message"
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["body"][0]["text"] == "nightly-etl FAILED"
    assert card["body"][0]["color"] == "Attention"
    assert card["actions"][0]["type"] == "Action.OpenUrl"


def pagerduty(receiver: Receiver, clock: ManualClock) -> PagerDutyChannel:
    config = PagerDutyChannelConfig(
        type="pagerduty", routing_key=ROUTING_KEY, url=f"{receiver.url}/v2/enqueue"
    )
    return PagerDutyChannel("pd", config, clock=clock)


async def test_pagerduty_triggers_and_resolves_one_incident_per_job(
    receiver: Receiver, clock: ManualClock
) -> None:
    """Failures of a job trigger with a dedup_key stable per job; a duration breach has
    its own key per rule and the duration severity; recovery resolves the failure key;
    a start is not sent at all."""
    receiver.default = (202, {}, '{"status":"success"}')
    pd = pagerduty(receiver, clock)
    rule = RuleRef(name="config:slow", value=1800, source="config")
    events = [
        make_event(EventType.RUN_FAILED, run_id=1),
        make_event(EventType.RUN_FAILED, run_id=2),
        make_event(EventType.RUN_DURATION_EXCEEDED, run_id=3, rule=rule),
        make_event(EventType.RUN_STARTED, run_id=4),
        make_event(EventType.JOB_RECOVERED, run_id=5),
    ]
    for event in events:
        assert isinstance(await pd.send(event), Sent)
    await pd.close()
    bodies = [r.json() for r in receiver.requests]
    assert [(b["event_action"], b["dedup_key"]) for b in bodies] == [
        ("trigger", "prod/job/42/failed"),
        ("trigger", "prod/job/42/failed"),
        ("trigger", "prod/job/42/duration/config:slow"),
        ("resolve", "prod/job/42/failed"),
    ]
    assert all(b["routing_key"] == ROUTING_KEY for b in bodies)
    first = bodies[0]["payload"]
    assert first["severity"] == "error"
    assert first["summary"] == "[prod] nightly-etl FAILED (FAILED)"
    assert first["source"] == "prod"
    assert first["custom_details"]["event_id"] == events[0].id
    assert bodies[2]["payload"]["severity"] == "warning"
    assert bodies[0]["links"][0]["href"].startswith("https://adb-")


def test_pagerduty_dedup_key_stays_within_limits() -> None:
    """A rule named after a very long task key still yields a stable key of <= 255 chars."""
    rule = RuleRef(name="task:" + "k" * 500, value=1, source="task")
    event = make_event(EventType.RUN_DURATION_EXCEEDED, rule=rule)
    key = dedup_key(event)
    assert len(key) <= 255
    assert key == dedup_key(event)
    assert dedup_key(make_event(test=True)).startswith("watcher-test/")


async def test_pagerduty_throttle_is_retried_after_the_given_delay(
    receiver: Receiver, clock: ManualClock
) -> None:
    """PagerDuty's 429 is a retry, honouring Retry-After when it is sent."""
    receiver.default = (429, {"Retry-After": "30"}, '{"status":"throttled"}')
    pd = pagerduty(receiver, clock)
    result = await pd.send(make_event())
    await pd.close()
    assert isinstance(result, Retry)
    assert result.after == 30.0
    assert ROUTING_KEY not in result.error


async def test_console_prints_one_line_per_alert() -> None:
    """The console channel writes one readable line per alert."""
    stream = io.StringIO()
    console = ConsoleChannel("console", ConsoleChannelConfig(type="console"), stream=stream)
    await console.send(make_event())
    await console.send(make_event(EventType.RUN_SUCCEEDED, run_id=2))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2023-11-14T22:13:20Z run_failed")
    assert 'job=42 "nightly-etl" run=1001 FAILED took 10m 0s' in lines[0]
