"""The status page for people: what the server's `/` shows (HTML rendered here, no script,
no external asset, refreshed every 15 s) and what `watcher status` prints. Both show one
`PageData`: the workspaces (poll health as the running daemon's /status tells it, the
watermarks and leases as the store keeps them), the active runs (those over a duration
rule marked), the latest events with their deliveries, the open incidents, the dead
letters and the configured silences not yet over.

Names in it come from Databricks (job names) and from the configuration: the HTML is
rendered with autoescape on, and the text drops control characters."""

from __future__ import annotations

import dataclasses
import json
import math
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TextIO

import aiohttp
from jinja2 import Environment, PackageLoader, StrictUndefined

from watcher import __version__
from watcher.clock import Clock, SystemClock
from watcher.config import Config, SilenceConfig
from watcher.events import EventType
from watcher.logs import redact_value
from watcher.silences import compile_silence
from watcher.store.base import Store
from watcher.store.opening import open_store

RECENT_EVENTS = 50
"""Events the page shows, newest first."""
LATEST_DEAD_LETTERS = 5
"""Dead letters the page lists (it counts them all)."""
ACTIVE_RUNS_SHOWN = 200
"""Active runs the page lists, oldest first (it counts them all)."""
REFRESH_SECONDS = 15
_BREACH = f"{EventType.RUN_DURATION_EXCEEDED}:"


@dataclass(frozen=True, slots=True)
class WorkspaceRow:
    name: str
    polled_here: bool | None
    """Whether this replica polls it (None: no daemon was asked)."""
    last_success_at: float | None
    """The daemon's latest successful poll (local time, epoch seconds)."""
    lag: float | None
    """Seconds since then."""
    consecutive_failures: int | None
    last_error: str | None
    watermark_at: float | None
    """The store's view: workspace time up to which finished runs are committed (every
    cycle moves it on, so it tells when the last commit was)."""
    lease_owner: str | None
    """The replica holding its lease now (None: nobody)."""
    active_runs: int


@dataclass(frozen=True, slots=True)
class ActiveRunRow:
    workspace: str
    run_id: int
    job_id: int | None
    job_name: str
    state: str
    started_at: float | None
    age: float | None
    breached: tuple[str, ...]
    """The duration rules this run (its current repair) has broken."""

    @property
    def over(self) -> bool:
        return bool(self.breached)


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    key: str
    status: str
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class EventRow:
    id: str
    type: str
    workspace: str
    job_name: str
    run_id: int
    occurred_at: float
    committed_at: float
    deliveries: tuple[DeliveryRow, ...]


@dataclass(frozen=True, slots=True)
class IncidentRow:
    id: str
    kind: str
    key: str
    workspace: str
    job_name: str
    opened_at: float
    count: int


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    event_id: str
    type: str
    workspace: str
    job_name: str
    key: str
    attempts: int
    last_error: str | None
    created_at: float


@dataclass(frozen=True, slots=True)
class SilenceRow:
    id: str | None
    """None: a configured silence (runtime ones are expired by id)."""
    active: bool
    starts_at: float | None
    ends_at: float | None
    recurring: str | None
    """Its windows (`0 0 2 ? * SAT` in Europe/Berlin for 2h), when it recurs."""
    next_window_at: float | None
    """When its next window opens, when it recurs."""
    matches: str
    comment: str
    created_by: str


@dataclass(frozen=True, slots=True)
class PageData:
    now: float
    version: str
    replica: str | None
    """The replica that answered (None: the store's view alone)."""
    note: str
    """Where the workspaces' poll health comes from, when it is not the daemon."""
    workspaces: tuple[WorkspaceRow, ...]
    active_runs: tuple[ActiveRunRow, ...]
    active_total: int
    events: tuple[EventRow, ...]
    incidents: tuple[IncidentRow, ...]
    dead_total: int
    dead_letters: tuple[DeadLetterRow, ...]
    outbox_pending: int
    silences: tuple[SilenceRow, ...]

    @property
    def over_rule(self) -> int:
        return sum(1 for r in self.active_runs if r.over)


