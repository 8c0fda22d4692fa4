"""Databricks job schedules: when a Quartz cron expression fires in a Java time zone.

A job's `settings.schedule` is `{quartz_cron_expression, timezone_id, pause_status}`
(Jobs API `CronSchedule`). `Schedule.parse(expression, timezone_id)` reads the first two
once into a frozen value of allowed-value sets; `next_after`, `latest_at_or_before`,
`fires_between` and `period_seconds` then say when it fires, as aware UTC datetimes. A
PAUSED schedule fires nothing: that is the caller's check, this module never sees it.
Pure: no I/O, no clock, imports nothing of the watcher.

Quartz syntax, as `org.quartz.CronExpression` reads it (names and letters in any case):

    seconds  minutes  hours  day-of-month  month    day-of-week  [year]
    0-59     0-59     0-23   1-31          1-12     1-7          1970-2199
                             ? L L-n LW    JAN-DEC  SUN-SAT
                             L-nW nW                ? L nL n#k

* `*` every value; `a-b` a range (a range that runs past the end wraps, `22-2`, `FRI-MON`);
  `a/n` and `*/n` every n-th value from a (`*` starts at the field's lowest value, so
  `*/5` in minutes is 0,5,..55 and in months JAN,JUN,NOV); `a-b/n`; lists `a,b-c`.
* Day of week is 1=SUN .. 7=SAT, unlike Unix cron's 0=SUN .. 6=SAT.
* Exactly one of day-of-month and day-of-week is `?` ("no specific value").
* Day-of-month `L` is the last day of the month, `L-3` three days before it, `15W` the
  weekday (Mon-Fri) nearest the 15th without leaving the month (a Saturday 1st moves to
  Monday the 3rd, a Sunday last day to the Friday before), `LW` the last weekday.
* Day-of-week `L` alone is 7 (SAT); `6L` is the last Friday of the month, `6#3` the third
  Friday (no fire in a month without a fifth one, for `#5`).
* The year field is optional; a schedule whose years are all past never fires again.

Quartz accepts a few forms whose meaning is an accident of its parser, which skips what
it cannot read: a step after a month or day name (`MON-FRI/2` means MON-FRI there), a step
of 0, `W` after a list or range (`1-5W` means 1-5), stray characters (`1X`, `1-5-7`, `,1`),
more than seven fields. These raise `InvalidSchedule` instead: predicting a fire that
Databricks will not make would raise a false "missed run", while an unreadable schedule is
only left unwatched. So does any expression Quartz itself refuses; the message names the
field and what is wrong with it. One meaning differs on purpose: `nW` in a month without
day n (`31W` in April) fires nowhere that month here, where Quartz's lenient calendar
arithmetic lands on some day near the month's end.

Time zones are Java ids (`timezone_id`): IANA names as zoneinfo knows them, plus Java's
own three-letter aliases (`PST` is America/Los_Angeles, `IST` Asia/Kolkata, ...) and
custom `GMT+hh:mm` offsets. An id neither knows is an `InvalidSchedule`, where Java would
quietly use GMT.

Daylight saving time, as Quartz (checked against quartz 2.3.2's CronExpression) does it:
a fire time is a local wall-clock time, and

* a wall time that does not exist, in the hour skipped when clocks go forward, does not
  fire at all: `0 30 2 * * ?` in America/Los_Angeles fires 2026-03-07 02:30 PST, then
  2026-03-09 02:30 PDT, nothing on March 8; an hourly `0 30 * * * ?` goes 01:30 -> 03:30;
* a wall time that happens twice, in the hour repeated when clocks go back, fires once, at
  its second (standard time) occurrence: `0 30 1 * * ?` fires at 01:30 PST on 2026-11-01,
  and `0 0/15 * * * ?` goes 00:45 PDT -> 01:00 PST, an hour and a quarter with no fire.

This is what Databricks' documentation warns of ("an hourly job will be skipped or may
appear to not fire for an hour or two when daylight saving time begins or ends"). The
fire times are therefore strictly increasing in both wall-clock and UTC order. They are
the times a running trigger fires at, since it computes each from the one before: asked
from a moment inside the first pass of a repeated hour, Quartz's own `getTimeAfter` jumps
past the second-pass fire times still to come, while `next_after` returns them.

Databricks starts at most one scheduled run per 10 seconds whatever the seconds field
says, and may start a run several minutes late; `period_seconds` is for sizing that grace
(`default_grace_seconds`: the larger of 10 minutes and 10% of the period).
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "MAX_YEAR",
    "MIN_YEAR",
    "DayRule",
    "DaysOfMonth",
    "DaysOfWeek",
    "InvalidSchedule",
    "LastDayOfMonth",
    "LastWeekdayOfMonth",
    "NearestWeekday",
    "NthWeekdayOfMonth",
    "Schedule",
]

MIN_YEAR = 1970
MAX_YEAR = 2199
"""The years a Quartz expression can name (its documented range)."""

_SECOND = timedelta(seconds=1)

_MONTHS = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
_DAYS = {
    name: number
    for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), start=1)
}

# java.util.TimeZone's three-letter ids that are not IANA names (ZoneId.SHORT_IDS; EST, MST
# and HST are IANA names too, and zoneinfo reads them as Java does: fixed offsets).
_JAVA_ALIASES = {
    "ACT": "Australia/Darwin",
    "AET": "Australia/Sydney",
    "AGT": "America/Argentina/Buenos_Aires",
    "ART": "Africa/Cairo",
    "AST": "America/Anchorage",
    "BET": "America/Sao_Paulo",
    "BST": "Asia/Dhaka",
    "CAT": "Africa/Harare",
    "CNT": "America/St_Johns",
    "CST": "America/Chicago",
    "CTT": "Asia/Shanghai",
    "EAT": "Africa/Addis_Ababa",
    "ECT": "Europe/Paris",
    "IET": "America/Indiana/Indianapolis",
    "IST": "Asia/Kolkata",
    "JST": "Asia/Tokyo",
    "MIT": "Pacific/Apia",
    "NET": "Asia/Yerevan",
    "NST": "Pacific/Auckland",
    "PLT": "Asia/Karachi",
    "PNT": "America/Phoenix",
    "PRT": "America/Puerto_Rico",
    "PST": "America/Los_Angeles",
    "SST": "Pacific/Guadalcanal",
    "VST": "Asia/Ho_Chi_Minh",
}
_JAVA_CUSTOM_ID = re.compile(r"GMT([+-])([0-9]{1,2})(?::?([0-9]{2}))?")


class InvalidSchedule(ValueError):
    """A cron expression or time zone id that cannot be evaluated; the message says why."""


# --- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    max_step: int
    """The largest `/step` Quartz allows here."""
    names: Mapping[str, int] | None = None


_SECONDS = _Field("seconds", 0, 59, 59)
_MINUTES = _Field("minutes", 0, 59, 59)
_HOURS = _Field("hours", 0, 23, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31, 31)
_MONTH = _Field("month", 1, 12, 12, _MONTHS)
_DAY_OF_WEEK = _Field("day-of-week", 1, 7, 7, _DAYS)
_YEAR = _Field("year", MIN_YEAR, MAX_YEAR, MAX_YEAR - MIN_YEAR)
_ALL_YEARS = tuple(range(MIN_YEAR, MAX_YEAR + 1))

_ITEM = re.compile(r"(?:(\*)|([0-9A-Z]+)(?:-([0-9A-Z]+))?)(?:/([0-9]+))?")


def _value(token: str, spec: _Field) -> int:
    if token.isdigit():
        number = int(token)
    elif spec.names is not None and token in spec.names:
        return spec.names[token]
    elif spec.names is not None:
        raise InvalidSchedule(f"{spec.name}: unknown name {token!r}")
    else:
        raise InvalidSchedule(f"{spec.name}: {token!r} is not a number")
    if not spec.low <= number <= spec.high:
        raise InvalidSchedule(
            f"{spec.name}: {number} is out of range, values are {spec.low}-{spec.high}"
        )
    return number


def _item(item: str, spec: _Field) -> set[int]:
    """One comma-separated item: `*`, `a`, `a-b`, each optionally `/step`."""
    match = _ITEM.fullmatch(item)
    if match is None:
        raise InvalidSchedule(f"{spec.name}: cannot read {item!r}")
    star, first, last, step_text = match.groups()
    step = 1
    if step_text is not None:
        step = int(step_text)
        if not 1 <= step <= spec.max_step:
            raise InvalidSchedule(
                f"{spec.name}: step {step} in {item!r} must be between 1 and {spec.max_step}"
            )
        if not star and not (first.isdigit() and (last is None or last.isdigit())):
            raise InvalidSchedule(
                f"{spec.name}: a step after a name ({item!r}) is ignored by Quartz; "
                "write the range in numbers"
            )
    if star:
        start, stop = spec.low, spec.high
    else:
        start = _value(first, spec)
        if last is not None:
            stop = _value(last, spec)
        else:
            stop = spec.high if step_text is not None else start
    if stop >= start:
        return set(range(start, stop + 1, step))
    if spec is _YEAR:
        raise InvalidSchedule(f"year: range {item!r} ends before it starts")
    # A range past the field's end wraps round to its start, as Quartz's does.
    span = spec.high - spec.low + 1
    return {spec.low + (v - spec.low) % span for v in range(start, stop + span + 1, step)}


def _values(text: str, spec: _Field) -> tuple[int, ...]:
    if "?" in text:
        if spec in (_DAY_OF_MONTH, _DAY_OF_WEEK):
            raise InvalidSchedule(f"{spec.name}: '?' must be the whole field, not {text!r}")
        raise InvalidSchedule(f"{spec.name}: '?' is allowed only in day-of-month or day-of-week")
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise InvalidSchedule(f"{spec.name}: empty item in {text!r}")
        values |= _item(item, spec)
    return tuple(sorted(values))


# --- day rules: which days of a given month a schedule fires on --------------------------


def _nearest_weekday(day: int, year: int, month: int, length: int) -> int:
    weekday = date(year, month, day).weekday()  # Monday 0 .. Sunday 6
    if weekday == 5:  # Saturday: the Friday before, unless that leaves the month
        return day + 2 if day == 1 else day - 1
    if weekday == 6:  # Sunday: the Monday after, unless that leaves the month
        return day - 2 if day == length else day + 1
    return day


@dataclass(frozen=True)
class DaysOfMonth:
    """Day-of-month numbers (`1,15`, `1-7`, `*`, `1/2`); days past the month's end skip it."""

    days: frozenset[int]

    def in_month(self, year: int, month: int) -> tuple[int, ...]:
        length = calendar.monthrange(year, month)[1]
        return tuple(sorted(d for d in self.days if d <= length))


