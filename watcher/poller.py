"""The incremental run poller: per workspace, each cycle gathers every run whose state may
have changed since the stored watermark, with as few Jobs API requests as the API allows
(docs/architecture.md §4; docs/alerts.md, "Completeness"). It yields observations; the
tracker decides what they mean.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import structlog

from watcher import aio
from watcher.clock import Clock
from watcher.config import StartupConfig, WorkspaceConfig
from watcher.databricks.client import MAX_JOBS_LIMIT, JobsClient, ListedRunsPage, is_transient
from watcher.databricks.errors import ApiError, DatabricksError, ItemRejected, RejectedItem
from watcher.databricks.models import Job, Run
from watcher.domain import Category, PollResult, Unreadable
from watcher.store.base import WorkspaceState
from watcher.tracker import classify

log = structlog.get_logger(__name__)

Order = Literal["start", "end"]

# The Date header has whole-second resolution, so the skew estimate (and with it a
# watermark) can be a second or so ahead of the instant it stands for. The completed walk
# reaches back this much further than completed_overlap (the margin for a slow answer or
# a skewed clock), so even completed_overlap = 0 cannot hide a run that a second's
# truncation would.
_SKEW_SLACK_MS = 2_000
# Offset pages (API 2.0) step back a tenth of a page: that many runs may end or be deleted
# between two requests of one walk before any other run could slip between the pages.
_OVERLAP_SHARE = 10
MAX_BACKOFF_INTERVALS = 10
# Jobs first seen together (every job, at a first start) would expire together and cost a
# burst of jobs/get in one cycle: each entry's TTL is shortened by up to this share instead.
_TTL_SPREAD = 0.25
_FORGET_AFTER = 86_400.0
# Float sums of intervals: a wait that is a whole number of intervals stays one.
_TIME_SLACK = 1e-6


class StateSource(Protocol):
    """The part of the Store the poller reads."""

    async def workspace_state(self, workspace: str) -> WorkspaceState: ...

    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]: ...


@dataclass(slots=True)
class PollStatus:
    """Health of one workspace's loop for readiness checks and metrics; written only by
    run_poll_loop and the poller. Times are local clock seconds: they describe the watcher,
    not Databricks."""

    workspace: str
    cycles: int = 0
    """Cycles finished, successfully or not."""
    failures: int = 0
    consecutive_failures: int = 0
    consecutive_internal_failures: int = 0
    """Failed cycles in a row that were not the API's fault: the loop cannot progress."""
    last_success_at: float | None = None
    last_error: str | None = None
    """The latest failure, kept after recovery for diagnosis."""
    last_cycle_seconds: float | None = None
    last_sweep_at: float | None = None
    """When the latest reconciliation sweep completed."""
    last_sweep_seconds: float | None = None
    """How long the latest complete sweep took, start to end."""


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


