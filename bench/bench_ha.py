"""High-availability store benchmark: what the shared PostgreSQL store costs against the
embedded SQLite one, and how many workspaces three replicas can hold.

    .venv/bin/python bench/bench_ha.py [--dsn postgresql://postgres@127.0.0.1:5432/test]
        [--sizes 10 100 1000] [--commits 200 200 50] [--writers 3]
        [--replicas 3] [--workspaces 2] [--cycles 30] [--active 1000] [--changed 100]
        [--jobs 50] [--interval 30] [--poller-cycles 10]

1. Commit throughput and latency: `--commits` fenced `commit_cycle`s of each size in
   `--sizes` (half the runs starting, half the previous commit's finishing, a tenth of them
   with a `run_failed` event and one delivery, the watermark) on SQLite (a file, as the
   store opens it: WAL, synchronous=FULL), on PostgreSQL with one writer, and on PostgreSQL
   with `--writers` processes at once (a pool and a workspace each, like replicas).
2. Capacity: `--replicas` processes, each with a pool of its own and `--workspaces`
   simulated workspaces of `--active` active runs (`--changed` of them ending or starting
   per cycle, on `--jobs` jobs), run steady cycles back to back: a lease renewal,
   `workspace_state`, `terminal_ends` and the real Pipeline (get_runs, get_jobs,
   open_incidents, known_events, the tracker and cycle plan, one fenced commit). The store
   calls are timed apart from the cycle's own Python work; the Databricks API is not
   involved (the poller's CPU per cycle comes from bench_poller's simulator, its wait on
   the API is bounded by the API's rate limits, not by the watcher).

Everything goes into a schema of its own (`bench_<hex>`), dropped at the end. Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import bench_poller

from watcher.clock import ManualClock
from watcher.config import HealthRulesConfig, ReconcileConfig, StartupConfig
from watcher.databricks.models import Job, JobSettings, Run
from watcher.domain import Incident, JobRecord, PollResult, RunRecord
from watcher.events import Event, EventType, JobRef, event_id
from watcher.logs import configure_logging
from watcher.pipeline import Pipeline
from watcher.store.base import CycleCommit, DeliveryKey, Routed, Store, WorkspaceState
from watcher.store.postgres import PostgresStore, redacted
from watcher.store.sqlite import SQLiteStore

DSN = os.environ.get("WATCHER_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
T0 = 1_700_000_000_000  # workspace time (epoch ms) of the first cycle
TTL = 1e6  # leases outlive the benchmark: no takeover may fence a measured commit
WARMUP = 5  # commits per series not counted: connections, caches and plans warm up
CHANNEL = DeliveryKey("webhook")
FAILURE_SHARE = 0.1


# -- builders ----------------------------------------------------------------------------


def snapshot(
    run_id: int, job_id: int, *, start_ms: int, end_ms: int | None, failed: bool = False
) -> Run:
    """A runs/list snapshot as bench_store.py builds them: running (end_time 0), or
    finished with its durations."""
    body: dict[str, object] = {
        "run_id": run_id,
        "job_id": job_id,
        "run_name": f"job-{job_id}",
        "start_time": start_ms,
        "trigger": "PERIODIC",
        "run_page_url": f"https://adb-1.2.azuredatabricks.net/?o=1#job/{job_id}/run/{run_id}",
    }
    if end_ms is None:
        body |= {"state": {"life_cycle_state": "RUNNING"}, "end_time": 0, "setup_duration": 60_000}
    else:
        length = max(end_ms - start_ms, 1000)
        body |= {
            "state": {
                "life_cycle_state": "TERMINATED",
                "result_state": "FAILED" if failed else "SUCCESS",
            },
            "end_time": end_ms,
            "setup_duration": length // 10,
            "execution_duration": length * 85 // 100,
            "cleanup_duration": length - length // 10 - length * 85 // 100,
        }
    return Run.model_validate(body)


def run_record(workspace: str, run: Run) -> RunRecord:
    """The record the tracker keeps of `run` once its start (and end) were reported."""
    finished = bool(run.end_time)
    return RunRecord(
        workspace=workspace,
        run_id=run.run_id,
        job_id=run.job_id,
        life_cycle_state=run.state.life_cycle_state,
        result_state=run.state.result_state,
        start_time=run.start_time,
        end_time=run.end_time or None,
        terminal=finished,
        emitted=frozenset({"run_started", "terminal"} if finished else {"run_started"}),
        state_since=run.end_time or run.start_time,
        snapshot=run,
    )


def failure_event(workspace: str, run: Run) -> Event:
    return Event(
        id=event_id(workspace, run.run_id, str(EventType.RUN_FAILED)),
        type=EventType.RUN_FAILED,
        workspace=workspace,
        occurred_at=datetime.fromtimestamp((run.end_time or T0) / 1000, UTC),
        job=JobRef(job_id=run.job_id, name=run.run_name, tags={"team": "x"}),
        run=run,
        raw_state="FAILED",
    )


def cycle_commits(workspace: str, size: int, count: int, epoch: int) -> list[CycleCommit]:
    """`count` commits of `size` runs each: commit k finishes the runs commit k-1 started
    (updates) and starts as many new ones (inserts), like a steady cycle; a fifth of the
    finishing runs fail, each with its event and one delivery (a tenth of the commit)."""
    ending = size // 2
    starting = size - ending
    commits: list[CycleCommit] = []
    for k in range(count):
        # Commit k starts the ids from 1 + (k + 1) * starting and finishes those commit k-1
        # started (commit 0 "finishes" ids never seen: inserts).
        first_ending = 1 + k * starting
        first_starting = first_ending + starting
        now_ms = T0 + k * 30_000
        runs: list[Run] = []
        events: list[Event] = []
        for i in range(ending):
            run_id = first_ending + i
            failed = run_id % 5 == 0
            run = snapshot(
                run_id, 1 + run_id % 50, start_ms=now_ms - 30_000, end_ms=now_ms, failed=failed
            )
            runs.append(run)
            if failed:
                events.append(failure_event(workspace, run))
        runs += [
            snapshot(
                first_starting + i, 1 + (first_starting + i) % 50, start_ms=now_ms, end_ms=None
            )
            for i in range(starting)
        ]
        commits.append(
            CycleCommit(
                workspace=workspace,
                watermark_ms=now_ms,
                committed_at=now_ms / 1000,
                runs=[run_record(workspace, r) for r in runs],
                events=events,
                channels={e.id: [CHANNEL] for e in events},
                epoch=epoch,
            )
        )
    return commits


# -- figures ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: with 50 values p99 is the largest, with 200 the second largest."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Series:
    """Commits of one size on one backend, by one writer or several at once."""

    backend: str
    writers: int
    size: int
    latencies: list[float]
    elapsed: float
    """Wall time from the common start to the last writer's last commit."""

    def row(self) -> str:
        commits = len(self.latencies)
        rate = commits / self.elapsed
        return (
            f"{self.backend:<11}{self.writers:>8}{self.size:>13,}{commits:>9}"
            f"{rate:>11,.1f}{rate * self.size:>11,.0f}"
            f"{percentile(self.latencies, 0.5) * 1000:>9.1f}"
            f"{percentile(self.latencies, 0.99) * 1000:>9.1f}"
        )