async def page_data(
    status: Mapping[str, Any] | None,
    store: Store,
    config: Config,
    clock: Clock,
    *,
    note: str = "",
) -> PageData:
    """What the page shows, read from the store now. `status` is the daemon's /status
    (None: the store's view alone, with `note` saying why)."""
    now = clock.time()
    polled = {w.get("name"): w for w in _list(status, "workspaces") if isinstance(w, Mapping)}
    leases = {
        lease.workspace: lease.owner
        for lease in await store.leases()
        if lease.owner and lease.expires_at > now
    }
    workspaces: list[WorkspaceRow] = []
    runs: list[ActiveRunRow] = []
    names: dict[tuple[str, int], str] = {}
    for ws in config.workspaces:
        state = await store.workspace_state(ws.name)
        records = await store.get_runs(ws.name, state.active_run_ids)
        job_ids = {r.job_id for r in records.values() if r.job_id is not None}
        jobs = await store.get_jobs(ws.name, job_ids)
        names.update({(ws.name, j.job_id): j.name for j in jobs.values() if j.name})
        for record in records.values():
            started = record.start_time or record.state_since
            at = started / 1000 if started else None
            fallback = record.snapshot.run_name or f"run {record.run_id}"
            name = names.get((ws.name, record.job_id or 0), fallback)
            runs.append(
                ActiveRunRow(
                    workspace=ws.name,
                    run_id=record.run_id,
                    job_id=record.job_id,
                    job_name=name,
                    state=record.life_cycle_state or "?",
                    started_at=at,
                    age=None if at is None else max(0.0, now - at),
                    breached=tuple(
                        sorted(
                            k.removeprefix(_BREACH) for k in record.emitted if k.startswith(_BREACH)
                        )
                    ),
                )
            )
        seen = polled.get(ws.name)
        last = _number(seen, "last_success_at")
        workspaces.append(
            WorkspaceRow(
                name=ws.name,
                polled_here=None if seen is None else bool(seen.get("polled_here", True)),
                last_success_at=last,
                lag=None if last is None else max(0.0, now - last),
                consecutive_failures=None
                if seen is None
                else int(_number(seen, "consecutive_failures") or 0),
                last_error=None if seen is None else _redacted(_text(seen.get("last_error"))),
                watermark_at=None if state.watermark_ms is None else state.watermark_ms / 1000,
                lease_owner=leases.get(ws.name),
                active_runs=len(records),
            )
        )
    runs.sort(key=lambda r: (r.started_at is None, r.started_at or 0.0, r.run_id))
    incidents = await store.incidents(open_only=True)
    unnamed: dict[str, set[int]] = {}
    for i in incidents:
        if i.job_id is not None and (i.workspace, i.job_id) not in names:
            unnamed.setdefault(i.workspace, set()).add(i.job_id)
    for workspace, ids in unnamed.items():
        jobs = await store.get_jobs(workspace, ids)
        names.update({(workspace, j.job_id): j.name for j in jobs.values() if j.name})
    stats = await store.outbox_stats()
    dead = await store.dead_letters(limit=LATEST_DEAD_LETTERS, newest_first=True)
    recent = await store.recent_events(limit=RECENT_EVENTS)
    stored = await store.silences(now=now)
    return PageData(
        now=now,
        version=(_text(status.get("version")) if status else None) or __version__,
        replica=_text(status.get("replica")) if status else None,
        note=note,
        workspaces=tuple(workspaces),
        active_runs=tuple(runs[:ACTIVE_RUNS_SHOWN]),
        active_total=len(runs),
        events=tuple(
            EventRow(
                id=r.event.id,
                type=str(r.event.type),
                workspace=r.event.workspace,
                job_name=_job_name(r.event.job.name, r.event.job.job_id),
                run_id=r.event.run.run_id,
                occurred_at=r.event.occurred_at.timestamp(),
                committed_at=r.committed_at,
                deliveries=tuple(
                    DeliveryRow(str(d.key), d.status, d.attempts, _redacted(d.last_error))
                    for d in r.deliveries
                ),
            )
            for r in recent
        ),
        incidents=tuple(
            IncidentRow(
                id=i.id,
                kind=i.kind,
                key=i.key,
                workspace=i.workspace,
                job_name=names.get((i.workspace, i.job_id or 0)) or _job_name(None, i.job_id),
                opened_at=i.opened_at_ms / 1000,
                count=i.count,
            )
            for i in incidents
        ),
        dead_total=stats.dead,
        dead_letters=tuple(
            DeadLetterRow(
                event_id=d.event.id,
                type=str(d.event.type),
                workspace=d.event.workspace,
                job_name=_job_name(d.event.job.name, d.event.job.job_id),
                key=str(d.key),
                attempts=d.attempts,
                last_error=_redacted(d.last_error),
                created_at=d.created_at,
            )
            for d in dead
        ),
        outbox_pending=stats.pending,
        silences=tuple(
            row
            for row in [
                *(_silence(None, s, "", now) for s in config.silences),
                *(_silence(s.id, s.silence, s.created_by, now, s.ends_at) for s in stored),
            ]
            if row is not None
        ),
    )


def _list(status: Mapping[str, Any] | None, key: str) -> list[Any]:
    found = status.get(key) if status else None
    return found if isinstance(found, list) else []


