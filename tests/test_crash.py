"""Crash safety with a real process: `watcher run` is SIGKILLed at random points of a
scripted workload and restarted; the committed events must equal, exactly, those of an
uninterrupted run over the same workload."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

from pydantic import SecretStr

from tests.conftest import TOKEN
from tests.daemon_helpers import settle
from watcher.clock import ManualClock
from watcher.config import HealthRulesConfig, StartupConfig, WorkspaceConfig
from watcher.databricks import JobsClient, StaticToken
from watcher.pipeline import Pipeline
from watcher.poller import Poller
from watcher.simulator import Simulator, TaskPlan
from watcher.store.sqlite import SQLiteStore

STEPS = 24
STEP_SECONDS = 60
KILLS = 32


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
    clock = ManualClock()
    rng = random.Random(11)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        jobs = populate(sim)
        store = await SQLiteStore.open(tmp_path / "reference.db")
        config = WorkspaceConfig.model_validate(
            {
                "name": "sim",
                "host": sim.url,
                "auth": {"type": "pat", "token": TOKEN},
                # A sweep every step, as the daemon below sweeps (almost) every cycle.
                "reconcile": {"interval": 1},
            }
        )
        client = JobsClient(host=sim.url, auth=StaticToken(SecretStr(TOKEN)), clock=clock)
        poller = Poller(
            config=config, startup=StartupConfig(), client=client, state=store, clock=clock
        )
        pipeline = Pipeline(
            store=store, health_rules=HealthRulesConfig(), startup=StartupConfig(), clock=clock
        )
        for step in range(STEPS + 1):
            for _ in range(2):
                await pipeline.handle(await poller.poll())
            if step < STEPS:
                script(sim, step, rng, jobs)
                clock.advance(STEP_SECONDS)
        for _ in range(12):  # let everything finish
            clock.advance(STEP_SECONDS)
            for _ in range(2):
                await pipeline.handle(await poller.poll())
        ids = set(await store.event_ids())
        await client.close()
        await store.close()
    return ids


def _describe(db: Path, ids: set[str]) -> str:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, payload FROM events").fetchall()
    conn.close()
    described = []
    for event_id, payload in rows:
        if event_id in ids:
            event = json.loads(payload)
            state = event["run"]["state"]
            described.append(
                f"{event['type']} run={event['run']['run_id']} job={event['job']['job_id']} "
                f"attempt={event['attempt_number']} repair={event.get('repair', 0)} {state} "
                f"rule={event.get('rule')}"
            )
    return "\n".join(sorted(described))


async def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Across 30+ SIGKILLs of the real daemon at random instants (mid-poll, mid-commit,
    between cycles) and restarts from the same database, the union of committed events is
    exactly the uninterrupted run's: none missing, none duplicated."""
    expected = await reference_events(tmp_path)
    clock = ManualClock()
    rng = random.Random(11)
    killer = random.Random(5)
    db = tmp_path / "crash.db"
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        jobs = populate(sim)
        config = tmp_path / "watcher.yaml"
        config.write_text(
            f"workspaces:\n"
            f"  - name: sim\n    host: {sim.url}\n    poll_interval: 0.1\n"
            f"    reconcile: {{interval: 0.5}}\n"
            f"    auth: {{type: pat, token: '${{SIM_TOKEN}}'}}\n"
            f"store: {{path: {db}}}\nserver: {{host: 127.0.0.1, port: 0}}\n"
            f"logging: {{format: json, level: WARNING}}\n"
        )
        env = {**os.environ, "SIM_TOKEN": TOKEN}
        process: asyncio.subprocess.Process | None = None
        kills = 0

        async def start() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "watcher",
                "run",
                "-c",
                str(config),
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )

        async def tick() -> None:
            """Between the checks of `settle`: (re)start the daemon, and kill it at
            random instants on the way."""
            nonlocal process, kills
            if process is None or process.returncode is not None:
                process = await start()
            if kills < KILLS and killer.random() < 0.6:
                await asyncio.sleep(killer.uniform(0.0, 0.5))
                process.send_signal(signal.SIGKILL)
                await process.wait()
                kills += 1
                return
            await asyncio.sleep(0.05)

        for step in range(STEPS + 1):
            await settle(sim, db, tick=tick)
            if step < STEPS:
                script(sim, step, rng, jobs)
                clock.advance(STEP_SECONDS)
        for _ in range(12):
            clock.advance(STEP_SECONDS)
            await settle(sim, db, tick=tick)
        assert process is not None
        process.send_signal(signal.SIGTERM)
        _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()[-2000:]
    assert kills >= 30
    conn = sqlite3.connect(db)
    got = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY seq")]
    runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    conn.close()
    assert runs >= 300
    assert len(got) == len(set(got))
    missing = expected - set(got)
    assert not missing, _describe(tmp_path / "reference.db", missing)
    assert set(got) == expected, _describe(db, set(got) - expected)
    assert len(expected) > 500
    conn = sqlite3.connect(db)
    repairs = conn.execute("SELECT COUNT(*) FROM runs WHERE repair > 0").fetchone()[0]
    conn.close()
    assert repairs >= 20