# -- 1. commit throughput -----------------------------------------------------------------


async def commit_series(
    store: Store,
    workspace: str,
    replica: str,
    size: int,
    count: int,
    start: threading.Barrier | None = None,
) -> tuple[list[float], float]:
    """Commit latencies and the wall time of `count` fenced commits of `size` runs; the
    commits are built and the warm-up ones committed before the clock (and, with `start`,
    before every writer is ready)."""
    lease = await store.acquire(workspace, replica, now=T0 / 1000, ttl=TTL)
    if lease is None:
        raise RuntimeError(f"{workspace}: lease held by another writer")
    commits = cycle_commits(workspace, size, WARMUP + count, lease.epoch)
    for commit in commits[:WARMUP]:
        await store.commit_cycle(commit)
    if start is not None:
        await asyncio.to_thread(start.wait)
    latencies: list[float] = []
    began = time.perf_counter()
    for commit in commits[WARMUP:]:
        t = time.perf_counter()
        await store.commit_cycle(commit)
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - began


async def sqlite_series(sizes: Sequence[int], counts: Sequence[int]) -> list[Series]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await SQLiteStore.open(Path(tmp) / "bench.db")
        try:
            return [
                Series("sqlite", 1, size, *await commit_series(store, f"c{size}", "r0", size, n))
                for size, n in zip(sizes, counts, strict=True)
            ]
        finally:
            await store.close()


