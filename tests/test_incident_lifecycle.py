"""Incidents end to end, against receivers that keep state: the daemon (app.build and
app.serve, the simulator over HTTP) keeps a real Alertmanager's alert firing with its
reminders while a job keeps failing and resolves it when the job recovers (real time:
Alertmanager expires alerts by its own clock); and a PagerDuty service that keeps
incidents sees every incident the watcher triggered resolved, once each, after a scripted
workload."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN
from tests.daemon_helpers import committed_at, wait_until
from tests.notify_fixtures import PagerDutyService, Receiver, run_alertmanager
from tests.wiring import config_for, daemon
from watcher.app import Daemon, run_once, serve
from watcher.clock import ManualClock, SystemClock
from watcher.events import Event, EventType
from watcher.simulator import Simulator
from watcher.store.rows import read_event

PAGING = ["run_failed", "run_duration_exceeded", "job_recovered", "incident_resolved"]

# -- a real Alertmanager, in real time ------------------------------------------------------

RESOLVE_AFTER = 5.0
RESEND_INTERVAL = 1.0


def get_alerts(url: str, job_id: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:  # noqa: S310 - local test server
        alerts: list[dict[str, Any]] = json.loads(response.read())
    return [a for a in alerts if a["labels"].get("job_id") == str(job_id)]


def am_config(hook: str) -> str:
    """Every alert to the test's webhook receiver, resolves included, at once."""
    return f"""
route:
  receiver: hook
  group_by: [alertname, job_id]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}/am
        send_resolved: true
"""


def notified(hook: Receiver, status: str, job_id: int) -> list[dict[str, Any]]:
    """The alerts Alertmanager notified the hook of in `status`, of one job."""
    return [
        alert
        for request in hook.requests
        for alert in request.json()["alerts"]
        if alert["status"] == status and alert["labels"].get("job_id") == str(job_id)
    ]


def reminders_stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        payloads = [row[0] for row in conn.execute("SELECT payload FROM events")]
    finally:
        conn.close()
    return sum(1 for p in payloads if read_event(p).repeat > 0)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
async def live_sim() -> AsyncIterator[Simulator]:
    async with Simulator(clock=SystemClock(), tokens={TOKEN}) as simulator:
        yield simulator


async def test_alertmanager_keeps_firing_while_the_job_fails_and_resolves_on_recovery(
    tmp_path: Path, live_sim: Simulator, live_receiver: Receiver
) -> None:
    """The daemon runs (app.serve) against a real Alertmanager with resolve_after 5 s and
    resend_interval 1 s. A job fails, and fails again 7 s later: for 3 x resolve_after
    the alert stays active (GET /api/v2/alerts), kept so by reminders between the
    failures. The job recovers: Alertmanager notifies its receiver that the alert is
    resolved, starting at the first failure's time and ending after that, not after now;
    the alert is no longer active. The incident is younger than the minute a resolve's
    endsAt keeps clear of clock skew: that endsAt must not fall before its start."""
    ws = live_sim.workspace
    job = ws.create_job("keeps-failing")
    db = tmp_path / "watcher.db"
    with run_alertmanager(tmp_path, am_config(live_receiver.url)) as am:
        channel = {
            "type": "alertmanager",
            "url": am,
            "resolve_after": RESOLVE_AFTER,
            "resend_interval": RESEND_INTERVAL,
        }
        config = config_for(
            live_sim,
            db,
            top={
                "channels": {"am": channel},
                "routes": [{"match": {"event_types": PAGING}, "channels": ["am"]}],
            },
            poll_interval=0.2,
        )
        async with daemon(config, SystemClock()) as built:
            stop = asyncio.Event()
            running = asyncio.create_task(serve(built, stop=stop, shutdown_grace=2))
            try:
                await watch_it_fail_and_recover(built, ws, job, db, am, live_receiver)
            finally:
                stop.set()
                assert await asyncio.wait_for(running, 10) == 0


async def watch_it_fail_and_recover(
    built: Daemon, ws: Any, job: int, db: Path, am: str, hook: Receiver
) -> None:
    await wait_until(lambda: committed_at(db) is not None, "the first cycle", limit=10)
    first = ws.start_run(job, setup_s=0, execution_s=0.2, cleanup_s=0, result="FAILED")
    await wait_until(lambda: get_alerts(am, job) != [], "the alert to fire", limit=5)
    firing_since = time.monotonic()
    failed_again = False
    while (elapsed := time.monotonic() - firing_since) < 3 * RESOLVE_AFTER:
        states = [a["status"]["state"] for a in get_alerts(am, job)]
        assert states == ["active"], f"{elapsed:.1f}s after the alert fired: {states}"
        if elapsed > 7 and not failed_again:
            ws.start_run(job, setup_s=0, execution_s=0.2, cleanup_s=0, result="FAILED")
            failed_again = True
        await asyncio.sleep(0.2)
    # A failure every 7 s cannot keep a 5 s alert alive: reminders did, a second apart.
    assert reminders_stored(db) >= 2 * RESOLVE_AFTER / RESEND_INTERVAL
    ws.start_run(job, setup_s=0, execution_s=0.2, cleanup_s=0)
    await wait_until(lambda: notified(hook, "resolved", job) != [], "the resolve", limit=8)
    (resolved,) = notified(hook, "resolved", job)
    end_ms = ws.get_run(first).end_ms
    assert end_ms is not None
    starts, ends = parse(resolved["startsAt"]), parse(resolved["endsAt"])
    assert starts == datetime.fromtimestamp(end_ms / 1000, UTC)
    assert starts <= ends <= datetime.now(UTC)
    assert get_alerts(am, job) == []


