"""`watcher test-alert` and `watcher alerts list|retry`, as the CLI calls them."""

from __future__ import annotations

import io
import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import ReceiverFactory
from tests.notify_fixtures import Receiver, make_config, make_event, start_smtp
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.notify import cli
from watcher.notify.payloads import workspace_ids
from watcher.notify.testalert import TestAlertError, send_test_alert
from watcher.store.base import CycleCommit, DeliveryKey
from watcher.store.sqlite import SQLiteStore


async def run_test_alert(config: Config, channel: str, out: io.StringIO) -> int:
    """`cli.test_alert` as `watcher test-alert` calls it: in the first configured
    workspace, with the workspace ids of all."""
    return await cli.test_alert(
        config.routing,
        channel,
        out,
        workspace=config.workspaces[0].name,
        workspace_ids=workspace_ids(config.workspaces),
    )


async def test_test_alert_through_a_webhook(receiver: Receiver) -> None:
    """A test alert is a failed-run event marked test=True, sent at once; exit code 0."""
    config = make_config(channels={"hook": {"type": "webhook", "url": f"{receiver.url}/h"}})
    out = io.StringIO()
    assert await run_test_alert(config, "hook", out) == 0
    assert "sent through 'hook' (webhook)" in out.getvalue()
    assert "resolved" not in out.getvalue()
    (request,) = receiver.requests  # one test alert: only incident channels resolve it
    body = request.json()
    assert body["test"] is True
    assert body["type"] == "run_failed"
    assert body["job"]["name"] == "watcher test alert"


async def test_pagerduty_test_alert_triggers_and_resolves(receiver: Receiver) -> None:
    """PagerDuty gets a test trigger and then its resolve, both on the test incident's
    key `watcher-test/<incident id>`, both marked as tests; the output says both went out."""
    receiver.default = (202, {}, '{"status":"success"}')
    config = make_config(
        channels={"pd": {"type": "pagerduty", "routing_key": "k", "url": f"{receiver.url}/e"}}
    )
    out = io.StringIO()
    assert await run_test_alert(config, "pd", out) == 0
    trigger, resolve = (r.json() for r in receiver.requests)
    assert trigger["event_action"] == "trigger"
    assert resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"]
    assert trigger["dedup_key"].startswith("watcher-test/")
    details = trigger["payload"]["custom_details"]
    assert details["test"] is True
    assert trigger["dedup_key"] == f"watcher-test/{details['incident']['id']}"
    assert trigger["payload"]["summary"].startswith("[TEST] ")
    text = out.getvalue()
    assert "sent through 'pd' (pagerduty), then resolved by test event" in text
    assert f"(incident {trigger['dedup_key']})" in text


async def test_alertmanager_test_alert_fires_and_resolves(receiver: Receiver) -> None:
    """Alertmanager gets the test alert firing, then the same labels resolved, so the test
    leaves nothing active: the test's incident is younger than the minute a resolve keeps
    clear of clock skew, so it ends as it started (not before: Alertmanager would take
    it for another alert)."""
    receiver.default = (200, {}, "")
    config = make_config(channels={"am": {"type": "alertmanager", "url": receiver.url}})
    out = io.StringIO()
    assert await run_test_alert(config, "am", out) == 0
    (firing,), (resolved,) = (r.json() for r in receiver.requests)
    assert firing["labels"] == resolved["labels"]
    assert firing["labels"]["alertname"] == "DatabricksWatcherTest"
    assert resolved["annotations"]["event_type"] == "incident_resolved"
    starts, ends = (_epoch(resolved[k]) for k in ("startsAt", "endsAt"))
    assert _epoch(firing["endsAt"]) > time.time() + 3000  # resolve_after: an hour ahead
    assert starts == ends == _epoch(firing["startsAt"])
    assert ends <= time.time()
    assert "sent through 'am' (alertmanager), then resolved by test event" in out.getvalue()


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_a_failed_test_resolve_is_reported(make_receiver: ReceiverFactory) -> None:
    """When the trigger went out but the resolve did not, the error says so."""
    receiver = await make_receiver(
        script=[(202, {}, '{"status":"success"}')], default=(400, {}, '{"status":"invalid"}')
    )
    config = make_config(
        channels={"pd": {"type": "pagerduty", "routing_key": "k", "url": f"{receiver.url}/e"}}
    )
    out = io.StringIO()
    assert await run_test_alert(config, "pd", out) == 1
    assert "resolve of the test alert (it was sent) through 'pd' failed" in out.getvalue()
    assert len(receiver.requests) == 2