def _number(entry: Mapping[str, Any] | None, key: str) -> float | None:
    value = entry.get(key) if entry else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _job_name(name: str | None, job_id: int | None) -> str:
    return name or (f"job {job_id}" if job_id is not None else "(no job)")


def _silence(
    silence_id: str | None,
    silence: SilenceConfig,
    created_by: str,
    now: float,
    ends_at: float | None = None,
) -> SilenceRow | None:
    """The row of a silence not over at `now` (None for one that is); `ends_at` is when a
    stored one was expired, if that is earlier than its own end."""
    compiled = compile_silence(silence)
    if ends_at is not None:
        compiled = replace(compiled, ends_at=ends_at)
    if compiled.over(now):
        return None
    match = silence.match
    parts = [
        *(f"workspace {w}" for w in match.workspaces),
        *(f"event {t}" for t in match.event_types),
        *(f"job id {j}" for j in match.job_ids),
        *(f"job name {n}" for n in match.names),
        *(f"tag {k}={v}" for k, v in match.tags.items()),
        *(f"trigger {t}" for t in match.triggers),
        *(f"run type {t}" for t in match.run_types),
    ]
    if match.min_consecutive_failures is not None:
        parts.append(f"{match.min_consecutive_failures}+ failures in a row")
    window = silence.recurring
    return SilenceRow(
        id=silence_id,
        active=compiled.active(now),
        starts_at=_finite(compiled.starts_at),
        ends_at=_finite(compiled.ends_at),
        recurring=f"{window.cron} in {window.timezone} for {span(window.duration)}"
        if window
        else None,
        next_window_at=compiled.next_window(now),
        matches=", ".join(parts) or "every event",
        comment=silence.comment,
        created_by=created_by,
    )


def _finite(at: float) -> float | None:
    return at if math.isfinite(at) else None


# -- formatting --------------------------------------------------------------------------


def when(at: float | None) -> str:
    """An instant in UTC, to the second ("-" for none)."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float | None) -> str:
    """A duration, its two largest units: `45s`, `12m 05s`, `3h 20m`, `2d 4h`."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _polled(row: WorkspaceRow) -> str:
    if row.polled_here is None:
        return "?"
    return "yes" if row.polled_here else "no"


def _health(row: WorkspaceRow) -> str:
    """ok, failing or unknown: the badge of a workspace."""
    if row.polled_here is None or not row.polled_here:
        return "unknown"
    if row.consecutive_failures or row.last_success_at is None:
        return "failing"
    return "ok"


# -- HTML --------------------------------------------------------------------------------

