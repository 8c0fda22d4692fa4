"""Crash safety with a real process: `watcher run` is SIGKILLed at points of a scripted
workload and restarted; the committed events must equal, exactly, those of an uninterrupted
run over the same workload.

The kill schedule is derived from a seed (CRASH_SEED, printed on failure): each life of the
daemon dies at its k-th API request, with k drawn from the seed, either before the
simulator answers it (mid-poll) or a few milliseconds after (d, also from the seed: the
daemon is then reading, evaluating or committing). Replaying a seed gives the same
schedule; where a daemon is after d milliseconds still depends on scheduling, which
SQLite's transactions make all-or-nothing."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

from tests.conftest import TOKEN
from tests.daemon_helpers import WatcherProcess, daemon_env, settle, write_config
from tests.wiring import config_for, daemon
from watcher.app import run_once
from watcher.clock import ManualClock
from watcher.simulator import Simulator, TaskPlan
from watcher.simulator.server import LoggedRequest
from watcher.store.rows import unpack

STEPS = 24
STEP_SECONDS = 60
KILLS = 32
SEED = int(os.environ.get("CRASH_SEED", "5"))
SETTLE_LIMIT = 120.0
"""Real seconds one step may take, restarts included, before the test fails."""
# Simulated time starts now: the daemon prunes run records by its own (real) clock, and a
# workload dated years ago would be pruned at every restart.
START = float(int(time.time()))


def script(sim: Simulator, step: int, rng: random.Random, jobs: list[int]) -> None:
    """Step `step` of the workload: ~14 new runs with assorted fates, and repairs of up to
    two failed runs, recent or long finished (same for a seed). The repairs last longer
    than a step, so both runs see them running: a repair over within a step is found by
    the sweep a number of cycles later that differs between the two runs, and which
    failure a job_recovered answers then depends on it (test_completeness covers those)."""
    ws = sim.workspace
    now = ws.now_ms()
    failed = sorted(r.run_id for r in ws.runs.values() if r.result == "FAILED" and r.ended_by(now))
    for run_id in rng.sample(failed, min(2, len(failed))):
        ws.repair_run(
            run_id,
            setup_s=rng.uniform(0, 10),
            execution_s=rng.uniform(90, 200),
            cleanup_s=0,
            result=rng.choice(["FAILED", "SUCCESS"]),
        )
    for job in rng.sample(jobs, 14):
        fate = rng.random()
        if fate < 0.1:
            run_id = ws.start_run(job, queue_s=rng.uniform(0, 90), execution_s=600)
            if rng.random() < 0.5:
                ws.force(run_id, "TERMINATED", "CANCELED")
            continue
        multitask = fate < 0.2
        ws.start_run(
            job,
            setup_s=rng.uniform(0, 30),
            execution_s=rng.uniform(10, 240),
            cleanup_s=rng.uniform(0, 10),
            result="FAILED" if fate > 0.8 else "SUCCESS",
            retry_results=["FAILED"] if fate > 0.9 else None,
            end_state="SKIPPED" if 0.2 <= fate < 0.25 else "TERMINATED",
            tasks=[TaskPlan("a", execution_ms=60_000), TaskPlan("b", execution_ms=150_000)]
            if multitask
            else None,
        )


def populate(sim: Simulator) -> list[int]:
    ws = sim.workspace
    return [
        ws.create_job(
            f"job-{i:02d}",
            duration_threshold_s=120 if i % 3 == 0 else None,
            max_retries=1 if i % 4 == 0 else 0,
        )
        for i in range(40)
    ]


async def reference_events(tmp_path: Path) -> set[str]:
    """The same workload, stepped the same way, with no crash: in-process, two full
    cycles after every step."""
    clock = ManualClock(START)
    rng = random.Random(11)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        jobs = populate(sim)
        # A sweep every step, as the daemon below sweeps (almost) every cycle.
        config = config_for(sim, tmp_path / "reference.db", reconcile={"interval": 1})
        async with daemon(config, clock) as built:
            for step in range(STEPS + 1):
                for _ in range(2):
                    await run_once(built)
                if step < STEPS:
                    script(sim, step, rng, jobs)
                    clock.advance(STEP_SECONDS)
            for _ in range(12):  # let everything finish
                clock.advance(STEP_SECONDS)
                for _ in range(2):
                    await run_once(built)
    conn = sqlite3.connect(tmp_path / "reference.db")
    ids = {row[0] for row in conn.execute("SELECT id FROM events")}
    conn.close()
    return ids


def _describe(db: Path, ids: set[str]) -> str:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, payload FROM events").fetchall()
    conn.close()
    described = []
    for event_id, payload in rows:
        if event_id in ids:
            event = json.loads(unpack(payload))
            state = event["run"]["state"]
            described.append(
                f"{event['type']} run={event['run']['run_id']} job={event['job']['job_id']} "
                f"attempt={event['attempt_number']} repair={event.get('repair', 0)} {state} "
                f"rule={event.get('rule')}"
            )
    return "\n".join(sorted(described))


async def test_sigkill_at_seeded_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Across 32 SIGKILLs of the real daemon (mid-poll, or milliseconds after an answer:
    mid-evaluation, mid-commit, between cycles) and restarts from the same database, the
    union of committed events is exactly the uninterrupted run's: none missing, none
    duplicated."""
    expected = await reference_events(tmp_path)
    clock = ManualClock(START)
    rng = random.Random(11)
    killer = random.Random(SEED)
    db = tmp_path / "crash.db"
    logs = tmp_path / "logs"
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        jobs = populate(sim)
        config = write_config(
            tmp_path / "watcher.yaml",
            sim=sim,
            db=db,
            workspace={"requests_per_second": 1000, "reconcile": {"interval": 0.5}},
            logging={"format": "json", "level": "WARNING"},
        )
        process: WatcherProcess | None = None
        kills: list[tuple[int, float]] = []  # (request, delay) each killed life died at
        served = 0
        kill_at: tuple[int, float] | None = None

        def kill(victim: WatcherProcess) -> None:
            if victim is process and victim.process.returncode is None and kill_at:
                victim.process.send_signal(signal.SIGKILL)
                kills.append(kill_at)

        def on_request(_: LoggedRequest) -> None:
            nonlocal served
            served += 1
            if process is None or kill_at is None or served != kill_at[0]:
                return
            if kill_at[1] == 0:
                kill(process)  # before the answer: mid-poll
            else:
                asyncio.get_running_loop().call_later(kill_at[1], kill, process)

        sim.on_request = on_request

        async def tick() -> None:
            """Between the checks of `settle`: (re)start a killed daemon with the next
            kill point of the schedule."""
            nonlocal process, served, kill_at
            if process is None or process.process.returncode is not None:
                served = 0
                delay = 0.0 if killer.random() < 0.5 else round(killer.uniform(0.001, 0.03), 3)
                kill_at = (killer.randint(1, 20), delay) if len(kills) < KILLS else None
                process = await WatcherProcess.start(
                    "run", "-c", str(config), env=daemon_env(), logs=logs
                )
            await asyncio.sleep(0.02)

        def context() -> str:
            tail = process.tail() if process is not None else "(no daemon)"
            return f"CRASH_SEED={SEED}, killed at (request, delay) {kills}\n{tail}"

        for step in range(STEPS + 1):
            await settle(sim, db, tick=tick, limit=SETTLE_LIMIT, context=context)
            if step < STEPS:
                script(sim, step, rng, jobs)
                clock.advance(STEP_SECONDS)
        for _ in range(12):
            clock.advance(STEP_SECONDS)
            await settle(sim, db, tick=tick, limit=SETTLE_LIMIT, context=context)
        while len(kills) < KILLS:  # the rest of the schedule, should the workload end first
            await settle(sim, db, tick=tick, limit=SETTLE_LIMIT, context=context)
        print(f"{len(sim.requests)} requests, killed at {kills}")
        assert process is not None
        code, _ = await process.terminate()
        assert code == 0, context()
    assert len(kills) == KILLS, context()
    conn = sqlite3.connect(db)
    got = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY seq")]
    runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    repairs = conn.execute("SELECT COUNT(*) FROM runs WHERE repair > 0").fetchone()[0]
    conn.close()
    assert runs >= 300
    assert len(got) == len(set(got))
    missing = expected - set(got)
    assert not missing, context() + "\nmissing:\n" + _describe(tmp_path / "reference.db", missing)
    assert set(got) == expected, context() + "\nextra:\n" + _describe(db, set(got) - expected)
    assert len(expected) > 500
    assert repairs >= 20
