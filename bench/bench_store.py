"""Store benchmark: tracker + commit throughput (observations per second) and the size of
the SQLite database per 100,000 runs.

    .venv/bin/python bench/bench_store.py [--runs 100000] [--batch 1000]

Each run is observed twice (running, then finished), in cycles of `--batch` runs, through
the real Pipeline (tracker, routing to one channel, one transaction per cycle) into a
SQLiteStore on disk. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from watcher.clock import ManualClock
from watcher.config import HealthRulesConfig, StartupConfig
from watcher.databricks.models import Job, JobSettings, Run
from watcher.databricks.models import JobSettings as Settings
from watcher.domain import PollResult
from watcher.events import Event
from watcher.pipeline import Pipeline
from watcher.store.base import DeliveryKey, Routed
from watcher.store.sqlite import SQLiteStore

T0 = 1_700_000_000_000


def _run(run_id: int, job_id: int, finished: bool, rng: random.Random) -> Run:
    start = T0 + run_id * 1000
    body: dict[str, object] = {
        "run_id": run_id,
        "job_id": job_id,
        "run_name": f"job-{job_id}",
        "start_time": start,
        "trigger": "PERIODIC",
        "run_page_url": f"https://adb-1.2.azuredatabricks.net/?o=1#job/{job_id}/run/{run_id}",
    }
    if finished:
        result = "FAILED" if rng.random() < 0.1 else "SUCCESS"
        body |= {
            "state": {"life_cycle_state": "TERMINATED", "result_state": result},
            "end_time": start + 600_000,
            "setup_duration": 60_000,
            "execution_duration": 500_000,
            "cleanup_duration": 40_000,
        }
    else:
        body |= {"state": {"life_cycle_state": "RUNNING"}, "end_time": 0, "setup_duration": 60_000}
    return Run.model_validate(body)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--jobs", type=int, default=500)
    args = parser.parse_args()
    rng = random.Random(1)
    jobs = {
        j: Job(
            job_id=j,
            settings=JobSettings.model_validate({"name": f"job-{j}", "tags": {"team": "x"}}),
        )
        for j in range(1, args.jobs + 1)
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        store = await SQLiteStore.open(path)
        clock = ManualClock(start=T0 / 1000)

        def to_webhook(
            event: Event, settings: Settings | None, follow: Sequence[DeliveryKey]
        ) -> Routed:
            return Routed(channels=[DeliveryKey("webhook")])

        pipeline = Pipeline(
            store=store,
            health_rules=HealthRulesConfig(),
            startup=StartupConfig(),
            clock=clock,
            route=to_webhook,
        )
        observations = events = 0
        wall = cpu = 0.0
        for first in range(1, args.runs + 1, args.batch):
            ids = range(first, min(first + args.batch, args.runs + 1))
            for finished in (False, True):
                batch = [_run(i, 1 + i % args.jobs, finished, rng) for i in ids]
                result = PollResult(
                    workspace="bench",
                    runs=batch,
                    jobs={r.job_id: jobs[r.job_id] for r in batch if r.job_id},
                    vanished=[],
                    watermark_ms=T0 + first * 1000,
                    server_now_ms=T0 + (first + args.batch) * 1000 + 700_000,
                    news_since_ms=0,
                    requests=0,
                )
                w0, c0 = time.perf_counter(), time.process_time()
                events += len(await pipeline.handle(result))
                wall += time.perf_counter() - w0
                cpu += time.process_time() - c0
                observations += len(batch)
        await store.close()
        size = _size(Path(tmp))
    cycles = observations / args.batch
    print(f"runs: {args.runs:,} in cycles of {args.batch:,}")
    print(f"observations: {observations:,}; events committed: {events:,}")
    print(f"tracker + commit: {observations / wall:,.0f} observations/s (wall)")
    print(f"                  {observations / cpu:,.0f} observations/s (CPU)")
    print(f"one cycle of {args.batch:,} observations: {wall / cycles * 1000:.1f} ms")
    print(f"database with its outbox: {size / 1e6:.1f} MB")
    print(f"  per 100,000 runs: {size * 100_000 / args.runs / 1e6:.1f} MB")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("bench.db"))


if __name__ == "__main__":
    asyncio.run(main())
