"""Metrics exposition benchmark: how large /metrics is for a workspace of many jobs, per
cardinality setting (`metrics.per_job`, `metrics.result_state_label`).

    .venv/bin/python bench/bench_metrics.py [--jobs 1000]

For each setting: Metrics as the daemon builds it (one workspace, one channel), one
committed finished run (SUCCESS, 5 s queued, 20 s setup, 200 s executing, 25 s cleanup)
of each of `--jobs` jobs, then /metrics fetched over HTTP from the daemon's own server
(StatusServer, prometheus_client's aiohttp handler), as Prometheus asks for it (gzip) and
without compression. Prints a markdown table: series (sample lines) and bytes, plain and
gzip. The process_* and python_* series are included; their values, and so the bytes,
vary by a few between runs. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from watcher.clock import SystemClock
from watcher.config import MetricsConfig
from watcher.databricks.models import Run, RunState
from watcher.domain import Category, JobRecord, RunRecord, Transition, TransitionKind
from watcher.metrics import Metrics
from watcher.pipeline import CommitReport
from watcher.server import Probes, StatusServer

WORKSPACE = "prod"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SETTINGS: list[tuple[list[str], bool]] = [
    (per_job, state)
    for state in (True, False)
    for per_job in (
        ["durations", "phases", "counts"],
        ["durations", "counts"],
        ["phases", "counts"],
        ["counts"],
        [],
    )
]


def finished_run(job_id: int) -> Transition:
    end = START_MS + 250_000
    run = Run(
        run_id=job_id * 10,
        job_id=job_id,
        state=RunState(life_cycle_state="TERMINATED", result_state="SUCCESS"),
        start_time=START_MS,
        end_time=end,
        queue_duration=5_000,
        setup_duration=20_000,
        execution_duration=200_000,
        cleanup_duration=25_000,
    )
    record = RunRecord(
        workspace=WORKSPACE,
        run_id=run.run_id,
        job_id=job_id,
        life_cycle_state="TERMINATED",
        result_state="SUCCESS",
        start_time=START_MS,
        end_time=end,
        terminal=True,
        snapshot=run,
    )
    return Transition(
        previous=None,
        record=record,
        kind=TransitionKind.FINISHED,
        category=Category.SUCCESS,
        raw_state="SUCCESS",
    )


def observed(jobs: int, per_job: list[str], result_state_label: bool) -> Metrics:
    config = MetricsConfig.model_validate(
        {"per_job": per_job, "result_state_label": result_state_label}
    )
    metrics = Metrics(
        registry=CollectorRegistry(auto_describe=True),
        config=config,
        channels=["oncall"],
        workspaces=[WORKSPACE],
    )
    ids = range(1, jobs + 1)
    metrics.observe_commit(
        CommitReport(
            workspace=WORKSPACE,
            transitions=[finished_run(job) for job in ids],
            events=(),
            jobs={
                job: JobRecord(workspace=WORKSPACE, job_id=job, name=f"job-{job}") for job in ids
            },
            deleted_jobs=(),
            active_by_state={"RUNNING": 0},
        )
    )
    return metrics


async def scrape(metrics: Metrics) -> tuple[bytes, bytes]:
    """/metrics as served: uncompressed, and gzip as Prometheus asks for it."""

    async def nothing() -> dict[str, Any]:
        return {}

    async def ping() -> None:
        return None

    server = StatusServer(
        registry=metrics.registry,
        probes=Probes(workspaces=list, ping_store=ping, status=nothing),
        clock=SystemClock(),
        ready_after_missed_polls=3,
    )
    async with (
        TestServer(server.app()) as http,
        aiohttp.ClientSession(auto_decompress=False) as session,
    ):
        url = str(http.make_url("/metrics"))
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            plain = await resp.read()
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            if resp.headers.get("Content-Encoding") != "gzip":
                raise SystemExit(f"/metrics answered gzip with {resp.headers}")
            compressed = await resp.read()
    return plain, compressed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    print(f"{args.jobs} jobs, one finished run each (one result state), one workspace")
    print()
    print("| per_job | result_state_label | series | plain bytes | gzip bytes |")
    print("| --- | --- | --- | --- | --- |")
    for per_job, state in SETTINGS:
        plain, compressed = await scrape(observed(args.jobs, per_job, state))
        series = sum(1 for line in plain.splitlines() if line and not line.startswith(b"#"))
        print(
            f"| `[{', '.join(per_job)}]` | {str(state).lower()} | {series:,} | "
            f"{len(plain):,} | {len(compressed):,} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