# -- PagerDuty, in simulated time ------------------------------------------------------------


@pytest.fixture
async def pagerduty(clock: ManualClock) -> AsyncIterator[PagerDutyService]:
    service = PagerDutyService(clock=clock)
    await service.start()
    yield service
    await service.stop()


async def step(built: Daemon, clock: ManualClock, seconds: float) -> list[Event]:
    """`seconds` pass, then a cycle, a reminder pass and every due delivery."""
    clock.advance(seconds)
    events = await run_once(built)
    await built.reminders.tick()
    await built.dispatcher.drain()
    return events


async def test_every_pagerduty_incident_the_watcher_triggers_is_resolved_once(
    tmp_path: Path, sim: Simulator, clock: ManualClock, pagerduty: PagerDutyService
) -> None:
    """A scripted workload (a job that fails twice then succeeds; a run over its duration
    rule that then ends; a failed run repaired into a success), its PagerDuty route
    (failures and breaches only) reminding every 10 min: PagerDuty ends up with one
    incident per watcher incident (its key, re-triggered by the second failure and by
    reminders), every one resolved; the duration incident in the cycle that saw its run
    end. No dedup_key was opened
    twice (a trigger after a resolve would have opened a second incident for its key),
    and nothing is re-triggered once everything is resolved."""
    ws = sim.workspace
    flaky = ws.create_job("flaky")
    slow = ws.create_job("slow", duration_threshold_s=60)
    fixed = ws.create_job("fixed")
    pd = {"type": "pagerduty", "routing_key": "fake-routing-key", "url": pagerduty.url}
    # Resolves have no route of their own: they follow their incident to PagerDuty.
    triggers_only = ["run_failed", "run_duration_exceeded"]
    route = {"match": {"event_types": triggers_only}, "channels": ["pd"], "repeat_interval": 600}
    config = config_for(
        sim, tmp_path / "w.db", top={"channels": {"pd": pd}, "routes": [route]}, poll_interval=30
    )
    events: list[Event] = []
    async with daemon(config, clock, console=io.StringIO()) as built:
        await step(built, clock, 30)  # the first cycle: history

        async def cycle(seconds: float = 30) -> None:
            events.extend(await step(built, clock, seconds))

        ws.start_run(flaky, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
        slow_run = ws.start_run(slow, setup_s=0, execution_s=300, cleanup_s=0)
        broken = ws.start_run(fixed, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
        await cycle()
        await cycle(60)  # slow is 90 s old: over its rule
        ws.start_run(flaky, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
        await cycle()
        duration_key = f"sim/job/{slow}/duration/job"
        resolved_when_it_ended = False
        for _ in range(8):  # slow ends at 300 s, within these cycles
            open_before = pagerduty.open(duration_key) is not None
            await cycle()
            if open_before and pagerduty.open(duration_key) is None:
                ended = ws.get_run(slow_run).end_ms
                assert ended is not None
                (incident,) = pagerduty.of(duration_key)
                assert incident.resolved_at is not None
                assert 0 <= incident.resolved_at - ended / 1000 <= 30  # the cycle after it
                resolved_when_it_ended = True
        assert resolved_when_it_ended
        for _ in range(24):  # 12 min: reminders re-trigger the open failure incidents
            await cycle()
        ws.repair_run(broken, setup_s=0, execution_s=10, cleanup_s=0, result="SUCCESS")
        ws.start_run(flaky, setup_s=0, execution_s=10, cleanup_s=0)
        await cycle()
        await cycle()
        triggers = {i.dedup_key: i.triggers for i in pagerduty.incidents}
        for _ in range(30):  # 15 min more: nothing is open, nothing is re-triggered
            await cycle()
        stored = await built.store.incidents()
    # One PagerDuty incident per key: none re-opened, none split over two keys.
    keys = {
        f"sim/job/{flaky}/failed": 1,
        f"sim/job/{fixed}/failed": 1,
        f"sim/job/{slow}/duration/job": 1,
    }
    assert {i.dedup_key: len(pagerduty.of(i.dedup_key)) for i in pagerduty.incidents} == keys
    assert all(i.status == "resolved" for i in pagerduty.incidents)
    assert {i.key for i in stored} == set(keys)
    assert all(not i.is_open for i in stored)
    assert triggers[f"sim/job/{flaky}/failed"] >= 3  # two failures and a reminder at least
    assert triggers[f"sim/job/{fixed}/failed"] >= 2
    assert {i.dedup_key: i.triggers for i in pagerduty.incidents} == triggers
    recoveries = [e for e in events if e.type is EventType.JOB_RECOVERED]
    assert sorted(e.job.job_id or 0 for e in recoveries) == sorted([flaky, fixed])
    resolves = [e for e in pagerduty.events if e["event_action"] == "resolve"]
    assert sorted(e["dedup_key"] for e in resolves) == sorted(keys)