@dataclass(slots=True)
class _Sweep:
    """A reconciliation sweep under way: a completed-runs walk reaching back `lookback`,
    read a few pages per cycle."""

    pages: AsyncGenerator[ListedRunsPage, None]
    floor_ms: int
    started: float
    read: int = 0


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
        jobs_every: float | None = None,
    ) -> None:
        self._config = config
        # Every watched job's settings, read by a jobs/list walk every `jobs_every` seconds
        # (None: never) for the checks of what Databricks never reports.
        self._jobs_every = jobs_every
        self._watched_jobs: dict[int, Job] | None = None
        self._next_jobs_walk = float("-inf")
        self._startup = startup
        self._client = client
        self._state = state
        self._clock = clock
        # Transitions after this instant are news, whichever cycle first sees them.
        self._born = clock.time()
        # 2.0 has no expand_tasks; 2.1+ lists tasks only when asked.
        self._expand_tasks = client.api_version != "2.0"
        # job_id -> (expires, fetched at, settings)
        self._jobs: dict[int, tuple[float, float, Job | None]] = {}
        self._job_count: int | None = None  # jobs in the workspace at the last jobs/list
        self._rng = random.Random(config.name)  # noqa: S311 - cache spread, not cryptography
        self._sweep: _Sweep | None = None
        self._swept: dict[int, Run] = {}  # found by the sweep, not known committed yet
        self._last_sweep_start: float | None = None
        # (kind, id) -> (cycles it was unreadable in, when last)
        self._rejected: dict[tuple[str, int], tuple[int, float]] = {}
        # How the server orders finished runs, as its latest pages showed (None: not known
        # yet). It only chooses how a walk asks; each walk stops by what its own pages show.
        self.completed_order: Order | None = None
        # Start times of the runs the active list showed, so a run that vanished from it
        # can be looked for by its start time (runs/list pages instead of runs/get each).
        self._starts: dict[int, int] = {}
        self.status = PollStatus(workspace=config.name)

    @property
    def workspace(self) -> str:
        return self._config.name

    @property
    def interval(self) -> float:
        return self._config.poll_interval

    async def probe(self) -> bool:
        """Whether the API answers now (one request, not retried)."""
        try:
            return await self._client.probe()
        except Exception as exc:
            # A probe that cannot even be sent (credentials, say) is one not answered: the
            # back-off goes on, and the next cycle says what is wrong.
            log.debug("poll_probe_failed", workspace=self.workspace, error=_describe(exc))
            return False

    @property
    def probe_every(self) -> float:
        """Seconds between probes while the API fails: the interval, or the Retry-After the
        API last asked for where that is longer."""
        return max(self.interval, self._client.retry_after or 0.0)

    @property
    def _overlap(self) -> int:
        return self._client.runs_page_size // _OVERLAP_SHARE

    async def poll(self) -> PollResult:
        """One cycle. Raises on any failure: a partial cycle must not move the watermark."""
        client = self._client
        state = await self._state.workspace_state(self.workspace)
        stored_active = state.active_run_ids
        skew_before = client.server_offset or 0.0
        requests_before = client.requests
        started = client.server_time()
        got = _Gathered()
        rejected: list[RejectedItem] = []
        async for page in client.list_runs(
            active_only=True, expand_tasks=self._expand_tasks, overlap=self._overlap
        ):
            rejected.extend(page.rejected)
            for run in page.runs:
                got.add(run)
                if run.start_time is not None:
                    self._starts[run.run_id] = run.start_time
        # The start instant in server time, with the skew this cycle's answers measured:
        # a fresh client knows none before its first answer.
        offset = client.server_offset or 0.0
        now_ms = _ms(started - skew_before + offset)
        news_since = self._news_since(state, now_ms, offset)
        window = self._window(state.watermark_ms, now_ms, news_since)
        await self._walk_completed(got, window, stored_active, rejected)
        # Starts of the runs that may vanish later: those listed now, and those still
        # stored active (should this cycle fail before its commit).
        self._starts = {
            r: s for r, s in self._starts.items() if r in got.runs or r in stored_active
        }
        spent = client.requests - requests_before
        swept = await self._reconcile(
            got, now_ms, window, news_since, stored_active, rejected, spent
        )
        # What earlier sweeps found stays in play until it is committed (the cycle that
        # read it may have failed after the sweep moved on).
        for run in self._swept.values():
            got.add(run)

        # Runs recorded finished that a list shows again: unchanged (most of them: the walk
        # overlaps the previous one) are dropped; changed ones were repaired, and runs/get
        # reads them whole, with their repair_history.
        listed = {r for r in got.runs if r not in stored_active}
        known = await self._state.terminal_ends(self.workspace, listed) if listed else {}
        repaired: set[int] = set()
        for run_id, end in known.items():
            run = got.runs[run_id]
            if classify(run)[0] is not Category.ACTIVE and (run.end_time or 0) <= end:
                del got.runs[run_id]
                self._swept.pop(run_id, None)
            else:
                repaired.add(run_id)
        # 2.2 lists at most 100 tasks of a run (has_more): runs/get pages through them all.
        truncated = {r.run_id for r in got.runs.values() if r.has_more}
        unlisted = (stored_active - got.runs.keys()) | truncated | repaired
        vanished, unread = await self._fetch_unlisted(got, unlisted, rejected)
        for run_id in vanished:
            got.runs.pop(run_id, None)
        for run_id in unread & repaired:
            # A repair only runs/get (with its repair_history) may confirm: a list alone can
            # be stale, and a phantom repair would page twice and hide the real one.
            del got.runs[run_id]

        id_filter = self._config.jobs.include.job_ids
        candidates = [
            run
            for run in got.runs.values()
            # Stored-active runs are always closed out, whatever the filter says now.
            if run.run_id in stored_active or not id_filter or run.job_id in id_filter
        ]
        # A run's end is judged with the job's settings as they are now, not as cached:
        # a rule or notification setting changed minutes ago must count. (Not for jobs the
        # cache already shows unwatched: their runs are not evaluated.)
        ending = {
            r.job_id
            for r in candidates
            if r.job_id is not None
            and r.has_ended
            and r.run_id not in known.keys() - repaired
            and not self._cached_unwatched(r)
        }
        settings, unreadable_jobs = await self._job_settings(
            {r.job_id for r in candidates if r.job_id is not None}, got, ending, rejected
        )
        runs: list[Run] = []
        jobs: dict[int, Job] = {}
        for run in sorted(candidates, key=lambda r: r.run_id):
            job = settings.get(run.job_id) if run.job_id is not None else None
            watched = run.job_id in unreadable_jobs or self._watched(run, job)
            if run.run_id not in stored_active and not watched:
                continue
            runs.append(run)
            if job is not None:
                jobs[job.job_id] = job
        watched_jobs = await self._walk_jobs(rejected)
        in_result = {r.run_id for r in runs}
        self._swept = {r: run for r, run in self._swept.items() if r in in_result}
        found = [r.run_id for r in runs if r.run_id in swept]
        if found:
            # Each of these was missed by the cheap path: worth knowing about.
            log.warning("reconcile_found_runs", workspace=self.workspace, run_ids=found[:20])
        return PollResult(
            workspace=self.workspace,
            runs=runs,
            jobs=jobs,
            vanished=vanished,
            watermark_ms=now_ms,
            server_now_ms=now_ms,
            news_since_ms=news_since,
            requests=client.requests - requests_before,
            unreadable=self._unreadable(rejected),
            watched_jobs=watched_jobs,
        )

    async def _walk_jobs(self, rejected: list[RejectedItem]) -> dict[int, Job] | None:
        """Every watched job, from a jobs/list walk every `jobs_every` seconds (the last
        walk's in between); None when not asked for."""
        if self._jobs_every is None:
            return None
        now = self._clock.monotonic()
        if self._watched_jobs is None or now >= self._next_jobs_walk:
            try:
                listed, _ = await self._list_all_jobs(rejected)
            except DatabricksError as exc:
                # The runs of this cycle must not wait for it: the checks go on with the
                # last walk's jobs (none before the first), and the walk is tried again
                # after a fifth of its period.
                log.warning("jobs_walk_failed", workspace=self.workspace, error=str(exc))
                self._next_jobs_walk = now + self._jobs_every / 5
                return self._watched_jobs
            self._watched_jobs = {
                job_id: job
                for job_id, job in listed.items()
                if self._config.jobs.allows(job_id, job.settings.name, job.settings.tags)
            }
            self._next_jobs_walk = now + self._jobs_every
        return self._watched_jobs

    def _news_since(self, state: WorkspaceState, now_ms: int, offset: float) -> int:
        """Server time from which transitions are news. A first start: the instant the
        watcher started (less the Date header's slack: rather page for a transition a
        second before the start than miss one after); state from before the horizon was
        stored: its watermark's cut-off. Never earlier than the catch-up floor, which
        skips on purpose what ended longer ago than max_catchup."""
        if state.news_since_ms is not None:
            since = state.news_since_ms
        elif state.watermark_ms is None:
            since = _ms(self._born + offset) - _SKEW_SLACK_MS
        else:
            since = state.watermark_ms - _ms(self._config.completed_overlap) - _SKEW_SLACK_MS
        return max(since, now_ms - _ms(self._startup.max_catchup))

    def _window(self, watermark_ms: int | None, now_ms: int, news_since_ms: int) -> _Window:
        """The completed walk's window. Runs that ended before `floor` were committed
        already (or lie outside the lookback / catch-up window); the walk may stop once a
        whole page started before `start_from` and ended before `floor`. A first start
        reaches back to the instant the watcher started, however long its first cycles
        failed; a truncated catch-up still reads runs that started before the new floor but
        ended after it."""
        floor = now_ms - _ms(self._startup.max_catchup)
        if watermark_ms is None:
            first = max(floor, min(now_ms - _ms(self._startup.lookback), news_since_ms))
            return _Window(first, first)
        cutoff = watermark_ms - _ms(self._config.completed_overlap) - _SKEW_SLACK_MS
        if cutoff < floor:
            log.warning(
                "poll_catchup_truncated",
                workspace=self.workspace,
                skipped_seconds=(floor - cutoff) / 1000,
                max_catchup=self._startup.max_catchup,
            )
            return _Window(floor, cutoff)
        return _Window(cutoff, cutoff)

    async def _walk_completed(
        self,
        got: _Gathered,
        window: _Window,
        stored_active: Collection[int],
        rejected: list[RejectedItem],
    ) -> None:
        """The runs completed since the cut-off (the watermark less completed_overlap).
        Where the server lists finished runs by end time, the walk reads what ended since
        the cut-off, whatever its start (a long run, a repair, a run born blocked: each
        sorts ahead by its new end), and stops there. By start time (as the reference
        says) it reads what started since the cut-off, and the stored-active runs that
        ended but started earlier are looked for by their start times. What earlier cycles
        showed of the order only chooses the request (by end time: no start_time_from);
        the stop follows what this walk's own pages show, as the server may have changed
        (a rolling deploy): until one tells, a page must be wholly past the window, which
        is right under either order."""
        client = self._client
        time_filters = client.supports_time_filters
        filtered = time_filters and self.completed_order != "end"
        start_from = window.start_from_ms if filtered else None
        seen: Order | None = None  # the order this walk's pages showed
        extra = 0  # pages read past the walk's own end for vanished runs (2.0)
        # Leaving the walk early is safe: the client holds no connection between pages.
        async for page in client.list_runs(
            completed_only=True,
            start_time_from=start_from,
            expand_tasks=self._expand_tasks,
            overlap=self._overlap,
        ):
            self._take(got, page, window, stored_active, rejected)
            runs = page.runs
            seen = _order_shown(runs, seen)
            if seen == "end":
                # Every later run ended before this page's last one with an end time
                # (a run listed without one says nothing): before the cut-off, so it was
                # read by an earlier cycle, which reached back as far.
                end = _last_known(r.end_time for r in runs)
                done = end is not None and end < window.floor_ms
            elif seen == "start":
                # Every later run started before this page's last, so before the cut-off.
                start = _last_known(r.start_time for r in runs)
                done = start is not None and start < window.start_from_ms
            else:
                done = window.passed(runs)
            if done and not time_filters and seen != "end":
                # 2.0 cannot ask by start time: reading on is the only way to the vanished
                # runs that started before the cut-off, worth it while a page costs less
                # than the runs/get it saves (each such page holds one at least).
                missing = [(s, r) for s, r in self._missing(got, stored_active) if s <= _last(runs)]
                done = not missing or extra >= len(missing)
                extra += 1
            if done:
                break
        # A walk by end time without start_time_from has read every run that ended since
        # the cut-off, those that started before it too.
        if time_filters and (filtered or seen != "end"):
            await self._find_vanished(got, window, stored_active, rejected)

    def _missing(self, got: _Gathered, stored_active: Collection[int]) -> list[tuple[int, int]]:
        """(start, run_id) of the stored-active runs no list showed yet, newest first; those
        of unknown start (a restart) are left to runs/get."""
        starts = self._starts
        found = got.runs
        return sorted(
            ((starts[r], r) for r in stored_active if r not in found and r in starts), reverse=True
        )

    def _take(
        self,
        got: _Gathered,
        page: ListedRunsPage,
        window: _Window,
        stored_active: Collection[int],
        rejected: list[RejectedItem],
    ) -> None:
        """A completed_only page: its runs that may be news, and what it shows of the
        server's order."""
        rejected.extend(page.rejected)
        for run in page.runs:
            if run.run_id in stored_active or not _ended_before(run, window.floor_ms):
                got.add(run)
        self.completed_order = _order_shown(page.runs, self.completed_order)

    async def _find_vanished(
        self,
        got: _Gathered,
        window: _Window,
        stored_active: Collection[int],
        rejected: list[RejectedItem],
    ) -> None:
        """Stored-active runs that ended but started before the walk's cut-off. One runs/get
        each would do; a page of the completed runs that started at or before the newest of
        them may hold several at once, and costs no more than the get it replaces when it
        holds that newest one. Whatever no page shows (deleted, or held in a state no list
        calls active) is left to runs/get: that one costs a page and a get."""
        missing = self._missing(got, stored_active)
        while missing:
            newest = missing[0][0]
            pages = self._client.list_runs(
                completed_only=True,
                start_time_from=missing[-1][0],
                start_time_to=newest,
                expand_tasks=self._expand_tasks,
            )
            page = await anext(pages, None)
            await pages.aclose()
            if page is None:
                return
            self._take(got, page, window, stored_active, rejected)
            more = page.has_more or page.next_page_token is not None
            reached = _last(page.runs) if more else -1
            # Still missing: not found, and older than what this page covered (a tie with
            # its last start may be on the next page). The newest goes either way, so
            # every page costs at most the runs/get it replaces.
            missing = [(s, r) for s, r in missing[1:] if r not in got.runs and s <= reached]

    async def _reconcile(
        self,
        got: _Gathered,
        now_ms: int,
        window: _Window,
        news_since_ms: int,
        stored_active: Collection[int],
        rejected: list[RejectedItem],
        spent: int,
    ) -> set[int]:
        """A few pages of the reconciliation sweep: a walk of the runs completed within
        `reconcile.lookback`, spread over cycles, that finds what the cheap path cannot see
        (a run born BLOCKED that ended long after it started, a short repair of an old run,
        a run finished while the watcher was down). The run ids it added."""
        config = self._config.reconcile
        if not config.enabled:
            return set()
        now = self._clock.monotonic()
        if self._sweep is None:
            if (
                self._last_sweep_start is not None
                and now - self._last_sweep_start < config.interval
            ):
                return set()
            self._last_sweep_start = now
            floor = now_ms - _ms(config.lookback)
            time_filters = self._client.supports_time_filters
            self._sweep = _Sweep(
                pages=self._client.list_runs(
                    completed_only=True,
                    start_time_from=floor if time_filters else None,
                    # Later starts are the cheap walk's; older ones are the sweep's.
                    start_time_to=window.start_from_ms if time_filters else None,
                    expand_tasks=self._expand_tasks,
                    overlap=self._overlap,
                ),
                floor_ms=floor,
                started=now,
            )
        sweep = self._sweep
        # A share of what the cheap path spent this cycle, or a few pages where that is little.
        budget = max(config.min_pages, int(config.max_share * spent))
        added: set[int] = set()
        try:
            for _ in range(budget):
                page = await anext(sweep.pages, None)
                if page is None:
                    self._finish_sweep(sweep)
                    break
                sweep.read += 1
                rejected.extend(page.rejected)
                for run in page.runs:
                    if run.run_id in stored_active or (run.end_time or 0) < news_since_ms:
                        continue
                    if run.run_id not in got.runs:
                        added.add(run.run_id)
                    got.add(run)
                    self._swept[run.run_id] = run
                if page.runs and all(_ended_before(r, sweep.floor_ms) for r in page.runs):
                    self._finish_sweep(sweep)
                    break
        except DatabricksError as exc:
            # The sweep is a backstop: its failure must not fail the cycle. It starts over.
            log.warning("reconcile_sweep_failed", workspace=self.workspace, error=str(exc))
            await sweep.pages.aclose()
            self._sweep = None  # starts over after an interval
        return added

    def _finish_sweep(self, sweep: _Sweep) -> None:
        self._sweep = None
        self.status.last_sweep_at = self._clock.time()
        self.status.last_sweep_seconds = self._clock.monotonic() - sweep.started
        log.info(
            "reconcile_sweep_done",
            workspace=self.workspace,
            pages=sweep.read,
            seconds=round(self.status.last_sweep_seconds, 3),
        )

    async def _fetch_unlisted(
        self, got: _Gathered, run_ids: Collection[int], rejected: list[RejectedItem]
    ) -> tuple[list[int], set[int]]:
        """runs/get for runs no list showed whole: a stored-active run that has ended since
        (or was deleted: returned as vanished), a 2.2 run with more than 100 tasks, a
        finished run that was repaired. Also the runs that could not be read: they stay as
        stored, are asked for again next cycle, and are reported if that goes on."""
        unread: set[int] = set()

        async def fetch(run_id: int) -> int | None:
            try:
                run = await self._client.get_run(run_id)
            except ItemRejected as exc:
                rejected.append(exc.item)
                unread.add(run_id)
                return None
            except ApiError as exc:
                if exc.is_not_found:
                    return run_id
                if not _refused(exc, "runs/get"):
                    raise
                # One run we may not read must not stall the workspace.
                log.warning(
                    "run_unreadable", workspace=self.workspace, run_id=run_id, error=str(exc)
                )
                rejected.append(_refusal(exc, "run", run_id))
                unread.add(run_id)
                return None
            got.add(run)
            return None

        outcomes = await aio.bounded_map(self._config.runs_get_concurrency, fetch, sorted(run_ids))
        return [run_id for run_id in outcomes if run_id is not None], unread

    def _cached_unwatched(self, run: Run) -> bool:
        """Whether the cached settings of the run's job exclude it from watching."""
        entry = self._jobs.get(run.job_id) if run.job_id is not None else None
        return entry is not None and entry[2] is not None and not self._watched(run, entry[2])

    async def _job_settings(
        self,
        job_ids: set[int],
        got: _Gathered,
        refresh: set[int],
        rejected: list[RejectedItem],
    ) -> tuple[dict[int, Job | None], set[int]]:
        """Settings of `job_ids` from the TTL cache, fetching those not cached, expired, or
        in `refresh` (unless fetched this very cycle); None for a job that no longer exists
        (cached too, so it is not asked every cycle). Also the jobs that could not be read
        now: they keep the settings cached before (if any), are asked again next cycle,
        and their runs are watched whatever the job filters say (fail open)."""
        now = self._clock.monotonic()
        due = sorted(
            j
            for j in job_ids
            if j not in self._jobs
            or self._jobs[j][0] <= now
            or (j in refresh and self._jobs[j][1] < now)
        )
        unreadable: set[int] = set()

        async def fetch(job_id: int) -> tuple[int, Job | None]:
            try:
                return job_id, await self._client.get_job(job_id)
            except ItemRejected as exc:
                rejected.append(exc.item)
            except ApiError as exc:
                if exc.is_not_found:
                    return job_id, None
                if not _refused(exc, "jobs/get"):
                    raise
                log.warning(
                    "job_unreadable", workspace=self.workspace, job_id=job_id, error=str(exc)
                )
                rejected.append(_refusal(exc, "job", job_id))
            unreadable.add(job_id)
            return job_id, None

        fetched: list[tuple[int, Job | None]] = []
        if len(due) > self._list_pages():
            # Cheaper to list every job (100 a page; 2.0: one answer) than to get these.
            listed, bad = await self._list_all_jobs(rejected)
            unreadable |= bad
            fetched = [(job_id, listed.get(job_id)) for job_id in due]  # absent: deleted
            fetched += [(j, job) for j, job in listed.items() if j not in job_ids]
        else:
            fetched = await aio.bounded_map(self._config.runs_get_concurrency, fetch, due)
        ttl = self._config.job_settings_ttl
        for job_id, job in fetched:
            if job_id in unreadable:
                continue  # what was cached stays, until it expires
            expires = now + ttl * (1 - _TTL_SPREAD * self._rng.random())
            self._jobs[job_id] = (expires, now, job)
        settings = {j: self._jobs[j][2] if j in self._jobs else None for j in job_ids}
        # Forget what expired unused, so the cache holds only jobs that still run.
        self._jobs = {j: entry for j, entry in self._jobs.items() if entry[0] > now}
        return settings, unreadable

    def _list_pages(self) -> int:
        """Requests a jobs/list walk costs, as far as we know (before the first walk: a
        guess of ten pages)."""
        if self._client.api_version == "2.0":
            return 1
        if self._job_count is None:
            return 10
        return max(1, math.ceil(self._job_count / MAX_JOBS_LIMIT))

    async def _list_all_jobs(self, rejected: list[RejectedItem]) -> tuple[dict[int, Job], set[int]]:
        """Every job, and the ids of those that could not be read (not deleted)."""
        listed: dict[int, Job] = {}
        bad: set[int] = set()
        async for page in self._client.list_jobs(expand_tasks=True):
            listed.update((job.job_id, job) for job in page.jobs)
            rejected.extend(page.rejected)
            bad.update(r.item_id for r in page.rejected if r.item_id is not None)
        self._job_count = len(listed) + len(bad)
        return listed, bad

    def _unreadable(self, rejected: Sequence[RejectedItem]) -> list[Unreadable]:
        """Count the cycles in which each item was unreadable (a finished run is read only
        while a walk reaches it, so not necessarily in a row); those unreadable in
        `report_unreadable_after` cycles are reported (every cycle after that: the report's
        event id is stable, so it is committed once). Items unread for a day are forgotten."""
        now = self._clock.monotonic()
        seen: dict[tuple[str, int], RejectedItem] = {}
        for item in rejected:
            if item.item_id is not None:
                seen[(item.kind, item.item_id)] = item
        self._rejected = {
            key: entry for key, entry in self._rejected.items() if now - entry[1] < _FORGET_AFTER
        }
        for key in seen:
            self._rejected[key] = (self._rejected.get(key, (0, now))[0] + 1, now)
        due = self._config.report_unreadable_after
        return [
            Unreadable(
                kind=item.kind,
                item_id=item.item_id,
                job_id=item.item_id if item.kind == "job" else item.job_id,
                detail=item.detail,
            )
            for key, item in seen.items()
            if item.item_id is not None and self._rejected[key][0] >= due
        ]

    def _watched(self, run: Run, job: Job | None) -> bool:
        if job is not None:
            return self._config.jobs.allows(run.job_id, job.settings.name, job.settings.tags)
        # A deleted job (or a one-time run) has no settings: its run name is all there is.
        return self._config.jobs.allows(run.job_id, run.run_name, {})


