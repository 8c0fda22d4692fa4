"""Poller benchmark: requests per steady cycle, by endpoint, against the theoretical
minimum; CPU and memory as the workspace grows; and what the reconciliation sweep adds.

    .venv/bin/python bench/bench_poller.py [requests] [--cycles 12] [--versions 2.0 2.1 2.2]
        [--orders start_time end_time] [--workloads long short] [--overlaps 300 30]
        [--save FILE] [--compare FILE]
    .venv/bin/python bench/bench_poller.py growth [--cycles 4]
    .venv/bin/python bench/bench_poller.py sweep [--cycles 45] [--lookback 900]

Workloads, on 2,000 jobs, about 100 runs ending per 30 s cycle: `long` runs of 60..540 s
(about 1,000 active, most of them outlasting the walk's overlap), `short` runs of 5..25 s
(about 50 active: they start and end between two cycles). The simulator lists finished
runs by start time (the reference) or by end time (newer docs): both are measured.

Minimum per cycle (`issue`): ceil(active / limit) + ceil(ended since the last cycle /
limit). It is reachable only where ended runs are listed together: by end time, with no
margin for a slow answer or a skewed clock. `floor` is what any poller keeping the
documented guarantees must read: the active pages, the settings of the jobs whose runs
ended (read afresh at a run's end: min(one jobs/get each, the pages of one jobs/list)),
and, instead of ceil(ended / limit), by end time ceil(ended since the cut-off, the
watermark less the overlap / limit); by start time the fewest pages that hold every run
ended since the last cycle and every completed run that started within the overlap (a
short repair of one of them is news): pages of `limit` consecutive runs in start order
(2.1+ start each page where it likes, with start_time_to; 2.0 reads from the top).

The workspace is served by the simulator on its own thread and event loop, so the CPU
time reported is the poller's thread alone (client, parsing, the cycle); simulated time,
no sleeping. `--save` writes the means, `--compare` prints a saved run's beside them (the
figures of the code before a change). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import SecretStr

from watcher.clock import ManualClock
from watcher.config import ReconcileConfig, StartupConfig, WorkspaceConfig
from watcher.databricks import JobsClient, StaticToken
from watcher.databricks.client import MAX_JOBS_LIMIT, MAX_RUNS_LIMIT
from watcher.domain import PollResult
from watcher.logs import configure_logging
from watcher.poller import Poller
from watcher.simulator import Simulator
from watcher.simulator.workspace import SimRun, Workspace
from watcher.store.base import WorkspaceState

TOKEN = "dapi-bench"  # noqa: S105 - the simulator's own
JOBS = 2000
INTERVAL = 30.0
ENDING_PER_CYCLE = 100
MEAN_DURATION = 300.0  # arrivals x mean duration = about 1,000 active runs
HISTORY = 900.0  # seconds of runs the workspace holds before the first start, at least
TARGET_VERSION = "2.1"  # the issue's requirement: the sweep costs <= 10% extra on 2.1
TARGET_SHARE = 0.10
SWEEP = "sweep"  # the sweep's runs/list pages, counted apart from the endpoint's others
ENDPOINTS = ("runs/list", SWEEP, "runs/get", "jobs/get", "jobs/list")
SKEW_SLACK_MS = 2_000  # the poller's: the walk reaches back this much past the cut-off
# Run durations (seconds) of each workload.
WORKLOADS = {"long": (60.0, 2 * MEAN_DURATION - 60), "short": (5.0, 25.0)}


@dataclass
class State:
    """What a store would hold between cycles: the watermark and the active run ids."""

    watermark: int | None = None
    active: set[int] = field(default_factory=set)

    ended: dict[int, int] = field(default_factory=dict)
    news_since: int | None = None

    async def workspace_state(self, workspace: str) -> WorkspaceState:
        return WorkspaceState(self.watermark, frozenset(self.active), self.news_since)

    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]:
        return {r: self.ended[r] for r in run_ids if r in self.ended}

    def commit(self, result: PollResult) -> None:
        for run in result.runs:
            if run.is_terminal:
                self.active.discard(run.run_id)
                self.ended[run.run_id] = run.end_time or 0
            else:
                self.active.add(run.run_id)
        self.active -= set(result.vanished)
        self.watermark = result.watermark_ms
        self.news_since = result.news_since_ms


def steady_arrivals(
    seed: int, start_ms: int, durations: tuple[float, float] = WORKLOADS["long"], scale: float = 1
) -> Callable[[Workspace, int], None]:
    """A ticker starting runs at a constant rate (ENDING_PER_CYCLE per interval, times
    `scale`) on random jobs, durations uniform within `durations`."""
    rng = random.Random(seed)
    gap_ms = INTERVAL * 1000 / ENDING_PER_CYCLE / scale
    due = float(start_ms)

    def tick(workspace: Workspace, now: int) -> None:
        nonlocal due
        while due <= now:
            duration = rng.uniform(*durations)
            workspace.start_run(
                rng.randint(1, JOBS),
                start_ms=int(due),
                setup_s=duration * 0.1,
                execution_s=duration * 0.85,
                cleanup_s=duration * 0.05,
                result="FAILED" if rng.random() < 0.1 else "SUCCESS",
            )
            due += gap_ms

    return tick


def floor_pages(
    completed: list[SimRun], ended: set[int], cutoff_ms: int, limit: int, time_filters: bool
) -> int:
    """The fewest runs/list pages (completed runs newest start first) holding every run in
    `ended` and every run that started at or after `cutoff_ms`. Greedy from the newest is
    optimal for covering points with windows of `limit` consecutive runs; 2.0 cannot start a
    page where it likes, so reads from the top."""
    needed = [
        i for i, run in enumerate(completed) if run.run_id in ended or run.start_ms >= cutoff_ms
    ]
    if not needed:
        return 1  # one page says there is nothing
    if not time_filters:
        return math.ceil((needed[-1] + 1) / limit)
    pages, covered = 0, -1
    for index in needed:
        if index > covered:
            pages += 1
            covered = index + limit - 1
    return pages


@contextmanager
def served(sim: Simulator) -> Iterator[str]:
    """The simulator on a thread of its own, so its CPU is not the poller's."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        url.append(loop.run_until_complete(sim.start()))
        ready.set()
        loop.run_forever()
        loop.run_until_complete(sim.stop())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait()
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


