"""The incremental run poller against the simulator over real HTTP, in simulated time."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from tests.conftest import TOKEN
from watcher.clock import Clock, ManualClock
from watcher.config import JobFilter, JobMatch, StartupConfig, WorkspaceConfig
from watcher.databricks import ApiError, JobsClient, RetryBudgetExceeded, RetryPolicy, StaticToken
from watcher.databricks.client import MAX_RUNS_LIMIT
from watcher.databricks.models import Run
from watcher.domain import PollResult
from watcher.poller import Poller, run_poll_loop
from watcher.simulator import Fault, Simulator, TaskPlan
from watcher.simulator.workspace import SimRun, Workspace
from watcher.store.base import WorkspaceState

VERSIONS = ["2.0", "2.1", "2.2"]
ORDERS = ["start_time", "end_time"]
T0 = 1_700_000_000.0


# -- test doubles ----------------------------------------------------------------------


class FakeStore:
    """The Store's `workspace_state`, and a commit that applies a PollResult as
    commit_cycle would: the watermark from the result; active runs are those observed not
    terminal, minus those observed terminal or vanished."""

    def __init__(self) -> None:
        self.watermark: dict[str, int] = {}
        self.news_since: dict[str, int] = {}
        self.active: dict[str, set[int]] = defaultdict(set)
        self.runs: dict[str, dict[int, Run]] = defaultdict(dict)
        self.vanished: dict[str, set[int]] = defaultdict(set)
        self.commits: dict[str, list[float]] = defaultdict(list)

    async def workspace_state(self, workspace: str) -> WorkspaceState:
        return WorkspaceState(
            self.watermark.get(workspace),
            frozenset(self.active[workspace]),
            self.news_since.get(workspace),
        )

    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]:
        runs = self.runs[workspace]
        return {r: runs[r].end_time or 0 for r in run_ids if r in runs and runs[r].is_terminal}

    def commit(self, result: PollResult, at: float = 0.0) -> None:
        ws = result.workspace
        ids = [r.run_id for r in result.runs]
        assert len(ids) == len(set(ids)), "a run observed twice in one cycle"
        for run in result.runs:
            before = self.runs[ws].get(run.run_id)
            assert before is None or not before.is_terminal or run.is_terminal, "moved back"
            self.runs[ws][run.run_id] = run
            if run.is_terminal:
                self.active[ws].discard(run.run_id)
            else:
                self.active[ws].add(run.run_id)
        self.active[ws] -= set(result.vanished)
        self.vanished[ws] |= set(result.vanished)
        self.watermark[ws] = result.watermark_ms
        self.news_since[ws] = max(self.news_since.get(ws, 0), result.news_since_ms)
        self.commits[ws].append(at)


class VirtualClock:
    """Simulated time shared by several tasks: `sleep` really waits, until `run` moves time
    to its deadline. Time only moves once every expected sleeper is asleep, so whatever is
    due at one instant (HTTP included) finishes before the next instant comes."""

    def __init__(self, start: float = T0) -> None:
        self._now = start
        self._queue: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._asleep = asyncio.Event()
        self._limits: list[tuple[float, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (self._now + max(0.0, seconds), next(self._seq), future))
        self._asleep.set()
        await future

    async def elapse(self, seconds: float) -> None:
        """A time limit: done once `run` has moved time `seconds` on. It is no sleeper: it
        neither counts as a task asleep nor makes `run` stop at its deadline."""
        if seconds <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._limits.append((self._now + seconds, future))
        await future

    def _end_limits(self) -> None:
        for deadline, future in self._limits:
            if deadline <= self._now and not future.done():
                future.set_result(None)
        self._limits = [(d, f) for d, f in self._limits if not f.done()]

    def sleeping(self) -> int:
        return sum(not future.done() for *_, future in self._queue)

    async def settle(self, sleepers: int) -> None:
        while self.sleeping() < sleepers:
            self._asleep.clear()
            # A safety net against a hung test, not a timing assertion.
            await asyncio.wait_for(self._asleep.wait(), timeout=30)

    async def run(self, until: float, *, sleepers: int) -> None:
        while True:
            await self.settle(sleepers)
            while self._queue and self._queue[0][2].done():
                heapq.heappop(self._queue)
            if not self._queue or self._queue[0][0] > until:
                self._now = max(self._now, until)
                self._end_limits()
                return
            self._now = max(self._now, self._queue[0][0])
            self._end_limits()
            while self._queue and self._queue[0][0] <= self._now:
                future = heapq.heappop(self._queue)[2]
                if not future.done():
                    future.set_result(None)


def workspace_config(name: str = "ws", **overrides: Any) -> WorkspaceConfig:
    fields: dict[str, Any] = {
        "name": name,
        "host": "http://127.0.0.1",
        "auth": {"type": "pat", "token": TOKEN},
        # Request counts below are the cheap cycle's; the sweep's tests turn it on.
        "reconcile": {"enabled": False},
    }
    fields.update(overrides)
    return WorkspaceConfig.model_validate(fields)


def new_client(
    sim: Simulator,
    clock: Clock,
    version: str,
    budget: float = 30.0,
    cls: type[JobsClient] = JobsClient,
) -> JobsClient:
    return cls(
        host=sim.url,
        auth=StaticToken(SecretStr(TOKEN)),
        api_version=version,  # type: ignore[arg-type]
        clock=clock,
        requests_per_second=1000.0,
        retry=RetryPolicy(budget=budget),
    )


@dataclass
class World:
    """One simulated workspace, a client, a poller and the fake store, in manual time."""

    sim: Simulator
    clock: ManualClock
    stack: AsyncExitStack
    version: str
    config: WorkspaceConfig
    startup: StartupConfig
    store: FakeStore = field(default_factory=FakeStore)
    client: JobsClient = field(init=False)
    poller: Poller = field(init=False)

    def __post_init__(self) -> None:
        self.restart()

    @property
    def ws(self) -> Workspace:
        return self.sim.workspace

    def restart(self, budget: float = 30.0) -> None:
        """A new process: new client (no skew estimate), new poller (empty caches)."""
        self.client = new_client(self.sim, self.clock, self.version, budget)
        self.stack.push_async_callback(self.client.close)
        self.poller = Poller(
            config=self.config,
            startup=self.startup,
            client=self.client,
            state=self.store,
            clock=self.clock,
        )

    async def cycle(self) -> PollResult:
        """Poll and commit; the poller's request count must match the server's log."""
        before = len(self.sim.requests)
        result = await self.poller.poll()
        assert result.requests == len(self.sim.requests) - before
        self.store.commit(result)
        return result

    def calls(self, since: int = 0) -> Counter[str]:
        return Counter(r.endpoint for r in self.sim.requests[since:])


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def make_world(clock: ManualClock) -> AsyncIterator[WorldFactory]:
    async with AsyncExitStack() as stack:

        async def factory(
            *,
            version: str = "2.1",
            order: str = "start_time",
            startup: StartupConfig | None = None,
            **config: Any,
        ) -> World:
            sim = Simulator(clock=clock, tokens={TOKEN}, completed_order=order)  # type: ignore[arg-type]
            await stack.enter_async_context(sim)
            return World(
                sim=sim,
                clock=clock,
                stack=stack,
                version=version,
                config=workspace_config(**config),
                startup=startup or StartupConfig(),
            )

        yield factory


def by_id(result: PollResult) -> dict[int, Run]:
    return {r.run_id: r for r in result.runs}


# -- what a cycle sees -------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", VERSIONS)
async def test_run_started_and_finished_between_cycles_is_observed_finished(
    make_world: WorldFactory, clock: ManualClock, version: str, order: str
) -> None:
    """A run that starts and ends between two cycles is observed once, finished, with its
    job's settings; the cycle costs active + completed + one jobs/get. The watermark is
    the server's time at the start of the cycle."""
    w = await make_world(version=version, order=order)
    job = w.ws.create_job("nightly-etl")
    assert (await w.cycle()).runs == []
    clock.advance(5)
    run_id = w.ws.start_run(job, setup_s=1, execution_s=10, cleanup_s=1, result="FAILED")
    clock.advance(25)
    result = await w.cycle()
    [observed] = result.runs
    assert observed.run_id == run_id
    assert (observed.life_cycle_state, observed.result_state) == ("TERMINATED", "FAILED")
    assert result.news_since_ms <= (observed.start_time or 0)
    assert result.jobs[job].settings.name == "nightly-etl"
    assert result.requests == 3
    assert abs(result.watermark_ms - clock.time() * 1000) <= 1000
    assert result.server_now_ms == result.watermark_ms
    assert w.store.active["ws"] == set()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", VERSIONS)