@dataclass(frozen=True)
class LastDayOfMonth:
    """`L` (offset 0), `L-n`, and with `weekday` `LW` / `L-nW`."""

    offset: int
    weekday: bool

    def in_month(self, year: int, month: int) -> tuple[int, ...]:
        length = calendar.monthrange(year, month)[1]
        day = length - self.offset
        if day < 1:
            return ()
        return (_nearest_weekday(day, year, month, length) if self.weekday else day,)


@dataclass(frozen=True)
class NearestWeekday:
    """`15W`: the weekday nearest the 15th, within the month (none if it has no 15th)."""

    day: int

    def in_month(self, year: int, month: int) -> tuple[int, ...]:
        length = calendar.monthrange(year, month)[1]
        if self.day > length:
            return ()
        return (_nearest_weekday(self.day, year, month, length),)


def _quartz_weekday(year: int, month: int, day: int) -> int:
    return date(year, month, day).isoweekday() % 7 + 1  # 1=SUN .. 7=SAT


@dataclass(frozen=True)
class DaysOfWeek:
    """Quartz day-of-week numbers, 1=SUN .. 7=SAT (`MON-FRI`, `1,7`, `*`)."""

    weekdays: frozenset[int]

    def in_month(self, year: int, month: int) -> tuple[int, ...]:
        first = _quartz_weekday(year, month, 1)
        length = calendar.monthrange(year, month)[1]
        return tuple(
            d for d in range(1, length + 1) if (first - 1 + d - 1) % 7 + 1 in self.weekdays
        )