@dataclass
class Cycle:
    requests: int
    by_endpoint: dict[str, int]
    """Requests per endpoint; runs/list without the sweep's pages, which are under SWEEP."""
    minimum: int
    """The issue's: ceil(active / limit) + ceil(ended / limit)."""
    floor: int
    """What a poller keeping the guarantees must read (see the module's docstring)."""
    active: int
    bound: int
    observed: int
    cpu: float
    completed_lists: int
    """runs/list?completed_only requests: the cheap walk's and, with the sweep on, its."""
    sweep_done: float | None
    """Seconds (start to end) of the sweep that completed in this cycle, if one did."""

    @property
    def sweep_pages(self) -> int:
        return self.by_endpoint.get(SWEEP, 0)


@dataclass
class Trial:
    """One version and overlap, sweep off or on: the steady cycles after the first start."""

    version: str
    overlap: float
    reconcile: ReconcileConfig
    cycles: list[Cycle]
    first_sweep_done: bool
    """Whether the sweep begun by the first start (its backfill cycle) ended there."""
    rss_mb: float = 0.0
    """The worker process's peak RSS: the simulator's too (it holds every run)."""
    retained_mb: float = 0.0
    """Memory held after the last cycle by what watcher/poller.py and watcher/databricks/
    allocated (tracemalloc; measured only when asked)."""


