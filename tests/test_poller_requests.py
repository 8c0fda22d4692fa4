"""What a steady cycle costs, request by request, for each way the poller reads finished
runs (by end time; by start time: pages of the vanished runs' starts on 2.1+, reading on
on 2.0; runs/get for what no page shows), and how soon the loop sees an API storm end.
Counts, not seconds: the simulator over HTTP in manual time."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import TOKEN
from tests.test_poller import FakeStore, by_id, new_client, workspace_config
from watcher.app import make_client
from watcher.clock import ManualClock
from watcher.config import StartupConfig
from watcher.databricks import JobsClient
from watcher.domain import PollResult
from watcher.metrics import Metrics
from watcher.poller import MAX_BACKOFF_INTERVALS, Poller, run_poll_loop
from watcher.simulator import Fault, Simulator
from watcher.simulator.workspace import Workspace

LIMIT = {"2.0": 60, "2.1": 25, "2.2": 25}
"""runs/list page sizes: the simulator states 60 on 2.0 (the client adopts it), so that
pages matter with a hundred runs."""
HOUR_MS = 3_600_000


@dataclass
class World:
    sim: Simulator
    clock: ManualClock
    client: JobsClient
    poller: Poller
    store: FakeStore

    @property
    def ws(self) -> Workspace:
        return self.sim.workspace

    async def cycle(self, seconds: float = 30) -> tuple[PollResult, Counter[str]]:
        """Let `seconds` pass, poll and commit: the result and its requests by endpoint."""
        self.clock.advance(seconds)
        mark = len(self.sim.requests)
        result = await self.poller.poll()
        assert result.requests == len(self.sim.requests) - mark
        self.store.commit(result)
        return result, Counter(r.endpoint for r in self.sim.requests[mark:])


WorldFactory = Callable[..., Awaitable[World]]


def order_of(poller: Poller) -> str | None:
    """The order the poller has seen (read anew each time: a cycle may change it)."""
    return poller.completed_order


@pytest.fixture
async def make_world(clock: ManualClock) -> AsyncIterator[WorldFactory]:
    async with AsyncExitStack() as stack:

        async def factory(*, version: str, order: str, **config: Any) -> World:
            sim = Simulator(
                clock=clock,
                tokens={TOKEN},
                completed_order=order,  # type: ignore[arg-type]
                runs_limit_max=dict(LIMIT),
            )
            await stack.enter_async_context(sim)
            client = new_client(sim, clock, version)
            stack.push_async_callback(client.close)
            store = FakeStore()
            poller = Poller(
                config=workspace_config(**config),
                startup=StartupConfig(),
                client=client,
                state=store,
                clock=clock,
            )
            return World(sim, clock, client, poller, store)

        yield factory


def history(ws: Workspace, job: int, n: int, *, start_ms: int, step_ms: int) -> list[int]:
    """`n` finished runs starting `step_ms` apart from `start_ms`, of varied durations (so
    that their order by end time differs from their order by start time)."""
    return [
        ws.start_run(
            job,
            start_ms=start_ms + i * step_ms,
            setup_s=0,
            execution_s=5 + (i * 37) % 60,
            cleanup_s=0,
        )
        for i in range(n)
    ]


async def long_runs_world(
    make_world: WorldFactory, version: str, order: str, *, between: int = 0
) -> tuple[World, list[int]]:
    """100 runs active for hours, started 3 h ago in the order of their end (so the
    first 30 end first), `between` finished runs that started after them, and 5 jobs;
    three cycles: the order of finished runs is known by then."""
    w = await make_world(version=version, order=order)
    jobs = [w.ws.create_job(f"job-{i}") for i in range(5)]
    now = w.ws.now_ms()
    long = [
        w.ws.start_run(
            jobs[i % 5],
            start_ms=now - 3 * HOUR_MS + i * 1000,
            setup_s=0,
            execution_s=4 * 3600 + i * 10,
            cleanup_s=0,
        )
        for i in range(100)
    ]
    history(w.ws, jobs[0], between, start_ms=now - 2 * HOUR_MS, step_ms=60_000)
    history(w.ws, jobs[1], 40, start_ms=now - 600_000, step_ms=10_000)
    for _ in range(3):
        await w.cycle()
    return w, long


async def end_thirty(w: World, long: list[int]) -> tuple[PollResult, Counter[str], list[int]]:
    """The 30 oldest long runs end, 10 short runs start and end, then a cycle."""
    for run_id in long[:30]:
        w.ws.force(run_id, "TERMINATED", "FAILED")
    w.clock.advance(5)
    short = [w.ws.start_run(1, setup_s=0, execution_s=5, cleanup_s=0) for _ in range(10)]
    result, calls = await w.cycle(25)
    assert {r for r, run in by_id(result).items() if run.is_terminal} == {*long[:30], *short}
    assert w.store.active["ws"] == set(long[30:])
    return result, calls, short


# -- by end time -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_by_end_time_a_cycle_costs_the_minimum(
    make_world: WorldFactory, version: str
) -> None:
    """Where the server lists finished runs by end time, a cycle in which 40 runs ended
    (30 that started hours before the cut-off) reads ceil(active/limit) active pages,
    ceil(ended/limit) completed pages and the settings of the jobs whose runs ended: no
    runs/get."""
    w, long = await long_runs_world(make_world, version, "end_time")
    assert order_of(w.poller) == "end"
    _, calls, _ = await end_thirty(w, long)
    limit = LIMIT[version]
    assert calls == {
        "runs/list": math.ceil(70 / limit) + math.ceil(40 / limit),
        # The settings of the 5 jobs whose runs ended, read afresh (one answer on 2.0).
        **({"jobs/list": 1} if version == "2.0" else {"jobs/get": 5}),
    }
    # Nothing new: the active pages and one completed page.
    _, calls = await w.cycle()
    assert calls == {"runs/list": math.ceil(70 / limit) + 1}


async def test_a_server_that_stops_ordering_by_end_time_is_followed(
    make_world: WorldFactory,
) -> None:
    """A server seen to list by end time that lists by start time after all: the first
    page that says so turns the walk back to the start-time rules, in the same cycle, and
    no run is missed."""
    w, long = await long_runs_world(make_world, "2.1", "end_time")
    assert order_of(w.poller) == "end"
    w.sim.completed_order = "start_time"
    await end_thirty(w, long)
    assert order_of(w.poller) == "start"


# -- by start time ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.1", "2.2"])
async def test_by_start_time_vanished_runs_are_read_a_page_of_starts_at_a_time(
    make_world: WorldFactory, version: str
) -> None:
    """By start time, start_time_from keeps the 30 long runs that ended from the walk (one
    page: the 10 short ones). They are read by pages of the completed runs that started
    when they did, from the newest of them: ceil(30/25) = 2 pages, not 30 runs/get."""
    w, long = await long_runs_world(make_world, version, "start_time")
    assert order_of(w.poller) == "start"
    _, calls, _ = await end_thirty(w, long)
    assert calls == {"runs/list": math.ceil(70 / 25) + 1 + 2, "jobs/get": 5}


async def test_by_start_time_a_page_never_costs_more_than_the_gets_it_replaces(
    make_world: WorldFactory,
) -> None:
    """Three vanished runs with 40 finished runs between each two: each page holds one of
    them at most, so three pages, what their runs/get would cost. A fourth, newer, was
    deleted: no page shows it, so it costs its page and its runs/get (the one case where
    pages cost more than runs/get alone: a deleted run, or one held BLOCKED)."""
    w, long = await long_runs_world(make_world, "2.1", "start_time")
    first = w.ws.runs[long[0]].start_ms
    for i, run_id in enumerate(long[:3]):
        w.ws.force(run_id, "TERMINATED", "FAILED")
        history(w.ws, 2, 40, start_ms=first + i * 1000 + 1, step_ms=1)
    w.ws.delete_run(long[3])
    result, calls = await w.cycle()
    assert calls == {"runs/list": math.ceil(96 / 25) + 1 + 4, "runs/get": 1, "jobs/get": 3}
    assert result.vanished == [long[3]]
    assert all(by_id(result)[r].is_terminal for r in long[:3])


async def test_on_2_0_the_walk_reads_on_to_the_vanished_runs(make_world: WorldFactory) -> None:
    """2.0 cannot ask by start time: the walk reads on past the cut-off (3 pages of 60,
    offsets stepping back 6) through the 80 finished runs that started after the 30 long
    ones that ended, instead of 30 runs/get."""
    w, long = await long_runs_world(make_world, "2.0", "start_time", between=80)
    assert order_of(w.poller) == "start"
    _, calls, _ = await end_thirty(w, long)
    # Completed runs newest first: 10 short, 40 + 80 history, the 30; pages at 0, 54, 108.
    assert calls == {"runs/list": math.ceil(70 / 60) + 3, "jobs/list": 1}


# -- after an API storm ------------------------------------------------------------------------


class StormClock(ManualClock):
    """Manual time that clears the simulator's faults once it reaches `until`: the only
    way time moves in the loop is its sleeps."""

    def __init__(self, until: float, start: float) -> None:
        super().__init__(start)
        self.until = until
        self.faults: list[Any] = []

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        if self.time() >= self.until:
            for plan in self.faults:
                plan.clear()


@pytest.mark.parametrize("storm", [45.0, 20 * 30.0 + 7])
async def test_after_an_api_storm_the_next_cycle_runs_within_one_interval(storm: float) -> None:
    """The API answers 503 to everything for `storm` seconds (long enough, in the second
    case, for the back-off to reach MAX_BACKOFF_INTERVALS): the first good cycle begins
    within one interval of the storm's end, and meanwhile the API got one request an
    interval at most (a probe, or a failing cycle's first request: nothing is retried)."""
    interval = 30.0
    t0 = 1_700_000_000.0
    clock = StormClock(t0 + storm, t0)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        clock.faults.append(sim.faults)
        sim.workspace.create_job("etl")
        client = new_client(sim, clock, "2.1", budget=0)
        sent: list[float] = []
        sim.on_request = lambda _: sent.append(clock.time() - t0)
        poller = Poller(
            config=workspace_config(poll_interval=interval),
            startup=StartupConfig(),
            client=client,
            state=FakeStore(),
            clock=clock,
        )
        sim.faults.add(Fault(kind="status", status=503, times=None))
        stop = asyncio.Event()
        good: list[float] = []

        async def handle(result: PollResult) -> None:
            good.append(clock.time() - t0)
            stop.set()

        try:
            await run_poll_loop(
                poller=poller, handle=handle, clock=clock, stop=stop, rng=random.Random(3)
            )
        finally:
            await client.close()
    assert good
    assert storm < good[0] <= storm + interval
    during = [t for t in sent if t < storm]
    assert len(during) <= storm / interval + 1
    if storm > interval * 15:
        # Back-offs of 1, 2, 4 and 8 intervals: the fifth failure's is the cap.
        assert poller.status.failures >= 5
        assert min(2**4, MAX_BACKOFF_INTERVALS) == MAX_BACKOFF_INTERVALS


async def test_a_cycle_retrying_when_the_api_recovers_is_answered_within_one_interval() -> None:
    """The API fails mid-cycle and recovers 100 s later; the cycle's own retries, with
    the client as `watcher run` builds it, wait at most an interval each: the cycle
    ends within one interval of the recovery (retries of up to 60 s would not)."""
    interval = 30.0
    t0 = 1_700_000_000.0
    storm = 100.0
    clock = StormClock(t0 + storm, t0)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        clock.faults.append(sim.faults)
        sim.workspace.create_job("etl")
        config = workspace_config(host=sim.url, poll_interval=interval, requests_per_second=1000)
        client = make_client(
            config, Metrics(registry=CollectorRegistry()).attempt_hook("ws"), clock
        )
        poller = Poller(
            config=config, startup=StartupConfig(), client=client, state=FakeStore(), clock=clock
        )
        sim.faults.add(Fault(kind="status", status=500, times=None))  # back-off, no Retry-After
        try:
            await poller.poll()
        finally:
            await client.close()
    assert max(clock.slept) <= interval
    assert storm <= clock.time() - t0 <= storm + interval


async def test_a_partial_outage_keeps_the_back_off() -> None:
    """Probes answered while cycles fail (jobs/get answers 503, runs/list does not): an
    answered probe starts one cycle early, and after that one failed too, cycles keep to
    the back-off (2, 4, 8, then 10 intervals) instead of coming every interval."""
    interval = 30.0
    t0 = 1_700_000_000.0
    stop = asyncio.Event()

    class Clock(ManualClock):
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            if self.time() - t0 >= 1000:
                stop.set()

    clock = Clock(t0)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        sim.workspace.start_run(sim.workspace.create_job("etl"), execution_s=3600)
        sim.faults.add(Fault(kind="status", status=503, endpoint="jobs/get", times=None))
        client = new_client(sim, clock, "2.1", budget=0)
        cycles: list[float] = []
        sim.on_request = lambda r: (
            cycles.append(clock.time() - t0) if r.endpoint == "jobs/get" else None
        )
        poller = Poller(
            config=workspace_config(poll_interval=interval),
            startup=StartupConfig(),
            client=client,
            state=FakeStore(),
            clock=clock,
        )

        async def handle(result: PollResult) -> None:
            raise AssertionError("no cycle can succeed")

        try:
            await run_poll_loop(poller=poller, handle=handle, clock=clock, stop=stop)
        finally:
            await client.close()
    # 0 and 30: one interval of back-off; 60: the probe at 30 s past was answered; then
    # 4, 8 and 10 intervals.
    assert cycles == [0, 30, 60, 180, 420, 720]
