"""What counts as delivered, for every HTTP channel against real receivers: a redirect is
never followed and never a delivery, and a 2xx the target does not send (a proxy's or a
login portal's page) is no proof of delivery either."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from tests.conftest import ReceiverFactory
from tests.notify_fixtures import Receiver, make_event
from watcher.clock import ManualClock
from watcher.config.channels import (
    AlertmanagerChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    TeamsChannelConfig,
    WebhookChannelConfig,
)
from watcher.metrics import Metrics
from watcher.notify.alertmanager import AlertmanagerChannel
from watcher.notify.base import Channel, Failed, Retry, Sent, location_text
from watcher.notify.dispatcher import Dispatcher
from watcher.notify.pagerduty import PagerDutyChannel
from watcher.notify.slack import SlackChannel
from watcher.notify.teams import TeamsChannel
from watcher.notify.webhook import WebhookChannel
from watcher.store.base import CycleCommit, DeliveryKey
from watcher.store.sqlite import SQLiteStore

KINDS = ["webhook", "slack", "teams", "pagerduty", "alertmanager"]
SECRET_PATH = "/services/T0/B0/fake-secret-path"
QUERY_SECRET = "fake-query-secret"
LOGIN_PAGE = (
    "<!DOCTYPE html><html><head><title>Sign in</title></head>"
    "<body><form action='/login'>Corporate SSO</form></body></html>"
)
# What each target answers when it accepts an alert.
ACCEPTED: dict[str, tuple[int, dict[str, str], str]] = {
    "webhook": (200, {}, "ok"),
    "slack": (200, {}, "ok"),
    "teams": (202, {}, ""),
    "pagerduty": (202, {}, '{"status":"success","message":"Event processed"}'),
    "alertmanager": (200, {}, ""),
}


def make_channel(kind: str, base: str, clock: ManualClock) -> Channel:
    """A channel of `kind` posting to the receiver at `base` (Slack and Teams URLs carry a
    secret path, as the real ones do)."""
    common = {"timeout": 5, "max_age": 86_400}
    if kind == "webhook":
        config = WebhookChannelConfig.model_validate(
            {"type": kind, "url": f"{base}/hook", **common}
        )
        return WebhookChannel(kind, config, clock=clock)
    if kind == "slack":
        slack = SlackChannelConfig.model_validate(
            {"type": kind, "url": f"{base}{SECRET_PATH}", **common}
        )
        return SlackChannel(kind, slack, clock=clock)
    if kind == "teams":
        teams = TeamsChannelConfig.model_validate(
            {"type": kind, "url": f"{base}/workflows/fake-flow?sig=fake-sig", **common}
        )
        return TeamsChannel(kind, teams, clock=clock)
    if kind == "pagerduty":
        pd = PagerDutyChannelConfig.model_validate(
            {"type": kind, "routing_key": "fake-routing-key", "url": f"{base}/v2/enqueue", **common}
        )
        return PagerDutyChannel(kind, pd, clock=clock)
    am = AlertmanagerChannelConfig.model_validate({"type": kind, "url": base, **common})
    return AlertmanagerChannel(kind, am, clock=clock)


@pytest.fixture
async def target(make_receiver: ReceiverFactory) -> Receiver:
    """Where redirects point: a real server that would accept the alert."""
    return await make_receiver()


async def deliver(
    store: SQLiteStore, clock: ManualClock, channel: Channel, metrics: Metrics
) -> list[MutableMapping[str, Any]]:
    """Queue one failed-run alert for `channel`, drain the outbox; the log lines."""
    event = make_event()
    await store.commit_cycle(
        CycleCommit(
            workspace="prod",
            watermark_ms=int(clock.time() * 1000),
            committed_at=clock.time(),
            events=[event],
            channels={event.id: [DeliveryKey(channel.name)]},
        )
    )
    dispatcher = Dispatcher(
        store=store,
        channels={channel.name: channel},
        clock=clock,
        on_result=metrics.observe_delivery,
    )
    try:
        with structlog.testing.capture_logs() as logs:
            await dispatcher.drain()
    finally:
        await channel.close()
    return logs


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_redirect_is_a_permanent_failure_not_a_delivery(
    store: SQLiteStore,
    clock: ManualClock,
    receiver: Receiver,
    target: Receiver,
    kind: str,
    status: int,
) -> None:
    """A 3xx from the channel's URL is not followed (aiohttp would re-send a 301/302/303
    as a GET, whose 200 proves nothing): the delivery fails permanently after one request,
    is dead-lettered at once, and the error and the `alert_dead` log line name the status
    and the Location as scheme://host/path (never its query, which may hold a token); the
    redirect is counted in watcher_alerts_unconfirmed_total{reason="redirect"}."""
    target.default = ACCEPTED[kind]
    location = f"{target.url}/login?next=%2Fhook&token={QUERY_SECRET}"
    receiver.default = (status, {"Location": location}, "Moved")
    metrics = Metrics(registry=CollectorRegistry())
    logs = await deliver(store, clock, make_channel(kind, receiver.url, clock), metrics)

    assert len(receiver.requests) == 1  # not retried
    assert target.requests == []  # not followed
    assert (await store.outbox_stats()).pending == 0
    (dead,) = await store.dead_letters()
    assert dead.attempts == 1
    expected = (
        f"permanent: HTTP {status} redirect to {target.url}/login: redirects are not followed"
    )
    assert (dead.last_error or "").startswith(expected)
    (line,) = [e for e in logs if str(e["event"]).startswith("alert_")]
    assert line["event"] == "alert_dead"
    assert line["reason"] == "redirect"
    assert f"HTTP {status} redirect to {target.url}/login:" in str(line["error"])
    assert QUERY_SECRET not in repr(logs)
    assert QUERY_SECRET not in (dead.last_error or "")
    assert sample(metrics, "watcher_alerts_dead_lettered_total", channel=kind) == 1
    assert sample(metrics, "watcher_alerts_sent_total", channel=kind) == 0
    assert sample(metrics, "watcher_alerts_unconfirmed_total", channel=kind, reason="redirect") == 1


@pytest.mark.parametrize("kind", ["slack", "teams"])
async def test_a_redirect_to_https_does_not_reveal_a_secret_url(
    receiver: Receiver, clock: ManualClock, kind: str
) -> None:
    """The usual http -> https redirect repeats the secret path of a Slack or Teams URL in
    its Location: the error keeps scheme and host and hides the path."""
    channel = make_channel(kind, receiver.url, clock)
    path = SECRET_PATH if kind == "slack" else "/workflows/fake-flow"
    https = receiver.url.replace("http://", "https://")
    receiver.default = (301, {"Location": f"{https}{path}?sig=fake-sig"}, "")
    with structlog.testing.capture_logs() as logs:
        result = await channel.send(make_event())
    await channel.close()
    assert result == Failed(
        f"HTTP 301 redirect to {https}***: redirects are not followed, configure the final URL",
        reason="redirect",
    )
    assert "fake-" not in result.error + repr(logs)


def test_location_is_shown_without_query_user_or_fragment() -> None:
    """Relative Locations are resolved against the request URL; user info, query and
    fragment are dropped; garbage is named as such."""
    base = "https://hooks.example.com/a/b?token=x"
    assert location_text("/login?t=1#f", base=base) == "https://hooks.example.com/login"
    assert location_text("https://u:p@sso.example:8443/x?y", base=base) == (
        "https://sso.example:8443/x"
    )
    assert location_text("http://[::1", base=base) == "an unreadable Location"


@pytest.mark.parametrize(
    ("kind", "answer", "accepted"),
    [
        pytest.param("slack", (200, {}, "ok"), True, id="slack ok"),
        pytest.param("slack", (200, {}, LOGIN_PAGE), False, id="slack html page"),
        pytest.param("slack", (200, {}, ""), False, id="slack empty 200"),
        pytest.param("slack", (204, {}, ""), False, id="slack 204"),
        pytest.param("teams", (202, {}, ""), True, id="teams workflows 202"),
        pytest.param("teams", (200, {}, "1"), True, id="teams connector 1"),
        pytest.param("teams", (200, {}, ""), True, id="teams empty 200"),
        pytest.param("teams", (200, {}, LOGIN_PAGE), False, id="teams html page"),
        pytest.param(
            "teams",
            (200, {}, "Webhook message delivery failed with error: 429"),
            False,
            id="teams connector error text",
        ),
        pytest.param("pagerduty", ACCEPTED["pagerduty"], True, id="pagerduty success"),
        pytest.param("pagerduty", (200, {}, '{"status":"success"}'), True, id="pagerduty 200"),
        pytest.param("pagerduty", (202, {}, "{}"), False, id="pagerduty json without status"),
        pytest.param("pagerduty", (202, {}, ""), False, id="pagerduty empty"),
        pytest.param("pagerduty", (200, {}, LOGIN_PAGE), False, id="pagerduty html page"),
        pytest.param("alertmanager", (200, {}, ""), True, id="alertmanager empty 200"),
        pytest.param("alertmanager", (200, {}, "{}"), True, id="alertmanager json"),
        pytest.param("alertmanager", (200, {}, LOGIN_PAGE), False, id="alertmanager html page"),
        pytest.param("webhook", (200, {}, LOGIN_PAGE), True, id="webhook takes any 2xx"),
        pytest.param("webhook", (204, {}, ""), True, id="webhook 204"),
    ],
)
async def test_a_2xx_counts_only_when_the_target_could_have_sent_it(
    receiver: Receiver,
    clock: ManualClock,
    kind: str,
    answer: tuple[int, dict[str, str], str],
    accepted: bool,
) -> None:
    """Slack's webhook answers `ok`, PagerDuty `{"status": "success"}`, Alertmanager an
    empty (or JSON) body, Teams Workflows 202 (connectors `1`); any other 2xx, such as a
    proxy's HTML page, is a transient failure (retried: such pages come and go) naming
    what was expected. The generic webhook's receiver is unknown: any 2xx counts."""
    receiver.default = answer
    channel = make_channel(kind, receiver.url, clock)
    result = await channel.send(make_event())
    await channel.close()
    assert len(receiver.requests) == 1
    if accepted:
        assert isinstance(result, Sent)
    else:
        assert isinstance(result, Retry)
        assert result.reason == "implausible"
        assert result.error.startswith(f"HTTP {answer[0]} is no proof of delivery (")
        assert "fake-" not in result.error


async def test_an_implausible_answer_is_retried_until_the_target_accepts(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A Slack delivery answered by a portal's 200 HTML page is retried (logged as
    `alert_retry` with reason `implausible`, counted), then delivered once Slack itself
    answers `ok`."""
    receiver.script = [(200, {}, LOGIN_PAGE)] * 2
    metrics = Metrics(registry=CollectorRegistry())
    logs = await deliver(store, clock, make_channel("slack", receiver.url, clock), metrics)
    assert len(receiver.requests) == 3
    events = [(e["event"], e.get("reason")) for e in logs if str(e["event"]).startswith("alert_")]
    assert events == [
        ("alert_retry", "implausible"),
        ("alert_retry", "implausible"),
        ("alert_sent", None),
    ]
    assert await store.dead_letters() == []
    assert sample(metrics, "watcher_alerts_failed_total", channel="slack") == 2
    assert sample(metrics, "watcher_alerts_sent_total", channel="slack") == 1
    reasons = {"channel": "slack", "reason": "implausible"}
    assert sample(metrics, "watcher_alerts_unconfirmed_total", **reasons) == 2
