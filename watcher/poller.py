"""The incremental run poller: per workspace, each cycle gathers every run whose state may
have changed since the stored watermark, with as few Jobs API requests as the API allows
(DESIGN.md section 4). It yields observations; the tracker decides what they mean.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import structlog

from watcher.clock import Clock
from watcher.config import StartupConfig, WorkspaceConfig
from watcher.databricks.client import MAX_JOBS_LIMIT, MAX_RUNS_LIMIT, JobsClient
from watcher.databricks.errors import ApiError, DatabricksError
from watcher.databricks.models import Job, Run
from watcher.store.base import WorkspaceState

log = structlog.get_logger(__name__)

# The Date header has whole-second resolution, so the skew estimate (and with it a
# watermark) can be a second or so ahead of the instant it stands for. The completed walk
# reaches back this much further, so even completed_overlap = 0 cannot hide a run.
_SKEW_SLACK_MS = 2_000
# Offset pages (API 2.0) step back a tenth of a page: that many runs may end or be deleted
# between two requests of one walk before any other run could slip between the pages.
_OVERLAP_SHARE = 10
MAX_BACKOFF_INTERVALS = 10
# Jobs first seen together (every job, at a first start) would expire together and cost a
# burst of jobs/get in one cycle: each entry's TTL is shortened by up to this share instead.
_TTL_SPREAD = 0.25
_T = TypeVar("_T")
_K = TypeVar("_K")


class StateSource(Protocol):
    """The part of the Store the poller reads."""

    async def workspace_state(self, workspace: str) -> WorkspaceState: ...


@dataclass(frozen=True, slots=True)
class Observation:
    run: Run
    backfill: bool
    """Seen in the first cycle of a workspace without stored state: it may have finished
    (or started) long before the watcher looked, so the tracker records it without paging."""


@dataclass(frozen=True, slots=True)
class PollResult:
    workspace: str
    observations: list[Observation]
    """One per run (by run_id), the most advanced snapshot the cycle saw."""
    jobs: dict[int, Job]
    """Settings of every job with an observation, unless the job no longer exists."""
    vanished: list[int]
    """Runs the store held active that runs/get says no longer exist: close them out."""
    watermark_ms: int
    """Commit this with the cycle: the server time at which the cycle started."""
    server_now_ms: int
    """Server time at the start of the cycle, for ages of active runs: every snapshot was
    taken after it, so an age computed from it is never overstated."""
    requests: int
    """HTTP requests this cycle sent to the Jobs API: pages, runs/get, jobs/get, jobs/list,
    retries and 2.2 task pages."""


@dataclass(slots=True)
class PollStatus:
    """Health of one workspace's loop for readiness checks and metrics; written only by
    run_poll_loop. Times are local clock seconds: they describe the watcher, not Databricks."""

    workspace: str
    cycles: int = 0
    """Cycles finished, successfully or not."""
    failures: int = 0
    consecutive_failures: int = 0
    last_success_at: float | None = None
    last_error: str | None = None
    """The latest failure, kept after recovery for diagnosis."""
    last_cycle_seconds: float | None = None


@dataclass(slots=True)
class _Gathered:
    """The runs of one cycle, one snapshot per run_id."""

    runs: dict[int, Run] = field(default_factory=dict)

    def add(self, run: Run) -> None:
        # Lists and runs/get are read at different instants: never let an older snapshot
        # move a run backwards. Ties go to the later read.
        current = self.runs.get(run.run_id)
        if current is None or _progress(run) >= _progress(current):
            self.runs[run.run_id] = run


class Poller:
    """Gathers the runs of one workspace that may have changed, one cycle per poll()."""

    def __init__(
        self,
        *,
        config: WorkspaceConfig,
        startup: StartupConfig,
        client: JobsClient,
        state: StateSource,
        clock: Clock,
    ) -> None:
        self._config = config
        self._startup = startup
        self._client = client
        self._state = state
        self._clock = clock
        self._overlap = MAX_RUNS_LIMIT[client.api_version] // _OVERLAP_SHARE
        # 2.0 has no expand_tasks; 2.1+ lists tasks only when asked.
        self._expand_tasks = client.api_version != "2.0"
        self._jobs: dict[int, tuple[float, Job | None]] = {}  # job_id -> (expires, settings)
        self._job_count: int | None = None  # jobs in the workspace at the last jobs/list
        self._rng = random.Random(config.name)  # noqa: S311 - cache spread, not cryptography
        self.status = PollStatus(workspace=config.name)

    @property
    def workspace(self) -> str:
        return self._config.name

    @property
    def interval(self) -> float:
        return self._config.poll_interval

    async def poll(self) -> PollResult:
        """One cycle. Raises on any failure: a partial cycle must not move the watermark."""
        client = self._client
        state = await self._state.workspace_state(self.workspace)
        stored_active = state.active_run_ids
        skew_before = client.server_offset or 0.0
        requests_before = client.requests
        started = client.server_time()
        got = _Gathered()
        async for page in client.list_runs(
            active_only=True, expand_tasks=self._expand_tasks, overlap=self._overlap
        ):
            for run in page.runs:
                got.add(run)
        # The start instant in server time, with the skew this cycle's answers measured:
        # a fresh client knows none before its first answer.
        now_ms = _ms(started - skew_before + (client.server_offset or 0.0))
        cutoff_ms, start_from_ms = self._cutoff(state.watermark_ms, now_ms)
        await self._walk_completed(got, cutoff_ms, start_from_ms, stored_active)
        # 2.2 lists at most 100 tasks of a run (has_more): runs/get pages through them all.
        truncated = {r.run_id for r in got.runs.values() if r.has_more}
        vanished = await self._fetch_unlisted(got, (stored_active - got.runs.keys()) | truncated)

        id_filter = self._config.jobs.include.job_ids
        candidates = [
            run
            for run in got.runs.values()
            # Stored-active runs are always closed out, whatever the filter says now.
            if run.run_id in stored_active or not id_filter or run.job_id in id_filter
        ]
        settings = await self._job_settings(
            {r.job_id for r in candidates if r.job_id is not None}, got
        )
        backfill = state.watermark_ms is None
        observations: list[Observation] = []
        jobs: dict[int, Job] = {}
        for run in sorted(candidates, key=lambda r: r.run_id):
            job = settings.get(run.job_id) if run.job_id is not None else None
            if run.run_id not in stored_active and not self._watched(run, job):
                continue
            observations.append(Observation(run=run, backfill=backfill))
            if job is not None:
                jobs[job.job_id] = job
        return PollResult(
            workspace=self.workspace,
            observations=observations,
            jobs=jobs,
            vanished=vanished,
            watermark_ms=now_ms,
            server_now_ms=now_ms,
            requests=client.requests - requests_before,
        )

    def _cutoff(self, watermark_ms: int | None, now_ms: int) -> tuple[int, int]:
        """(cutoff, start_from): completed runs that started and ended before the cutoff
        were committed already (or lie outside the lookback / catch-up window); the server
        may leave out runs that started before start_from. When catch-up is truncated, a
        run that started before the new cutoff but ended after it still counts, so
        start_from stays at the watermark's cutoff."""
        floor = now_ms - _ms(self._startup.max_catchup)
        if watermark_ms is None:
            first = max(floor, now_ms - _ms(self._startup.lookback))
            return first, first
        cutoff = watermark_ms - _ms(self._config.completed_overlap) - _SKEW_SLACK_MS
        if cutoff < floor:
            log.warning(
                "poll_catchup_truncated",
                workspace=self.workspace,
                skipped_seconds=(floor - cutoff) / 1000,
                max_catchup=self._startup.max_catchup,
            )
            return floor, cutoff
        return cutoff, cutoff

    async def _walk_completed(
        self, got: _Gathered, cutoff_ms: int, start_from_ms: int, stored_active: Collection[int]
    ) -> None:
        client = self._client
        # Newest first by start time (the reference) or by end time (newer docs): either
        # way, once a whole page started and ended before the cut-off, so does the rest.
        start_from = start_from_ms if client.supports_time_filters else None
        # Leaving the walk early is safe: the client holds no connection between pages.
        async for page in client.list_runs(
            completed_only=True,
            start_time_from=start_from,
            expand_tasks=self._expand_tasks,
            overlap=self._overlap,
        ):
            for run in page.runs:
                if run.run_id in stored_active or not _ended_before(run, cutoff_ms):
                    got.add(run)
            if page.runs and all(_ended_before(r, cutoff_ms) for r in page.runs):
                break

    async def _fetch_unlisted(self, got: _Gathered, run_ids: Collection[int]) -> list[int]:
        """runs/get for stored-active runs neither list returned: a long run that started
        before the watermark and has ended since, or one deleted (returned as vanished)."""

        async def fetch(run_id: int) -> int | None:
            try:
                run = await self._client.get_run(run_id)
            except ApiError as exc:
                if exc.is_not_found:
                    return run_id
                if not _refused(exc, "runs/get"):
                    raise
                # One run we may not read must not stall the workspace: it stays stored
                # as active and is asked for again next cycle.
                log.warning(
                    "run_unreadable", workspace=self.workspace, run_id=run_id, error=str(exc)
                )
                return None
            got.add(run)
            return None

        outcomes = await _bounded(self._config.runs_get_concurrency, fetch, sorted(run_ids))
        return [run_id for run_id in outcomes if run_id is not None]

    async def _job_settings(self, job_ids: set[int], got: _Gathered) -> dict[int, Job | None]:
        """Settings of `job_ids` from the TTL cache, fetching those not cached or expired;
        None for a job that no longer exists (cached too, so it is not asked every cycle)."""
        now = self._clock.monotonic()
        due = sorted(j for j in job_ids if j not in self._jobs or self._jobs[j][0] <= now)

        async def fetch(job_id: int) -> tuple[int, Job | None]:
            try:
                return job_id, await self._client.get_job(job_id)
            except ApiError as exc:
                if exc.is_not_found:
                    return job_id, None
                if not _refused(exc, "jobs/get"):
                    raise
                # Its runs are still watched, without the job's rules and settings.
                log.warning(
                    "job_unreadable", workspace=self.workspace, job_id=job_id, error=str(exc)
                )
                return job_id, None

        fetched: list[tuple[int, Job | None]] = []
        if len(due) > self._list_pages():
            # Cheaper to list every job (100 a page; 2.0: one answer) than to get these.
            listed = await self._list_all_jobs(got)
            fetched = [(job_id, listed.get(job_id)) for job_id in due]  # absent: deleted
            fetched += [(j, job) for j, job in listed.items() if j not in job_ids]
        else:
            fetched = await _bounded(self._config.runs_get_concurrency, fetch, due)
        # Forget what expired unused, so the cache holds only jobs that still run.
        self._jobs = {j: entry for j, entry in self._jobs.items() if entry[0] > now}
        ttl = self._config.job_settings_ttl
        for job_id, job in fetched:
            self._jobs[job_id] = (now + ttl * (1 - _TTL_SPREAD * self._rng.random()), job)
        return {job_id: self._jobs[job_id][1] for job_id in job_ids}

    def _list_pages(self) -> int:
        """Requests a jobs/list walk costs, as far as we know (before the first walk: a
        guess of ten pages)."""
        if self._client.api_version == "2.0":
            return 1
        if self._job_count is None:
            return 10
        return max(1, math.ceil(self._job_count / MAX_JOBS_LIMIT))

    async def _list_all_jobs(self, got: _Gathered) -> dict[int, Job]:
        listed: dict[int, Job] = {}
        async for page in self._client.list_jobs(expand_tasks=True):
            listed.update((job.job_id, job) for job in page.jobs)
        self._job_count = len(listed)
        return listed

    def _watched(self, run: Run, job: Job | None) -> bool:
        if job is not None:
            return self._config.jobs.allows(run.job_id, job.settings.name, job.settings.tags)
        # A deleted job (or a one-time run) has no settings: its run name is all there is.
        return self._config.jobs.allows(run.job_id, run.run_name, {})


