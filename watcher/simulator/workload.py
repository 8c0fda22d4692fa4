"""A random but reproducible workload: jobs that run on a period, some failing, some
retried, some breaching their duration rule, some multitask. Drives the demo and benchmarks.

`Troubles` adds to it, for the demo, jobs whose trouble Databricks never reports: a
forgotten schedule trigger, a run queued behind its job's concurrency limit, a continuous
job that stops, a job that keeps failing."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from watcher.databricks.models import RunResultState as R
from watcher.simulator.workspace import RunPlan, TaskPlan, Workspace


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    jobs: int = 12
    period_s: float = 600.0
    """Each job starts a run about this often."""
    mean_duration_s: float = 240.0
    failure_rate: float = 0.2
    retried_share: float = 0.25
    """Share of jobs with max_retries = 2."""
    duration_rule_share: float = 0.3
    """Share of jobs with a RUN_DURATION_SECONDS rule that their slow runs breach."""
    multitask_share: float = 0.25
    seed: int = 7


class RandomWorkload:
    def __init__(self, workspace: Workspace, spec: WorkloadSpec) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)  # noqa: S311 - a simulation, not cryptography
        self._next_start: dict[int, int] = {}
        self._multitask: set[int] = set()
        now = workspace.now_ms()
        for index in range(spec.jobs):
            rule = self._rng.random() < spec.duration_rule_share
            multitask = self._rng.random() < spec.multitask_share
            job_id = workspace.create_job(
                f"{_NAMES[index % len(_NAMES)]}-{index:03d}",
                tags={"team": _TEAMS[index % len(_TEAMS)], "env": "demo"},
                duration_threshold_s=int(spec.mean_duration_s * 1.5) if rule else None,
                max_retries=2 if self._rng.random() < spec.retried_share else 0,
                min_retry_interval_ms=30_000,
                task_keys=["extract", "transform", "load"] if multitask else None,
            )
            if multitask:
                self._multitask.add(job_id)
            self._next_start[job_id] = now + int(self._rng.uniform(0, spec.period_s) * 1000)
        workspace.tickers.append(self.tick)

    def tick(self, workspace: Workspace, now: int) -> None:
        """Start every run that is due by `now` (several, if time jumped far ahead)."""
        for job_id, due in list(self._next_start.items()):
            while due <= now and job_id in workspace.jobs:
                self._start(workspace, job_id, due)
                due += int(self.spec.period_s * self._rng.uniform(0.8, 1.2) * 1000)
            self._next_start[job_id] = due

    def _start(self, workspace: Workspace, job_id: int, start_ms: int) -> None:
        rng = self._rng
        duration = rng.lognormvariate(0, 0.5) * self.spec.mean_duration_s
        failed = rng.random() < self.spec.failure_rate
        result = rng.choice([R.FAILED, R.FAILED, R.TIMEDOUT]) if failed else R.SUCCESS
        tasks = None
        if job_id in self._multitask:
            tasks = [
                TaskPlan(
                    task_key=key,
                    setup_ms=int(duration * 100),
                    execution_ms=int(duration * 1000 * rng.uniform(0.5, 0.9)),
                    cleanup_ms=int(duration * 50),
                    result=result if key == "transform" else R.SUCCESS,
                )
                for key in ("extract", "transform", "load")
            ]
        workspace.start_run(
            job_id,
            queue_s=rng.choice([0, 0, 0, duration * 0.05]),
            setup_s=duration * 0.1,
            execution_s=duration * 0.85,
            cleanup_s=duration * 0.05,
            result=result,
            tasks=tasks,
            retry_results=[rng.choice([R.FAILED, R.SUCCESS])] if failed else None,
            start_ms=start_ms,
        )


_MINUTE = 60_000
EVERY_15_MIN = "0 0/15 * * * ?"


class Troubles:
    """Four jobs in trouble, on a timetable from their creation (the demo's start, T):

    * `partner-export`, every 15 minutes: the scheduler forgets its first trigger (no run,
      nothing in the API); the next one runs.
    * `warehouse-sync` (max_concurrent_runs 1): a hung backfill holds its only slot from T
      to T+40 min, and the run started after it waits QUEUED (ACTIVE_RUNS_LIMIT_REACHED)
      until then.
    * `clickstream-stream`, continuous: its run fails at T+20 min and Databricks does not
      restart it (its settings still say UNPAUSED) until T+60 min.
    * `ledger-close`, every 15 minutes, tagged `watcher.expect_success_within: 1h`: fails
      every time until T+90 min, then succeeds.
    """

    def __init__(self, workspace: Workspace) -> None:
        tags = {"team": "data-platform", "env": "demo"}
        ws = workspace
        self.forgetful = ws.create_job(
            "partner-export",
            tags=tags,
            schedule=EVERY_15_MIN,
            plan=RunPlan(setup_s=20, execution_s=120, cleanup_s=5),
        )
        ws.skip_next_trigger(self.forgetful)
        self.limited = ws.create_job("warehouse-sync", tags=tags, max_concurrent_runs=1)
        ws.start_run(self.limited, setup_s=30, execution_s=40 * 60 - 40, trigger="ONE_TIME")
        ws.start_run(self.limited, setup_s=10, execution_s=240, cleanup_s=5)
        self.stream = ws.create_job(
            "clickstream-stream",
            tags=tags,
            continuous=True,
            plan=RunPlan(setup_s=60, execution_s=3 * 3600, cleanup_s=10),
        )
        self.fragile = ws.create_job(
            "ledger-close",
            tags=tags | {"watcher.expect_success_within": "1h"},
            schedule=EVERY_15_MIN,
            plan=RunPlan(setup_s=10, execution_s=90, cleanup_s=5, result=R.FAILED),
        )
        start = ws.now_ms()
        self._timetable: list[tuple[int, Callable[[Workspace], None]]] = [
            (start + 20 * _MINUTE, lambda w: w.stop_continuous(self.stream)),
            (start + 60 * _MINUTE, lambda w: w.start_continuous(self.stream)),
            (start + 90 * _MINUTE, self._recover),
        ]
        ws.tickers.append(self.tick)

    def _recover(self, workspace: Workspace) -> None:
        workspace.jobs[self.fragile].plan = RunPlan(setup_s=10, execution_s=90, cleanup_s=5)

    def tick(self, workspace: Workspace, now: int) -> None:
        """Do what is due by `now` (taken off the timetable first: an action may bring the
        workspace up to now again, and so call this again)."""
        due = [action for at, action in self._timetable if at <= now]
        self._timetable = [(at, action) for at, action in self._timetable if at > now]
        for action in due:
            action(workspace)


_NAMES = [
    "nightly-etl",
    "orders-ingest",
    "feature-build",
    "ml-training",
    "billing-rollup",
    "clickstream-compact",
    "dq-checks",
    "report-export",
]
_TEAMS = ["data-platform", "analytics", "ml"]