async def test_test_alert_failure_is_explained_without_secrets(receiver: Receiver) -> None:
    """A failing channel gives exit code 1 and the reason, never the secret URL."""
    receiver.default = (403, {}, "invalid_token")
    url = f"{receiver.url}/services/fake-secret-path"
    config = make_config(channels={"slack": {"type": "slack", "url": url}})
    out = io.StringIO()
    assert await run_test_alert(config, "slack", out) == 1
    text = out.getvalue()
    assert "permanent failure" in text
    assert "HTTP 403: invalid_token" in text
    assert "fake-secret-path" not in text


async def test_unknown_channel_lists_the_configured_ones() -> None:
    """Naming a channel that does not exist says which ones do."""
    config = make_config(channels={"console": {"type": "console"}})
    with pytest.raises(TestAlertError, match=r"unknown channel 'nope' \(configured: console\)"):
        await send_test_alert(config.routing, "nope")


async def test_console_and_single_address_test_alerts() -> None:
    """The console test alert is printed, marked as a test; `<email channel>:<address>`
    sends the test mail to that address only."""
    server = await start_smtp()
    config = make_config(
        channels={
            "console": {"type": "console"},
            "mail": {
                "type": "email",
                "host": "127.0.0.1",
                "port": server.port,
                "security": "none",
                "sender": "watcher@example.com",
                "recipients": ["team@example.com"],
            },
        }
    )
    out = io.StringIO()
    try:
        assert await run_test_alert(config, "console", out) == 0
        assert await run_test_alert(config, "mail:me@example.com", out) == 0
    finally:
        await server.stop()
    assert "[TEST] run_failed" in out.getvalue()
    (envelope,) = server.mailbox.envelopes
    assert envelope.rcpt_tos == ["me@example.com"]
    assert b"Subject: [TEST] [prod] watcher test alert FAILED" in (envelope.original_content or b"")


async def test_alerts_list_and_retry(tmp_path: Path, clock: ManualClock) -> None:
    """`alerts list` prints dead letters with their reasons; `alerts retry --event ID`
    requeues only that event."""
    config = make_config(store={"path": str(tmp_path / "w.db")})
    store = await SQLiteStore.open(config.store.path)
    events = [make_event(run_id=1), make_event(run_id=2)]
    await store.commit_cycle(
        CycleCommit(
            workspace="prod",
            watermark_ms=1,
            committed_at=clock.time(),
            events=events,
            channels={e.id: [DeliveryKey("hook")] for e in events},
        )
    )
    for event in events:
        await store.mark_failed(
            event.id, DeliveryKey("hook"), error="HTTP 400: nope", next_attempt_at=None
        )
    await store.close()

    out = io.StringIO()
    assert await cli.dead_letters(config.store, "list", None, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("EVENT ID")
    assert [line.split()[0] for line in lines[1:3]] == [e.id for e in events]
    assert "prod/nightly-etl: HTTP 400: nope" in lines[1]
    assert lines[-1] == "dead letters: 2"
    out = io.StringIO()
    assert await cli.dead_letters(config.store, "list", None, out, output="json") == 0
    found = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["event_id"], d["channel"], d["attempts"]) for d in found] == [
        (e.id, "hook", 1) for e in events
    ]
    assert found[0]["last_error"] == "HTTP 400: nope"

    out = io.StringIO()
    assert await cli.dead_letters(config.store, "retry", [events[1].id], out) == 0
    assert out.getvalue().startswith("requeued: 1 ")
    store = await SQLiteStore.open(config.store.path)
    try:
        assert [d.event.id for d in await store.dead_letters()] == [events[0].id]
    finally:
        await store.close()
