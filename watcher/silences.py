"""Silences: what holds an event's deliveries back, and when.

A silence is a match (the routes' `RouteMatch`) and a time: between `starts_at` and
`ends_at`, and with `recurring` only inside its windows (a Quartz cron expression read in
a time zone gives each window's start, so a window keeps its wall-clock time across
daylight saving changes; `duration` is in real seconds). Configured silences are compiled
once with the routing table; those added at run time (`watcher silence add`, the HTTP API)
live in the store, shared by every replica, and `LiveSilences` keeps the latest read of
them: read again before each cycle's commit, so a new silence holds from the next cycle on.
"""

from __future__ import annotations

import contextlib
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import structlog
from pydantic import ValidationError

from watcher.aio import within
from watcher.clock import Clock
from watcher.config import RouteMatch, SilenceConfig
from watcher.config.errors import describe
from watcher.events import Event
from watcher.schedule import Schedule
from watcher.store.base import SilenceStore, StoredSilence

log = structlog.get_logger(__name__)

REFRESH_TIMEOUT = 5.0
"""Seconds a cycle waits for the stored silences before it commits with the last read."""


@dataclass(frozen=True, slots=True)
class Window:
    """Recurring windows on a time zone's wall clock, as a maintenance window is meant
    ("Saturdays 02:00-04:00 Berlin time"): each opens when the cron expression's wall time
    comes and lasts `duration` seconds of wall time. A window over the hour skipped when
    clocks go forward opens when that gap ends (and is an hour shorter); one over the hour
    repeated when they go back holds through both passes (an hour longer)."""

    wall: Schedule
    """The cron expression read in UTC: plain wall-clock arithmetic, no DST."""
    zone: tzinfo
    duration: float

    def _wall(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, self.zone).replace(tzinfo=UTC)

    def open_at(self, now: float) -> bool:
        wall = self._wall(now)
        began = self.wall.latest_at_or_before(wall)
        return began is not None and wall < began + timedelta(seconds=self.duration)

    def next_open(self, after: float) -> float | None:
        """When the next window opens after `after` (a start in a skipped hour: as that
        wall time is read before the change)."""
        opens = self.wall.next_after(self._wall(after))
        return None if opens is None else opens.replace(tzinfo=self.zone).timestamp()


@dataclass(frozen=True, slots=True)
class Silence:
    match: Callable[[Event], bool]
    starts_at: float = -math.inf
    """Epoch seconds, inclusive."""
    ends_at: float = math.inf
    """Epoch seconds, exclusive."""
    window: Window | None = None
    """Recurring windows: it holds only inside them."""
    source: str = "config"
    """`config`, or `runtime` for one added at run time."""

    def active(self, now: float) -> bool:
        if not self.starts_at <= now < self.ends_at:
            return False
        return self.window is None or self.window.open_at(now)

    def next_window(self, now: float) -> float | None:
        """When the next recurring window opens after `now` (None: not recurring, or no
        window is left before the silence ends)."""
        if self.window is None:
            return None
        # A window opening at the very start of the silence counts too.
        opens = self.window.next_open(now if now >= self.starts_at else self.starts_at - 1e-3)
        if opens is None or opens >= self.ends_at:
            return None
        return opens

    def over(self, now: float) -> bool:
        """Whether it will never hold again."""
        if now >= self.ends_at:
            return True
        return self.window is not None and not self.active(now) and self.next_window(now) is None

    def holds(self, event: Event, now: float) -> bool:
        return self.active(now) and self.match(event)


def compile_silence(
    config: SilenceConfig, source: str = "config", where: str = "silence"
) -> Silence:
    """`config` compiled; `where` names it in logs (`silences.0`)."""
    window = config.recurring
    return Silence(
        # A private copy of the match: compiled silences stay as they were compiled.
        match=config.match.model_copy(deep=True).selects,
        starts_at=_epoch(config.starts_at, f"{where}.starts_at") if config.starts_at else -math.inf,
        ends_at=_epoch(config.ends_at, f"{where}.ends_at") if config.ends_at else math.inf,
        window=Window(
            wall=Schedule.parse(window.cron, "UTC"),
            zone=window.schedule().zone,
            duration=window.duration,
        )
        if window
        else None,
        source=source,
    )


