"""What Databricks never reports, detected by the daemon as `watcher run` wires it
(app.build) over the simulator, whose scheduler fires (or forgets) triggers and keeps
continuous jobs running, in simulated time: a forgotten trigger, a paused schedule, a run
queued behind its job's concurrency limit, a continuous job that stops, a job that keeps
failing, and a restart between a trigger and the end of its grace."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import TOKEN
from tests.daemon_helpers import WAIT, WatcherProcess, daemon_env, wait_until, write_config
from tests.notify_fixtures import Receiver
from tests.wiring import Watched, config_for, watching
from watcher import demo
from watcher.app import build, close
from watcher.clock import ManualClock
from watcher.events import Event, EventType
from watcher.schedule import Schedule
from watcher.simulator import RandomWorkload, RunPlan, Simulator, Troubles, WorkloadSpec

HOURLY = "0 0 * * * ?"
T0 = datetime(2026, 3, 2, 10, 50, tzinfo=UTC)  # a Monday


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    """That time on T0's day."""
    return T0.replace(hour=hour, minute=minute, second=second)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=T0.timestamp())


@pytest.fixture
async def watched(sim: Simulator, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Watched]:
    async with watching(sim, clock, tmp_path) as watch:
        yield watch


def _missed_once(watched: Watched, job: int, expected: datetime) -> Event:
    (missed,) = watched.of_type(EventType.RUN_MISSED, job)
    assert missed.expected_at == expected
    assert missed.incident is not None
    assert (missed.incident.kind, missed.incident.key) == ("missed", f"sim/job/{job}/missed")
    return missed


async def test_a_forgotten_trigger_is_missed_once_after_its_grace_until_the_next_fires(
    watched: Watched,
) -> None:
    """The scheduler forgets the 11:00 trigger of an hourly job: nothing until the grace
    (10 min) is over, then run_missed once; its incident resolves (cause `ran`) when the
    12:00 trigger starts a run; the triggers after it are kept and miss nothing."""
    ws = watched.sim.workspace
    job = ws.create_job("hourly", schedule=HOURLY)
    ws.skip_next_trigger(job)
    await watched.until(at(11, 9, 30))
    assert watched.of_type(EventType.RUN_MISSED) == []
    await watched.until(at(11, 10, 30))
    missed = _missed_once(watched, job, at(11))
    assert missed.occurred_at == at(11, 10)
    assert missed.detail == "latest run started: none seen"
    await watched.until(at(11, 59))
    assert watched.resolved("missed") == []
    await watched.until(at(14, 30))
    assert _missed_once(watched, job, at(11)) == missed
    runs = sorted(r.start_ms for r in ws.runs.values() if r.job_id == job)
    assert runs == [int(at(h).timestamp() * 1000) for h in (12, 13, 14)]
    (resolved,) = watched.resolved("missed")
    assert resolved.incident is not None
    assert missed.incident is not None
    assert (resolved.incident.id, resolved.incident.cause) == (missed.incident.id, "ran")
    assert resolved.occurred_at == at(12)
    assert await watched.daemon.store.incidents(open_only=True) == []


async def test_a_paused_schedule_misses_nothing_and_shows_paused_with_its_next_trigger(
    watched: Watched,
) -> None:
    """A PAUSED hourly schedule fires nothing and nothing is missed; the metrics show it
    paused, with the next trigger it would fire."""
    ws = watched.sim.workspace
    job = ws.create_job("paused", schedule=HOURLY, pause_status="PAUSED")
    await watched.until(at(13, 30))
    assert [r for r in ws.runs.values() if r.job_id == job] == []
    assert watched.of_type(EventType.RUN_MISSED) == []
    assert watched.gauge("databricks_job_schedule_paused", job) == 1
    next_expected = "databricks_job_next_expected_run_timestamp_seconds"
    assert watched.gauge(next_expected, job) == at(14).timestamp()
    await watched.until(at(14, 30))
    assert watched.gauge(next_expected, job) == at(15).timestamp()


async def test_a_schedule_resumed_after_a_pause_misses_nothing(watched: Watched) -> None:
    """Resumed at 13:30 after a pause over the 11:00 to 13:00 triggers, an hourly
    schedule owes none of them: no run_missed; the next (14:00) fires and starts a run;
    the metrics show it unpaused again."""
    ws = watched.sim.workspace
    job = ws.create_job("paused", schedule=HOURLY, pause_status="PAUSED")
    await watched.until(at(13, 30))
    ws.resume_job(job)
    await watched.until(at(14, 30))
    assert [e.expected_at for e in watched.of_type(EventType.RUN_MISSED)] == []
    assert watched.gauge("databricks_job_schedule_paused", job) == 0
    runs = [r.start_ms for r in ws.runs.values() if r.job_id == job]
    assert runs == [int(at(14).timestamp() * 1000)]