async def test_long_run_started_before_the_watermark_is_observed_finished(
    make_world: WorldFactory, clock: ManualClock, version: str, order: str
) -> None:
    """A run that started hours before the watermark and ends now is observed finished:
    where start_time_from hides it from the completed walk (2.1+), through one runs/list
    page of the completed runs that started when it did (no dearer than its runs/get); on
    2.0 the walk itself returns it."""
    w = await make_world(version=version, order=order)
    job = w.ws.create_job("long")
    long_id = w.ws.start_run(job, execution_s=5 * 3600)
    for _ in range(4):
        clock.advance(1200)
        w.ws.start_run(job, setup_s=1, execution_s=20, cleanup_s=1)
        result = await w.cycle()
        assert not by_id(result)[long_id].is_terminal
    w.ws.force(long_id, "TERMINATED", "FAILED")
    clock.advance(30)
    mark = len(w.sim.requests)
    result = await w.cycle()
    assert by_id(result)[long_id].result_state == "FAILED"
    assert w.store.active["ws"] == set()
    assert w.calls(mark)["runs/get"] == 0
    starts = [r.params.get("start_time_to") for r in w.sim.requests[mark:]]
    assert starts.count(str(w.ws.runs[long_id].start_ms)) == (0 if version == "2.0" else 1)