@dataclass(frozen=True)
class LastWeekdayOfMonth:
    """`6L`: the last Friday of the month."""

    weekday: int

    def in_month(self, year: int, month: int) -> tuple[int, ...]:
        length = calendar.monthrange(year, month)[1]
        last = _quartz_weekday(year, month, length)
        return (length - (last - self.weekday) % 7,)


@dataclass(frozen=True)
class NthWeekdayOfMonth:
    """`6#3`: the third Friday of the month (none in a month without one)."""

    weekday: int
    nth: int

    def in_month(self, year: int, month: int) -> tuple[int, ...]:
        length = calendar.monthrange(year, month)[1]
        first = _quartz_weekday(year, month, 1)
        day = 1 + (self.weekday - first) % 7 + 7 * (self.nth - 1)
        return (day,) if day <= length else ()


DayRule: TypeAlias = (
    DaysOfMonth
    | LastDayOfMonth
    | NearestWeekday
    | DaysOfWeek
    | LastWeekdayOfMonth
    | NthWeekdayOfMonth
)


@lru_cache(maxsize=16384)
def _days(rule: DayRule, year: int, month: int) -> tuple[int, ...]:
    return rule.in_month(year, month)


_LAST_DAY = re.compile(r"L(?:-([0-9]+))?(W)?")
_WEEKDAY_NEAR = re.compile(r"([0-9]+)W")
_LAST_OR_NTH = re.compile(r"([0-9]+|[A-Z]{3})(?:(L)|#([0-9]+))")


