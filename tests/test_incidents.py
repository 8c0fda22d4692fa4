"""Incidents: the pure bookkeeping (open, count, resolve), the cycle that applies it to real
polls of the simulator (streaks, duration incidents that end with their runs), the store
that keeps them (conflicts, pruning) and an operator's resolve from the CLI."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from tests.notify_fixtures import make_config
from tests.wiring import Watched, watching
from watcher.clock import ManualClock
from watcher.config import HealthRulesConfig, RoutingConfig, StartupConfig, StuckConfig
from watcher.databricks.models import Run, RunState
from watcher.domain import Incident, PollResult
from watcher.events import Event, EventType, JobRef, ResolveCause, RuleRef, event_id
from watcher.incidents import KEY_LIMIT, IncidentBook, incident_key, resolution
from watcher.notify.cli import incidents as incidents_command
from watcher.notify.incidents import resolve_manually
from watcher.notify.router import RoutingTable, table_router
from watcher.pipeline import Pipeline
from watcher.simulator import Simulator
from watcher.store.base import CycleCommit, DeliveryKey, Store, StoreConflict
from watcher.store.sqlite import SQLiteStore

T0 = datetime(2024, 5, 1, 2, 10, tzinfo=UTC)


def make_event(
    type_: EventType,
    *,
    run_id: int = 1,
    job_id: int | None = 7,
    minute: int = 0,
    rule: str | None = None,
) -> Event:
    moment = T0 + timedelta(minutes=minute)
    return Event(
        id=event_id("ws", run_id, str(type_), rule),
        type=type_,
        workspace="ws",
        occurred_at=moment,
        job=JobRef(job_id=job_id, name="etl"),
        run=Run(run_id=run_id, job_id=job_id, state=RunState(life_cycle_state="TERMINATED")),
        rule=None if rule is None else RuleRef(name=rule, value=60, source="job"),
    )


def resolved_by_end(incident: Incident, cause: ResolveCause) -> Event:
    last = make_event(EventType.RUN_SUCCEEDED, run_id=99, minute=40)
    return resolution(incident, last, at=last.occurred_at, cause=cause)


# -- the pure bookkeeping -------------------------------------------------------------------


def test_failures_count_in_one_incident_until_the_job_recovers() -> None:
    book = IncidentBook.of("ws", {})
    first = book.record(make_event(EventType.RUN_FAILED, run_id=1))
    second = book.record(make_event(EventType.RUN_FAILED, run_id=2, minute=5))
    third = book.record(make_event(EventType.RUN_FAILED, run_id=3, minute=9))
    recovered = book.record(make_event(EventType.JOB_RECOVERED, run_id=4, minute=52))
    refs = [e.incident for e in (first, second, third, recovered)]
    assert all(r is not None for r in refs)
    assert {r.id for r in refs if r} == {refs[0].id if refs[0] else ""}
    assert [(r.state, r.count) for r in refs if r] == [
        ("open", 1),
        ("open", 2),
        ("open", 3),
        ("resolved", 3),
    ]
    assert refs[0] is not None
    assert refs[0].key == "ws/job/7/failed"
    assert refs[0].opened_at == T0
    assert recovered.incident is not None
    assert recovered.incident.cause == "recovered"
    assert recovered.incident.resolved_at == T0 + timedelta(minutes=52)
    assert book.open == {}
    # The next failure opens a new incident under the same key.
    again = book.record(make_event(EventType.RUN_FAILED, run_id=5, minute=55))
    assert again.incident is not None
    assert again.incident.id != refs[0].id
    assert again.incident.key == refs[0].key


def test_a_recovery_without_an_open_incident_carries_none() -> None:
    book = IncidentBook.of("ws", {})
    event = book.record(make_event(EventType.JOB_RECOVERED))
    assert event.incident is None
    assert book.changed == {}


def test_starts_successes_cancels_and_test_alerts_open_nothing() -> None:
    book = IncidentBook.of("ws", {})
    for type_ in (EventType.RUN_STARTED, EventType.RUN_SUCCEEDED, EventType.RUN_CANCELED):
        assert book.record(make_event(type_)).incident is None
    test = make_event(EventType.RUN_FAILED).model_copy(update={"test": True})
    assert book.record(test).incident is None
    assert book.changed == {}


def test_a_duration_incident_resolves_when_its_last_breaching_run_ends() -> None:
    book = IncidentBook.of("ws", {})
    a = book.record(make_event(EventType.RUN_DURATION_EXCEEDED, run_id=1, rule="job"))
    b = book.record(make_event(EventType.RUN_DURATION_EXCEEDED, run_id=2, rule="job", minute=3))
    other = book.record(make_event(EventType.RUN_DURATION_EXCEEDED, run_id=2, rule="task:x"))
    assert a.incident
    assert b.incident
    assert other.incident
    assert a.incident.id == b.incident.id != other.incident.id
    assert b.incident.count == 2
    assert book.run_ended(1, 7, resolved_by_end) == []  # run 2 still breaks the rule
    ended = book.run_ended(2, 7, resolved_by_end)
    assert [e.type for e in ended] == [EventType.INCIDENT_RESOLVED] * 2
    assert {e.incident.key for e in ended if e.incident} == {
        "ws/job/7/duration/job",
        "ws/job/7/duration/task:x",
    }
    assert all(e.incident and e.incident.cause == "run_ended" for e in ended)
    assert book.open == {}
    # A run that ends again (a repair) resolves nothing twice.
    assert book.run_ended(2, 7, resolved_by_end) == []


def test_unreadable_items_open_their_own_incident() -> None:
    book = IncidentBook.of("ws", {})
    run = book.record(make_event(EventType.RUN_UNREADABLE, run_id=3))
    failed = book.record(make_event(EventType.RUN_FAILED, run_id=4))
    recovered = book.record(make_event(EventType.JOB_RECOVERED, run_id=5))
    assert run.incident
    assert run.incident.key == "ws/job/7/unreadable/run/3"
    assert failed.incident
    assert recovered.incident
    assert recovered.incident.state == "resolved"
    assert [i.key for i in book.open.values()] == ["ws/job/7/unreadable/run/3"]


def test_keys_of_runs_without_a_job_and_of_long_rule_names() -> None:
    lone = make_event(EventType.RUN_FAILED, run_id=12, job_id=None)
    assert incident_key(lone, "failure") == "ws/run/12/failed"
    long = make_event(EventType.RUN_DURATION_EXCEEDED, rule="task:" + "x" * 400)
    key = incident_key(long, "duration")
    assert len(key) <= KEY_LIMIT
    assert key == incident_key(long, "duration")  # stable
    other = make_event(EventType.RUN_DURATION_EXCEEDED, rule="task:" + "x" * 399 + "y")
    assert incident_key(other, "duration") != key


# -- the daemon: polls, commits, restarts ----------------------------------------------------


@pytest.fixture
async def watched(sim: Simulator, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Watched]:
    async with watching(sim, clock, tmp_path) as watch:
        yield watch


async def test_failures_streak_and_count_across_restarts_and_a_recovery_resolves(
    watched: Watched,
) -> None:
    """Three failures of a job (with a restart between them) are one incident counted
    three times; each carries the failing streak, the recovery resolves the incident and
    carries the streak it ended."""
    ws = watched.sim.workspace
    job = ws.create_job("nightly", duration_threshold_s=None)
    ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0)
    await watched.cycle(30)  # a success: the streak's last success
    succeeded_at = watched.of_type(EventType.RUN_SUCCEEDED)[0].occurred_at
    for n in range(3):
        ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
        await watched.cycle(30)
        if n == 1:
            await watched.restart()
    ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0)
    await watched.cycle(30)
    failures = watched.of_type(EventType.RUN_FAILED)
    assert [(e.incident.state, e.incident.count) for e in failures if e.incident] == [
        ("open", 1),
        ("open", 2),
        ("open", 3),
    ]
    assert len({e.incident.id for e in failures if e.incident}) == 1
    assert [e.streak.consecutive_failures for e in failures if e.streak] == [1, 2, 3]
    assert {e.streak.last_success_at for e in failures if e.streak} == {succeeded_at}
    (recovered,) = watched.of_type(EventType.JOB_RECOVERED)
    assert recovered.incident is not None
    assert failures[0].incident is not None
    assert recovered.incident.id == failures[0].incident.id
    assert (recovered.incident.state, recovered.incident.cause) == ("resolved", "recovered")
    assert recovered.streak is not None
    assert recovered.streak.consecutive_failures == 3
    success = watched.of_type(EventType.RUN_SUCCEEDED)[-1]
    assert success.streak is not None
    assert success.streak.consecutive_failures == 3
    assert await watched.daemon.store.incidents(open_only=True) == []
    registry = watched.daemon.metrics.registry
    # One failure incident opened (the daemon restarted after it: a new process's counter
    # has the resolve only), resolved by the recovery; none open.
    assert registry.get_sample_value("watcher_incidents_opened_total", {"kind": "failure"}) is None
    resolved = {"kind": "failure", "cause": "recovered"}
    assert registry.get_sample_value("watcher_incidents_resolved_total", resolved) == 1
    watched.daemon.metrics.set_outbox(await watched.daemon.store.outbox_stats())
    assert registry.get_sample_value("watcher_incidents_open", {"kind": "failure"}) == 0


async def test_a_duration_incident_stays_open_while_its_run_runs_and_resolves_at_its_end(
    watched: Watched,
) -> None:
    ws = watched.sim.workspace
    job = ws.create_job("slow", duration_threshold_s=60)
    run_id = ws.start_run(job, setup_s=0, execution_s=600, cleanup_s=0)
    await watched.cycle(30)
    await watched.cycle(60)  # over the rule
    (breach,) = watched.of_type(EventType.RUN_DURATION_EXCEEDED)
    assert breach.incident is not None
    assert breach.incident.state == "open"
    registry = watched.daemon.metrics.registry
    assert registry.get_sample_value("watcher_incidents_opened_total", {"kind": "duration"}) == 1
    watched.daemon.metrics.set_outbox(await watched.daemon.store.outbox_stats())
    assert registry.get_sample_value("watcher_incidents_open", {"kind": "duration"}) == 1
    await watched.restart()
    await watched.cycle(300)
    assert watched.of_type(EventType.INCIDENT_RESOLVED) == []
    await watched.cycle(300)  # the run has ended
    (resolved,) = watched.of_type(EventType.INCIDENT_RESOLVED)
    assert resolved.run.run_id == run_id
    assert resolved.incident is not None
    assert (resolved.incident.id, resolved.incident.cause) == (breach.incident.id, "run_ended")
    assert resolved.rule is not None
    assert resolved.rule.name == "job"
    assert resolved.occurred_at == datetime.fromtimestamp((resolved.run.end_time or 0) / 1000, UTC)


async def test_an_unreadable_item_reported_every_cycle_is_one_incident(watched: Watched) -> None:
    """The poller reports an unreadable run in every cycle under one event id: the
    incident opens once and is not counted again."""
    ws = watched.sim.workspace
    job = ws.create_job("odd")
    run_id = ws.start_run(job, setup_s=0, execution_s=900, cleanup_s=0)
    ws.poison_run(run_id, {"start_time": "yesterday"})
    for _ in range(6):
        await watched.cycle(30)
    (unreadable,) = watched.of_type(EventType.RUN_UNREADABLE)
    stored = await watched.daemon.store.incidents(open_only=True)
    assert [(i.kind, i.count, i.opened_by) for i in stored] == [("unreadable", 1, unreadable.id)]


# -- the store and an operator's resolve ---------------------------------------------------


async def test_a_commit_from_a_stale_read_of_an_incident_conflicts(store: SQLiteStore) -> None:
    book = IncidentBook.of("ws", {})
    event = book.record(make_event(EventType.RUN_FAILED))
    commit = CycleCommit("ws", 1, 0.0, events=[event], incidents=list(book.changed.values()))
    await store.commit_cycle(commit)
    (stored,) = (await store.open_incidents("ws", [7])).values()
    assert stored.version == 1
    later = IncidentBook.of("ws", {stored.key: stored})
    later.record(make_event(EventType.RUN_FAILED, run_id=2))
    await store.commit_cycle(CycleCommit("ws", 2, 0.0, incidents=list(later.changed.values())))
    # A second writer that read version 1 too cannot overwrite version 2.
    stale = IncidentBook.of("ws", {stored.key: stored})
    stale.record(make_event(EventType.JOB_RECOVERED, run_id=3))
    with pytest.raises(StoreConflict):
        await store.commit_cycle(CycleCommit("ws", 3, 0.0, incidents=list(stale.changed.values())))
    (now,) = (await store.open_incidents("ws", [7])).values()
    assert (now.count, now.version, now.is_open) == (2, 2, True)
    # Nor can a second writer open the same key again.
    twin = IncidentBook.of("ws", {})
    twin.record(make_event(EventType.RUN_FAILED, run_id=4))
    with pytest.raises(StoreConflict):
        await store.commit_cycle(CycleCommit("ws", 4, 0.0, incidents=list(twin.changed.values())))


async def test_pruning_keeps_the_latest_event_of_an_open_incident(store: SQLiteStore) -> None:
    book = IncidentBook.of("ws", {})
    event = book.record(make_event(EventType.RUN_FAILED))
    other = make_event(EventType.RUN_SUCCEEDED, run_id=9)
    await store.commit_cycle(
        CycleCommit("ws", 1, 0.0, events=[event, other], incidents=list(book.changed.values()))
    )
    pruned = await store.prune(now=90 * 86_400.0, run_retention_days=60, event_retention_days=7)
    assert pruned.events == 1
    assert await store.get_event(event.id) == event
    assert await store.get_event(other.id) is None


async def test_an_operator_resolves_an_incident_where_it_was_paged(
    watched: Watched, tmp_path: Path
) -> None:
    """`watcher incidents resolve` commits an incident_resolved event (cause manual) to
    every channel the incident went to; the list shows it resolved; a second resolve
    finds nothing open; the running daemon's next cycle is not confused by it."""
    ws = watched.sim.workspace
    job = ws.create_job("broken")
    ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
    await watched.cycle(30)
    (failure,) = watched.of_type(EventType.RUN_FAILED)
    assert failure.incident is not None
    store_config = watched.config.store
    routing = watched.config.routing
    out = io.StringIO()
    assert await incidents_command(store_config, routing, "list", out) == 0
    assert failure.incident.id in out.getvalue()
    assert out.getvalue().strip().endswith("incidents: 1")
    out = io.StringIO()
    assert await incidents_command(store_config, routing, "list", out, output="json") == 0
    (listed,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (listed["id"], listed["kind"], listed["key"]) == (
        failure.incident.id,
        "failure",
        failure.incident.key,
    )
    out = io.StringIO()
    prefix = failure.incident.id[:8]
    assert await incidents_command(store_config, routing, "resolve", out, wanted=prefix) == 0
    assert "resolved ws" not in out.getvalue()  # the workspace is `sim`
    assert f"resolved sim/job/{job}/failed" in out.getvalue()
    stored = await watched.daemon.store.incidents()
    assert [(i.is_open, i.cause) for i in stored] == [(False, "manual")]
    resolve_event = await watched.daemon.store.get_event(stored[0].resolved_by or "")
    assert resolve_event is not None
    assert resolve_event.type is EventType.INCIDENT_RESOLVED
    targets = await watched.daemon.store.incident_targets([failure.incident.id])
    assert targets == {failure.incident.id: [DeliveryKey("out")]}
    out = io.StringIO()
    assert await incidents_command(store_config, routing, "resolve", out, wanted=prefix) == 1
    assert "no open incident" in out.getvalue()
    # The job fails again: a new incident.
    ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
    await watched.cycle(30)
    second = watched.of_type(EventType.RUN_FAILED)[-1]
    assert second.incident is not None
    assert second.incident.id != failure.incident.id
    assert second.incident.count == 1


class _Racing:
    """A store whose next cycle commit is preceded by an operator's resolve of `wanted`:
    the cycle was planned on the incident as it was before."""

    def __init__(self, store: SQLiteStore, routing: RoutingConfig, wanted: str, clock: ManualClock):
        self._store, self._routing, self._wanted, self._clock = store, routing, wanted, clock
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        self.commits += 1
        if self.commits == 1:
            await resolve_manually(self._store, self._routing, self._wanted, clock=self._clock)
        return await self._store.commit_cycle(commit)


async def test_a_cycle_planned_before_an_operator_resolve_is_planned_again(
    watched: Watched,
) -> None:
    """The operator resolves the failure incident while a cycle that saw the job fail again
    is being planned: that commit conflicts, nothing of it is written, and the cycle is
    planned again on the resolved incident: the new failure opens a new incident."""
    ws = watched.sim.workspace
    job = ws.create_job("flaky")
    ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
    await watched.cycle(30)
    (first,) = watched.of_type(EventType.RUN_FAILED)
    assert first.incident is not None
    store = watched.daemon.store
    assert isinstance(store, SQLiteStore)
    racing = _Racing(store, watched.config.routing, first.incident.id, watched.clock)
    watched.daemon.pipeline._store = cast(Store, racing)
    ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
    await watched.cycle(30)
    assert racing.commits == 2
    second = watched.of_type(EventType.RUN_FAILED)[-1]
    assert second.incident is not None
    assert (second.incident.count, second.incident.state) == (1, "open")
    assert second.incident.id != first.incident.id
    assert second.streak is not None
    assert second.streak.consecutive_failures == 2
    stored = {i.id: (i.is_open, i.cause) for i in await store.incidents()}
    assert stored == {first.incident.id: (False, "manual"), second.incident.id: (True, None)}


def test_a_run_without_a_job_fails_without_an_incident_but_breaches_with_one() -> None:
    """A one-time run has no later run to recover it: its failure is a one-off alert. Its
    duration breach is an incident, resolved when the run ends."""
    book = IncidentBook.of("ws", {})
    assert book.record(make_event(EventType.RUN_FAILED, job_id=None)).incident is None
    breach = book.record(make_event(EventType.RUN_DURATION_EXCEEDED, job_id=None, rule="job"))
    assert breach.incident is not None
    assert breach.incident.key == "ws/run/1/duration/job"
    assert [e.type for e in book.run_ended(1, None, resolved_by_end)] == [
        EventType.INCIDENT_RESOLVED
    ]


async def test_an_incident_opened_and_resolved_in_one_cycle_resolves_where_it_went(
    tmp_path: Path,
) -> None:
    """A run first seen finished over its rule breaches and ends in one cycle: the resolve
    follows the breach to PagerDuty, though no route sends resolves there."""
    config = make_config(
        channels={"pd": {"type": "pagerduty", "routing_key": "fake-routing-key"}},
        routes=[{"match": {"event_types": ["run_duration_exceeded"]}, "channels": ["pd"]}],
    )
    store = await SQLiteStore.open(tmp_path / "s.db")
    clock = ManualClock(start=1_700_000_000.0)
    pipeline = Pipeline(
        store=store,
        health_rules=HealthRulesConfig(default_seconds=20),
        startup=StartupConfig(),
        clock=clock,
        route=table_router(RoutingTable.compile(config.routing), clock=clock),
    )
    now = 1_700_000_000_000
    run = Run.model_validate(
        {
            "run_id": 5,
            "job_id": 7,
            "run_name": "etl",
            "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
            "start_time": now - 40_000,
            "end_time": now - 5_000,
        }
    )
    result = PollResult(
        workspace="prod",
        runs=[run],
        jobs={},
        vanished=[],
        watermark_ms=now,
        server_now_ms=now,
        news_since_ms=now - 60_000,
        requests=1,
    )
    try:
        events = await pipeline.handle(result)
        due = await store.due_deliveries(now=clock.time() + 1, limit=10)
        breach = events[0].incident
        assert breach is not None
        targets = await store.incident_targets([breach.id])
        await store.mark_delivered(events[0].id, DeliveryKey("pd"), at=clock.time())
        then = await store.due_deliveries(now=clock.time() + 1, limit=10)
    finally:
        await store.close()
    assert [e.type for e in events] == [
        EventType.RUN_DURATION_EXCEEDED,
        EventType.RUN_SUCCEEDED,
        EventType.INCIDENT_RESOLVED,
    ]
    # One at a time per job and target (the head of line): the breach, then its resolve.
    assert [(d.event.type, str(d.key)) for d in due] == [(EventType.RUN_DURATION_EXCEEDED, "pd")]
    assert [(d.event.type, str(d.key)) for d in then] == [(EventType.INCIDENT_RESOLVED, "pd")]
    assert targets == {breach.id: [DeliveryKey("pd")]}


async def test_an_item_reported_again_after_its_incident_was_resolved_and_pruned(
    watched: Watched,
) -> None:
    """An unreadable run's incident is resolved by hand; days later pruning runs while the
    run is still reported under its one event id: the event that opened the incident is
    kept with it, so the report stays known and opens no second incident under the first
    one's id (which would fail every cycle of the workspace)."""
    ws = watched.sim.workspace
    job = ws.create_job("odd")
    run_id = ws.start_run(job, setup_s=0, execution_s=30 * 86_400, cleanup_s=0)
    ws.poison_run(run_id, {"start_time": "yesterday"})
    for _ in range(4):
        await watched.cycle(30)
    (incident,) = await watched.daemon.store.incidents(open_only=True)
    watched.clock.advance(5 * 86_400)
    await resolve_manually(
        watched.daemon.store, watched.config.routing, incident.id, clock=watched.clock
    )
    await watched.daemon.dispatcher.drain()
    watched.clock.advance(4 * 86_400)
    await watched.daemon.store.prune(
        now=watched.clock.time(), run_retention_days=60, event_retention_days=7
    )
    for _ in range(3):
        assert await watched.cycle(30) == []
    stored = await watched.daemon.store.incidents()
    assert [(i.id, i.is_open) for i in stored] == [(incident.id, False)]


async def test_a_run_queued_for_hours_is_stuck_once_and_resolves_when_it_runs(
    watched: Watched,
) -> None:
    """A run queued for 3 h (the default threshold is 1 h): one run_stuck after the hour,
    counted in databricks_runs_stuck while it waits, and its incident resolved (cause
    `running`) by the first cycle that sees it running. A restart in between changes
    nothing."""
    ws = watched.sim.workspace
    job = ws.create_job("behind-the-limit")
    run_id = ws.start_run(job, queue_s=3 * 3600, setup_s=0, execution_s=600, cleanup_s=0)
    registry = watched.daemon.metrics.registry
    labels = {"workspace": "sim", "life_cycle_state": "QUEUED"}
    for n in range(10):  # 100 min, with a restart before the hour
        await watched.cycle(600)
        if n == 3:
            await watched.restart()
            registry = watched.daemon.metrics.registry
    (stuck,) = watched.of_type(EventType.RUN_STUCK)
    assert (stuck.run.run_id, stuck.raw_state) == (run_id, "QUEUED")
    assert stuck.incident is not None
    assert (stuck.incident.kind, stuck.incident.key) == (
        "stuck",
        f"sim/job/{job}/stuck",
    )
    await watched.cycle(600)
    assert registry.get_sample_value("databricks_runs_stuck", labels) == 1
    for _ in range(9):  # past the 3 h queue
        await watched.cycle(600)
    (resolved,) = watched.of_type(EventType.INCIDENT_RESOLVED)
    assert resolved.incident is not None
    assert (resolved.incident.id, resolved.incident.cause) == (stuck.incident.id, "running")
    assert registry.get_sample_value("databricks_runs_stuck", labels) == 0
    assert len(watched.of_type(EventType.RUN_STUCK)) == 1


async def test_a_stuck_run_deleted_resolves_its_incident_and_leaves_the_gauge(
    watched: Watched,
) -> None:
    ws = watched.sim.workspace
    job = ws.create_job("q")
    run_id = ws.start_run(job, queue_s=3 * 3600, setup_s=0, execution_s=600, cleanup_s=0)
    registry = watched.daemon.metrics.registry
    labels = {"workspace": "sim", "life_cycle_state": "QUEUED"}
    for _ in range(8):
        await watched.cycle(600)
    assert len(watched.of_type(EventType.RUN_STUCK)) == 1
    assert registry.get_sample_value("databricks_runs_stuck", labels) == 1
    ws.delete_run(run_id)
    await watched.cycle(30)
    (resolved,) = watched.of_type(EventType.INCIDENT_RESOLVED)
    assert resolved.incident is not None
    assert resolved.incident.cause == "run_ended"
    assert registry.get_sample_value("databricks_runs_stuck", labels) == 0


async def test_running_ends_a_stuck_incident_and_leaves_a_duration_one(watched: Watched) -> None:
    """Queued for 2 h with a 30 min duration rule: the breach stays open while the run
    runs (queue time counts towards the rule), the stuck incident resolves when it runs."""
    ws = watched.sim.workspace
    job = ws.create_job("q", duration_threshold_s=1800)
    ws.start_run(job, queue_s=2 * 3600, setup_s=0, execution_s=1800, cleanup_s=0)
    for _ in range(13):
        await watched.cycle(600)
    resolved = {e.incident.kind for e in watched.of_type(EventType.INCIDENT_RESOLVED) if e.incident}
    assert resolved == {"stuck"}
    for _ in range(3):
        await watched.cycle(600)
    resolved = {e.incident.kind for e in watched.of_type(EventType.INCIDENT_RESOLVED) if e.incident}
    assert resolved == {"stuck", "duration"}


async def test_a_backlog_behind_a_hung_run_is_one_stuck_incident(watched: Watched) -> None:
    ws = watched.sim.workspace
    job = ws.create_job("behind")
    for _ in range(5):
        ws.start_run(job, queue_s=3 * 3600, setup_s=0, execution_s=60, cleanup_s=0)
        await watched.cycle(600)
    for _ in range(8):
        await watched.cycle(600)
    stuck = watched.of_type(EventType.RUN_STUCK)
    assert len(stuck) == 5
    assert len({e.incident.id for e in stuck if e.incident}) == 1
    assert [e.incident.count for e in stuck if e.incident] == [1, 2, 3, 4, 5]


def test_stuck_thresholds_by_tag_rule_and_default() -> None:
    config = StuckConfig.model_validate(
        {
            "seconds": 3600,
            "rules": [{"name": "tier-1", "seconds": 900, "match": {"tags": {"tier": "1"}}}],
        }
    )
    assert config.threshold(1, "etl", {}) == 3600
    assert config.threshold(1, "etl", {"tier": "1"}) == 900
    assert config.threshold(1, "etl", {"tier": "1", "watcher.stuck_after": "2h"}) == 7200
    assert config.threshold(1, "etl", {"watcher.stuck_after": "0"}) == 0
    assert config.threshold(1, "etl", {"watcher.stuck_after": "soon"}) == 3600