async def test_a_scheduled_run_queued_3h_behind_the_concurrency_limit_is_stuck_once(
    watched: Watched,
) -> None:
    """A daily 12:00 trigger fires while a run started by hand holds the job's one slot
    (max_concurrent_runs 1) until 15:00: its run queues (ACTIVE_RUNS_LIMIT_REACHED) three
    hours. It started (in the API's terms) at the trigger, so nothing is missed; stuck
    after the default hour, once; the incident resolves (cause `running`) when it gets
    the slot."""
    ws = watched.sim.workspace
    job = ws.create_job(
        "limited",
        schedule="0 0 12 * * ?",
        max_concurrent_runs=1,
        plan=RunPlan(execution_s=600),
    )
    ws.start_run(job, setup_s=0, execution_s=4 * 3600 + 9 * 60 + 30, cleanup_s=0)  # to 15:00
    await watched.until(at(12, 59, 30))
    assert watched.of_type(EventType.RUN_STUCK) == []
    await watched.until(at(13, 1))
    (stuck,) = watched.of_type(EventType.RUN_STUCK)
    assert stuck.raw_state == "QUEUED"
    assert stuck.detail is not None
    assert "maximum concurrent runs" in stuck.detail
    assert stuck.run.start_time == int(at(12).timestamp() * 1000)
    await watched.until(at(14, 59))
    assert watched.resolved("stuck") == []
    await watched.until(at(15, 30))
    assert len(watched.of_type(EventType.RUN_STUCK)) == 1
    (resolved,) = watched.resolved("stuck")
    assert stuck.incident is not None
    assert resolved.incident is not None
    assert (resolved.incident.id, resolved.incident.cause) == (stuck.incident.id, "running")
    assert watched.of_type(EventType.RUN_MISSED) == []
    queued = ws.runs[stuck.run.run_id]
    assert queued.queue_ms == 3 * 3600 * 1000


async def test_a_continuous_job_that_stops_is_not_running_after_15_minutes(
    watched: Watched,
) -> None:
    """A continuous job (UNPAUSED) whose run dies at 11:30:15 and is not restarted:
    job_not_running once, 15 minutes after it was last seen running; resolved (cause
    `running`) when the job runs again."""
    ws = watched.sim.workspace
    job = ws.create_job("stream", continuous=True)
    await watched.until(at(11, 30))
    assert len(ws.active_runs()) == 1
    watched.clock.advance(15)
    ws.stop_continuous(job)
    await watched.until(at(11, 45))
    assert watched.of_type(EventType.JOB_NOT_RUNNING) == []
    await watched.until(at(11, 46))
    (down,) = watched.of_type(EventType.JOB_NOT_RUNNING)
    assert down.expected_at == at(11, 30, 15)
    assert down.occurred_at == at(11, 45, 15)
    assert down.detail == "last seen running: 2026-03-02T11:30:15Z"
    await watched.until(at(12, 10))
    ws.start_continuous(job)
    await watched.until(at(12, 20))
    assert len(watched.of_type(EventType.JOB_NOT_RUNNING)) == 1
    (back,) = watched.resolved("not_running")
    assert back.incident is not None
    assert down.incident is not None
    assert (back.incident.id, back.incident.cause) == (down.incident.id, "running")


async def test_a_paused_continuous_job_is_not_reported_as_not_running(watched: Watched) -> None:
    """Paused for an hour (its run canceled), a continuous job has no active run, as
    expected: no job_not_running; resumed, it runs again, and still nothing."""
    ws = watched.sim.workspace
    job = ws.create_job("stream", continuous=True)
    await watched.until(at(11))
    ws.pause_job(job)
    await watched.until(at(12))
    assert ws.active_runs() == []
    ws.resume_job(job)
    await watched.until(at(12, 30))
    assert [r.job_id for r in ws.active_runs()] == [job]
    assert watched.of_type(EventType.JOB_NOT_RUNNING) == []