def _day_of_month(text: str) -> DayRule:
    if match := _LAST_DAY.fullmatch(text):
        offset = int(match.group(1) or 0)
        if offset > 30:
            raise InvalidSchedule(f"day-of-month: offset from the last day must be <= 30: {text!r}")
        return LastDayOfMonth(offset, weekday=match.group(2) is not None)
    if match := _WEEKDAY_NEAR.fullmatch(text):
        return NearestWeekday(_value(match.group(1), _DAY_OF_MONTH))
    if "L" in text or "W" in text:
        raise InvalidSchedule(
            f"day-of-month: 'L' and 'W' take a single day, not a list or range: {text!r}"
        )
    return DaysOfMonth(frozenset(_values(text, _DAY_OF_MONTH)))


def _day_of_week(text: str) -> DayRule:
    if text == "L":
        return DaysOfWeek(frozenset({7}))
    if match := _LAST_OR_NTH.fullmatch(text):
        weekday = _value(match.group(1), _DAY_OF_WEEK)
        if match.group(2):
            return LastWeekdayOfMonth(weekday)
        nth = int(match.group(3))
        if not 1 <= nth <= 5:
            raise InvalidSchedule(f"day-of-week: '#' must be followed by 1-5: {text!r}")
        return NthWeekdayOfMonth(weekday, nth)
    if "L" in text or "#" in text:
        raise InvalidSchedule(
            f"day-of-week: 'L' and '#' take a single day, not a list or range: {text!r}"
        )
    return DaysOfWeek(frozenset(_values(text, _DAY_OF_WEEK)))


