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
from watcher.databricks.errors import DatabricksError
from watcher.databricks.models import Run
from watcher.domain import PollResult
from watcher.metrics import Metrics
from watcher.poller import MAX_BACKOFF_INTERVALS, Poller, _order_shown, run_poll_loop
from watcher.simulator import Fault, Simulator
from watcher.simulator.server import LoggedRequest
from watcher.simulator.workspace import Workspace

LIMIT = {"2.0": 60, "2.1": 25, "2.2": 25}
"""runs/list page sizes: the simulator states 60 on 2.0 (the client adopts it), so that
pages matter with a hundred runs."""
HOUR_MS = 3_600_000
OVERLAP_MS = 302_000
"""completed_overlap (300 s by default) and the Date header's 2 s: how far before the
watermark a walk reads, by either order."""


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


class AheadClient(JobsClient):
    """A client whose Date-header estimate runs `ahead` seconds ahead of the times the jobs
    service stamps on runs: a slow answer (its Date is taken for the round trip's
    midpoint), or the front end's clock ahead of the jobs service's."""

    ahead = 0.0

    def _note_server_time(self, date_header: str | None, round_trip: float) -> None:
        super()._note_server_time(date_header, round_trip)
        if self.server_offset is not None:
            self.server_offset += self.ahead


def order_of(poller: Poller) -> str | None:
    """The order the poller has seen (read anew each time: a cycle may change it)."""
    return poller.completed_order


@pytest.fixture
async def make_world(clock: ManualClock) -> AsyncIterator[WorldFactory]:
    async with AsyncExitStack() as stack:

        async def factory(*, version: str, order: str, ahead: float = 0.0, **config: Any) -> World:
            sim = Simulator(
                clock=clock,
                tokens={TOKEN},
                completed_order=order,  # type: ignore[arg-type]
                runs_limit_max=dict(LIMIT),
            )
            await stack.enter_async_context(sim)
            client = new_client(sim, clock, version, cls=AheadClient)
            assert isinstance(client, AheadClient)
            client.ahead = ahead
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


