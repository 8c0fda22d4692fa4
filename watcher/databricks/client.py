"""Async client of the Databricks Jobs API: auth, rate limit, retries, paging, parsing.

One client (and one aiohttp session) per workspace, so a slow or throttled workspace
never holds up another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import aiohttp
import structlog
from asyncio_throttle.throttler import Throttler
from pydantic import BaseModel, PrivateAttr, ValidationError

from watcher.clock import Clock, SystemClock
from watcher.databricks import models
from watcher.databricks.auth import Auth
from watcher.databricks.errors import (
    ApiError,
    DatabricksError,
    ItemRejected,
    MalformedResponse,
    RejectedItem,
    RetryBudgetExceeded,
    parse_error_body,
)
from watcher.databricks.models import Job, JobsPage, Run, RunsPage
from watcher.http_headers import USER_AGENT, retry_after_seconds

log = structlog.get_logger(__name__)

ApiVersion = Literal["2.0", "2.1", "2.2"]
API_VERSIONS: tuple[ApiVersion, ...] = ("2.0", "2.1", "2.2")
# Largest runs/list page each version accepts. The 2.0 reference says "greater than 0 and
# less than 1000"; 2.1 and 2.2 document 1..25. A server that states a smaller maximum is
# believed (JobsClient.runs_page_size).
MAX_RUNS_LIMIT: dict[str, int] = {"2.0": 999, "2.1": 25, "2.2": 25}
MAX_JOBS_LIMIT = 100
# The endpoints whose runs or jobs are validated one by one (and may be rejected).
ITEM_ENDPOINTS = ("runs/list", "runs/get", "jobs/list", "jobs/get")
# "Invalid limit 27 - it has to be no more than 26.": the server's own maximum.
_LIMIT_MAXIMUM = re.compile(r"\blimit\b.*?\bno more than (\d+)", re.IGNORECASE | re.DOTALL)
# json.loads combines escaped surrogate pairs, so any surrogate left in a string is lone.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Names that may appear in a rejection's field path; anything else there is a key of a
# free-form map (tags, parameters), which can be as sensitive as a value.
_FIELD_NAMES = frozenset(
    name
    for cls in vars(models).values()
    if isinstance(cls, type) and issubclass(cls, BaseModel)
    for name in cls.model_fields
)
_M = TypeVar("_M", bound=BaseModel)
Params = dict[str, str]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt, reported to the metrics hook."""

    endpoint: str
    # HTTP status as text, or "timeout", "connection_error", "malformed", "tls_error".
    code: str
    seconds: float
    will_retry: bool
    throttled_seconds: float


AttemptHook = Callable[[Attempt], None]
RejectHook = Callable[[RejectedItem], None]
DateMissingHook = Callable[[], None]


class ClientHooks(Protocol):
    """One workspace's hooks, as app.make_client wires them (Metrics.attempt_hook)."""

    def __call__(self, attempt: Attempt) -> None: ...

    def item_rejected(self, item: RejectedItem) -> None: ...

    def date_header_missing(self) -> None: ...


class ListedRunsPage(RunsPage):
    """A runs/list page; `rejected` describes the runs left out for failing validation."""

    # Private: no response body can fill it, and no dump or serialisation carries it.
    _rejected: tuple[RejectedItem, ...] = PrivateAttr(default=())

    @property
    def rejected(self) -> tuple[RejectedItem, ...]:
        return self._rejected


class ListedJobsPage(JobsPage):
    """A jobs/list page; `rejected` describes the jobs left out for failing validation."""

    _rejected: tuple[RejectedItem, ...] = PrivateAttr(default=())

    @property
    def rejected(self) -> tuple[RejectedItem, ...]:
        return self._rejected


@dataclass(frozen=True, slots=True)
class _Items:
    """Where a response model keeps its runs or jobs."""

    field: str | None
    """The list of items in a page; None when the whole body is one item."""
    kind: Literal["run", "job"]
    model: type[BaseModel]


_ITEMS: dict[type[BaseModel], _Items] = {
    ListedRunsPage: _Items("runs", "run", Run),
    ListedJobsPage: _Items("jobs", "job", Job),
    Run: _Items(None, "run", Run),
    Job: _Items(None, "job", Job),
}