async def bench(
    version: str,
    overlap: float,
    cycles: int,
    reconcile: ReconcileConfig,
    history: float,
    order: str = "start_time",
    workload: str = "long",
    scale: float = 1,
    memory: bool = False,
) -> Trial:
    if memory:
        tracemalloc.start()
    clock = ManualClock()
    sim = Simulator(clock=clock, tokens={TOKEN}, completed_order=order)  # type: ignore[arg-type]
    for index in range(JOBS):
        sim.workspace.create_job(f"job-{index:04d}", tags={"team": f"t{index % 7}"})
    start_ms = sim.workspace.now_ms() - int(history * 1000)
    sim.workspace.tickers.append(steady_arrivals(7, start_ms, WORKLOADS[workload], scale))
    limit = MAX_RUNS_LIMIT[version]
    lookback_ms = int(reconcile.lookback * 1000)
    state = State()
    results: list[Cycle] = []
    with served(sim) as url:
        client = JobsClient(
            host=url,
            auth=StaticToken(SecretStr(TOKEN)),
            api_version=version,  # type: ignore[arg-type]
            clock=clock,
            requests_per_second=100_000.0,
        )
        config = WorkspaceConfig.model_validate(
            {
                "name": "bench",
                "host": url,
                "auth": {"type": "pat", "token": TOKEN},
                "api_version": version,
                "poll_interval": INTERVAL,
                "completed_overlap": overlap,
                # Explicit: the sweep is on by default, and the off/on pair is the point.
                "reconcile": reconcile,
            }
        )
        poller = Poller(
            config=config,
            startup=StartupConfig(),
            client=client,
            state=state,
            clock=clock,
        )
        try:
            state.commit(await poller.poll())  # the first start: backfill, not measured
            first_sweep_done = poller.status.last_sweep_at is not None
            previous_ms = sim.workspace.now_ms()
            for _ in range(cycles):
                clock.advance(INTERVAL)
                sim.workspace.settle()
                now_ms = sim.workspace.now_ms()
                runs = list(sim.workspace.runs.values())
                active_ids = {r.run_id for r in runs if sim.workspace.is_active(r, now_ms)}
                ended_runs = [r for r in runs if previous_ms < (r.end_ms or 0) <= now_ms]
                ended = len(ended_runs)
                gone = len(state.active - active_ids)
                floor = math.ceil(len(active_ids) / limit) + settings_pages(version, ended_runs)
                # Either order keeps the overlap's margin (a slow answer, a skewed clock).
                cutoff = (state.watermark or 0) - int(overlap * 1000) - SKEW_SLACK_MS
                if order == "end_time":
                    ended_since = sum(cutoff <= (r.end_ms or -1) <= now_ms for r in runs)
                    floor += math.ceil(ended_since / limit)
                else:
                    completed = sorted(
                        (r for r in runs if r.ended_by(now_ms)),
                        key=lambda r: r.sort_key,
                        reverse=True,
                    )
                    floor += floor_pages(
                        completed,
                        {r.run_id for r in ended_runs},
                        cutoff,
                        limit,
                        version != "2.0",
                    )
                mark = len(sim.requests)
                swept_at = poller.status.last_sweep_at
                cpu = time.thread_time()
                result = await poller.poll()
                cpu = time.thread_time() - cpu
                state.commit(result)
                by_endpoint: dict[str, int] = {}
                completed_lists = 0
                for request in sim.requests[mark:]:
                    endpoint = request.endpoint
                    if endpoint == "runs/list" and "completed_only" in request.params:
                        completed_lists += 1
                        # On 2.1+ the sweep reads from `lookback` back; the cheap path's
                        # pages of vanished runs bound start times too, but from no further
                        # back than the longest run (shorter than the bench's lookback).
                        # 2.0 has no time filters: see attribute_sweep.
                        since = request.params.get("start_time_from")
                        if reconcile.enabled and since and int(since) <= now_ms - lookback_ms:
                            endpoint = SWEEP
                    by_endpoint[endpoint] = by_endpoint.get(endpoint, 0) + 1
                minimum = math.ceil(len(active_ids) / limit) + math.ceil(ended / limit)
                # The job-settings term: one get per new job, or the pages of one jobs/list
                # walk when that is cheaper.
                new_jobs = by_endpoint.get("jobs/get", 0) + by_endpoint.get("jobs/list", 0)
                done = poller.status.last_sweep_at != swept_at
                results.append(
                    Cycle(
                        requests=result.requests,
                        by_endpoint=by_endpoint,
                        minimum=minimum,
                        floor=floor,
                        active=len(active_ids),
                        bound=minimum + gone + new_jobs + 1,
                        observed=len(result.runs),
                        cpu=cpu,
                        completed_lists=completed_lists,
                        sweep_done=poller.status.last_sweep_seconds if done else None,
                    )
                )
                previous_ms = now_ms
            retained = 0
            if memory:
                snapshot = tracemalloc.take_snapshot().filter_traces(
                    [
                        tracemalloc.Filter(True, "*/watcher/poller.py"),
                        tracemalloc.Filter(True, "*/watcher/databricks/*"),
                    ]
                )
                retained = sum(stat.size for stat in snapshot.statistics("filename"))
                tracemalloc.stop()
        finally:
            await client.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return Trial(version, overlap, reconcile, results, first_sweep_done, rss, retained / 2**20)