def _epoch(moment: datetime, where: str) -> float:
    if moment.tzinfo is None:
        # Validation asks for a time zone; one without (a model built past validation) is
        # read as UTC rather than compared with aware times later, which raises per event.
        log.warning("silence_without_time_zone", silence=where, read_as="UTC")
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def runtime_silence(stored: StoredSilence) -> Silence:
    """A silence added at run time, compiled (its end is the earlier of its own and the
    moment it was expired)."""
    silence = compile_silence(stored.silence, "runtime", f"silence {stored.id}")
    ends = stored.ends_at
    return silence if ends is None else replace(silence, ends_at=ends)


class LiveSilences:
    """The silences added at run time, as last read from the store. Each cycle reads them
    (one small query) just before its commit, so a silence stored before a cycle begins
    holds in that cycle. A read that fails keeps the previous set (logged as
    `silences_refresh_failed`, reported to `on_failure`): the store being down must not
    lift every silence at once, nor stop a cycle."""

    def __init__(
        self,
        store: SilenceStore,
        clock: Clock,
        *,
        on_refresh: Callable[[], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self.clock = clock
        self._on_refresh = on_refresh
        self._on_failure = on_failure
        self._reads = 0
        self._applied = 0
        self.current: tuple[Silence, ...] = ()

    async def refresh(self) -> None:
        self._reads += 1
        read = self._reads
        try:
            stored = await within(
                self.clock, REFRESH_TIMEOUT, self._store.silences(now=self.clock.time())
            )
        except Exception as exc:
            log.warning("silences_refresh_failed", error_type=type(exc).__name__, error=str(exc))
            if self._on_failure is not None:
                with contextlib.suppress(Exception):
                    self._on_failure()
            return
        compiled = tuple(c for c in map(_compiled, stored) if c is not None)
        # Workspaces' cycles read side by side: a read that began earlier and ended
        # later must not put back what a newer read no longer has.
        if read > self._applied:
            self._applied, self.current = read, compiled
        if self._on_refresh is not None:
            with contextlib.suppress(Exception):
                self._on_refresh()


def _compiled(stored: StoredSilence) -> Silence | None:
    try:
        return runtime_silence(stored)
    except Exception as exc:  # one silence that cannot be compiled holds nothing back
        log.error("silence_unreadable", silence=stored.id, error=str(exc)[:300])
        return None


def counts(silences: Sequence[Silence], now: float) -> dict[tuple[str, str], int]:
    """(source, state) -> how many silences: `active` now, or `pending` (they will hold
    later: not started yet, or between two recurring windows)."""
    found: dict[tuple[str, str], int] = {}
    for silence in silences:
        if silence.over(now):
            continue
        state = "active" if silence.active(now) else "pending"
        found[silence.source, state] = found.get((silence.source, state), 0) + 1
    return found


# -- silences added at run time: from the CLI's and the HTTP API's words ------------------


class InvalidSilence(ValueError):
    """A silence that cannot be added; `problems` has one line per problem, each naming
    what is wrong (a matcher, a field)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


_MATCHER_KEYS = {
    "workspace": "workspaces",
    "job": "names",
    "job_id": "job_ids",
    "event": "event_types",
    "trigger": "triggers",
    "run_type": "run_types",
}
MATCHER_HELP = (
    "KEY=VALUE: workspace=NAME, job=NAME-GLOB, job_id=N, event=TYPE, tag:KEY=VALUE "
    "(`*` any value), trigger=PERIODIC, run_type=JOB_RUN; a key given twice matches "
    "either value"
)


def parse_matchers(texts: Sequence[str]) -> RouteMatch:
    """`job=nightly-*`, `workspace=prod`, `tag:team=data`... as the match they stand for;
    InvalidSilence naming each matcher that cannot be read."""
    fields: dict[str, Any] = {}
    tags: dict[str, str] = {}
    problems: list[str] = []
    for text in texts:
        key, eq, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            problems.append(f"matcher {text!r}: write KEY=VALUE")
        elif key.startswith("tag:") and len(key) > 4:
            if key[4:] in tags:
                problems.append(f"matcher {text!r}: tag {key[4:]!r} given twice")
            tags[key[4:]] = value
        elif key in _MATCHER_KEYS:
            fields.setdefault(_MATCHER_KEYS[key], []).append(value)
        else:
            keys = ", ".join([*_MATCHER_KEYS, "tag:KEY"])
            problems.append(f"matcher {text!r}: unknown key {key!r} (use {keys})")
    if problems:
        raise InvalidSilence(problems)
    try:
        return RouteMatch.model_validate({**fields, "tags": tags})
    except ValidationError as exc:
        raise InvalidSilence([f"matcher {line}" for line in describe(exc, RouteMatch)]) from None


def matchers_of(match: RouteMatch) -> list[str]:
    """The matchers `parse_matchers` reads back into `match` (what a match has beyond
    them, a configured silence's min_consecutive_failures, is left out)."""
    found = [f"workspace={w}" for w in match.workspaces]
    found += [f"job={n}" for n in match.names]
    found += [f"job_id={j}" for j in match.job_ids]
    found += [f"event={t}" for t in match.event_types]
    found += [f"tag:{k}={v}" for k, v in match.tags.items()]
    found += [f"trigger={t}" for t in match.triggers]
    found += [f"run_type={t}" for t in match.run_types]
    return found


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds of `90s`, `30m`, `2h`, `1d`, `1h30m` (a unit is required: `--window 2`
    could be meant as anything)."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise InvalidSilence([f"duration {text!r}: write e.g. 90s, 30m, 2h, 1d or 1h30m"])
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidSilence([f"duration {text!r}: must be more than 0"])
    return seconds


MAX_DURATION = 3650 * 86400.0
"""The longest silence given by its duration (a longer one is a typo, or a route)."""


def new_silence(
    *,
    matchers: Sequence[str],
    comment: str,
    created_by: str,
    now: float,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    duration: float | None = None,
    recurring: Mapping[str, Any] | None = None,
) -> StoredSilence:
    """A silence to add: from `starts_at` (default now) until `ends_at`, or for
    `duration` seconds; with `recurring` ({cron, timezone, duration}) only in its
    windows, and for ever unless an end is given. InvalidSilence for what cannot be."""
    problems: list[str] = []
    if not comment.strip():
        problems.append("comment: say why, for the next on-call")
    if ends_at is not None and duration is not None:
        problems.append("give an end time or a duration, not both")
    if duration is not None and not 0 < duration <= MAX_DURATION:
        problems.append(f"duration: more than 0 and at most {MAX_DURATION / 86400:g} days")
    if recurring is None and ends_at is None and duration is None:
        problems.append("give an end time or a duration (or a recurring window)")
    if not matchers:
        # As amtool: a silence of everything is one typo away from a silent night.
        problems.append("give at least one matcher (--match KEY=VALUE)")
    try:
        match = parse_matchers(matchers)
    except InvalidSilence as exc:
        problems += exc.problems
        match = RouteMatch()
    if problems:
        raise InvalidSilence(problems)
    # Whole seconds: `now` itself could come back from a datetime a hair later than now.
    start = starts_at or datetime.fromtimestamp(math.floor(now), UTC)
    if duration is not None:
        try:
            ends_at = start + timedelta(seconds=duration)
        except OverflowError:
            raise InvalidSilence(["duration: ends after the year 9999"]) from None
    if ends_at is not None and ends_at.timestamp() <= now:
        raise InvalidSilence([f"ends_at: {ends_at.isoformat()} is already past"])
    try:
        silence = SilenceConfig.model_validate(
            {
                "match": match.model_dump(),
                "starts_at": start,
                "ends_at": ends_at,
                "recurring": recurring,
                "comment": comment.strip(),
            }
        )
    except ValidationError as exc:
        raise InvalidSilence(describe(exc, SilenceConfig)) from None
    return StoredSilence(
        id=secrets.token_hex(8), silence=silence, created_by=created_by, created_at=now
    )


def silence_json(stored: StoredSilence, now: float) -> dict[str, Any]:
    """A stored silence as `silence list -o json` and the HTTP API show it."""
    compiled = runtime_silence(stored)
    state = "expired" if stored.ended(now) else "active" if compiled.active(now) else "pending"
    window = stored.silence.recurring
    return {
        "id": stored.id,
        "state": state,
        "matchers": matchers_of(stored.silence.match),
        "starts_at": _iso(stored.silence.starts_at.timestamp())
        if stored.silence.starts_at
        else None,
        "ends_at": _iso(stored.ends_at),
        "recurring": window.model_dump() if window else None,
        "next_window_at": _iso(compiled.next_window(now)),
        "comment": stored.silence.comment,
        "created_by": stored.created_by,
        "created_at": _iso(stored.created_at),
        "expired_at": _iso(stored.expired_at),
    }


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