_ENV = Environment(
    loader=PackageLoader("watcher", "templates"),
    autoescape=True,  # job names are anyone's: never markup
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(when=when, span=span, attempts=attempts)
_ENV.globals.update(polled=_polled, health=_health, refresh=REFRESH_SECONDS)


def render_page(data: PageData) -> str:
    """The page as HTML (every value escaped)."""
    return _ENV.get_template("status.html.j2").render(data=data)


def page_for(
    status: Callable[[], Awaitable[Mapping[str, Any]]],
    store: Store,
    config: Config,
    clock: Clock,
) -> Callable[[], Awaitable[str]]:
    """The server's `/`: the page of a running daemon (its /status and its store)."""

    async def page() -> str:
        return render_page(await page_data(await status(), store, config, clock))

    return page


# -- text (watcher status) ---------------------------------------------------------------


def _redacted(error: str | None) -> str | None:
    """An error as the logs show it: tokens and secret URLs the channel could not know
    of (a receiver echoing them) are hidden, here on a page nobody has to log in to."""
    return None if error is None else redact_value(error)


_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _plain(value: object) -> str:
    """A value fit for a terminal: no control characters (a job name could move the
    cursor or colour the screen), one line."""
    text = "-" if value is None else str(value)
    # Controls, and the format and separator characters that reorder or break a line
    # (bidi overrides, U+2028): a job name could otherwise move the cursor or a row.
    return "".join("?" if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    if not rows:
        return ["none"]
    cells = [[_plain(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [line(headers), *(line(r) for r in cells)]


def render_text(data: PageData) -> str:
    """The same information as the page, as plain text tables."""
    out: list[str] = []
    who = f"replica {_plain(data.replica)}" if data.replica else "store only"
    out.append(f"watcher {_plain(data.version)} status at {when(data.now)} ({who})")
    if data.note:
        out.append(_plain(data.note))
    out += ["", "WORKSPACES"]
    out += _table(
        [
            "name",
            "polled here",
            "last poll",
            "lag",
            "failures",
            "watermark",
            "lease",
            "active",
            "last error",
        ],
        [
            [
                w.name,
                _polled(w),
                when(w.last_success_at),
                span(w.lag),
                "-" if w.consecutive_failures is None else w.consecutive_failures,
                when(w.watermark_at),
                w.lease_owner or "-",
                w.active_runs,
                w.last_error or "",
            ]
            for w in data.workspaces
        ],
    )
    out += ["", f"ACTIVE RUNS ({data.active_total}, {data.over_rule} over a duration rule)"]
    out += _table(
        ["", "workspace", "job", "run id", "state", "age", "rules broken"],
        [
            [
                "!" if r.over else "",
                r.workspace,
                r.job_name,
                r.run_id,
                r.state,
                span(r.age),
                ", ".join(r.breached),
            ]
            for r in data.active_runs
        ],
    )
    if data.active_total > len(data.active_runs):
        out.append(f"... and {data.active_total - len(data.active_runs)} more")
    out += ["", f"RECENT EVENTS (latest {len(data.events)}; outbox pending: {data.outbox_pending})"]
    out += _table(
        ["occurred", "type", "workspace", "job", "run id", "deliveries"],
        [
            [
                when(e.occurred_at),
                e.type,
                e.workspace,
                e.job_name,
                e.run_id,
                ", ".join(f"{d.key}: {d.status} ({attempts(d.attempts)})" for d in e.deliveries)
                or "none",
            ]
            for e in data.events
        ],
    )
    out += ["", f"OPEN INCIDENTS ({len(data.incidents)})"]
    out += _table(
        ["kind", "key", "job", "opened", "count"],
        [[i.kind, i.key, i.job_name, when(i.opened_at), i.count] for i in data.incidents],
    )
    out += ["", f"DEAD LETTERS ({data.dead_total})"]
    out += _table(
        ["created", "type", "job", "delivery", "attempts", "last error"],
        [
            [when(d.created_at), d.type, d.job_name, d.key, d.attempts, d.last_error or ""]
            for d in data.dead_letters
        ],
    )
    out += ["", f"SILENCES ({len(data.silences)} active or upcoming)"]
    out += _table(
        ["", "id", "starts", "ends", "recurring", "next window", "matches", "comment", "by"],
        [
            [
                "active" if s.active else "upcoming",
                s.id or "(config)",
                when(s.starts_at),
                when(s.ends_at),
                s.recurring or "",
                when(s.next_window_at) if s.recurring else "",
                s.matches,
                s.comment,
                s.created_by,
            ]
            for s in data.silences
        ],
    )
    return "\n".join(out) + "\n"


STATUS_TIMEOUT = 3.0
"""Seconds `watcher status` waits for the running daemon's /status."""


def default_url(config: Config) -> str | None:
    """Where the daemon of `config` serves, seen from this machine (None: port 0, any)."""
    port = config.server.port
    return f"http://127.0.0.1:{port}" if port else None


async def fetch_status(url: str, *, seconds: float = STATUS_TIMEOUT) -> dict[str, Any]:
    """The running daemon's /status at `url` (its base address), waiting `seconds` at most."""
    limit = aiohttp.ClientTimeout(total=seconds)
    async with (
        aiohttp.ClientSession(timeout=limit) as http,
        http.get(url.rstrip("/") + "/status") as response,
    ):
        response.raise_for_status()
        found = await response.json()
    if not isinstance(found, dict):
        raise ValueError("the answer is no JSON object")
    return found


async def print_status(
    config: Config,
    url: str | None,
    out: TextIO,
    *,
    clock: Clock | None = None,
    output: str = "table",
) -> int:
    """`watcher status`: the page's information as text (or, `output="json"`, as one
    JSON object; times in epoch seconds). The poll health of each
    workspace is known to the running daemon alone: it is asked at `url` (default: the
    configured port on this machine); if it does not answer, the store's view is shown
    (watermarks and leases), saying so."""
    url = url or default_url(config)
    status: dict[str, Any] | None = None
    if url is None:
        note = (
            "server.port is 0, so the daemon's address is unknown (give --url): "
            "poll health unknown; the store's view (watermarks, leases) is shown"
        )
    else:
        try:
            status = await fetch_status(url)
            note = ""
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            note = (
                f"the watcher at {url} did not answer ({reason}): poll health unknown; "
                "the store's view (watermarks, leases) is shown"
            )
    # A mistyped store.path must not create an empty database and show an empty state.
    store = await open_store(config.store, create=False)
    try:
        data = await page_data(status, store, config, clock or SystemClock(), note=note)
    finally:
        await store.close()
    if output == "json":
        out.write(json.dumps(dataclasses.asdict(data)) + "\n")
    else:
        out.write(render_text(data))
    return 0