def settings_pages(version: str, ended: list[SimRun]) -> int:
    """Reading afresh the settings of the jobs whose runs ended: one jobs/get each, or one
    jobs/list walk (one answer on 2.0), whichever is cheaper."""
    jobs = len({r.job_id for r in ended})
    walk = 1 if version == "2.0" else math.ceil(JOBS / MAX_JOBS_LIMIT)
    return min(jobs, walk)


def attribute_sweep(off: Trial, on: Trial) -> None:
    """On 2.0 the sweep's pages look like the cheap walk's (no time filters). Same seed, same
    simulated instants: the cheap walk of cycle i reads the same pages with the sweep off
    (it depends on the watermark and the window, not on what the sweep found), so the
    completed_only requests beyond it are the sweep's."""
    if on.version != "2.0":
        return
    for without, with_ in zip(off.cycles, on.cycles, strict=True):
        pages = with_.completed_lists - without.completed_lists
        with_.by_endpoint["runs/list"] = with_.by_endpoint.get("runs/list", 0) - pages
        with_.by_endpoint[SWEEP] = pages


def mean(values: list[float] | list[int]) -> float:
    return statistics.fmean(values) if values else 0.0


def report(trial: Trial) -> None:
    cycles = trial.cycles
    split = " ".join(
        f"{e}={mean([c.by_endpoint.get(e, 0) for c in cycles]):.1f}"
        for e in ENDPOINTS
        if e != SWEEP or trial.reconcile.enabled
    )
    observed = sum(c.observed for c in cycles)
    cpu = sum(c.cpu for c in cycles)
    print(
        f"API {trial.version}  overlap {trial.overlap:>5.0f}s  "
        f"sweep {'on ' if trial.reconcile.enabled else 'off'}  "
        f"requests/cycle {mean([c.requests for c in cycles]):6.1f} "
        f"(max {max(c.requests for c in cycles)})  "
        f"minimum {mean([c.minimum for c in cycles]):5.1f}  "
        f"issue bound {mean([c.bound for c in cycles]):6.1f}  "
        # The bound is the cheap path's: the sweep's pages are its own budget, not over it.
        f"over bound {sum(c.requests - c.sweep_pages > c.bound for c in cycles)}/{len(cycles)}"
    )
    print(
        f"    {split}  observed/cycle {observed / len(cycles):6.0f}  "
        f"CPU {1000 * cpu / max(observed, 1) * 1000:6.1f} ms per 1,000 observed runs "
        f"({1000 * cpu / len(cycles):5.1f} ms per cycle)"
    )


@dataclass
class Share:
    """The sweep's extra requests relative to the same cycles with the sweep off."""

    run: float
    """Over every measured cycle."""
    sweeping: float
    """Over the cycles that read a sweep's pages, but its last (which reads what is left):
    what a sweep that never pauses costs every cycle (one that outlasts
    reconcile.interval, as any long lookback on a busy workspace does)."""
    worst: float
    """The worst single cycle."""
    sweeping_cycles: int