@dataclass(frozen=True, slots=True)
class _Window:
    """Where the completed walk reads (see Poller._window)."""

    floor_ms: int
    """What ended before this was read by an earlier cycle (or is past the catch-up): by
    end time, the walk stops there."""
    start_from_ms: int

    def passed(self, runs: Sequence[Run]) -> bool:
        """Whether the walk may stop after this page. Newest first by start time (the
        reference) or by end time (newer docs): either way, once a whole page started
        before start_from and ended before the floor, so does the rest. A run listed
        without an end time tells nothing of where the rest ended."""
        return bool(runs) and all(
            r.end_time
            and _ended_before(r, self.floor_ms)
            and (r.start_time or 0) < self.start_from_ms
            for r in runs
        )


async def run_poll_loop(
    *,
    poller: Poller,
    handle: Callable[[PollResult], Awaitable[object]],
    clock: Clock,
    stop: asyncio.Event,
    jitter: float = 0.1,
    rng: random.Random | None = None,
    on_cycle: Callable[[PollStatus, bool], None] | None = None,
    before_cycle: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Poll one workspace every poll_interval (plus up to `jitter` of it, so workspaces
    drift apart) until `stop` is set, handing each result to `handle` (tracker and commit).

    A failed cycle (poll or handle) is logged and retried later, backing off exponentially
    up to MAX_BACKOFF_INTERVALS intervals; the next good cycle covers the gap, since the
    watermark only moves when `handle` commits. While a failure of the API's that may heal
    by itself (5xx, 429, timeouts: not a 4xx such as a revoked token, which only the
    back-off paces) keeps the loop backing off, it probes the API (one request, not
    retried: the one that failed) every interval, or every Retry-After the API asked for
    if longer, and a probe that is answered starts the cycle at once: the API's recovery
    is seen within an interval, never a back-off later, yet a failing API gets one
    request an interval (a probe, or a cycle's first), not a cycle each. A partial outage
    (one endpoint failing) is probed where it fails, so it starts no cycle until that
    answers; when a cycle a probe started fails too all the same, later probes wait for
    the back-off, until one fails. Back-off waits with probes have no jitter, so probes
    keep to the interval. `stop` interrupts a poll, a probe or a wait at once; a `handle`
    in progress is left to finish, so a commit is never cut short by it.
    `on_cycle(status, ok)` is told of every finished cycle (metrics). `before_cycle()` is
    asked before each cycle (renewing the workspace's lease): False ends the loop, as does
    `handle` raising aio.Stopped (a commit refused: no cycle is counted).
    """
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    status = poller.status
    interval = poller.interval
    armed = True  # an answered probe may start the next cycle early
    while not stop.is_set():
        if before_cycle is not None and not await before_cycle():
            return
        began = clock.monotonic()
        probing = False
        try:
            result = await aio.unless_stopped(poller.poll(), stop)
            await handle(result)
        except aio.Stopped:
            return
        except Exception as exc:
            status.cycles += 1
            status.failures += 1
            status.consecutive_failures += 1
            status.last_error = _describe(exc)
            # The API's outages heal by themselves; anything else is the watcher unable to
            # make progress (a bug, a store that cannot be read): /healthz says so.
            if isinstance(exc, DatabricksError):
                status.consecutive_internal_failures = 0
            else:
                status.consecutive_internal_failures += 1
            # A 4xx (a revoked token, a refused permission) stays until someone acts: only
            # the back-off paces the cycles that say so, no probes multiply its requests.
            probing = is_transient(exc)
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
            armed = True
            elapsed = clock.monotonic() - began
            status.cycles += 1
            if status.consecutive_failures:
                log.info(
                    "poll_recovered",
                    workspace=poller.workspace,
                    failed_cycles=status.consecutive_failures,
                )
            status.consecutive_failures = 0
            status.consecutive_internal_failures = 0
            status.last_success_at = clock.time()
            status.last_cycle_seconds = elapsed
            log.debug(
                "poll_cycle",
                workspace=poller.workspace,
                runs=len(result.runs),
                vanished=len(result.vanished),
                requests=result.requests,
                seconds=round(elapsed, 3),
            )
            if on_cycle is not None:
                on_cycle(status, True)
            delay = max(0.0, interval - elapsed)  # a fixed cadence, not interval + duration
        try:
            if probing:
                # No jitter: the probes keep to the interval, so a recovery is seen within
                # one (the first failure already set this workspace apart from others).
                armed = await _probe_while_backing_off(poller, clock, stop, delay, armed)
            else:
                delay += rng.uniform(0.0, jitter * interval)
                await aio.unless_stopped(clock.sleep(delay), stop)
        except aio.Stopped:
            return


async def _probe_while_backing_off(
    poller: Poller, clock: Clock, stop: asyncio.Event, delay: float, armed: bool
) -> bool:
    """Wait `delay`, probing the API every `poller.probe_every` meanwhile (not in the
    last: the cycle that ends the wait probes too), so the API gets one request an
    interval; return early when a probe is answered and `armed`. Whether the next cycle's
    failure leaves probes armed: not when a probe started it, unless a probe failed since."""
    deadline = clock.monotonic() + delay
    while (left := deadline - clock.monotonic()) > (every := poller.probe_every) + _TIME_SLACK:
        await aio.unless_stopped(clock.sleep(every), stop)
        if await aio.unless_stopped(poller.probe(), stop):
            if armed:
                log.info("poll_probe_answered", workspace=poller.workspace)
                return False
        else:
            armed = True
    await aio.unless_stopped(clock.sleep(max(0.0, left)), stop)
    return armed


def _order_shown(runs: Sequence[Run], known: Order | None) -> Order | None:
    """The order of finished runs a completed_only page shows (newest first): by end time
    when, down the page, a start time rises while end times keep falling; by start time
    when an end time rises while start times keep falling; neither (None) when both rise.
    A page that tells nothing (both fall: a short page, or runs of equal durations) leaves
    `known` as it was. Within a page only: offset pages overlap, so two pages' runs are
    not in sequence. Runs listed without a start or an end time are left out: they
    would show an order that is not there."""
    timed = [(r.start_time, r.end_time) for r in runs if r.start_time and r.end_time]
    starts_fall = ends_fall = True
    for (newer_start, newer_end), (older_start, older_end) in itertools.pairwise(timed):
        starts_fall &= newer_start >= older_start
        ends_fall &= newer_end >= older_end
    if not ends_fall:
        return "start" if starts_fall else None
    return known if starts_fall else "end"


def _last_known(times: Iterable[int | None]) -> int | None:
    """The last of `times` that is known (a run may be listed without one, or with 0)."""
    known = [t for t in times if t]
    return known[-1] if known else None


def _last(runs: Sequence[Run]) -> int:
    """The start of a page's last run (pages are newest first)."""
    return (runs[-1].start_time or 0) if runs else -1


def _progress(run: Run) -> tuple[bool, int]:
    return (run.is_terminal, run.end_time or 0)


def _refusal(exc: ApiError, kind: Literal["run", "job"], item_id: int) -> RejectedItem:
    """A refusal to read one run or job, counted like an unreadable item (and reported
    like one if it goes on)."""
    detail = f"HTTP {exc.status} {exc.error_code}"
    return RejectedItem(exc.endpoint, kind, item_id, item_id if kind == "job" else None, detail)


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