async def pg_series(
    dsn: str, schema: str, sizes: Sequence[int], counts: Sequence[int]
) -> list[Series]:
    store = await PostgresStore.open(dsn, schema=schema, min_size=1, max_size=2)
    try:
        return [
            Series("postgresql", 1, size, *await commit_series(store, f"c{size}", "r0", size, n))
            for size, n in zip(sizes, counts, strict=True)
        ]
    finally:
        await store.close()


@dataclass(frozen=True)
class WriterTask:
    dsn: str
    schema: str
    replica: str
    size: int
    count: int


def pg_writer(task: WriterTask, start: threading.Barrier) -> tuple[list[float], float]:
    """One of several concurrent writers, in a process of its own: a replica's Python
    (encoding a commit) runs on its own core as in a deployment, not on a shared loop."""
    configure_logging(level="WARNING", fmt="console", stream=sys.stderr)

    async def write() -> tuple[list[float], float]:
        store = await PostgresStore.open(task.dsn, schema=task.schema, min_size=1, max_size=2)
        try:
            workspace = f"{task.replica}-c{task.size}"
            return await commit_series(store, workspace, task.replica, task.size, task.count, start)
        finally:
            await store.close()

    return asyncio.run(write())


def concurrent_series(
    pool: ProcessPoolExecutor,
    start: threading.Barrier,
    dsn: str,
    schema: str,
    writers: int,
    size: int,
    count: int,
) -> Series:
    tasks = [WriterTask(dsn, schema, f"w{i}", size, count) for i in range(writers)]
    results = [f.result() for f in [pool.submit(pg_writer, t, start) for t in tasks]]
    latencies = [x for lat, _ in results for x in lat]
    # They start together at the barrier: the slowest one's wall time spans them all.
    return Series("postgresql", writers, size, latencies, max(e for _, e in results))


# -- 2. capacity --------------------------------------------------------------------------


@dataclass
class CycleFigures:
    """One steady cycle of one workspace, as its replica lived it."""

    wall: float
    cpu: float
    """Process CPU of the whole cycle (each replica is a single-threaded process)."""
    store_wall: float
    store_cpu: float
    """The part of the store calls' wall time that was this process's CPU: asyncpg's
    encoding and decoding, parsing the records read back."""
    calls: dict[str, float]
    written: dict[str, int]
    observed: int
    """Runs in the poll result: the active ones and those that ended (get_runs reads them)."""