async def test_a_job_expected_to_succeed_within_2h_whose_runs_fail_is_stale(
    watched: Watched,
) -> None:
    """Tagged watcher.expect_success_within: 2h, an hourly job whose runs fail is
    job_stale two hours after the watcher first saw it (its first jobs/list walk after the
    job was created: within `jobs_every`, 5 min, and a cycle), once; a success resolves it (cause
    `recovered`)."""
    ws = watched.sim.workspace
    created = watched.clock.time()
    job = ws.create_job(
        "fragile",
        schedule=HOURLY,
        tags={"watcher.expect_success_within": "2h"},
        plan=RunPlan(result="FAILED"),
    )
    await watched.until(at(12, 50))
    assert watched.of_type(EventType.JOB_STALE) == []
    await watched.until(at(12, 58))
    (stale,) = watched.of_type(EventType.JOB_STALE)
    assert stale.expected_at is not None
    assert 0 <= stale.expected_at.timestamp() - created <= 300 + 60  # a walk, a cycle
    assert stale.detail == "latest success: none seen"
    assert len(watched.of_type(EventType.RUN_FAILED, job)) == 2  # 11:00 and 12:00
    ws.jobs[job].plan = RunPlan()
    await watched.until(at(13, 30))
    assert len(watched.of_type(EventType.JOB_STALE)) == 1
    (fresh,) = watched.resolved("stale")
    assert fresh.incident is not None
    assert stale.incident is not None
    assert (fresh.incident.id, fresh.incident.cause) == (stale.incident.id, "recovered")


async def test_a_restart_between_the_trigger_and_the_end_of_its_grace_misses_it_once(
    watched: Watched,
) -> None:
    """The daemon restarts at 11:05, after the forgotten 11:00 trigger and before its
    grace ends, and again at 11:20 after reporting it: run_missed exactly once, resolved
    once when the 12:00 trigger fires."""
    ws = watched.sim.workspace
    job = ws.create_job("hourly", schedule=HOURLY)
    ws.skip_next_trigger(job)
    await watched.until(at(11, 5))
    await watched.restart()
    await watched.until(at(11, 20))
    missed = _missed_once(watched, job, at(11))
    await watched.restart()
    await watched.until(at(12, 30))
    assert _missed_once(watched, job, at(11)) == missed
    (resolved,) = watched.resolved("missed")
    assert resolved.incident is not None
    assert resolved.incident.cause == "ran"
    db = sqlite3.connect(watched.config.store.path)
    try:
        stored = db.execute("SELECT id FROM events WHERE type = 'run_missed'").fetchall()
    finally:
        db.close()
    assert stored == [(missed.id,)]


# -- the real process, SIGKILLed within the grace --------------------------------------------