class _Garbled(Exception):
    """A 2xx body that is not JSON, or not the documented envelope: worth one retry."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    budget: float = 300.0
    """Total seconds one call may spend waiting between attempts before giving up."""
    base_delay: float = 1.0
    max_delay: float = 60.0
    default_retry_after: float = 1.0
    """Wait for a 429/503 whose Retry-After header is missing or not an integer."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    total: float = 60.0


def throttler_for(requests_per_second: float) -> Throttler:
    """A Throttler admitting `requests_per_second` on average, fractional rates included."""
    if requests_per_second <= 0:
        raise ValueError("requests_per_second must be positive")
    burst = max(1, round(requests_per_second))
    return Throttler(rate_limit=burst, period=burst / requests_per_second)


def _bool(value: bool) -> str:
    # The API only honours lowercase literals; Python's "True" is silently ignored.
    return "true" if value else "false"


class JobsClient:
    def __init__(
        self,
        *,
        host: str,
        auth: Auth,
        api_version: ApiVersion = "2.1",
        requests_per_second: float = 10.0,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        ca_bundle: Path | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        on_attempt: AttemptHook | None = None,
        on_reject: RejectHook | None = None,
        on_date_missing: DateMissingHook | None = None,
        workspace: str | None = None,
    ) -> None:
        if api_version not in API_VERSIONS:
            raise ValueError(f"unsupported api_version {api_version!r}")
        self.host = host.rstrip("/") if "://" in host else f"https://{host.rstrip('/')}"
        self.api_version: ApiVersion = api_version
        self._auth = auth
        self._timeouts = timeouts or Timeouts()
        self._retry = retry or RetryPolicy()
        self._ca_bundle = ca_bundle
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._on_attempt = on_attempt
        self._on_reject = on_reject
        self._on_date_missing = on_date_missing
        # Which workspace this client serves, in every log line it writes.
        self._log = log.bind(workspace=workspace) if workspace else log
        self._date_warned = False
        self._throttler = throttler_for(requests_per_second)
        self._session: aiohttp.ClientSession | None = None
        self.server_offset: float | None = None
        """Seconds to add to the local clock to get the server's, from the Date header."""
        self.requests = 0
        """HTTP requests sent to the Jobs API so far, retries and task pages included."""
        self.retrying: str | None = None
        """The problem the client is retrying right now (until an answer is read), so that
        an outage shows in /status during the retry budget, not only after it."""
        self.retrying_since: float | None = None
        self.runs_page_size = MAX_RUNS_LIMIT[api_version]
        """Largest runs/list page this client asks for: the version's documented maximum,
        or less once the server has stated a smaller one."""
        self.retry_after: float | None = None
        """The wait the last answer of the latest call given up on asked for (429, 503),
        if any: the least a probe of the API should wait."""
        # What a probe asks: the latest call given up on transient failures, as small as
        # it can be, so that a partial outage (one endpoint failing) is probed where it is.
        self._probe_call: tuple[str, Params, type[BaseModel]] | None = None

    async def __aenter__(self) -> JobsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def server_time(self) -> float:
        """The workspace's current time in epoch seconds (local time if never measured)."""
        return self._clock.time() + (self.server_offset or 0.0)

    @property
    def supports_time_filters(self) -> bool:
        """start_time_from / start_time_to exist from API 2.1 on."""
        return self.api_version != "2.0"

    # -- calls -----------------------------------------------------------------------

    async def get_job(self, job_id: int) -> Job:
        job = await self._call("jobs/get", {"job_id": str(job_id)}, Job)
        tasks = list(job.settings.tasks)
        while job.next_page_token:  # 2.2 pages the tasks of large jobs
            params = {"job_id": str(job_id), "page_token": job.next_page_token}
            job = await self._call("jobs/get", params, Job)
            tasks.extend(job.settings.tasks)
        settings = job.settings.model_copy(update={"tasks": tasks})
        return job.model_copy(update={"settings": settings, "next_page_token": None})

    async def get_run(self, run_id: int) -> Run:
        # include_history: a repaired run comes with its repair_history.
        params = {"run_id": str(run_id), "include_history": _bool(True)}
        first = run = await self._call("runs/get", params, Run)
        tasks = list(run.tasks)
        while run.next_page_token:  # 2.2 pages the tasks of large runs
            page = dict(params, page_token=run.next_page_token)
            run = await self._call("runs/get", page, Run)
            tasks.extend(run.tasks)
        # The first page carries the whole history; later task pages need not repeat it.
        history = first.repair_history if first.repair_history is not None else run.repair_history
        return run.model_copy(
            update={"tasks": tasks, "next_page_token": None, "repair_history": history}
        )

    async def probe(self) -> bool:
        """Whether the API answers now: one request, not retried (the poll loop asks this
        once an interval while it backs off). It asks again what the latest call given up
        on transient failures asked (a list for one item only), else runs/list for a
        single active run. A 4xx answer is an answer: the cycle it starts says what is
        wrong."""
        endpoint, params, model = self._probe_call or (
            "runs/list",
            {"active_only": _bool(True), "limit": "1"},
            ListedRunsPage,
        )
        try:
            await self._call(endpoint, params, model, retry=False)
        except ItemRejected:
            return True
        except DatabricksError as exc:
            return isinstance(exc, ApiError) and not is_transient(exc)
        return True

    async def list_runs(
        self,
        *,
        job_id: int | None = None,
        active_only: bool = False,
        completed_only: bool = False,
        run_type: str | None = None,
        start_time_from: int | None = None,
        start_time_to: int | None = None,
        expand_tasks: bool = False,
        limit: int | None = None,
        overlap: int = 0,
    ) -> AsyncGenerator[ListedRunsPage, None]:
        """Pages of runs/list, newest first; runs that fail validation are left out and
        described in each page's `rejected`.

        With offset paging, each next offset steps back by `overlap` runs so that up to
        that many runs deleted during the walk cannot make a run slip between two pages;
        the caller deduplicates by run_id. Token paging is used wherever the server offers it.
        `limit` (default: the version's maximum) and `overlap` are cut in proportion when
        the server allows less (runs_page_size), so the overlap stays below the page size.
        """
        if active_only and completed_only:
            raise ValueError("active_only and completed_only exclude each other")
        has_time_filter = start_time_from is not None or start_time_to is not None
        if has_time_filter and not self.supports_time_filters:
            raise ValueError("start_time_from/start_time_to need API 2.1 or later")
        params: Params = {}
        if job_id is not None:
            params["job_id"] = str(job_id)
        if active_only:
            params["active_only"] = _bool(True)
        if completed_only:
            params["completed_only"] = _bool(True)
        if run_type is not None:
            params["run_type"] = run_type
        if start_time_from is not None:
            params["start_time_from"] = str(start_time_from)
        if start_time_to is not None:
            params["start_time_to"] = str(start_time_to)
        if expand_tasks:
            params["expand_tasks"] = _bool(True)
        max_limit = MAX_RUNS_LIMIT[self.api_version]
        # The size the server stated, once it did; an overlap sized for the documented
        # maximum keeps its share of the page.
        page_size = self.runs_page_size if limit is None else limit
        if overlap >= page_size:
            overlap = overlap * page_size // max_limit
        if not 1 <= page_size <= max_limit:
            raise ValueError(f"limit must be 1..{max_limit} for API {self.api_version}")
        if not 0 <= overlap < page_size:
            raise ValueError("overlap must be smaller than the page size")
        async for page in self._pages(
            # Rejected runs took their place on the page too: the next offset counts them.
            "runs/list",
            params,
            ListedRunsPage,
            page_size,
            overlap,
            lambda p: len(p.runs) + len(p.rejected),
        ):
            yield page

    async def list_jobs(
        self, *, name: str | None = None, expand_tasks: bool = False
    ) -> AsyncGenerator[ListedJobsPage, None]:
        """Pages of jobs/list; jobs that fail validation are left out and described in each
        page's `rejected`. API 2.0 answers every job in one unpaged response; 2.1+
        include the jobs' tasks (and with them task-level rules) only with expand_tasks."""
        params: Params = {} if name is None else {"name": name}
        if expand_tasks and self.api_version != "2.0":
            params["expand_tasks"] = _bool(True)
        if self.api_version == "2.0":
            yield await self._call("jobs/list", params, ListedJobsPage)
            return
        async for page in self._pages(
            "jobs/list",
            params,
            ListedJobsPage,
            MAX_JOBS_LIMIT,
            0,
            lambda p: len(p.jobs) + len(p.rejected),
        ):
            yield page

    async def _pages(
        self,
        endpoint: str,
        params: Params,
        model: type[_M],
        page_size: int,
        overlap: int,
        count: Callable[[_M], int],
    ) -> AsyncGenerator[_M, None]:
        offset = 0
        token: str | None = None
        while True:
            if endpoint == "runs/list":
                page_size, overlap = self._fit_page(page_size, overlap)
            query = dict(params, limit=str(page_size))
            if token is not None:
                query["page_token"] = token
            elif offset:
                query["offset"] = str(offset)
            page = await self._call(endpoint, query, model)
            if endpoint == "runs/list":  # the server may have cut the page size just now
                page_size, overlap = self._fit_page(page_size, overlap)
            yield page
            next_token = getattr(page, "next_page_token", None)
            if next_token and self.api_version != "2.0":
                token = next_token
                continue
            if self.api_version == "2.2" or not getattr(page, "has_more", False):
                return
            items = count(page)
            if not items:  # has_more with an empty page would loop forever
                return
            offset += max(1, items - overlap)

    def _fit_page(self, page_size: int, overlap: int) -> tuple[int, int]:
        """(page size, overlap) within runs_page_size, the overlap kept the same share of
        a page (so still smaller than it, and a walk still advances by most of a page)."""
        if page_size <= self.runs_page_size:
            return page_size, overlap
        return self.runs_page_size, overlap * self.runs_page_size // page_size

    # -- transport -------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx: ssl.SSLContext | bool = True
            if self._ca_bundle is not None:
                ssl_ctx = ssl.create_default_context(cafile=str(self._ca_bundle))
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=self._timeouts.total, connect=self._timeouts.connect
                ),
                connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=32),
                headers={"User-Agent": USER_AGENT},
                raise_for_status=False,
            )
        return self._session

    async def _call(
        self, endpoint: str, params: Mapping[str, str], model: type[_M], *, retry: bool = True
    ) -> _M:
        """GET one endpoint with retries inside the budget (none without `retry`); parse the
        2xx body."""
        session = self._get_session()
        # runs/* endpoints live under jobs/: /api/2.1/jobs/runs/list, /api/2.1/jobs/get.
        path = endpoint if endpoint.startswith("jobs/") else f"jobs/{endpoint}"
        url = f"{self.host}/api/{self.api_version}/{path}"
        params = dict(params)  # a stated maximum page size changes `limit` for the retry
        waited = 0.0
        attempts = 0
        malformed = 0
        reauthenticated = False
        # Back-off waits and the budget follow the injected clock; latency and throttling
        # are measurements of real I/O, so they use the event loop's clock.
        loop_time = asyncio.get_running_loop().time
        while True:
            attempts += 1
            throttle_start = loop_time()
            async with self._throttler:
                started = loop_time()
                throttled = started - throttle_start
                retry_after: float | None = None
                try:
                    headers = {"Authorization": await self._auth.header(session)}
                    self.requests += 1
                    async with session.get(url, params=params, headers=headers) as resp:
                        body = await resp.read()
                        status = resp.status
                        self._note_server_time(resp.headers.get("Date"), loop_time() - started)
                        if status in (429, 503):
                            retry_after = self._retry_after(resp.headers.get("Retry-After"))
                except aiohttp.ClientConnectorCertificateError as exc:
                    # Retrying cannot fix a certificate: say so at once.
                    self._report(endpoint, "tls_error", started, False, throttled)
                    raise DatabricksError(
                        f"{endpoint}: TLS certificate of {self.host} not trusted: "
                        f"{exc.certificate_error}"
                    ) from None
                except TimeoutError:
                    code, problem = "timeout", "request timed out"
                except aiohttp.ClientError as exc:
                    code, problem = "connection_error", type(exc).__name__
                else:
                    code = str(status)
                    if 200 <= status < 300:
                        try:
                            result = self._parse(endpoint, body, model)
                        except _Garbled as exc:
                            code, problem = "malformed", exc.problem
                        except ItemRejected:
                            self._report(endpoint, code, started, False, throttled)
                            raise
                        else:
                            self._report(endpoint, code, started, False, throttled)
                            self.retrying = self.retrying_since = None
                            if self._probe_call is not None and self._probe_call[0] == endpoint:
                                self._probe_call = None  # that endpoint answers again
                            return result
                    elif status == 401 and not reauthenticated:
                        # A rotated token or expired OAuth token: fetch anew once, at once.
                        reauthenticated = True
                        self._auth.invalidate()
                        self._report(endpoint, code, started, True, throttled)
                        continue
                    elif status != 429 and status < 500:
                        error_code, message = parse_error_body(body, status)
                        if maximum := self._stated_maximum(endpoint, params, status, message):
                            # Not a failure of the call: ask again at once, and from now
                            # on, for no more than the server allows.
                            self._log.warning(
                                "api_page_size_reduced",
                                endpoint=endpoint,
                                sent=params["limit"],
                                limit=maximum,
                            )
                            self.runs_page_size = min(self.runs_page_size, maximum)
                            params["limit"] = str(maximum)
                            self._report(endpoint, code, started, True, throttled)
                            continue
                        self._report(endpoint, code, started, False, throttled)
                        raise ApiError(
                            endpoint=endpoint, status=status, error_code=error_code, message=message
                        )
                    else:
                        error_code, message = parse_error_body(body, status)
                        problem = f"HTTP {status} {error_code}: {message}"
            delay = retry_after if retry_after is not None else self._backoff(attempts)
            malformed += code == "malformed"
            # A garbled body is retried once (a truncated transfer); one that stays garbled
            # will not heal within the budget.
            if not retry or waited + delay > self._retry.budget or malformed > 1:
                self._report(endpoint, code, started, False, throttled)
                self.retry_after = retry_after
                if retry:
                    limited = {"limit": "1"} if "limit" in params else {}
                    self._probe_call = (endpoint, {**params, **limited}, model)
                self._log.log(
                    # A probe that is not retried fails quietly: the loop is backing off.
                    logging.WARNING if retry else logging.DEBUG,
                    "api_retry_budget_exhausted",
                    host=self.host,
                    endpoint=endpoint,
                    attempts=attempts,
                    error=problem,
                )
                if code == "malformed":
                    raise MalformedResponse(endpoint=endpoint, detail=problem)
                raise RetryBudgetExceeded(endpoint=endpoint, attempts=attempts, last_error=problem)
            self._report(endpoint, code, started, True, throttled)
            if self.retrying is None:
                self.retrying_since = self._clock.time()
            self.retrying = f"{endpoint}: {problem}"
            # One retry is routine; a second in a row is an outage worth seeing at WARNING.
            self._log.log(
                logging.INFO if attempts == 1 else logging.WARNING,
                "api_retry",
                host=self.host,
                endpoint=endpoint,
                code=code,
                attempt=attempts,
                delay_seconds=round(delay, 3),
                error=problem,
            )
            waited += delay
            await self._clock.sleep(delay)

    @staticmethod
    def _stated_maximum(
        endpoint: str, params: Mapping[str, str], status: int, message: str
    ) -> int | None:
        """The smaller runs/list limit a 400 states as the maximum, if it states one."""
        match = _LIMIT_MAXIMUM.search(message)
        if endpoint != "runs/list" or status != 400 or match is None:
            return None
        maximum = int(match.group(1))
        sent = params.get("limit", "")
        # Only ever smaller than what was sent: a confused server cannot loop us.
        return maximum if sent.isdigit() and 1 <= maximum < int(sent) else None

    def _parse(self, endpoint: str, body: bytes, model: type[_M]) -> _M:
        """A 2xx body as `model`. Raises _Garbled for a body or envelope that is not what
        the API documents, ItemRejected for a runs/get or jobs/get object that fails
        validation; runs and jobs of a page that fail it are left out and reported."""
        try:
            return model.model_validate_json(body)  # the fast path, for nearly every answer
        except ValidationError as exc:
            fast_error = exc
        # pydantic's JSON parser refuses a whole body for one lone UTF-16 surrogate escape
        # (a `\ud800` in a job name): Python's parser keeps it, and _repair replaces it.
        try:
            data = _repair(json.loads(body.decode("utf-8", errors="replace")))
        except (ValueError, RecursionError):
            raise _Garbled(_validation_summary(fast_error)) from None
        items = _ITEMS.get(model)
        if items is None or not isinstance(data, dict):
            return _validate(model, data)
        if items.field is None:
            try:
                return model.model_validate(data)
            except ValidationError as exc:
                raise ItemRejected(self._reject(endpoint, items.kind, data, exc)) from None
        raw_items = data.pop(items.field, [])
        if not isinstance(raw_items, list):
            raise _Garbled(f"{items.field} is not a list")
        page = _validate(model, data)
        good: list[BaseModel] = []
        rejected: list[RejectedItem] = []
        for raw in raw_items:
            try:
                good.append(items.model.model_validate(raw))
            except ValidationError as exc:
                rejected.append(self._reject(endpoint, items.kind, raw, exc))
        page = page.model_copy(update={items.field: good})
        if isinstance(page, ListedRunsPage | ListedJobsPage):
            page._rejected = tuple(rejected)
        return page

    def _reject(
        self, endpoint: str, kind: Literal["run", "job"], raw: object, exc: ValidationError
    ) -> RejectedItem:
        def read(key: str) -> int | None:
            value = raw.get(key) if isinstance(raw, dict) else None
            return value if type(value) is int else None  # not a bool, not a string

        item_id = read("run_id" if kind == "run" else "job_id")
        job_id = read("job_id")
        item = RejectedItem(endpoint, kind, item_id, job_id, _item_detail(exc))
        self._log.warning(
            "api_item_rejected",
            endpoint=endpoint,
            kind=kind,
            item_id=item_id,
            job_id=job_id,
            detail=item.detail,
        )
        if self._on_reject is not None:
            self._on_reject(item)
        return item

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2^(attempt-1))]."""
        cap = min(self._retry.max_delay, self._retry.base_delay * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    def _retry_after(self, header: str | None) -> float:
        seconds = retry_after_seconds(header)
        return self._retry.default_retry_after if seconds is None else seconds

    def _note_server_time(self, date_header: str | None, round_trip: float) -> None:
        try:
            server = parsedate_to_datetime(date_header or "").timestamp()
        except (TypeError, ValueError):
            # The skew estimate stays as it was (local time if never measured): say so, as
            # time filters and watermarks then rest on the local clock.
            if self._on_date_missing is not None:
                self._on_date_missing()
            if not self._date_warned:
                self._date_warned = True
                self._log.warning("api_date_header_missing", host=self.host)
            return
        # Date has whole-second resolution (truncated), so its midpoint is +0.5 s; the
        # answer was produced between sending and now.
        local_mid = self._clock.time() - round_trip / 2
        self.server_offset = server + 0.5 - local_mid

    def _report(
        self, endpoint: str, code: str, started: float, will_retry: bool, throttled: float
    ) -> None:
        if self._on_attempt is not None:
            seconds = asyncio.get_running_loop().time() - started
            self._on_attempt(Attempt(endpoint, code, seconds, will_retry, throttled))


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may heal by itself: retries given up on (5xx, 429, timeouts,
    connection errors, garbled answers), or a 5xx or 429 of the token endpoint. Not a 4xx
    (a revoked token, a refused permission): that stays until someone acts."""
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, RetryBudgetExceeded | MalformedResponse)


def _validate(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _Garbled(_validation_summary(exc)) from None


def _repair(value: Any) -> Any:
    """`value` with every lone surrogate in its strings (keys included) replaced by U+FFFD:
    such a string cannot be encoded as UTF-8, so could be neither stored nor logged."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_repair(v) for v in value]
    if isinstance(value, dict):
        return {_repair(k): _repair(v) for k, v in value.items()}
    return value


def _item_detail(exc: ValidationError, most: int = 3) -> str:
    """Where and how an item failed: field paths and error types, never values."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    parts = []
    for error in errors[:most]:
        path = ".".join(
            str(p) if isinstance(p, int) or p in _FIELD_NAMES else "*" for p in error["loc"]
        )
        parts.append(f"{path or 'item'}: {error['type']}")
    more = f" (+{len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(parts) + more


def _validation_summary(exc: ValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"msg": str(exc), "loc": ()}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{first.get('msg', 'invalid')} at {where or 'body'}"