class TimedStore:
    """The store as the pipeline and the lease keeper see it, adding up the wall and CPU
    time of each call: the store side of a cycle, apart from the tracker's work."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.calls: defaultdict[str, float] = defaultdict(float)
        self.cpu = 0.0
        self.written: Counter[str] = Counter()

    def reset(self) -> None:
        self.calls, self.cpu, self.written = defaultdict(float), 0.0, Counter()

    def _mark(self, name: str, wall: float, cpu: float) -> None:
        self.calls[name] += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu

    async def renew(self, replica: str, epochs: Mapping[str, int], *, now: float) -> set[str]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.renew(replica, epochs, now=now, ttl=TTL)
        finally:
            self._mark("renew", wall, cpu)

    async def workspace_state(self, workspace: str) -> WorkspaceState:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.workspace_state(workspace)
        finally:
            self._mark("workspace_state", wall, cpu)

    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.terminal_ends(workspace, run_ids)
        finally:
            self._mark("terminal_ends", wall, cpu)

    async def get_runs(self, workspace: str, run_ids: Collection[int]) -> dict[int, RunRecord]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.get_runs(workspace, run_ids)
        finally:
            self._mark("get_runs", wall, cpu)

    async def get_jobs(self, workspace: str, job_ids: Collection[int]) -> dict[int, JobRecord]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.get_jobs(workspace, job_ids)
        finally:
            self._mark("get_jobs", wall, cpu)

    async def open_incidents(self, workspace: str, job_ids: Collection[int]) -> dict[str, Incident]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.open_incidents(workspace, job_ids)
        finally:
            self._mark("open_incidents", wall, cpu)

    async def incident_targets(self, incident_ids: Collection[str]) -> dict[str, list[DeliveryKey]]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.incident_targets(incident_ids)
        finally:
            self._mark("incident_targets", wall, cpu)

    async def known_events(self, event_ids: Collection[str]) -> set[str]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.known_events(event_ids)
        finally:
            self._mark("known_events", wall, cpu)

    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        self.written.update(
            runs=len(commit.runs),
            jobs=len(commit.jobs),
            events=len(commit.events),
            deliveries=sum(len(keys) for keys in commit.channels.values()),
        )
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return await self._store.commit_cycle(commit)
        finally:
            self._mark("commit_cycle", wall, cpu)


def route_incidents(
    event: Event, settings: JobSettings | None, follow: Sequence[DeliveryKey]
) -> Routed:
    """Pages for failures and what resolves them; starts and successes are stored only."""
    return Routed(channels=[CHANNEL]) if event.incident is not None else Routed()


class SimulatedWorkspace:
    """What the poller hands the pipeline for one workspace: `active` runs going on, each
    cycle the `ending` oldest finish (a tenth failed) and as many new ones start. Active
    runs' snapshots do not change between cycles, so only runs ending or starting (and
    their jobs) are written, as in a steady cycle."""

    def __init__(self, name: str, *, active: int, jobs: int, interval: float, seed: int) -> None:
        self.name = name
        self.clock = ManualClock(start=T0 / 1000)
        self._interval_ms = int(interval * 1000)
        self._rng = random.Random(seed)
        self._jobs = {
            j: Job(job_id=j, settings=JobSettings(name=f"job-{j}", tags={"team": f"t{j % 7}"}))
            for j in range(1, jobs + 1)
        }
        self._active: dict[int, Run] = {}  # in start order: the oldest ends first
        self._next_id = 1
        self.now_ms = T0
        spacing = 600_000 // max(active, 1)  # started over the last ten minutes
        for i in range(active):
            self._start(T0 - (active - i) * spacing)

    def _start(self, start_ms: int) -> None:
        run_id, self._next_id = self._next_id, self._next_id + 1
        job_id = self._rng.randint(1, len(self._jobs))
        self._active[run_id] = snapshot(run_id, job_id, start_ms=start_ms, end_ms=None)

    def _result(self, runs: list[Run]) -> PollResult:
        return PollResult(
            workspace=self.name,
            runs=runs,
            jobs={r.job_id: self._jobs[r.job_id] for r in runs if r.job_id is not None},
            vanished=[],
            watermark_ms=self.now_ms,
            server_now_ms=self.now_ms,
            # The first cycle's instant: the runs already going then are history.
            news_since_ms=T0,
            requests=0,
        )

    def first_poll(self) -> PollResult:
        return self._result(list(self._active.values()))

    def next_poll(self, ending: int) -> tuple[PollResult, list[int]]:
        """The next cycle's result, and the ids of the runs it saw end."""
        before = self.now_ms
        self.now_ms += self._interval_ms
        self.clock.advance(self._interval_ms / 1000)
        ended = []
        for run_id in list(self._active)[:ending]:
            run = self._active.pop(run_id)
            end_ms = self.now_ms - self._rng.randrange(self._interval_ms)
            failed = self._rng.random() < FAILURE_SHARE
            ended.append(
                snapshot(
                    run_id,
                    run.job_id or 0,
                    start_ms=run.start_time or before,
                    end_ms=end_ms,
                    failed=failed,
                )
            )
        for i in range(ending):
            self._start(before + 1 + i * self._interval_ms // max(ending, 1))
        return self._result([*self._active.values(), *ended]), [r.run_id for r in ended]


@dataclass(frozen=True)
class ReplicaTask:
    dsn: str
    schema: str
    replica: str
    workspaces: int
    cycles: int
    active: int
    changed: int
    jobs: int
    interval: float


async def one_cycle(
    timed: TimedStore,
    pipeline: Pipeline,
    sim: SimulatedWorkspace,
    replica: str,
    epoch: int,
    ending: int,
) -> CycleFigures:
    """A steady cycle's store side and the pipeline. The poll result is built first,
    off the clock: it stands for the poller's work against the API, not measured here."""
    result, ended = sim.next_poll(ending)
    timed.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    # What the lease keeper and the poller ask the store, then the pipeline's reads and
    # its fenced commit.
    await timed.renew(replica, {sim.name: epoch}, now=sim.clock.time())
    await timed.workspace_state(sim.name)
    await timed.terminal_ends(sim.name, ended)
    await pipeline.handle(result, epoch=epoch)
    return CycleFigures(
        wall=time.perf_counter() - wall,
        cpu=time.process_time() - cpu,
        store_wall=sum(timed.calls.values()),
        store_cpu=timed.cpu,
        calls=dict(timed.calls),
        written=dict(timed.written),
        observed=len(result.runs),
    )


async def replica_cycles(task: ReplicaTask, start: threading.Barrier) -> list[CycleFigures]:
    store = await PostgresStore.open(task.dsn, schema=task.schema, min_size=1, max_size=2)
    timed = TimedStore(store)
    ending = task.changed // 2
    try:
        sims: list[tuple[SimulatedWorkspace, Pipeline, int]] = []
        for i in range(task.workspaces):
            sim = SimulatedWorkspace(
                f"{task.replica}-ws{i}",
                active=task.active,
                jobs=task.jobs,
                interval=task.interval,
                seed=zlib.crc32(f"{task.replica}-ws{i}".encode()),
            )
            lease = await store.acquire(sim.name, task.replica, now=sim.clock.time(), ttl=TTL)
            if lease is None:
                raise RuntimeError(f"{sim.name}: lease held by another replica")
            pipeline = Pipeline(
                store=timed,
                health_rules=HealthRulesConfig(),
                startup=StartupConfig(),
                clock=sim.clock,
                route=route_incidents,
            )
            # The first start (every active run recorded) and one steady cycle: not measured.
            await pipeline.handle(sim.first_poll(), epoch=lease.epoch)
            await one_cycle(timed, pipeline, sim, task.replica, lease.epoch, ending)
            sims.append((sim, pipeline, lease.epoch))
        await asyncio.to_thread(start.wait)
        figures: list[CycleFigures] = []
        for _ in range(task.cycles):
            for sim, pipeline, epoch in sims:
                figures.append(await one_cycle(timed, pipeline, sim, task.replica, epoch, ending))
        return figures
    finally:
        await store.close()


def replica_process(task: ReplicaTask, start: threading.Barrier) -> list[CycleFigures]:
    """One replica, in a process of its own like a pod: its Python competes with the other
    replicas' only for the machine's cores, never for an event loop."""
    configure_logging(level="WARNING", fmt="console", stream=sys.stderr)
    return asyncio.run(replica_cycles(task, start))


def poller_cpu(cycles: int) -> tuple[float, float]:
    """bench_poller's simulated workspace (2,000 jobs, ~1,000 active runs, ~100 ending per
    30 s cycle, API 2.1, no sweep): the poller's CPU per steady cycle (client, parsing,
    planning its requests) and the runs it observed per cycle."""
    trial = bench_poller.run_trial("2.1", 300.0, cycles, ReconcileConfig(enabled=False), 900.0)
    cpu = statistics.fmean(c.cpu for c in trial.cycles)
    return cpu, statistics.fmean(c.observed for c in trial.cycles)


# -- reports ------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass  # not Linux: the architecture will do
    return platform.machine()


async def context(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        sync = await conn.fetchval("SHOW synchronous_commit")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    return [
        f"CPUs: {os.cpu_count()} ({cpu_model()}); Python {platform.python_version()}",
        f"PostgreSQL {version} at {redacted(dsn)} (synchronous_commit={sync}, fsync={fsync})",
        f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL: as SQLiteStore opens it), "
        f"a file in {tempfile.gettempdir()}",
        "Everything (replicas, PostgreSQL, SQLite) shares this machine's cores.",
    ]


def report_commits(series: Sequence[Series]) -> None:
    print(
        f"{'backend':<11}{'writers':>8}{'runs/commit':>13}{'commits':>9}"
        f"{'commits/s':>11}{'runs/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for s in series:
        print(s.row())


def mean_ms(values: Sequence[float]) -> float:
    return statistics.fmean(values) * 1000 if values else 0.0


def report_capacity(
    replicas: list[list[CycleFigures]], args: argparse.Namespace, poller: tuple[float, float] | None
) -> None:
    cycles = [c for r in replicas for c in r]
    n = len(replicas)
    store = mean_ms([c.store_wall for c in cycles])
    store_cpu = mean_ms([c.store_cpu for c in cycles])
    # Outside the store calls a cycle awaits nothing: that time is the pipeline's Python.
    own = mean_ms([c.wall - c.store_wall for c in cycles])
    written = {k: statistics.fmean(c.written.get(k, 0) for c in cycles) for k in cycles[0].written}
    print(
        f"{n} replicas x {args.workspaces} workspaces, {len(cycles)} steady cycles measured "
        f"({args.cycles} per workspace),\nback to back on each replica, all replicas at once; "
        "each workspace's first start and one steady cycle\nbefore them not measured"
    )
    print(
        f"read per cycle (mean): get_runs of {statistics.fmean(c.observed for c in cycles):,.0f}"
        f" runs (the active ones and those that ended), get_jobs of the jobs with a run\n"
        "written per cycle (mean): "
        + ", ".join(f"{v:.0f} {k}" for k, v in written.items())
        + "  (every start and finish is an event; only failures and recoveries are routed)"
    )
    print(
        f"store time per cycle (wall, mean): {store:.1f} ms; p99 "
        f"{percentile([c.store_wall for c in cycles], 0.99) * 1000:.1f} ms"
    )
    calls: defaultdict[str, float] = defaultdict(float)
    for c in cycles:
        for name, seconds in c.calls.items():
            calls[name] += seconds
    print(
        "    "
        + ", ".join(
            f"{k} {v / len(cycles) * 1000:.1f}"
            for k, v in sorted(calls.items(), key=lambda kv: -kv[1])
        )
        + " ms"
    )
    print(f"    of which this replica's CPU (asyncpg, parsing records): {store_cpu:.1f} ms")
    own_cpu = mean_ms([c.cpu - c.store_cpu for c in cycles])
    # Wall, not CPU, goes into the capacity: it is what the replica waits, cores shared.
    print(
        f"tracker, cycle plan and routing (the pipeline's own Python): {own:.1f} ms wall, "
        f"{own_cpu:.1f} ms CPU"
    )

    interval: float = args.interval

    def hold(ms: float) -> int:
        # A replica's cycles taken back to back: one workspace per cycle time in 30 s.
        return n * math.floor(interval * 1000 / ms)

    print()
    print(
        f"{n} replicas hold about {hold(store):,} workspaces of {args.active:,} active runs at "
        f"a {args.interval:.0f} s interval (store side only: {store:.1f} ms per cycle)"
    )
    print(
        f"    with the pipeline's own Python too: about {hold(store + own):,} "
        f"({store + own:.1f} ms per cycle)"
    )
    if poller is None:
        print("    the poller's CPU per cycle was not measured (--poller-cycles 0)")
    else:
        cpu = poller[0] * 1000
        print(
            f"    with the poller's CPU too (client, parsing; bench_poller's simulator, "
            f"~{poller[1]:.0f} runs observed per cycle: {cpu:.1f} ms): about "
            f"{hold(store + own + cpu):,} ({store + own + cpu:.1f} ms per cycle)"
        )
    print(
        "Included: the store calls of a steady cycle (lease renewal, workspace_state, "
        "terminal_ends, get_runs,\n"
        "get_jobs, open_incidents, known_events, one fenced commit_cycle), measured with "
        f"{n} replicas at once on one\n"
        "PostgreSQL; the tracker and cycle plan; with --poller-cycles, the poller's CPU.\n"
        "Not included: the Databricks API's time (network, server latency): a replica "
        "awaits it without using\n"
        "its CPU, and how many requests a workspace may send is bounded by the API's rate "
        "limits (bench/bench_poller.py\n"
        "counts the requests per cycle), not by the watcher; the dispatcher sending alerts, "
        "reminders, housekeeping,\n"
        "metrics. Cycles are taken back to back on each replica; the daemon overlaps "
        "workspaces, which helps only\n"
        "while cores and the database have room."
    )


# -- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DSN, help="PostgreSQL database to bench in")
    parser.add_argument("--sizes", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument(
        "--commits", nargs="+", type=int, default=[200, 200, 50], help="commits per size"
    )
    parser.add_argument("--writers", type=int, default=3, help="concurrent PostgreSQL writers")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workspaces", type=int, default=2, help="per replica")
    parser.add_argument("--cycles", type=int, default=30, help="measured, per workspace")
    parser.add_argument("--active", type=int, default=1000, help="active runs per workspace")
    parser.add_argument("--changed", type=int, default=100, help="runs ending + starting per cycle")
    parser.add_argument("--jobs", type=int, default=50, help="jobs per workspace")
    parser.add_argument("--interval", type=float, default=30.0, help="poll interval, seconds")
    parser.add_argument(
        "--poller-cycles",
        type=int,
        default=10,
        help="steady cycles of bench_poller's simulator for the poller's CPU (0: skip)",
    )
    args = parser.parse_args()
    if len(args.sizes) != len(args.commits):
        parser.error("--sizes and --commits need as many values each")
    return args


async def create_schema(dsn: str, schema: str) -> None:
    # Migrated once here, so that concurrent writers find it ready.
    store = await PostgresStore.open(dsn, schema=schema)
    await store.close()


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def run(args: argparse.Namespace, schema: str) -> None:
    sizes, counts = args.sizes, args.commits
    print("== 1. Commit throughput and latency")
    print(
        "Each commit: that many RunRecords upserted (half starting, half the previous "
        "commit's finishing), a tenth\nwith a run_failed event and one delivery, the "
        f"watermark; fenced by the lease epoch. {WARMUP} warm-up commits per series\n"
        f"not counted. {args.writers} writers: one process, pool and workspace each, started "
        "together; commits/s and runs/s are their sum.",
        flush=True,
    )
    series = asyncio.run(sqlite_series(sizes, counts))
    series += asyncio.run(pg_series(args.dsn, schema, sizes, counts))
    ctx = multiprocessing.get_context("spawn")
    workers = max(args.writers, args.replicas)
    with ctx.Manager() as manager, ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for size, count in zip(sizes, counts, strict=True):
            start = manager.Barrier(args.writers)
            series.append(
                concurrent_series(pool, start, args.dsn, schema, args.writers, size, count)
            )
        report_commits(series)
        print(
            f"\n== 2. Capacity: workspaces of {args.active:,} active runs, "
            f"{args.interval:.0f} s interval, PostgreSQL",
            flush=True,
        )
        start = manager.Barrier(args.replicas)
        tasks = [
            ReplicaTask(
                args.dsn,
                schema,
                f"r{i}",
                args.workspaces,
                args.cycles,
                args.active,
                args.changed,
                args.jobs,
                args.interval,
            )
            for i in range(args.replicas)
        ]
        futures = [pool.submit(replica_process, t, start) for t in tasks]
        replicas = [f.result() for f in futures]
        poller = (
            pool.submit(poller_cpu, args.poller_cycles).result() if args.poller_cycles else None
        )
    report_capacity(replicas, args, poller)


def main() -> None:
    args = parse_args()
    configure_logging(level="WARNING", fmt="console", stream=sys.stderr)
    print("== Machine")
    print("\n".join(asyncio.run(context(args.dsn))), flush=True)
    print()
    schema = f"bench_{uuid.uuid4().hex}"
    asyncio.run(create_schema(args.dsn, schema))
    try:
        run(args, schema)
    finally:
        asyncio.run(drop_schema(args.dsn, schema))


if __name__ == "__main__":
    main()