def _zone(timezone_id: str) -> tzinfo:
    name = _JAVA_ALIASES.get(timezone_id, timezone_id)
    if custom := _JAVA_CUSTOM_ID.fullmatch(name):
        sign, hours, minutes = custom.groups()
        offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if offset >= timedelta(hours=24) or int(minutes or 0) > 59:
            raise InvalidSchedule(f"time zone: offset out of range in {timezone_id!r}")
        return timezone(-offset if sign == "-" else offset, timezone_id)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    try:
        ZoneInfo("UTC")
    except ZoneInfoNotFoundError:
        raise InvalidSchedule(
            f"time zone: {timezone_id!r} cannot be looked up, this machine has no time "
            "zone database (install the tzdata package)"
        ) from None
    raise InvalidSchedule(f"time zone: unknown time zone id {timezone_id!r}")


_FIXED_ZONES = {"UTC", "UCT", "GMT", "GMT0", "GMT+0", "GMT-0", "Greenwich", "Universal", "Zulu"}


def _fixed_offset(zone: tzinfo) -> timedelta | None:
    if isinstance(zone, timezone):
        return zone.utcoffset(None)
    key = getattr(zone, "key", None)
    if isinstance(key, str) and (key in _FIXED_ZONES or key.startswith("Etc/")):
        return zone.utcoffset(datetime(2000, 1, 1))
    return None


# --- the schedule ----------------------------------------------------------------------


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment!r}")
    return moment


