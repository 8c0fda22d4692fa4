"""Poller benchmark: requests per steady cycle against the theoretical minimum, and CPU time
per 1,000 observed runs, on a large simulated workspace.

    .venv/bin/python bench/bench_poller.py [--cycles 20] [--versions 2.0 2.1] [--overlaps 300 30]

The workspace (2,000 jobs, about 1,000 active runs, about 100 runs ending per 30 s cycle)
is served by the simulator on its own thread and event loop, so the CPU time reported is
the poller's thread alone (client, parsing, the cycle); simulated time, no sleeping.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pydantic import SecretStr

from watcher.clock import ManualClock
from watcher.config import StartupConfig, WorkspaceConfig
from watcher.databricks import JobsClient, StaticToken
from watcher.databricks.client import MAX_RUNS_LIMIT
from watcher.poller import Poller, PollResult
from watcher.simulator import Simulator
from watcher.simulator.workspace import Workspace
from watcher.store.base import WorkspaceState

TOKEN = "dapi-bench"  # noqa: S105 - the simulator's own
JOBS = 2000
INTERVAL = 30.0
ENDING_PER_CYCLE = 100
MEAN_DURATION = 300.0  # arrivals x mean duration = about 1,000 active runs


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


def steady_arrivals(seed: int, start_ms: int) -> Callable[[Workspace, int], None]:
    """A ticker starting runs at a constant rate on random jobs, durations 60..540 s."""
    rng = random.Random(seed)
    gap_ms = INTERVAL * 1000 / ENDING_PER_CYCLE
    due = float(start_ms)

    def tick(workspace: Workspace, now: int) -> None:
        nonlocal due
        while due <= now:
            duration = rng.uniform(60, 2 * MEAN_DURATION - 60)
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
    minimum: int
    bound: int
    observed: int
    cpu: float


async def bench(version: str, overlap: float, cycles: int) -> list[Cycle]:
    clock = ManualClock()
    sim = Simulator(clock=clock, tokens={TOKEN})
    for index in range(JOBS):
        sim.workspace.create_job(f"job-{index:04d}", tags={"team": f"t{index % 7}"})
    sim.workspace.tickers.append(steady_arrivals(7, sim.workspace.now_ms() - 900_000))
    limit = MAX_RUNS_LIMIT[version]
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
            previous_ms = sim.workspace.now_ms()
            for _ in range(cycles):
                clock.advance(INTERVAL)
                sim.workspace.settle()
                now_ms = sim.workspace.now_ms()
                runs = list(sim.workspace.runs.values())
                active_ids = {r.run_id for r in runs if sim.workspace.is_active(r, now_ms)}
                ended = sum(1 for r in runs if previous_ms < (r.end_ms or 0) <= now_ms)
                gone = len(state.active - active_ids)
                mark = len(sim.requests)
                cpu = time.thread_time()
                result = await poller.poll()
                cpu = time.thread_time() - cpu
                state.commit(result)
                by_endpoint: dict[str, int] = {}
                for request in sim.requests[mark:]:
                    by_endpoint[request.endpoint] = by_endpoint.get(request.endpoint, 0) + 1
                minimum = math.ceil(len(active_ids) / limit) + math.ceil(ended / limit)
                # The job-settings term: one get per new job, or the pages of one jobs/list
                # walk when that is cheaper.
                new_jobs = by_endpoint.get("jobs/get", 0) + by_endpoint.get("jobs/list", 0)
                results.append(
                    Cycle(
                        requests=result.requests,
                        by_endpoint=by_endpoint,
                        minimum=minimum,
                        bound=minimum + gone + new_jobs + 1,
                        observed=len(result.runs),
                        cpu=cpu,
                    )
                )
                previous_ms = now_ms
        finally:
            await client.close()
    return results


def report(version: str, overlap: float, cycles: list[Cycle]) -> None:
    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else 0.0

    endpoints = ("runs/list", "runs/get", "jobs/get", "jobs/list")
    split = " ".join(
        f"{e}={mean([c.by_endpoint.get(e, 0) for c in cycles]):.1f}" for e in endpoints
    )
    observed = sum(c.observed for c in cycles)
    cpu = sum(c.cpu for c in cycles)
    print(
        f"API {version}  overlap {overlap:>5.0f}s  "
        f"requests/cycle {mean([c.requests for c in cycles]):6.1f} "
        f"(max {max(c.requests for c in cycles)})  "
        f"minimum {mean([c.minimum for c in cycles]):5.1f}  "
        f"issue bound {mean([c.bound for c in cycles]):6.1f}  "
        f"over bound {sum(c.requests > c.bound for c in cycles)}/{len(cycles)}"
    )
    print(
        f"    {split}  observed/cycle {observed / len(cycles):6.0f}  "
        f"CPU {1000 * cpu / max(observed, 1) * 1000:6.1f} ms per 1,000 observed runs "
        f"({1000 * cpu / len(cycles):5.1f} ms per cycle)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="steady cycles measured")
    parser.add_argument("--versions", nargs="+", default=["2.0", "2.1"])
    parser.add_argument("--overlaps", nargs="+", type=float, default=[300.0, 30.0])
    args = parser.parse_args()
    print(
        f"{JOBS} jobs, ~{ENDING_PER_CYCLE} runs ending per {INTERVAL:.0f} s cycle, "
        f"~{ENDING_PER_CYCLE * MEAN_DURATION / INTERVAL:.0f} active; "
        f"{args.cycles} steady cycles after the first start\n"
        "minimum = ceil(active/limit) + ceil(ended since last cycle/limit); issue bound adds "
        "stored-active runs gone from the active list,\n"
        "job settings reads (jobs/get, or jobs/list pages) and 1"
    )
    for version in args.versions:
        for overlap in args.overlaps:
            report(version, overlap, asyncio.run(bench(version, overlap, args.cycles)))


if __name__ == "__main__":
    main()