def share(off: Trial, on: Trial) -> Share:
    pairs = list(zip(off.cycles, on.cycles, strict=True))
    read = [(a, b) for a, b in pairs if b.sweep_pages]
    sweeping = [(a, b) for a, b in read if b.sweep_done is None] or read

    def extra(chosen: list[tuple[Cycle, Cycle]]) -> float:
        base = sum(a.requests for a, _ in chosen)
        return (sum(b.requests for _, b in chosen) - base) / base if base else 0.0

    worst = max(((b.requests - a.requests) / a.requests for a, b in pairs), default=0.0)
    return Share(extra(pairs), extra(sweeping), worst, len(sweeping))


def report_sweep(off: Trial, on: Trial) -> Share:
    """The off/on table per endpoint, the sweep's share, and how long one sweep takes."""
    config = on.reconcile

    def cell(trial: Trial, endpoint: str | None) -> str:
        if endpoint == SWEEP and not trial.reconcile.enabled:
            return f"{'-':>11}"
        values = [
            c.requests if endpoint is None else c.by_endpoint.get(endpoint, 0) for c in trial.cycles
        ]
        return f"{mean(values):6.1f} /{max(values):3d}"

    print(f"    per steady cycle (mean / max)  {'sweep off':>11}  {'sweep on':>11}")
    for label, endpoint in [
        ("total", None),
        *((f"{e} (cheap)" if e == "runs/list" else e, e) for e in ENDPOINTS),
    ]:
        label = "runs/list (sweep)" if endpoint == SWEEP else label
        print(f"      {label:<29}{cell(off, endpoint)}  {cell(on, endpoint)}")
    minimum = [c.minimum for c in on.cycles]
    print(f"      {'minimum':<29}{mean(minimum):6.1f} /{max(minimum):3d}")
    figures = share(off, on)
    print(
        f"    sweep's extra: {figures.run:+.1%} over all {len(on.cycles)} cycles, "
        f"{figures.sweeping:+.1%} over the {figures.sweeping_cycles} that read a full budget "
        f"of sweep pages (worst cycle {figures.worst:+.1%})"
    )

    # A sweep is steady when it began after the first start: the one begun in the backfill
    # cycle had that cycle's (much larger) budget and window.
    steady: list[tuple[int, int, float]] = []  # (first cycle, last cycle, seconds), 1-based
    for index, cycle in enumerate(on.cycles, start=1):
        if cycle.sweep_done is not None:
            began = index - round(cycle.sweep_done / INTERVAL)
            if began >= 1:
                steady.append((began, index, cycle.sweep_done))
    ends = [i for i, c in enumerate(on.cycles, start=1) if c.sweep_done is not None]
    if on.first_sweep_done:
        ends.insert(0, 0)
    print(
        f"    sweeps completed in cycles {', '.join(map(str, ends)) or 'none'} "
        "(0: the first start's backfill cycle)"
    )
    if not steady:
        print(
            f"    no sweep begun after the first start completed in {len(on.cycles)} cycles: "
            "raise --cycles"
        )
        return figures
    began, last, seconds = steady[0]
    spanned = on.cycles[began - 1 : last]
    pages = sum(c.sweep_pages for c in spanned)
    # Pages per cycle: the budget, seen in the sweep's cycles but its last (which reads what
    # is left); a one-cycle sweep tells no more than its own pages.
    full = [c.sweep_pages for c in spanned[:-1]] or [pages]
    per_cycle = mean(full)
    delay = max(config.interval, seconds) + seconds
    print(
        f"    one sweep (cycles {began}..{last}): {last - began + 1} cycles, "
        f"{seconds:.0f} s simulated (start to end), {pages} pages, {per_cycle:.1f} pages/cycle"
    )
    # The next sweep starts `interval` after this one did, or as soon as this one ends when it
    # outlasts the interval; a blind-spot run that ended just after the sweep passed its
    # start time waits for that next sweep to reach it.
    print(
        f"    worst-case detection delay of a blind-spot run: max(interval {config.interval:.0f} s,"
        f" sweep) + sweep = {delay:.0f} s ({delay / 60:.1f} min)"
    )
    default = ReconcileConfig().lookback
    if default > config.lookback:
        # Each second of lookback adds the runs that started in it (the arrival rate); a page
        # holds `limit` of them, less the tenth of a page offset paging (2.0) steps back.
        limit = MAX_RUNS_LIMIT[on.version]
        step = limit - limit // 10 if on.version == "2.0" else limit
        rate = ENDING_PER_CYCLE / INTERVAL
        wide = pages + math.ceil((default - config.lookback) * rate / step)
        wide_cycles = math.ceil(wide / per_cycle)
        wide_seconds = (wide_cycles - 1) * INTERVAL
        wide_delay = max(config.interval, wide_seconds) + wide_seconds
        print(
            f"    at the default lookback {default:.0f} s (extrapolated, not measured): "
            f"~{wide:,} pages, {wide_cycles:,} cycles, {wide_seconds:,.0f} s "
            f"({wide_seconds / 3600:.1f} h); worst-case delay {wide_delay:,.0f} s "
            f"({wide_delay / 3600:.1f} h)"
        )
        if wide_seconds >= config.interval:
            # The next sweep starts as soon as one ends: every cycle is a sweeping cycle.
            print(
                f"    such a sweep never pauses: {figures.sweeping:+.1%} on every cycle "
                "(the full-budget cycles' share above)"
            )
    return figures