@dataclass(frozen=True)
class Schedule:
    """A parsed Quartz cron expression in a time zone. Build with `Schedule.parse`."""

    expression: str
    timezone_id: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: DayRule
    """The day-of-month rule, or the day-of-week rule when day-of-month is `?`."""
    months: tuple[int, ...]
    years: tuple[int, ...]
    zone: tzinfo = field(repr=False, compare=False)
    fixed: timedelta | None = field(repr=False, compare=False)
    """The zone's offset when it never changes (UTC, Etc/..., GMT+hh:mm): a faster path."""

    @classmethod
    def parse(cls, expression: str, timezone_id: str) -> Schedule:
        """Read a `quartz_cron_expression` and a `timezone_id`; `InvalidSchedule` if either
        cannot be evaluated."""
        fields = expression.upper().split()
        try:
            if len(fields) not in (6, 7):
                raise InvalidSchedule(
                    f"expected 6 or 7 fields (seconds minutes hours day-of-month month "
                    f"day-of-week [year]), got {len(fields)}"
                )
            second, minute, hour, day_of_month, month, day_of_week = fields[:6]
            if (day_of_month == "?") == (day_of_week == "?"):
                raise InvalidSchedule(
                    "exactly one of day-of-month and day-of-week must be '?' (Quartz does "
                    f"not combine them), got {day_of_month!r} and {day_of_week!r}"
                )
            days = _day_of_week(day_of_week) if day_of_month == "?" else _day_of_month(day_of_month)
            zone = _zone(timezone_id)
            schedule = cls(
                expression=expression,
                timezone_id=timezone_id,
                seconds=_values(second, _SECONDS),
                minutes=_values(minute, _MINUTES),
                hours=_values(hour, _HOURS),
                days=days,
                months=_values(month, _MONTH),
                years=_values(fields[6], _YEAR) if len(fields) == 7 else _ALL_YEARS,
                zone=zone,
                fixed=_fixed_offset(zone),
            )
        except InvalidSchedule as exc:
            raise InvalidSchedule(f"{expression!r} in {timezone_id!r}: {exc}") from None
        return schedule

    # --- public queries ------------------------------------------------------------

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after `moment` (aware), in UTC; None if none is left."""
        wall, now, first_pass = self._local(moment)
        start = wall + _SECOND
        if first_pass:
            # In the first pass of a repeated hour: those wall times fire on the second pass,
            # which is after `moment`, so the search starts where the repetition starts.
            start = self._wall(self._transition(now, wall - self._offsets(wall)[1]))
        while (candidate := self._first_at_or_after(start)) is not None:
            fire = self._instant(candidate)
            if fire is None:  # skipped by clocks going forward: go on after the gap
                start = max(candidate + _SECOND, self._wall(self._gap_end(candidate)))
            elif fire > now:
                return fire.replace(tzinfo=UTC)
            else:
                start = candidate + _SECOND
        return None

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last fire time at or before `moment` (aware), in UTC; None if there is none."""
        wall, now, first_pass = self._local(moment)
        start = wall
        if first_pass:
            start = self._wall(self._transition(now, wall - self._offsets(wall)[1])) - _SECOND
        while (candidate := self._last_at_or_before(start)) is not None:
            fire = self._instant(candidate)
            if fire is None:
                gap_start = self._wall(self._gap_end(candidate) - _SECOND)
                start = min(candidate - _SECOND, gap_start)
            elif fire <= now:
                return fire.replace(tzinfo=UTC)
            else:
                start = candidate - _SECOND
        return None

    def fires_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Fire times in (start, end], oldest first, in UTC: whether a run was due between
        the previous cycle and this one is `any(schedule.fires_between(previous, now))`."""
        end = _aware(end, "end")
        fire = self.next_after(start)
        while fire is not None and fire <= end:
            yield fire
            fire = self.next_after(fire)

    def period_seconds(self, around: datetime) -> float | None:
        """Seconds between the fire times either side of `around`: the last at or before
        it and the next after it (so from `around` itself when it is a fire time). Near the
        schedule's first or last fire, the gap to its neighbour. None if it fires once or
        never."""
        before = self.latest_at_or_before(around)
        after = self.next_after(around)
        if before is None and after is not None:
            before, after = after, self.next_after(after)
        elif after is None and before is not None:
            before, after = self.latest_at_or_before(before - _SECOND), before
        if before is None or after is None:
            return None
        return (after - before).total_seconds()

    def default_grace_seconds(
        self, around: datetime, *, floor: float = 600.0, share: float = 0.1
    ) -> float:
        """How late a run may start before it counts as missing: the larger of `floor`
        (10 minutes) and `share` (10%) of `period_seconds(around)`."""
        period = self.period_seconds(around)
        return floor if period is None else max(floor, share * period)

    # --- wall-clock search -----------------------------------------------------------

    def _dates_from(self, first: date) -> Iterator[date]:
        for year in self.years[bisect_left(self.years, first.year) :]:
            months = self.months
            if year == first.year:
                months = months[bisect_left(months, first.month) :]
            for month in months:
                days = _days(self.days, year, month)
                if (year, month) == (first.year, first.month):
                    days = days[bisect_left(days, first.day) :]
                for day in days:
                    yield date(year, month, day)

    def _dates_down_from(self, last: date) -> Iterator[date]:
        for year in reversed(self.years[: bisect_right(self.years, last.year)]):
            months = self.months
            if year == last.year:
                months = months[: bisect_right(months, last.month)]
            for month in reversed(months):
                days = _days(self.days, year, month)
                if (year, month) == (last.year, last.month):
                    days = days[: bisect_right(days, last.day)]
                for day in reversed(days):
                    yield date(year, month, day)

    def _time_at_or_after(self, floor: time) -> time | None:
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        for hour in hours[bisect_left(hours, floor.hour) :]:
            same_hour = hour == floor.hour
            for minute in minutes[bisect_left(minutes, floor.minute) if same_hour else 0 :]:
                exact = same_hour and minute == floor.minute
                i = bisect_left(seconds, floor.second) if exact else 0
                if i < len(seconds):
                    return time(hour, minute, seconds[i])
        return None

    def _time_at_or_before(self, ceiling: time) -> time | None:
        hours, minutes, seconds = self.hours, self.minutes, self.seconds
        for hour in reversed(hours[: bisect_right(hours, ceiling.hour)]):
            same_hour = hour == ceiling.hour
            top = bisect_right(minutes, ceiling.minute) if same_hour else len(minutes)
            for minute in reversed(minutes[:top]):
                exact = same_hour and minute == ceiling.minute
                i = (bisect_right(seconds, ceiling.second) if exact else len(seconds)) - 1
                if i >= 0:
                    return time(hour, minute, seconds[i])
        return None

    def _first_at_or_after(self, wall: datetime) -> datetime | None:
        """The first wall-clock time at or after `wall` (naive, whole seconds) that matches."""
        for day in self._dates_from(wall.date()):
            if day == wall.date():
                at = self._time_at_or_after(wall.time())
            else:
                at = time(self.hours[0], self.minutes[0], self.seconds[0])
            if at is not None:
                return datetime.combine(day, at)
        return None

    def _last_at_or_before(self, wall: datetime) -> datetime | None:
        for day in self._dates_down_from(wall.date()):
            if day == wall.date():
                at = self._time_at_or_before(wall.time())
            else:
                at = time(self.hours[-1], self.minutes[-1], self.seconds[-1])
            if at is not None:
                return datetime.combine(day, at)
        return None

    # --- wall clock <-> UTC ----------------------------------------------------------
    # Inside, wall-clock times are naive datetimes with fold=0 and moments are naive UTC
    # datetimes, both in whole seconds: fire times are whole seconds, so comparing one with a
    # moment truncated to the second gives the same answer as with the moment itself.

    def _local(self, moment: datetime) -> tuple[datetime, datetime, bool]:
        """`moment`'s wall-clock time and UTC time, truncated to the second, and whether
        it is in the first pass of a repeated hour."""
        local = _aware(moment, "moment").astimezone(self.zone)
        wall = local.replace(tzinfo=None, microsecond=0, fold=0)
        now = wall - _offset(local.utcoffset())
        return wall, now, local.fold == 0 and self._overlap(wall)

    def _wall(self, moment: datetime) -> datetime:
        if self.fixed is not None:
            return moment + self.fixed
        return moment.replace(tzinfo=UTC).astimezone(self.zone).replace(tzinfo=None, fold=0)

    def _offsets(self, wall: datetime) -> tuple[timedelta, timedelta]:
        """The UTC offset of a wall-clock time read as its first and as its second
        occurrence: the same unless clocks change about then."""
        if self.fixed is not None:
            return self.fixed, self.fixed
        return (
            _offset(self.zone.utcoffset(wall)),
            _offset(self.zone.utcoffset(wall.replace(fold=1))),
        )

    def _overlap(self, wall: datetime) -> bool:
        """Whether this wall-clock time happens twice (clocks went back)."""
        first, second = self._offsets(wall)
        return first > second

    def _instant(self, wall: datetime) -> datetime | None:
        """When a matching wall-clock time fires: None if it does not exist (clocks went
        forward over it), its second occurrence if it happens twice."""
        first, second = self._offsets(wall)
        if first < second:
            return None
        return wall - second

    def _gap_end(self, wall: datetime) -> datetime:
        """The moment clocks went forward over the nonexistent `wall`."""
        # Read with the offset after the change, the wall time is a moment before it; with
        # the offset before the change, a moment after it.
        before_change, after_change = self._offsets(wall)
        return self._transition(wall - after_change, wall - before_change)

    def _transition(self, before: datetime, after: datetime) -> datetime:
        """The first whole second in (before, after] with the UTC offset `after` has."""
        low, high = (int((t - _EPOCH).total_seconds()) for t in (before, after))
        target = datetime.fromtimestamp(high, self.zone).utcoffset()
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self.zone).utcoffset() == target:
                high = middle
            else:
                low = middle
        return _EPOCH + timedelta(seconds=high)


_EPOCH = datetime(1970, 1, 1)


def _offset(offset: timedelta | None) -> timedelta:
    if offset is None:  # pragma: no cover - every tzinfo here gives aware times an offset
        raise ValueError("time zone gave no UTC offset")
    return offset