@pytest.mark.parametrize("version", ["2.0", "2.1"])
async def test_runs_started_and_deleted_during_a_multi_page_walk_are_neither_missed_nor_duplicated(
    make_world: WorldFactory, clock: ManualClock, version: str
) -> None:
    """Runs deleted after their page was served shift offset pages up, runs appearing
    mid-walk push them down: every surviving run is still observed, exactly once, and a
    deleted run the store held active is closed out as vanished (in both walks)."""
    w = await make_world(version=version)
    limit = MAX_RUNS_LIMIT[version]
    served_victims, unserved_victims, appearing = (40, 5, 30) if version == "2.0" else (3, 2, 4)
    jobs = [w.ws.create_job(f"job-{i}") for i in range(10)]
    n = limit + limit // 2
    # All end at T0 + 115 s: active in the first two cycles, completed in the third.
    runs = [w.ws.start_run(jobs[i % 10], execution_s=100) for i in range(n)]
    clock.advance(10)
    await w.cycle()
    assert w.store.active["ws"] == set(runs)

    def mutate_once(
        pick: Callable[[list[SimRun]], bool], appear: Callable[[Workspace], int]
    ) -> tuple[list[int], list[int], list[int]]:
        deleted_served: list[int] = []
        deleted_unserved: list[int] = []
        appeared: list[int] = []

        def hook(workspace: Workspace, page: list[SimRun]) -> None:
            if deleted_served or not pick(page):
                return
            served = {r.run_id for r in page}
            deleted_served.extend(r.run_id for r in page[:served_victims])
            deleted_unserved.extend(
                [r for r in sorted(workspace.runs) if r not in served and r in runs][
                    :unserved_victims
                ]
            )
            for run_id in deleted_served + deleted_unserved:
                workspace.delete_run(run_id)
            appeared.extend(appear(workspace) for _ in range(appearing))

        w.ws.list_hooks[:] = [hook]
        return deleted_served, deleted_unserved, appeared

    # 1. The active walk, mutated after its first page.
    clock.advance(60)
    served, unserved, appeared = mutate_once(
        lambda page: bool(page), lambda ws: ws.start_run(jobs[0], execution_s=100)
    )
    mark = len(w.sim.requests)
    result = await w.cycle()
    seen = by_id(result)
    survivors = set(runs) - set(served) - set(unserved)
    assert survivors | set(served) <= seen.keys()
    assert set(result.vanished) == set(unserved)
    # The walk itself lost nothing: runs/get was needed only for the runs really gone.
    assert w.calls(mark)["runs/get"] == len(unserved)
    # 2. The completed walk (everything has ended), mutated after its first page; the
    #    runs that appear there had started (and ended) in the past.
    clock.advance(130)
    now_ms = w.ws.now_ms()
    served2, unserved2, appeared2 = mutate_once(
        lambda page: bool(page) and all(r.ended_by(now_ms) for r in page),
        lambda ws: ws.start_run(jobs[1], setup_s=1, execution_s=5, start_ms=now_ms - 60_000),
    )
    mark = len(w.sim.requests)
    result = await w.cycle()
    seen = by_id(result)
    survivors2 = survivors - set(served2) - set(unserved2)
    assert survivors2 | set(served2) | set(appeared) <= seen.keys()
    assert all(seen[r].is_terminal for r in survivors2)
    assert set(result.vanished) == set(unserved2) | set(served)
    assert w.calls(mark)["runs/get"] == len(result.vanished)
    w.ws.list_hooks.clear()
    clock.advance(30)
    result = await w.cycle()
    assert set(appeared2) <= by_id(result).keys()
    assert result.vanished == []
    assert w.store.active["ws"] == set()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", ["2.0", "2.1"])
async def test_completed_walk_stops_at_the_first_page_wholly_before_the_cutoff(
    make_world: WorldFactory, clock: ManualClock, version: str, order: str
) -> None:
    """Under either ordering the completed walk stops at the first page on which every run
    started and ended before watermark - overlap, or sooner: one request on 2.1 where
    start_time_from cuts the list; on 2.0 with 2,100 old runs, by end time one (the first
    page shows that order, and its last run ended before the cut-off). A long run
    finishing now is at the top when ordered by end time; else 2.0 reads on to it (two
    pages more, instead of its runs/get), and 2.1 reads one page of the runs that started
    when it did."""
    w = await make_world(version=version, order=order)
    job = w.ws.create_job("busy")
    long_id = w.ws.start_run(job, start_ms=w.ws.now_ms() - 3 * 3600_000, execution_s=4 * 3600)
    base = w.ws.now_ms() - 2 * 3600_000
    for i in range(2100):
        w.ws.start_run(job, start_ms=base + i * 1000, setup_s=0, execution_s=1, cleanup_s=0)
    await w.cycle()
    clock.advance(60)
    fresh = [w.ws.start_run(job, setup_s=1, execution_s=5, cleanup_s=1) for _ in range(3)]
    w.ws.force(long_id, "TERMINATED", "SUCCESS")
    clock.advance(30)
    mark = len(w.sim.requests)
    result = await w.cycle()
    assert set(by_id(result)) == {*fresh, long_id}
    completed = [r.params for r in w.sim.requests[mark:] if "completed_only" in r.params]
    by_end = order == "end_time" and version == "2.0"
    assert len(completed) == (1 if by_end else 3 if version == "2.0" else 2)
    assert all(("start_time_from" in p) == (version != "2.0") for p in completed)
    assert w.calls(mark)["runs/get"] == 0