def run_trial(
    version: str,
    overlap: float,
    cycles: int,
    reconcile: ReconcileConfig,
    history: float,
    order: str = "start_time",
    workload: str = "long",
    scale: float = 1,
    memory: bool = False,
) -> Trial:
    """One trial, in a worker process. The sweep logs each completion at INFO: stdout is
    kept to the figures, warnings go to stderr."""
    configure_logging(level="WARNING", fmt="console", stream=sys.stderr)
    return asyncio.run(
        bench(version, overlap, cycles, reconcile, history, order, workload, scale, memory)
    )


def pool(jobs: int) -> ProcessPoolExecutor:
    # A fresh process per trial: each one's peak RSS is its own.
    return ProcessPoolExecutor(max_workers=jobs, max_tasks_per_child=1)


def figures(trial: Trial) -> dict[str, float]:
    """Means per steady cycle: by endpoint, total, and both minima."""
    cycles = trial.cycles
    means = {e: mean([c.by_endpoint.get(e, 0) for c in cycles]) for e in ENDPOINTS if e != SWEEP}
    means["total"] = mean([c.requests - c.sweep_pages for c in cycles])
    means["issue"] = mean([c.minimum for c in cycles])
    means["floor"] = mean([c.floor for c in cycles])
    return means


def requests_main(args: argparse.Namespace) -> None:
    off = ReconcileConfig(enabled=False)
    cases = [
        (w, o, v, overlap)
        for w in args.workloads
        for o in args.orders
        for v in args.versions
        for overlap in args.overlaps
    ]
    before: dict[str, dict[str, float]] = {}
    if args.compare:
        with open(args.compare, encoding="utf-8") as file:
            before = json.load(file)
    print(
        f"{JOBS} jobs, ~{ENDING_PER_CYCLE} runs ending per {INTERVAL:.0f} s cycle; "
        f"{args.cycles} steady cycles after the first start, reconciliation sweep off "
        "(its pages are its own budget: `sweep`)\n"
        "requests/cycle by endpoint (mean); issue = ceil(active/limit) + ceil(ended/limit); "
        "floor = what the guarantees require (module docstring); "
        "runs x issue: runs/list and runs/get alone (the issue's minimum has no job settings)"
        + (f"; `was`: {args.compare}" if before else "")
    )
    header = (
        f"{'workload':<6} {'order':<10} {'API':<4} {'overlap':>7} | {'list':>6} {'get':>6} "
        f"{'jobs/get':>8} {'jobs/list':>9} {'total':>6} | {'issue':>6} {'floor':>6} "
        f"{'x issue':>7} {'x floor':>7} {'runs x issue':>12}"
    )
    if before:
        header += (
            f" | {'was: list':>9} {'get':>6} {'jobs':>6} {'total':>6} {'x issue':>7} {'runs x':>7}"
        )
    print(header)
    saved: dict[str, dict[str, float]] = {}
    with pool(args.jobs) as executor:
        futures = [
            executor.submit(run_trial, v, overlap, args.cycles, off, HISTORY, o, w, 1.0, False)
            for w, o, v, overlap in cases
        ]
        for (w, o, v, overlap), future in zip(cases, futures, strict=True):
            means = figures(future.result())
            key = f"{w} {o} {v} {overlap:g}"
            saved[key] = means
            line = (
                f"{w:<6} {o:<10} {v:<4} {overlap:>6.0f}s | {means['runs/list']:6.1f} "
                f"{means['runs/get']:6.1f} {means['jobs/get']:8.1f} {means['jobs/list']:9.1f} "
                f"{means['total']:6.1f} | {means['issue']:6.1f} {means['floor']:6.1f} "
                f"{means['total'] / means['issue']:6.2f}x {means['total'] / means['floor']:6.2f}x "
                f"{(means['runs/list'] + means['runs/get']) / means['issue']:11.2f}x"
            )
            if was := before.get(key):
                jobs = was["jobs/get"] + was["jobs/list"]
                line += (
                    f" | {was['runs/list']:9.1f} {was['runs/get']:6.1f} {jobs:6.1f} "
                    f"{was['total']:6.1f} {was['total'] / was['issue']:6.2f}x "
                    f"{(was['runs/list'] + was['runs/get']) / was['issue']:6.2f}x"
                )
            print(line, flush=True)
    if args.save:
        with open(args.save, "w", encoding="utf-8") as file:
            json.dump(saved, file, indent=1)