def ended_since(w: World, cutoff: int) -> int:
    """Runs that ended between `cutoff` and now: what a walk by end time reads."""
    now = w.ws.now_ms()
    return sum(
        1 for run in w.ws.runs.values() if (end := run.end_ms) is not None and cutoff <= end <= now
    )


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_by_end_time_a_cycle_reads_the_pages_of_what_ended_since_the_cut_off(
    make_world: WorldFactory, version: str
) -> None:
    """Where the server lists finished runs by end time, a cycle in which 40 runs ended
    (30 that started hours before the cut-off) reads ceil(active/limit) active pages, the
    completed pages of what ended since the cut-off (completed_overlap before the
    watermark: the margin for a slow answer or a skewed clock, as by start time) and the
    settings of the jobs whose runs ended: no runs/get."""
    w, long = await long_runs_world(make_world, version, "end_time")
    assert order_of(w.poller) == "end"
    cutoff = w.store.watermark["ws"] - OVERLAP_MS
    _, calls, _ = await end_thirty(w, long)
    ended = ended_since(w, cutoff)
    limit = LIMIT[version]
    assert 40 <= ended < 54  # the 40 and a few of the history: one page on 2.0, two on 2.1+
    assert calls == {
        # The walk stops at the first page that ends past the cut-off.
        "runs/list": math.ceil(70 / limit) + ended // limit + 1,
        # The settings of the 5 jobs whose runs ended, read afresh (one answer on 2.0).
        **({"jobs/list": 1} if version == "2.0" else {"jobs/get": 5}),
    }
    # Nothing new: the active pages and the completed pages of what ended in the overlap.
    cutoff = w.store.watermark["ws"] - OVERLAP_MS
    _, calls = await w.cycle()
    ended = ended_since(w, cutoff)
    assert calls == {"runs/list": math.ceil(70 / limit) + ended // limit + 1}


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


def committed(w: World) -> set[int]:
    """The runs committed finished."""
    return {r for r, run in w.store.runs["ws"].items() if run.is_terminal}


@pytest.mark.parametrize("version", ["2.0", "2.1"])
async def test_by_end_time_a_date_header_ahead_of_the_runs_hides_none(
    make_world: WorldFactory, version: str
) -> None:
    """The Date header's estimate runs 5 s ahead of the runs' times (one slow answer, or
    a skewed clock), so the watermark does too. Then more than a page of runs start and
    end before the next cycle: 10 within those 5 s, the rest after. By end time the walk
    reads back completed_overlap before the watermark, as by start time, and finds all;
    a walk that stopped 2 s before the watermark would stop at the first page, whose last
    run ended before that, and miss the 5 on the next."""
    w = await make_world(version=version, order="end_time", ahead=5.0)
    job = w.ws.create_job("etl")
    history(w.ws, job, 40, start_ms=w.ws.now_ms() - 600_000, step_ms=10_000)
    for _ in range(3):
        await w.cycle()
    assert order_of(w.poller) == "end"
    t = w.ws.now_ms()  # the last cycle's instant, by the runs' times
    assert w.store.watermark["ws"] - t >= 5_000
    limit = LIMIT[version]
    within = [
        w.ws.start_run(
            job, start_ms=t + 100 + i * 250, setup_s=0, execution_s=0.2 + i % 3 * 0.1, cleanup_s=0
        )
        for i in range(10)
    ]
    after = [
        w.ws.start_run(
            job, start_ms=t + 4_000 + i * 300, setup_s=0, execution_s=0.5 + i % 4 * 0.2, cleanup_s=0
        )
        for i in range(limit - 5)
    ]
    result, _ = await w.cycle()
    assert order_of(w.poller) == "end"
    assert {*within, *after} <= {r for r, run in by_id(result).items() if run.is_terminal}


@pytest.mark.parametrize("version", ["2.0", "2.1"])
async def test_by_end_time_a_run_listed_without_an_end_time_stops_no_walk(
    make_world: WorldFactory, version: str
) -> None:
    """A finished run listed with end_time 0, the last of a completed page: the walk by
    end time judges the page by the last run that has an end time, reads on, and finds
    the runs of the next page that ended since the last cycle."""
    w = await make_world(version=version, order="end_time")
    job = w.ws.create_job("etl")
    history(w.ws, job, 40, start_ms=w.ws.now_ms() - 600_000, step_ms=10_000)
    for _ in range(3):
        await w.cycle()
    assert order_of(w.poller) == "end"
    t = w.ws.now_ms()
    limit = LIMIT[version]
    runs = [
        w.ws.start_run(
            job,
            start_ms=t + 1000 + i * 200,
            setup_s=0,
            execution_s=0.2 + i % 7 * 0.5,
            cleanup_s=0,
        )
        for i in range(limit + 10)
    ]
    by_end = sorted(runs, key=lambda r: (w.ws.runs[r].end_ms or 0, r), reverse=True)
    bad = by_end[limit - 1]  # the last run of the first completed page
    w.ws.poison_run(bad, {"end_time": 0})
    for _ in range(2):
        await w.cycle(29)
    assert set(runs) - {bad} <= committed(w)


def test_a_run_without_an_end_time_shows_no_order() -> None:
    """Runs listed without an end time (or a start time) are left out when a page's
    order is judged: by end time, one with end_time 0 amid the page would otherwise
    look like start order."""
    page = [
        Run(run_id=1, start_time=1_000, end_time=9_000),
        Run(run_id=2, start_time=3_000, end_time=None),
        Run(run_id=3, start_time=2_000, end_time=8_000),
        Run(run_id=4, start_time=5_000, end_time=7_000),
    ]
    assert _order_shown(page, None) == "end"
    assert _order_shown(page[:3], "end") == "end"
    assert _order_shown([page[1], *page[:1]], None) is None


async def test_an_order_learned_before_does_not_stop_this_walk(
    make_world: WorldFactory,
) -> None:
    """The server listed finished runs by end time, then (a rolling deploy) by start time,
    and the next cycle's first completed page tells nothing (runs of equal durations:
    start and end times both fall). The walk does not stop there by the end-time rule
    it learned before: a run born BLOCKED that started a minute before the watermark,
    within completed_overlap, and failed after it, is found by that cycle."""
    w = await make_world(version="2.1", order="end_time")
    job = w.ws.create_job("etl")
    other = w.ws.create_job("periodic")
    history(w.ws, job, 40, start_ms=w.ws.now_ms() - 600_000, step_ms=10_000)
    for _ in range(3):
        await w.cycle()
    assert order_of(w.poller) == "end"
    watermark = w.store.watermark["ws"]
    for i in range(25):
        w.ws.start_run(
            other, start_ms=watermark - 55_000 + i * 1000, setup_s=0, execution_s=20, cleanup_s=0
        )
    blocked = w.ws.start_run(
        job, start_ms=watermark - 60_000, hold_state="BLOCKED", result="FAILED"
    )
    w.sim.completed_order = "start_time"
    w.clock.advance(5)
    w.ws.force(blocked, "TERMINATED", "FAILED")
    await w.cycle(25)
    assert blocked in committed(w)


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


async def partial_outage(heal: float) -> tuple[list[float], list[float], float | None]:
    """jobs/get answers 503 until `heal` seconds (runs/list answers all along), a poll loop
    with an interval of 30 s runs for 1,000 s (or until its first good cycle): when its
    cycles began, when it sent jobs/get (a cycle's or a probe's), and when the first good
    cycle began."""
    t0 = 1_700_000_000.0
    stop = asyncio.Event()
    clock = StormClock(t0 + heal, t0)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        clock.faults.append(sim.faults)
        sim.workspace.start_run(sim.workspace.create_job("etl"), execution_s=36_000)
        sim.faults.add(Fault(kind="status", status=503, endpoint="jobs/get", times=None))
        client = new_client(sim, clock, "2.1", budget=0)
        cycles: list[float] = []
        gets: list[float] = []

        def sent(request: LoggedRequest) -> None:
            at = clock.time() - t0
            if at >= 1000:
                stop.set()
            elif request.endpoint == "jobs/get":
                gets.append(at)
            elif request.params.get("active_only") == "true" and request.params["limit"] != "1":
                cycles.append(at)  # a cycle's first request

        sim.on_request = sent
        poller = Poller(
            config=workspace_config(poll_interval=30.0),
            startup=StartupConfig(),
            client=client,
            state=FakeStore(),
            clock=clock,
        )
        good: list[float] = []

        async def handle(result: PollResult) -> None:
            good.append(clock.time() - t0)
            stop.set()

        try:
            await run_poll_loop(poller=poller, handle=handle, clock=clock, stop=stop)
        finally:
            await client.close()
    return cycles, gets, good[0] if good else None


async def test_a_partial_outage_keeps_the_back_off() -> None:
    """Probes go where the cycles fail (jobs/get answers 503, runs/list does not): they
    fail too, so the cycles keep to the back-off (1, 2, 4, 8, then 10 intervals) instead
    of coming every interval, and jobs/get is asked once an interval (a probe, or a
    cycle's)."""
    cycles, gets, good = await partial_outage(heal=math.inf)
    assert good is None
    assert cycles == [0, 30, 90, 210, 450, 750]
    assert gets == [30.0 * i for i in range(34)]


async def test_a_partial_outage_that_heals_is_seen_within_one_interval() -> None:
    """jobs/get answers again 200 s into the outage: the first probe after that (of
    jobs/get, where the cycles failed) is answered, and the good cycle begins there and
    then, not a back-off of up to 10 intervals later."""
    cycles, _, good = await partial_outage(heal=200.0)
    assert good is not None
    assert 200 < good <= 230
    assert cycles == [0, 30, 90, good]


async def test_a_refused_token_is_not_probed() -> None:
    """A revoked token (every request answers 403) for an hour: no probe could see it heal
    by itself, so none is sent. The cycles keep to the back-off (at most 10 intervals),
    one request each: 15 in the hour, not one an interval."""
    t0 = 1_700_000_000.0
    stop = asyncio.Event()

    class Clock(ManualClock):
        async def sleep(self, seconds: float) -> None:
            await super().sleep(seconds)
            if self.time() - t0 >= 3600:
                stop.set()

    clock = Clock(t0)
    async with Simulator(clock=clock, tokens={"another-token"}) as sim:
        sim.workspace.create_job("etl")
        client = new_client(sim, clock, "2.1", budget=300)
        poller = Poller(
            config=workspace_config(poll_interval=30.0),
            startup=StartupConfig(),
            client=client,
            state=FakeStore(),
            clock=clock,
        )

        async def handle(result: PollResult) -> None:
            raise AssertionError("no cycle can succeed")

        try:
            await run_poll_loop(
                poller=poller, handle=handle, clock=clock, stop=stop, rng=random.Random(1)
            )
        finally:
            await client.close()
    assert {r.status for r in sim.requests} == {403}
    assert len(sim.requests) == poller.status.failures
    # Back-offs of 1, 2, 4, 8 and then 10 intervals (plus jitter) fill the hour.
    assert 14 <= len(sim.requests) <= 15


async def test_probes_wait_for_the_retry_after_the_api_asked_for() -> None:
    """Throttled (429, Retry-After: 120) with an interval of 30 s: the probes between the
    backed-off cycles come no sooner than 120 s after the request before them."""
    t0 = 1_700_000_000.0
    clock = StormClock(t0 + 1000, t0)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        clock.faults.append(sim.faults)
        sim.workspace.create_job("etl")
        client = new_client(sim, clock, "2.1", budget=0)
        sent: list[tuple[float, bool]] = []  # (time, probe)
        sim.on_request = lambda r: sent.append((clock.time() - t0, r.params.get("limit") == "1"))
        poller = Poller(
            config=workspace_config(poll_interval=30.0),
            startup=StartupConfig(),
            client=client,
            state=FakeStore(),
            clock=clock,
        )
        sim.faults.add(Fault(kind="status", status=429, retry_after="120", times=None))
        stop = asyncio.Event()

        async def handle(result: PollResult) -> None:
            stop.set()

        try:
            await run_poll_loop(poller=poller, handle=handle, clock=clock, stop=stop)
        finally:
            await client.close()
    probes = [i for i, (at, probe) in enumerate(sent) if probe and at < 1000]
    assert probes
    assert all(sent[i][0] - sent[i - 1][0] >= 120 for i in probes)


async def test_a_probe_is_sent_once_whatever_the_retry_budget(clock: ManualClock) -> None:
    """A probe is one request, not retried, though the client retries its calls for up to
    30 s: after a cycle gave up on jobs/get, it asks jobs/get again, once, and no time
    passes waiting."""
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        job = sim.workspace.create_job("etl")
        client = new_client(sim, clock, "2.1", budget=30)
        try:
            sim.faults.add(Fault(kind="status", status=503, endpoint="jobs/get", times=None))
            with pytest.raises(DatabricksError):
                await client.get_job(job)
            assert sum(r.endpoint == "jobs/get" for r in sim.requests) > 1  # retried
            before, began = len(sim.requests), clock.time()
            assert not await client.probe()
            assert [r.endpoint for r in sim.requests[before:]] == ["jobs/get"]
            assert clock.time() == began
            sim.faults.clear()
            assert await client.probe()
            assert [r.endpoint for r in sim.requests[before:]] == ["jobs/get"] * 2
        finally:
            await client.close()