async def test_restart_after_downtime_sees_what_happened_meanwhile(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """A new poller (new client, empty caches) over the same store resumes from the stored
    watermark: runs that started and ended while it was down, a run it had seen active
    that ended meanwhile, and runs still going are all observed, none as backfill."""
    w = await make_world(version="2.1")
    job = w.ws.create_job("etl")
    long_id = w.ws.start_run(job, execution_s=3600)
    clock.advance(10)
    await w.cycle()
    clock.advance(30)
    await w.cycle()
    down_since = w.store.watermark["ws"]
    clock.advance(600)
    quick = w.ws.start_run(job, setup_s=1, execution_s=60, cleanup_s=1, result="FAILED")
    clock.advance(1800)
    skipped = w.ws.start_run(job, end_state="SKIPPED")
    clock.advance(1800)
    still = w.ws.start_run(job, execution_s=4 * 3600)
    clock.advance(1800)
    w.restart()
    result = await w.cycle()
    seen = by_id(result)
    assert seen[quick].result_state == "FAILED"
    assert seen[skipped].life_cycle_state == "SKIPPED"
    assert seen[long_id].result_state == "SUCCESS"
    assert not seen[still].is_terminal
    # The news horizon is the first start's, whatever the downtime.
    assert result.news_since_ms <= (seen[long_id].start_time or 0)
    assert w.store.watermark["ws"] > down_since
    assert w.store.active["ws"] == {still}


async def test_catch_up_is_bounded_by_max_catchup_yet_stored_active_runs_close(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """After downtime longer than startup.max_catchup, runs that ended before the catch-up
    window are skipped (and the truncation is logged), but runs the store held active are
    still closed out, and a run that started before the window but ended inside it is seen
    (on 2.1+ too, where start_time_from filters on start)."""
    w = await make_world(version="2.1", startup=StartupConfig(max_catchup=3600))
    job = w.ws.create_job("etl")
    long_id = w.ws.start_run(job, execution_s=1800)
    clock.advance(10)
    await w.cycle()
    clock.advance(60)
    early = w.ws.start_run(job, setup_s=1, execution_s=60, cleanup_s=1)
    straddling = w.ws.start_run(w.ws.create_job("slow"), execution_s=2.9 * 3600, result="FAILED")
    clock.advance(3 * 3600)
    late = w.ws.start_run(job, setup_s=1, execution_s=60, cleanup_s=1)
    clock.advance(300)
    w.restart()
    with structlog.testing.capture_logs() as logs:
        result = await w.cycle()
    seen = by_id(result)
    assert early not in seen
    assert seen[straddling].result_state == "FAILED"
    assert seen[late].is_terminal
    assert seen[long_id].is_terminal
    [warning] = [e for e in logs if e["event"] == "poll_catchup_truncated"]
    assert warning["workspace"] == "ws"
    assert warning["skipped_seconds"] > 3 * 3600 - 3600


@pytest.mark.parametrize("version", ["2.0", "2.1"])
async def test_first_start_records_the_lookback_and_news_starts_at_the_start(
    make_world: WorldFactory, clock: ManualClock, version: str
) -> None:
    """With no stored state, the first cycle records runs that ended within
    startup.lookback and runs active at that moment; older runs are not recorded. What
    happened before the watcher started is history (news_since_ms is the start instant,
    kept by later cycles)."""
    w = await make_world(version=version, startup=StartupConfig(lookback=3600))
    job = w.ws.create_job("etl")
    now = w.ws.now_ms()
    ancient = w.ws.start_run(job, start_ms=now - 7200_000, execution_s=60)
    recent = w.ws.start_run(job, start_ms=now - 1800_000, execution_s=60, result="FAILED")
    running = w.ws.start_run(job, execution_s=120)
    result = await w.cycle()
    assert set(by_id(result)) == {recent, running}
    assert abs(result.news_since_ms - now) <= 3000
    assert (by_id(result)[recent].end_time or 0) < result.news_since_ms
    clock.advance(300)
    later = await w.cycle()
    assert by_id(later)[running].is_terminal
    assert later.news_since_ms == result.news_since_ms
    assert ancient not in w.store.runs["ws"]
    # Long after, beyond any overlap: still the start, not a window that follows the walk.
    clock.advance(3 * 3600)
    assert (await w.cycle()).news_since_ms == result.news_since_ms


@pytest.mark.parametrize("version", ["2.0", "2.1"])
async def test_first_start_whose_first_cycles_fail_still_sees_runs_ended_since(
    make_world: WorldFactory, clock: ManualClock, version: str
) -> None:
    """News is decided by time, not by cycle: the watcher starts, its first cycles fail
    (a bad token, then a 503 storm) for longer than startup.lookback, runs end meanwhile;
    the first good cycle still reads every run that ended after the start, and they are
    news (they ended after news_since_ms)."""
    w = await make_world(version=version, startup=StartupConfig(lookback=600))
    job = w.ws.create_job("etl")
    born = w.ws.now_ms()
    w.sim.tokens.clear()
    with pytest.raises(ApiError):
        await w.cycle()
    ended = []
    for _ in range(4):
        clock.advance(300)
        ended.append(w.ws.start_run(job, setup_s=1, execution_s=30, cleanup_s=1, result="FAILED"))
        w.sim.faults.add(Fault(endpoint="runs/list", kind="status", status=503, times=None))
        with pytest.raises(RetryBudgetExceeded):
            await w.cycle()
        w.sim.faults.clear()
    w.sim.tokens.add(TOKEN)
    clock.advance(60)
    result = await w.cycle()
    assert abs(result.news_since_ms - born) <= 3000
    seen = by_id(result)
    assert set(ended) <= set(seen)
    assert all((seen[r].end_time or 0) > result.news_since_ms for r in ended)


# -- request budget ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_steady_cycle_request_count_is_bounded(
    make_world: WorldFactory, clock: ManualClock, version: str
) -> None:
    """A steady cycle costs at most ceil(active/limit) + ceil(new_completed/limit) +
    vanished + new_jobs + 1 requests (vanished: stored-active runs no longer active, each
    possibly a runs/get), and a cycle with nothing new at most two plus one per page of
    active runs."""
    w = await make_world(version=version, completed_overlap=30)
    limit = MAX_RUNS_LIMIT[version]
    jobs = [w.ws.create_job(f"job-{i}") for i in range(12)]
    steady = [w.ws.start_run(jobs[i % 12], execution_s=36_000) for i in range(60)]
    ending = [w.ws.start_run(jobs[i], setup_s=10, execution_s=85) for i in range(4)]
    clock.advance(10)
    await w.cycle()
    clock.advance(60)
    await w.cycle()
    # Between this cycle and the next: 7 runs start and end, the 4 older runs end,
    # a new job starts a run and one stored-active run is deleted.
    clock.advance(5)
    quick = [w.ws.start_run(jobs[i], setup_s=1, execution_s=18, cleanup_s=1) for i in range(7)]
    new_job = w.ws.create_job("new-job")
    w.ws.start_run(new_job, execution_s=3600)
    w.ws.delete_run(steady[0])
    clock.advance(55)
    stored_active = set(w.store.active["ws"])
    active = len(w.ws.active_runs())
    new_completed = len(quick) + len(ending)
    vanished = len(stored_active - {r.run_id for r in w.ws.active_runs()})
    mark = len(w.sim.requests)
    result = await w.cycle()
    bound = math.ceil(active / limit) + math.ceil(new_completed / limit) + vanished + 1 + 1
    assert result.requests <= bound
    assert set(quick + ending) <= by_id(result).keys()
    assert result.vanished == [steady[0]]
    assert w.calls(mark) == {
        # On 2.1+ one more page: the completed runs that started when the 4 older ones
        # did, which start_time_from kept from the walk (2.0's walk returns them).
        "runs/list": math.ceil(active / limit) + (1 if version == "2.0" else 2),
        "runs/get": 1,  # the deleted run
        # The settings of the 7 jobs whose runs ended are read afresh, and the new job's:
        # one jobs/list page is cheaper than 8 jobs/get.
        "jobs/list": 1,
    }
    # Nothing new: the active pages and one completed page.
    clock.advance(60)
    result = await w.cycle()
    assert result.requests == math.ceil(active / limit) + 1 <= 2 + math.ceil(active / limit)


async def test_job_settings_are_cached_for_their_ttl(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """jobs/get runs once per job until job_settings_ttl (less a spread of up to a quarter)
    expires, then refreshes (seeing a rename); a job that no longer exists is omitted from
    the result, not an error, and is not asked for again every cycle."""
    w = await make_world(job_settings_ttl=600)
    job = w.ws.create_job("before")
    gone = w.ws.create_job("gone")
    w.ws.start_run(job, execution_s=7200)
    orphan = w.ws.start_run(gone, execution_s=7200)
    w.ws.delete_job(gone)
    result = await w.cycle()
    assert set(result.jobs) == {job}
    assert orphan in by_id(result)
    assert w.calls()["jobs/get"] == 2
    w.ws.jobs[job].settings["name"] = "after"
    clock.advance(440)
    mark = len(w.sim.requests)
    result = await w.cycle()
    assert w.calls(mark)["jobs/get"] == 0
    assert result.jobs[job].settings.name == "before"
    clock.advance(161)
    mark = len(w.sim.requests)
    result = await w.cycle()
    assert w.calls(mark)["jobs/get"] == 2
    assert result.jobs[job].settings.name == "after"


# -- filters, tasks, vanished runs, failures ---------------------------------------------


@pytest.mark.parametrize(("version", "pages"), [("2.0", 1), ("2.1", 3), ("2.2", 3)])
async def test_many_unknown_jobs_are_read_with_jobs_list_not_one_get_each(
    make_world: WorldFactory, clock: ManualClock, version: str, pages: int
) -> None:
    """When more jobs need settings than a jobs/list walk has pages, the poller lists every
    job (100 a page, tasks included) instead of one jobs/get per job; a job missing from
    the list is taken as deleted. A few jobs later
    are fetched one by one again (on 2.0, whose jobs/list is a single answer, listing
    stays cheaper)."""
    w = await make_world(version=version)
    jobs = [
        w.ws.create_job(f"job-{i}", task_keys=["t"], task_health_s={"t": 60}) for i in range(250)
    ]
    for job in jobs:
        w.ws.start_run(job, execution_s=3600)
    w.ws.delete_job(jobs[-1])  # its run goes on; the job is gone from the list
    mark = len(w.sim.requests)
    result = await w.cycle()
    calls = w.calls(mark)
    assert (calls["jobs/list"], calls["jobs/get"]) == (pages, 0)
    assert len(result.jobs) == 249
    assert jobs[-1] not in result.jobs
    if version != "2.0":
        first = result.jobs[jobs[0]]
        assert first.settings.tasks[0].health is not None  # expand_tasks was asked
    clock.advance(30)
    newcomers = [w.ws.create_job(f"new-{i}") for i in range(2)]
    for job in newcomers:
        w.ws.start_run(job, execution_s=600)
    mark = len(w.sim.requests)
    result = await w.cycle()
    calls = w.calls(mark)
    # 2.0 lists every job in one unpaged answer: cheaper than two gets already.
    assert (calls["jobs/list"], calls["jobs/get"]) == ((1, 0) if version == "2.0" else (0, 2))
    assert set(newcomers) <= set(result.jobs)


async def test_job_filters_use_settings_and_fall_back_to_run_name(
    make_world: WorldFactory,
) -> None:
    """Include by name pattern, exclude by tag, from the job's settings; a run of a deleted
    job is judged by its run_name (and has no settings in the result)."""
    w = await make_world(
        jobs=JobFilter(include=JobMatch(names=["etl-*"]), exclude=JobMatch(tags={"tier": "dev"}))
    )
    kept = w.ws.create_job("etl-orders", tags={"tier": "prod"})
    dev = w.ws.create_job("etl-scratch", tags={"tier": "dev"})
    other = w.ws.create_job("ml-train")
    gone = w.ws.create_job("etl-gone")
    runs = {j: w.ws.start_run(j, execution_s=600) for j in (kept, dev, other, gone)}
    w.ws.delete_job(gone)
    result = await w.cycle()
    assert set(by_id(result)) == {runs[kept], runs[gone]}
    assert set(result.jobs) == {kept}


async def test_job_id_filter_skips_settings_of_other_jobs(make_world: WorldFactory) -> None:
    """With include.job_ids, runs of other jobs are dropped without asking for their
    settings."""
    w = await make_world(jobs=JobFilter(include=JobMatch(job_ids=[2])))
    jobs = [w.ws.create_job(f"job-{i}") for i in range(5)]
    for job in jobs:
        w.ws.start_run(job, execution_s=600)
    result = await w.cycle()
    assert {r.job_id for r in result.runs} == {2}
    assert [r.params["job_id"] for r in w.sim.api_requests("jobs/get")] == ["2"]


@pytest.mark.parametrize("version", ["2.1", "2.2"])
async def test_multitask_runs_keep_their_tasks(
    make_world: WorldFactory, clock: ManualClock, version: str
) -> None:
    """Multitask runs carry their task list, from the lists (expand_tasks) and from
    runs/get alike, so task-level rules and retries can be judged."""
    w = await make_world(version=version)
    keys = ["extract", "transform", "load"]
    job = w.ws.create_job("pipeline", task_keys=keys)
    plans = [TaskPlan(task_key=k, execution_ms=40_000) for k in keys]
    plans[1] = TaskPlan(task_key="transform", execution_ms=20_000, result="FAILED")
    slow = w.ws.start_run(job, tasks=[TaskPlan(task_key=k, execution_ms=3_600_000) for k in keys])
    clock.advance(900)
    quick = w.ws.start_run(job, tasks=plans)
    clock.advance(10)
    result = await w.cycle()
    assert [t.task_key for t in by_id(result)[quick].tasks] == keys
    clock.advance(3600)
    mark = len(w.sim.requests)
    result = await w.cycle()
    # `slow` started before the watermark: a page of the runs that started when it did
    # (expand_tasks, like the walk) instead of its runs/get.
    assert w.calls(mark)["runs/get"] == 0
    for run_id in (quick, slow):
        run = by_id(result)[run_id]
        assert [t.task_key for t in run.tasks] == keys
        assert {t.state.life_cycle_state for t in run.tasks if t.state} == {"TERMINATED"}
    assert by_id(result)[quick].result_state == "FAILED"
    assert by_id(result)[quick].tasks[1].state.result_state == "FAILED"  # type: ignore[union-attr]


async def test_runs_with_more_than_100_tasks_are_read_whole_on_2_2(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """API 2.2 lists at most 100 tasks per run; a run flagged has_more is read with
    runs/get (which pages its tasks), so task-level rules see every task."""
    w = await make_world(version="2.2")
    keys = [f"t{i:03d}" for i in range(150)]
    job = w.ws.create_job("wide", task_keys=keys)
    run_id = w.ws.start_run(job, tasks=[TaskPlan(task_key=k) for k in keys])
    mark = len(w.sim.requests)
    result = await w.cycle()
    assert [t.task_key for t in by_id(result)[run_id].tasks] == keys
    assert w.calls(mark)["runs/get"] == 2  # two pages of tasks


async def test_vanished_run_is_closed_out_once(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """A stored-active run that runs/get says does not exist is reported vanished once and
    never asked for again."""
    w = await make_world()
    job = w.ws.create_job("etl")
    run_id = w.ws.start_run(job, execution_s=600)
    await w.cycle()
    w.ws.delete_run(run_id)
    clock.advance(30)
    result = await w.cycle()
    assert (result.vanished, result.runs) == ([run_id], [])
    clock.advance(30)
    mark = len(w.sim.requests)
    assert (await w.cycle()).vanished == []
    assert w.calls(mark)["runs/get"] == 0


async def test_a_run_or_job_we_may_not_read_does_not_stall_the_workspace(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """A 403 on one run's runs/get or one job's jobs/get is logged and skipped: the cycle
    commits, the run stays stored as active and is asked for again; a bare 404 from a
    proxy is not taken for "does not exist", so the run is not closed out."""
    w = await make_world()
    job = w.ws.create_job("etl")
    run_id = w.ws.start_run(job, execution_s=600)
    await w.cycle()
    w.ws.force(run_id, "BLOCKED")  # no longer listed as active: runs/get must find it
    clock.advance(30)
    denied = '{"error_code": "PERMISSION_DENIED", "message": "no"}'
    w.sim.faults.add(Fault(kind="status", endpoint="runs/get", status=403, body=denied))
    w.sim.faults.add(Fault(kind="status", endpoint="jobs/get", status=403, body=denied))
    result = await w.cycle()
    assert (result.vanished, by_id(result)) == ([], {})
    assert run_id in (await w.store.workspace_state("ws")).active_run_ids
    clock.advance(30)
    w.sim.faults.add(
        Fault(kind="status", endpoint="runs/get", status=404, body="<html>nginx</html>")
    )
    result = await w.cycle()
    assert (result.vanished, by_id(result)) == ([], {})
    assert run_id in (await w.store.workspace_state("ws")).active_run_ids
    clock.advance(30)
    result = await w.cycle()
    assert by_id(result)[run_id].state.life_cycle_state == "BLOCKED"


class PeakClient(JobsClient):
    """Counts runs/get calls in flight at once."""

    in_flight = 0
    peak = 0

    async def get_run(self, run_id: int) -> Run:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super().get_run(run_id)
        finally:
            self.in_flight -= 1


async def test_runs_get_runs_concurrently_within_runs_get_concurrency(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """The runs/get calls of one cycle overlap, never more than runs_get_concurrency at
    once, and each stored-active run is asked for exactly once."""
    w = await make_world(runs_get_concurrency=4)
    job = w.ws.create_job("etl")
    runs = [w.ws.start_run(job, execution_s=400) for _ in range(30)]
    clock.advance(400)
    await w.cycle()
    clock.advance(100)  # all ended; they started before the cut-off, so runs/get each
    client = PeakClient(
        host=w.sim.url,
        auth=StaticToken(SecretStr(TOKEN)),
        api_version="2.1",
        clock=clock,
        requests_per_second=1000.0,
    )
    w.stack.push_async_callback(client.close)
    w.poller = Poller(config=w.config, startup=w.startup, client=client, state=w.store, clock=clock)
    mark = len(w.sim.requests)
    result = await w.cycle()
    assert [run.is_terminal for run in by_id(result).values()] == [True] * len(runs)
    asked = [int(r.params["run_id"]) for r in w.sim.requests[mark:] if "run_id" in r.params]
    assert sorted(asked) == runs
    assert 1 < client.peak <= 4


@pytest.mark.parametrize("endpoint", ["runs/list", "runs/get", "jobs/get"])
async def test_failed_cycle_records_nothing_and_the_next_covers_the_gap(
    make_world: WorldFactory, clock: ManualClock, endpoint: str
) -> None:
    """An API that stays down past the retry budget at any step makes poll() raise the
    client's error (not an ExceptionGroup); nothing is committed, and the next cycle sees
    everything that changed meanwhile."""
    w = await make_world()
    job = w.ws.create_job("etl")
    long_id = w.ws.start_run(job, execution_s=900)
    clock.advance(400)
    await w.cycle()
    watermark = w.store.watermark["ws"]
    w.restart(budget=3)  # an empty job cache, so jobs/get is due again
    clock.advance(700)
    quick = w.ws.start_run(job, setup_s=1, execution_s=5, cleanup_s=1)
    clock.advance(30)
    w.sim.faults.add(Fault(kind="status", status=503, endpoint=endpoint, times=None))
    with pytest.raises(RetryBudgetExceeded):
        await w.poller.poll()
    assert w.store.watermark["ws"] == watermark
    w.sim.faults.clear()
    clock.advance(30)
    result = await w.cycle()
    assert by_id(result)[long_id].is_terminal
    assert by_id(result)[quick].is_terminal


async def test_watermark_follows_server_time_not_the_local_clock(clock: ManualClock) -> None:
    """With the local clock an hour ahead of Databricks, the watermark and cut-off come from
    the Date header (even in a fresh client's first cycle), so no run is hidden by
    start_time_from."""
    server_clock = ManualClock(start=clock.time() - 3600)
    store = FakeStore()
    async with Simulator(clock=server_clock, tokens={TOKEN}) as sim:
        job = sim.workspace.create_job("etl")
        client = new_client(sim, clock, "2.1")
        poller = Poller(
            config=workspace_config(completed_overlap=0),
            startup=StartupConfig(),
            client=client,
            state=store,
            clock=clock,
        )
        try:
            result = await poller.poll()
            store.commit(result)
            assert abs(result.watermark_ms - server_clock.time() * 1000) <= 1000
            for c in (clock, server_clock):
                c.advance(5)
            run_id = sim.workspace.start_run(job, setup_s=1, execution_s=5, cleanup_s=1)
            for c in (clock, server_clock):
                c.advance(25)
            result = await poller.poll()
            assert by_id(result)[run_id].is_terminal
        finally:
            await client.close()


# -- the loop ------------------------------------------------------------------------------


async def test_loop_backs_off_logs_without_secrets_and_keeps_status(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """Failed cycles are logged as poll_cycle_failed (workspace, error; never the token)
    and retried after 1, 2, 4 intervals (at most 10); while the API is what fails, one
    probe (runs/list, limit 1, not retried) goes out every interval between, and the first
    one answered starts the cycle at once. A failing handle counts as a failed cycle, but
    is no reason to probe: it waits out its back-off (8 intervals). A success resets the
    back-off and later cycles keep the interval plus at most `jitter` of it. The status
    object tells readiness checks all of it."""
    w = await make_world(poll_interval=30)
    w.restart(budget=0)
    w.ws.create_job("etl")
    w.sim.faults.add(Fault(kind="status", status=503, endpoint="runs/list", times=6))
    sent: list[tuple[float, bool, int]] = []  # (time, probe, status)
    w.sim.on_request = lambda r: sent.append((clock.time(), r.params.get("limit") == "1", r.status))
    stop = asyncio.Event()
    handled: list[PollResult] = []

    async def handle(result: PollResult) -> None:
        handled.append(result)
        if len(handled) == 1:
            raise RuntimeError("store is full")
        if len(handled) == 4:
            stop.set()

    t0 = clock.time()
    with structlog.testing.capture_logs() as logs:
        await run_poll_loop(
            poller=w.poller, handle=handle, clock=clock, stop=stop, rng=random.Random(1)
        )
    failures = [e for e in logs if e["event"] == "poll_cycle_failed"]
    assert len(failures) == 4
    assert all(e["workspace"] == "ws" for e in failures)
    assert "503" in failures[0]["error"]
    assert "store is full" in failures[-1]["error"]
    assert TOKEN not in repr(logs)
    # Simulated time stands still within a cycle (no retries): a cycle is an instant.
    cycles = sorted({round(t - t0) for t, probe, _ in sent if not probe})
    probes = [(round(t - t0), code) for t, probe, code in sent if probe]
    # Cycles 1..3 fail (1, 2 and 4 intervals of back-off, no jitter: the probes keep to
    # the interval); the probes between them fail too, until the one 3 intervals past
    # cycle 3 is answered: cycle 4 runs there and then, its handle fails, and cycle 5
    # comes 8 intervals (plus jitter, below 3 s; no probes) later.
    assert [code for _, code in probes] == [503, 503, 503, 200]
    assert len(cycles) == 7
    gaps = [b - a for a, b in itertools.pairwise(cycles)]
    assert gaps[:2] == [30, 60]
    assert [t for t, _ in probes] == [cycles[1] + 30, cycles[2] + 30, cycles[2] + 60, cycles[3]]
    assert cycles[3] == cycles[2] + 90  # not 4 intervals: the API answered
    assert 240 <= gaps[3] <= 243
    assert all(30 <= g <= 33 for g in gaps[4:])
    status = w.poller.status
    assert (status.cycles, status.failures, status.consecutive_failures) == (7, 4, 0)
    assert status.last_success_at == clock.time()
    assert "store is full" in (status.last_error or "")


async def test_stop_interrupts_the_wait_and_a_stuck_poll_promptly() -> None:
    """Setting `stop` ends the loop at once, whether it is waiting for the next cycle or
    inside a poll whose requests are backing off: simulated time does not move, and no
    result is handed on."""
    vclock = VirtualClock()
    store = FakeStore()
    async with Simulator(clock=vclock, tokens={TOKEN}) as sim:
        client = new_client(sim, vclock, "2.1", budget=600)
        poller = Poller(
            config=workspace_config(poll_interval=60),
            startup=StartupConfig(),
            client=client,
            state=store,
            clock=vclock,
        )
        handled: list[PollResult] = []

        async def handle(result: PollResult) -> None:
            handled.append(result)

        try:
            for faulty in (False, True):
                if faulty:
                    sim.faults.add(Fault(kind="status", status=503, times=None))
                stop = asyncio.Event()
                loop = asyncio.create_task(
                    run_poll_loop(poller=poller, handle=handle, clock=vclock, stop=stop)
                )
                await vclock.settle(1)  # waiting for the next cycle, or inside a retry
                before = vclock.time()
                stop.set()
                await asyncio.wait_for(loop, timeout=30)
                assert vclock.time() == before
                assert vclock.sleeping() == 0
            assert len(handled) == 1
            assert poller.status.cycles == 1
        finally:
            await client.close()


async def test_ten_workspaces_one_failing_others_keep_cadence_nothing_lost() -> None:
    """1,000 active runs across 200 jobs in 10 workspaces (API 2.0, 2.1 and 2.2), each with
    its own loop, client and poller on one simulated clock. One answers 503 for five
    minutes after its first two cycles: the nine others poll exactly every 30 s throughout,
    and the failing one backs off, recovers and catches up with every run that started or
    ended meanwhile (none of them as backfill)."""
    vclock = VirtualClock()
    store = FakeStore()
    stop = asyncio.Event()
    interval, span, failing = 30.0, 600.0, 3
    outage = (40.0, 340.0)
    async with AsyncExitStack() as stack:
        sims: list[Simulator] = []
        pollers: list[Poller] = []
        for index in range(10):
            sim = await stack.enter_async_context(Simulator(clock=vclock, tokens={TOKEN}))
            sims.append(sim)
            ws = sim.workspace
            jobs = [ws.create_job(f"job-{index}-{j}") for j in range(20)]
            for n in range(100):
                ws.start_run(jobs[n % 20], execution_s=7200)
            for n in range(20):  # short runs starting and ending along the way
                ws.start_run(
                    jobs[n],
                    start_ms=int((T0 + 20 + 25 * n) * 1000),
                    setup_s=2,
                    execution_s=20 + n,
                    cleanup_s=1,
                    result="FAILED" if n % 4 == 0 else "SUCCESS",
                )
            client = new_client(sim, vclock, VERSIONS[index % 3], budget=5)
            stack.push_async_callback(client.close)
            pollers.append(
                Poller(
                    config=workspace_config(f"ws{index}", poll_interval=interval),
                    startup=StartupConfig(),
                    client=client,
                    state=store,
                    clock=vclock,
                )
            )

        def handler(workspace: str) -> Callable[[PollResult], Awaitable[None]]:
            async def handle(result: PollResult) -> None:
                assert result.workspace == workspace
                store.commit(result, at=vclock.time() - T0)

            return handle

        with structlog.testing.capture_logs() as logs:
            loops = [
                asyncio.create_task(
                    run_poll_loop(
                        poller=p, handle=handler(p.workspace), clock=vclock, stop=stop, jitter=0
                    )
                )
                for p in pollers
            ]
            await vclock.run(T0 + outage[0], sleepers=10)
            sims[failing].faults.add(Fault(kind="status", status=503, times=None))
            await vclock.run(T0 + outage[1], sleepers=10)
            sims[failing].faults.clear()
            await vclock.run(T0 + span, sleepers=10)
            stop.set()
            await asyncio.gather(*loops)

    cadence = [interval * k for k in range(int(span / interval) + 1)]
    for index, poller in enumerate(pollers):
        if index != failing:
            assert store.commits[poller.workspace] == cadence
            assert (poller.status.cycles, poller.status.failures) == (len(cadence), 0)
    status = pollers[failing].status
    assert (status.failures, status.consecutive_failures) == (4, 0)
    commits = store.commits[f"ws{failing}"]
    assert commits[:2] == [0.0, 30.0]
    assert commits[2] > outage[1]
    failed = [e["workspace"] for e in logs if e["event"] == "poll_cycle_failed"]
    assert failed == [f"ws{failing}"] * 4
    for index, sim in enumerate(sims):
        name = f"ws{index}"
        now = sim.workspace.now_ms()
        assert store.runs[name].keys() == sim.workspace.runs.keys()
        for run_id, run in store.runs[name].items():
            expected = sim.workspace.runs[run_id]
            assert run.is_terminal == expected.ended_by(now)
            assert run.result_state == (expected.result if expected.ended_by(now) else None)
        assert store.active[name] == {r.run_id for r in sim.workspace.active_runs()}
        assert len(store.active[name]) == 100
    # Runs that came and went while the failing workspace was unreachable.
    unseen = [
        r
        for r in sims[failing].workspace.runs.values()
        if r.start_ms > (T0 + outage[0]) * 1000 and (r.end_ms or 0) < (T0 + outage[1]) * 1000
    ]
    assert len(unseen) >= 5
    assert all(store.runs[f"ws{failing}"][r.run_id].is_terminal for r in unseen)


async def test_state_from_before_the_news_horizon_takes_its_watermarks_cut_off(
    make_world: WorldFactory, clock: ManualClock
) -> None:
    """State written by a release that stored no news horizon: what ended after the
    watermark's cut-off (watermark - completed_overlap - 2 s) is news, as that release's
    walk would have seen it; nothing earlier is."""
    w = await make_world(version="2.1")
    old_watermark = w.ws.now_ms() - 60_000
    w.store.watermark["ws"] = old_watermark
    result = await w.cycle()
    assert result.news_since_ms == old_watermark - 300_000 - 2_000