def growth_main(args: argparse.Namespace) -> None:
    """Requests, CPU and memory at 100, 1,000 and 10,000 active runs (the long workload,
    arrivals scaled): per 1,000 active runs, each should stay flat or fall."""
    off = ReconcileConfig(enabled=False)
    scales = [0.1, 1.0, 10.0]
    print(
        f"growth: long workload, API {args.versions[-1]}, {args.orders[0]}, overlap "
        f"{args.overlaps[0]:.0f} s, {args.cycles} steady cycles; RSS is the process's peak "
        "(the simulator's runs included); retained (--trace-memory): what watcher/poller.py "
        "and watcher/databricks/ allocated and still hold after the last cycle (tracemalloc, "
        "which slows everything several times)"
    )
    print(
        f"{'active':>7} {'req/cycle':>9} {'per 1k':>7} {'CPU ms/cycle':>12} {'per 1k':>7} "
        f"{'RSS MB':>7} {'retained MB':>11} {'per 1k':>7}"
    )
    with pool(args.jobs) as executor:
        futures = [
            executor.submit(
                run_trial,
                args.versions[-1],
                args.overlaps[0],
                args.cycles,
                off,
                HISTORY,
                args.orders[0],
                "long",
                scale,
                args.trace_memory,
            )
            for scale in scales
        ]
        for future in futures:
            trial = future.result()
            cycles = trial.cycles
            active = mean([c.active for c in cycles])
            requests = mean([c.requests for c in cycles])
            cpu = 1000 * mean([c.cpu for c in cycles])
            per = 1000 / max(active, 1)
            print(
                f"{active:7.0f} {requests:9.1f} {requests * per:7.1f} {cpu:12.1f} "
                f"{cpu * per:7.1f} {trial.rss_mb:7.0f} {trial.retained_mb:11.2f} "
                f"{trial.retained_mb * per:7.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", nargs="?", default="requests", choices=["requests", "growth", "sweep"]
    )
    parser.add_argument("--cycles", type=int, default=None, help="steady cycles measured")
    parser.add_argument("--versions", nargs="+", default=None)
    parser.add_argument("--orders", nargs="+", default=["start_time", "end_time"])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--overlaps", nargs="+", type=float, default=[300.0, 30.0])
    parser.add_argument(
        "--trace-memory", action="store_true", help="growth: measure the poller's own memory"
    )
    parser.add_argument("--save", help="requests: write the means to this JSON file")
    parser.add_argument("--compare", help="requests: print a saved run's means beside")
    parser.add_argument(
        "--lookback",
        type=float,
        default=HISTORY,
        help="sweep: reconcile.lookback in seconds (default: the simulated history at the "
        "first start, which the workspace keeps holding, so every sweep walks a whole lookback)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="trials run at once, one process each (default: 2, or 1 on one core)",
    )
    args = parser.parse_args()
    if args.mode == "requests":
        args.cycles = args.cycles or 12
        args.versions = args.versions or ["2.0", "2.1", "2.2"]
        requests_main(args)
    elif args.mode == "growth":
        args.cycles = args.cycles or 4
        args.versions = args.versions or ["2.1"]
        growth_main(args)
    else:
        args.cycles = args.cycles or 45
        args.versions = args.versions or ["2.0", "2.1"]
        sweep_main(args)


