"""Memory benchmark: peak RSS of one process watching many workspaces with many tracked
runs, as the operating system counts it (VmHWM, ru_maxrss), not as tracemalloc does.

    .venv/bin/python bench/bench_memory.py [--workspaces 50] [--runs 100000]

Every workspace has its share of the runs, observed in cycles of `--batch`: first all
active (the store then tracks every run as active, the largest state a cycle reads:
`workspace_state`'s active run ids), then all finished. Each cycle starts from a runs/list
page's JSON bytes and goes through the real Pipeline into one SQLiteStore, with the
daemon's Metrics observing every commit (its series are per job and workspace: with
`--no-metrics`, the difference is what they cost). Prints figures; asserts nothing. The
figures of the default run are in docs/metrics.md ("Memory").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
from pathlib import Path

import bench_store
from prometheus_client import CollectorRegistry

from watcher.clock import ManualClock
from watcher.config import HealthRulesConfig, StartupConfig
from watcher.databricks.models import Job, JobSettings, RunsPage
from watcher.domain import PollResult
from watcher.metrics import Metrics
from watcher.pipeline import Pipeline
from watcher.store.sqlite import SQLiteStore

T0 = bench_store.T0


def peak_rss_mb() -> tuple[float, float]:
    """(VmHWM of /proc/self/status, ru_maxrss): the process' peak resident set, in MB."""
    hwm = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return hwm, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspaces", type=int, default=50)
    parser.add_argument("--runs", type=int, default=100_000, help="in total")
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--jobs", type=int, default=100, help="per workspace")
    parser.add_argument(
        "--no-metrics", action="store_true", help="without Metrics: what its series cost"
    )
    args = parser.parse_args()
    names = [f"ws-{i:02d}" for i in range(args.workspaces)]
    per_workspace = args.runs // args.workspaces
    jobs = {
        j: Job(
            job_id=j,
            settings=JobSettings.model_validate({"name": f"job-{j}", "tags": {"team": "x"}}),
        )
        for j in range(1, args.jobs + 1)
    }
    start_rss = peak_rss_mb()[0]
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = await SQLiteStore.open(Path(tmp) / "bench.db")
        metrics = Metrics(registry=CollectorRegistry(), workspaces=names)
        pipeline = Pipeline(
            store=store,
            health_rules=HealthRulesConfig(),
            startup=StartupConfig(),
            clock=ManualClock(start=T0 / 1000),
            route=bench_store._to_webhook,
            on_commit=None if args.no_metrics else metrics.observe_commit,
        )
        tracked = 0
        for finished in (False, True):
            for low in range(1, per_workspace + 1, args.batch):
                ids = range(low, min(low + args.batch, per_workspace + 1))
                for name in names:
                    await store.workspace_state(name)  # what each poll cycle reads
                    bodies = [
                        bench_store._run(i, 1 + i % args.jobs, T0 + i * 1000, finished, rng)
                        for i in ids
                    ]
                    page = json.dumps({"runs": bodies}).encode()
                    runs = RunsPage.model_validate_json(page).runs
                    await pipeline.handle(
                        PollResult(
                            workspace=name,
                            runs=runs,
                            jobs={r.job_id: jobs[r.job_id] for r in runs if r.job_id},
                            vanished=[],
                            watermark_ms=T0 + low * 1000,
                            server_now_ms=T0 + (low + args.batch) * 1000 + 700_000,
                            news_since_ms=0,
                            requests=0,
                        )
                    )
                    tracked += 0 if finished else len(runs)
            active = sum([len((await store.workspace_state(n)).active_run_ids) for n in names])
            print(f"{'finished' if finished else 'active'}: {active:,} runs tracked as active")
        await store.close()
    hwm, maxrss = peak_rss_mb()
    print(f"{args.workspaces} workspaces, {tracked:,} runs tracked in cycles of {args.batch:,}")
    print(f"RSS after imports: {start_rss:.0f} MB")
    print(f"peak RSS: {hwm:.0f} MB (VmHWM), {maxrss:.0f} MB (ru_maxrss)")


if __name__ == "__main__":
    asyncio.run(main())