async def run_poll_loop(
    *,
    poller: Poller,
    handle: Callable[[PollResult], Awaitable[object]],
    clock: Clock,
    stop: asyncio.Event,
    jitter: float = 0.1,
    rng: random.Random | None = None,
    on_cycle: Callable[[PollStatus, bool], None] | None = None,
) -> None:
    """Poll one workspace every poll_interval (plus up to `jitter` of it, so workspaces
    drift apart) until `stop` is set, handing each result to `handle` (tracker and commit).

    A failed cycle (poll or handle) is logged and retried later, backing off exponentially
    up to MAX_BACKOFF_INTERVALS intervals; the next good cycle covers the gap, since the
    watermark only moves when `handle` commits. `stop` interrupts a poll or a wait at once;
    a `handle` in progress is left to finish, so a commit is never cut short by it.
    `on_cycle(status, ok)` is told of every finished cycle (metrics).
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    status = poller.status
    interval = poller.interval
    while not stop.is_set():
        began = clock.monotonic()
        try:
            result = await _unless_stopped(poller.poll(), stop)
            await handle(result)
        except _Stopped:
            return
        except Exception as exc:
            status.cycles += 1
            status.failures += 1
            status.consecutive_failures += 1
            status.last_error = _describe(exc)
            log.warning(
                "poll_cycle_failed",
                workspace=poller.workspace,
                error=status.last_error,
                consecutive_failures=status.consecutive_failures,
                # An API outage is expected; anything else is a bug worth a traceback.
                exc_info=not isinstance(exc, DatabricksError),
            )
            if on_cycle is not None:
                on_cycle(status, False)
            backoff = min(2 ** (status.consecutive_failures - 1), MAX_BACKOFF_INTERVALS)
            delay = interval * backoff
        else:
            elapsed = clock.monotonic() - began
            status.cycles += 1
            if status.consecutive_failures:
                log.info(
                    "poll_recovered",
                    workspace=poller.workspace,
                    failed_cycles=status.consecutive_failures,
                )
            status.consecutive_failures = 0
            status.last_success_at = clock.time()
            status.last_cycle_seconds = elapsed
            log.debug(
                "poll_cycle",
                workspace=poller.workspace,
                observations=len(result.observations),
                vanished=len(result.vanished),
                requests=result.requests,
                seconds=round(elapsed, 3),
            )
            if on_cycle is not None:
                on_cycle(status, True)
            delay = max(0.0, interval - elapsed)  # a fixed cadence, not interval + duration
        delay += rng.uniform(0.0, jitter * interval)
        try:
            await _unless_stopped(clock.sleep(delay), stop)
        except _Stopped:
            return


class _Stopped(Exception):
    pass


async def _unless_stopped(work: Coroutine[Any, Any, _T], stop: asyncio.Event) -> _T:
    """Await `work`, or cancel it and raise _Stopped as soon as `stop` is set."""
    if stop.is_set():
        work.close()  # never started, so never awaited
        raise _Stopped
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)
    if task.cancelled():
        raise _Stopped
    return task.result()


async def _bounded(limit: int, fn: Callable[[_K], Awaitable[_T]], items: Sequence[_K]) -> list[_T]:
    """`fn` over `items`, at most `limit` at a time, results in order. The first failure
    cancels the rest and is raised as itself (not as an ExceptionGroup)."""
    if not items:
        return []
    gate = asyncio.Semaphore(limit)

    async def one(item: _K) -> _T:
        async with gate:
            return await fn(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def _progress(run: Run) -> tuple[bool, int]:
    return (run.is_terminal, run.end_time or 0)


def _refused(exc: ApiError, endpoint: str) -> bool:
    """A client error of that very endpoint about that one object (403, 400): not a
    failure of the cycle. Errors of the token endpoint, 401 and 429 are."""
    return exc.endpoint == endpoint and exc.status in (400, 403, 404)


def _ended_before(run: Run, cutoff_ms: int) -> bool:
    return run.has_ended and (run.start_time or 0) < cutoff_ms and (run.end_time or 0) < cutoff_ms


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]