def sweep_main(args: argparse.Namespace) -> None:
    """The sweep's cost: each version and overlap twice on the same seeded workload (long
    runs, by start time), with the reconciliation sweep off and on."""
    off = ReconcileConfig(enabled=False, lookback=args.lookback)
    on = ReconcileConfig(enabled=True, lookback=args.lookback)
    history = max(HISTORY, args.lookback)
    print(
        f"{JOBS} jobs, ~{ENDING_PER_CYCLE} runs ending per {INTERVAL:.0f} s cycle, "
        f"~{ENDING_PER_CYCLE * MEAN_DURATION / INTERVAL:.0f} active; "
        f"{args.cycles} steady cycles after the first start\n"
        "minimum = ceil(active/limit) + ceil(ended since last cycle/limit); issue bound adds "
        "stored-active runs gone from the active list,\n"
        "job settings reads (jobs/get, or jobs/list pages) and 1 (sweep pages not counted "
        "against it)\n"
        f"sweep on: interval {on.interval:.0f} s, lookback {on.lookback:.0f} s (the workspace "
        f"holds runs from {history:.0f} s before the first start on), max_share {on.max_share},"
        f" min_pages {on.min_pages}; off: the same workload without it.\n"
        "Sweep pages: runs/list from start_time_from lookback back (2.1+); on 2.0 the "
        "completed_only requests beyond those of the sweep-off run's same cycle"
    )
    checks: list[str] = []
    pairs = [(v, o) for v in args.versions for o in args.overlaps]
    # Trials are independent (a simulator each, simulated time): one process per core halves
    # the wall time. The CPU figures are each poller thread's own, so they hold either way.
    with pool(args.jobs) as executor:
        futures = [
            (
                executor.submit(run_trial, version, overlap, args.cycles, off, history),
                executor.submit(run_trial, version, overlap, args.cycles, on, history),
            )
            for version, overlap in pairs
        ]
        for (version, overlap), (off_future, on_future) in zip(pairs, futures, strict=True):
            without, with_ = off_future.result(), on_future.result()
            attribute_sweep(without, with_)
            report(without)
            report(with_)
            figures = report_sweep(without, with_)
            if version == TARGET_VERSION:
                # A sweep that never pauses costs its share of every cycle: the sweeping
                # cycles' figure is the one that must hold, whatever the lookback.
                verdict = "PASS" if figures.sweeping <= TARGET_SHARE else "FAIL"
                checks.append(
                    f"{verdict}: API {version}, ~{ENDING_PER_CYCLE * MEAN_DURATION / INTERVAL:.0f}"
                    f" active, overlap {overlap:.0f} s: the sweep adds {figures.sweeping:+.1%} "
                    "per sweeping cycle (every cycle once sweeps outlast the interval; "
                    f"{figures.run:+.1%} over this run, worst cycle {figures.worst:+.1%}); "
                    f"target <= {TARGET_SHARE:.0%}"
                )
    print(f"\nThe issue's target, the sweep costs <= {TARGET_SHARE:.0%} extra on API 2.1:")
    print("\n".join(checks) or f"not measured: add {TARGET_VERSION} to --versions")


if __name__ == "__main__":
    main()