def _pending(db: Path) -> int:
    """Deliveries not yet recorded as made (or dead)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0]
        )
    finally:
        conn.close()


async def test_sigkill_within_the_grace_still_delivers_run_missed_exactly_once(
    tmp_path: Path, live_receiver: Receiver
) -> None:
    """`watcher run` (a real process) sees the forgotten trigger's time pass, is SIGKILLed
    before its grace ends, and restarts after it: the webhook receives run_missed exactly
    once; killed and restarted again, it sends it no more, and the next trigger's run
    resolves the incident, delivered once too."""
    # Simulated time starts now: the daemon prunes run records by its own (real) clock.
    start = float(int(time.time()))
    trigger = Schedule.parse(HOURLY, "UTC").next_after(datetime.fromtimestamp(start, UTC))
    assert trigger is not None
    clock = ManualClock(start)
    db = tmp_path / "watcher.db"

    def advance_to(moment: float) -> None:
        clock.advance(max(0.0, moment - clock.time()))

    def delivered() -> list[tuple[str, str]]:
        """(event type, webhook-id) of every webhook received, in order."""
        return [
            (json.loads(r.body)["type"], r.headers["webhook-id"]) for r in live_receiver.requests
        ]

    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        job = sim.workspace.create_job("hourly", schedule=HOURLY)
        sim.workspace.skip_next_trigger(job)
        config = write_config(
            tmp_path / "watcher.yaml",
            sim=sim,
            db=db,
            workspace={"requests_per_second": 1000},
            logging={"format": "json", "level": "WARNING"},
            channels={"hook": {"type": "webhook", "url": f"{live_receiver.url}/hook"}},
            routes=[
                {
                    "match": {"event_types": ["run_missed", "incident_resolved"]},
                    "channels": ["hook"],
                }
            ],
        )
        logs = tmp_path / "logs"

        async def life() -> WatcherProcess:
            return await WatcherProcess.start("run", "-c", str(config), env=daemon_env(), logs=logs)

        async def sigkill(process: WatcherProcess) -> None:
            process.process.send_signal(signal.SIGKILL)
            assert await process.wait_exit(WAIT) == -signal.SIGKILL

        async with await life() as first:
            await first.settle(sim, db)
            advance_to(trigger.timestamp() + 5 * 60)  # the trigger passed, within its grace
            await first.settle(sim, db)
            await sigkill(first)
        assert delivered() == []
        advance_to(trigger.timestamp() + 11 * 60)  # the grace is over
        async with await life() as second:
            await wait_until(
                lambda: len(delivered()) >= 1, "run_missed delivered", context=second.tail
            )
            # Killed once the delivery is recorded (a kill between the receiver's answer
            # and that record would deliver it again: at least once, by design).
            await wait_until(lambda: _pending(db) == 0, "delivery recorded", context=second.tail)
            await second.settle(sim, db)
            await sigkill(second)
        async with await life() as third:
            await third.settle(sim, db)
            await third.settle(sim, db)
            advance_to(trigger.timestamp() + 61 * 60)  # the next trigger fired a run
            await wait_until(
                lambda: len(delivered()) >= 2, "incident_resolved delivered", context=third.tail
            )
            await third.settle(sim, db)
            code, _ = await third.terminate()
            assert code == 0, third.tail()
    types = [event_type for event_type, _ in delivered()]
    assert types == ["run_missed", "incident_resolved"], delivered()
    assert len({webhook_id for _, webhook_id in delivered()}) == 2


# -- the demo's troubles --------------------------------------------------------------------


async def test_the_demo_shows_each_detection_within_two_simulated_hours(
    clock: ManualClock, tmp_path: Path
) -> None:
    """The demo's workload and config (`watcher demo`), cycled in manual time: within two
    simulated hours (two minutes of the demo at its default speed) run_stuck, run_missed,
    job_not_running and job_stale each appear, each once, and each incident resolves."""
    async with Simulator(clock=clock, tokens={demo.TOKEN}, in_run_retries=True) as sim:
        RandomWorkload(sim.workspace, WorkloadSpec(jobs=12, seed=7))
        Troubles(sim.workspace)
        config = demo.demo_config(url=sim.url, store=tmp_path / "demo.db", port=0)
        # Unthrottled: the client's throttle waits in real time.
        fast = [w.model_copy(update={"requests_per_second": 1000}) for w in config.workspaces]
        config = config.model_copy(update={"workspaces": fast})
        daemon = await build(config, clock=clock, console=io.StringIO())
        watch = Watched(sim, clock, config, daemon)
        try:
            await watch.until(T0.replace(hour=12, minute=50), step=15)
        finally:
            await close(watch.daemon)
    minutes = {
        type_: [round((e.occurred_at - T0).total_seconds() / 60) for e in watch.of_type(type_)]
        for type_ in (
            EventType.RUN_STUCK,
            EventType.RUN_MISSED,
            EventType.JOB_NOT_RUNNING,
            EventType.JOB_STALE,
        )
    }
    assert minutes == {
        EventType.RUN_STUCK: [10],  # warehouse-sync's run, queued since T0
        EventType.RUN_MISSED: [15],  # partner-export's 11:00 trigger, 5 minutes late
        EventType.JOB_NOT_RUNNING: [35],  # clickstream-stream, stopped at T0 + 20 min
        EventType.JOB_STALE: [60],  # ledger-close, failing since T0
    }
    resolved = [e.incident.kind for e in watch.of_type(EventType.INCIDENT_RESOLVED) if e.incident]
    assert sorted(k for k in resolved if k != "duration") == [
        "missed",
        "not_running",
        "stale",
        "stuck",
    ]


async def test_a_stale_job_pages_once_however_long_the_watcher_has_been_up(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    """Up for longer than startup.max_catchup (1 h here), the news horizon moves with
    the clock; the checks count from when they first saw the job, which does not: a job
    that must succeed every 30 min and keeps failing is job_stale once, not every cycle."""
    top = {"channels": {"out": {"type": "console"}}, "startup": {"max_catchup": 3600}}
    config = config_for(sim, tmp_path / "w.db", top=top, poll_interval=30)
    watched = Watched(sim, clock, config, await build(config, clock=clock, console=io.StringIO()))
    try:
        await watched.cycle()
        sim.workspace.create_job(
            "fragile",
            schedule=HOURLY,
            plan=RunPlan(result="FAILED"),
            tags={"watcher.expect_success_within": "30m"},
        )
        await watched.until(at(13, 0))
        assert len(watched.of_type(EventType.JOB_STALE)) == 1
    finally:
        await close(watched.daemon)
