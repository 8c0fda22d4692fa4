"""Quartz schedules: fire times written out by hand from the calendar (the Quartz CronTrigger
tutorial's examples, the Jobs API's, Databricks UI-style ones), daylight saving changes of
2026 in America/Los_Angeles and Europe/Berlin, and the expressions that are refused.

Every expected time was also checked once against quartz 2.3.2's CronExpression.getTimeAfter
(Debian's libquartz2-java); the one case where it differs is marked below."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import islice, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.schedule import InvalidSchedule, Schedule


def at(text: str) -> datetime:
    """An ISO time with its offset ('Z' for UTC)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fires(expression: str, zone: str, start: str, count: int) -> list[datetime]:
    schedule = Schedule.parse(expression, zone)
    out: list[datetime] = []
    moment = at(start)
    for _ in range(count):
        nxt = schedule.next_after(moment)
        if nxt is None:
            break
        out.append(nxt)
        moment = nxt
    return out


# (expression, time zone, start, the next fire times after start; "END": no more after these)
QUARTZ_EXAMPLES: list[tuple[str, str, str, list[str]]] = [
    # The Jobs API reference's example schedule.
    (
        "0 15 22 * * ?",
        "America/Los_Angeles",
        "2026-06-01T00:00:00-07:00",
        ["2026-06-01T22:15:00-07:00", "2026-06-02T22:15:00-07:00", "2026-06-03T22:15:00-07:00"],
    ),
    # The Quartz CronTrigger tutorial's examples.
    (
        "0 0 12 * * ?",
        "UTC",
        "2026-01-01T12:00:00Z",
        ["2026-01-02T12:00:00Z", "2026-01-03T12:00:00Z", "2026-01-04T12:00:00Z"],
    ),
    (
        "0 15 10 ? * *",
        "UTC",
        "2026-01-31T11:00:00Z",
        ["2026-02-01T10:15:00Z", "2026-02-02T10:15:00Z", "2026-02-03T10:15:00Z"],
    ),
    (
        "0 15 10 * * ?",
        "Europe/Berlin",
        "2026-07-01T10:15:00+02:00",
        ["2026-07-02T10:15:00+02:00", "2026-07-03T10:15:00+02:00", "2026-07-04T10:15:00+02:00"],
    ),
    (
        "0 15 10 * * ? *",
        "Asia/Kolkata",
        "2026-12-30T11:00:00+05:30",
        ["2026-12-31T10:15:00+05:30", "2027-01-01T10:15:00+05:30", "2027-01-02T10:15:00+05:30"],
    ),
    ("0 15 10 * * ? 2005", "UTC", "2026-01-01T00:00:00Z", ["END"]),
    (
        "0 * 14 * * ?",
        "UTC",
        "2026-05-05T14:57:30Z",
        ["2026-05-05T14:58:00Z", "2026-05-05T14:59:00Z", "2026-05-06T14:00:00Z"],
    ),
    (
        "0 0/5 14 * * ?",
        "UTC",
        "2026-05-05T14:50:00Z",
        ["2026-05-05T14:55:00Z", "2026-05-06T14:00:00Z", "2026-05-06T14:05:00Z"],
    ),
    (
        "0 0/5 14,18 * * ?",
        "UTC",
        "2026-05-05T14:52:00Z",
        [
            "2026-05-05T14:55:00Z",
            "2026-05-05T18:00:00Z",
            "2026-05-05T18:05:00Z",
            "2026-05-05T18:10:00Z",
        ],
    ),
    (
        "0 0-5 14 * * ?",
        "UTC",
        "2026-05-05T14:03:00Z",
        [
            "2026-05-05T14:04:00Z",
            "2026-05-05T14:05:00Z",
            "2026-05-06T14:00:00Z",
            "2026-05-06T14:01:00Z",
        ],
    ),
    (
        "0 10,44 14 ? 3 WED",
        "UTC",
        "2026-03-18T14:30:00Z",
        [
            "2026-03-18T14:44:00Z",
            "2026-03-25T14:10:00Z",
            "2026-03-25T14:44:00Z",
            "2027-03-03T14:10:00Z",
        ],
    ),
    (
        "0 15 10 ? * MON-FRI",
        "UTC",
        "2026-01-08T12:00:00Z",
        ["2026-01-09T10:15:00Z", "2026-01-12T10:15:00Z", "2026-01-13T10:15:00Z"],
    ),
    (
        "0 15 10 15 * ?",
        "UTC",
        "2026-01-15T10:15:00Z",
        ["2026-02-15T10:15:00Z", "2026-03-15T10:15:00Z", "2026-04-15T10:15:00Z"],
    ),
    (
        "0 15 10 L * ?",
        "UTC",
        "2026-01-31T12:00:00Z",
        ["2026-02-28T10:15:00Z", "2026-03-31T10:15:00Z", "2026-04-30T10:15:00Z"],
    ),
    (
        "0 15 10 L-2 * ?",
        "UTC",
        "2026-01-01T00:00:00Z",
        [
            "2026-01-29T10:15:00Z",
            "2026-02-26T10:15:00Z",
            "2026-03-29T10:15:00Z",
            "2026-04-28T10:15:00Z",
        ],
    ),
    (
        "0 15 10 ? * 6L",
        "UTC",
        "2026-01-01T00:00:00Z",
        [
            "2026-01-30T10:15:00Z",
            "2026-02-27T10:15:00Z",
            "2026-03-27T10:15:00Z",
            "2026-04-24T10:15:00Z",
        ],
    ),
    ("0 15 10 ? * 6L 2002-2005", "UTC", "2026-01-01T00:00:00Z", ["END"]),
    (
        "0 15 10 ? * 6#3",
        "UTC",
        "2026-01-01T00:00:00Z",
        [
            "2026-01-16T10:15:00Z",
            "2026-02-20T10:15:00Z",
            "2026-03-20T10:15:00Z",
            "2026-04-17T10:15:00Z",
        ],
    ),
    (
        "0 0 12 1/5 * ?",
        "UTC",
        "2026-01-25T00:00:00Z",
        [
            "2026-01-26T12:00:00Z",
            "2026-01-31T12:00:00Z",
            "2026-02-01T12:00:00Z",
            "2026-02-06T12:00:00Z",
        ],
    ),
    (
        "0 11 11 11 11 ?",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2026-11-11T11:11:00Z", "2027-11-11T11:11:00Z", "2028-11-11T11:11:00Z"],
    ),
    # The 15th, or the weekday nearest it: Feb 15 and Mar 15 2026 are Sundays.
    (
        "0 15 10 15W * ?",
        "UTC",
        "2026-01-01T00:00:00Z",
        [
            "2026-01-15T10:15:00Z",
            "2026-02-16T10:15:00Z",
            "2026-03-16T10:15:00Z",
            "2026-04-15T10:15:00Z",
            "2026-05-15T10:15:00Z",
        ],
    ),
    # The last weekday: Jan 31 and Feb 28 2026 are Saturdays, May 31 a Sunday.
    (
        "0 0 0 LW * ?",
        "UTC",
        "2026-01-01T00:00:00Z",
        [
            "2026-01-30T00:00:00Z",
            "2026-02-27T00:00:00Z",
            "2026-03-31T00:00:00Z",
            "2026-04-30T00:00:00Z",
            "2026-05-29T00:00:00Z",
        ],
    ),
    # 1W never leaves the month: Aug 1 2026 is a Saturday (-> Mon 3rd), Nov 1 a Sunday.
    (
        "0 0 12 1W * ?",
        "UTC",
        "2026-07-15T00:00:00Z",
        [
            "2026-08-03T12:00:00Z",
            "2026-09-01T12:00:00Z",
            "2026-10-01T12:00:00Z",
            "2026-11-02T12:00:00Z",
        ],
    ),
    (
        "0 0/5 * * * ?",
        "UTC",
        "2026-02-28T23:52:00Z",
        ["2026-02-28T23:55:00Z", "2026-03-01T00:00:00Z", "2026-03-01T00:05:00Z"],
    ),
    (
        "10 0/5 * * * ?",
        "UTC",
        "2026-02-28T23:55:10Z",
        ["2026-03-01T00:00:10Z", "2026-03-01T00:05:10Z", "2026-03-01T00:10:10Z"],
    ),
    (
        "0 30 10-13 ? * WED,FRI",
        "UTC",
        "2026-04-01T12:00:00Z",
        [
            "2026-04-01T12:30:00Z",
            "2026-04-01T13:30:00Z",
            "2026-04-03T10:30:00Z",
            "2026-04-03T11:30:00Z",
        ],
    ),
    (
        "0 0/30 8-9 5,20 * ?",
        "UTC",
        "2026-04-05T00:00:00Z",
        [
            "2026-04-05T08:00:00Z",
            "2026-04-05T08:30:00Z",
            "2026-04-05T09:00:00Z",
            "2026-04-05T09:30:00Z",
            "2026-04-20T08:00:00Z",
        ],
    ),
    # Names in any case.
    (
        "0 0 9 ? jan,jul mon",
        "UTC",
        "2026-01-20T00:00:00Z",
        ["2026-01-26T09:00:00Z", "2026-07-06T09:00:00Z", "2026-07-13T09:00:00Z"],
    ),
    (
        "0 0 12 ? * fri#3",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2026-01-16T12:00:00Z", "2026-02-20T12:00:00Z"],
    ),
    (
        "0 0 12 ? * FRIL",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2026-01-30T12:00:00Z", "2026-02-27T12:00:00Z"],
    ),
    # Year fields: one year, a range that runs out.
    ("0 0 12 1 1 ? 2027", "UTC", "2026-06-01T00:00:00Z", ["2027-01-01T12:00:00Z", "END"]),
    (
        "0 30 9 ? * MON#1 2026-2027",
        "UTC",
        "2027-10-01T00:00:00Z",
        ["2027-10-04T09:30:00Z", "2027-11-01T09:30:00Z", "2027-12-06T09:30:00Z", "END"],
    ),
    # Steps in every field.
    (
        "*/20 * * * * ?",
        "UTC",
        "2026-01-01T00:00:50Z",
        [
            "2026-01-01T00:01:00Z",
            "2026-01-01T00:01:20Z",
            "2026-01-01T00:01:40Z",
            "2026-01-01T00:02:00Z",
        ],
    ),
    (
        "0 5/10 * * * ?",
        "UTC",
        "2026-01-01T00:50:00Z",
        ["2026-01-01T00:55:00Z", "2026-01-01T01:05:00Z", "2026-01-01T01:15:00Z"],
    ),
    (
        "0 0 0/6 * * ?",
        "UTC",
        "2026-01-01T13:00:00Z",
        ["2026-01-01T18:00:00Z", "2026-01-02T00:00:00Z", "2026-01-02T06:00:00Z"],
    ),
    (
        "0 0 6 1 */3 ?",
        "UTC",
        "2026-02-01T00:00:00Z",
        [
            "2026-04-01T06:00:00Z",
            "2026-07-01T06:00:00Z",
            "2026-10-01T06:00:00Z",
            "2027-01-01T06:00:00Z",
        ],
    ),
    (
        "0 0 8 ? * 2/2",
        "UTC",
        "2026-01-04T00:00:00Z",
        ["2026-01-05T08:00:00Z", "2026-01-07T08:00:00Z", "2026-01-09T08:00:00Z"],
    ),
    (
        "0 0 0 1 1 ? 2026/2",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2028-01-01T00:00:00Z", "2030-01-01T00:00:00Z"],
    ),
    (
        "0 0 3 ? * SUN",
        "Europe/Berlin",
        "2026-01-01T00:00:00+01:00",
        ["2026-01-04T03:00:00+01:00", "2026-01-11T03:00:00+01:00", "2026-01-18T03:00:00+01:00"],
    ),
    # Ranges that run past the end wrap round.
    (
        "0 0 22-2 * * ?",
        "UTC",
        "2026-01-01T02:30:00Z",
        [
            "2026-01-01T22:00:00Z",
            "2026-01-01T23:00:00Z",
            "2026-01-02T00:00:00Z",
            "2026-01-02T01:00:00Z",
            "2026-01-02T02:00:00Z",
            "2026-01-02T22:00:00Z",
        ],
    ),
    (
        "0 0 12 ? * FRI-MON",
        "UTC",
        "2026-01-06T00:00:00Z",
        [
            "2026-01-09T12:00:00Z",
            "2026-01-10T12:00:00Z",
            "2026-01-11T12:00:00Z",
            "2026-01-12T12:00:00Z",
            "2026-01-16T12:00:00Z",
        ],
    ),
    (
        "0 0 12 ? NOV-FEB MON",
        "UTC",
        "2026-02-20T00:00:00Z",
        ["2026-02-23T12:00:00Z", "2026-11-02T12:00:00Z", "2026-11-09T12:00:00Z"],
    ),
    # The fifth Wednesday: only in months that have one.
    (
        "0 0 8 ? * 4#5",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2026-04-29T08:00:00Z", "2026-07-29T08:00:00Z", "2026-09-30T08:00:00Z"],
    ),
    (
        "0 0 8 ? * 2#1",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2026-01-05T08:00:00Z", "2026-02-02T08:00:00Z", "2026-03-02T08:00:00Z"],
    ),
    # L alone in day-of-week is 7, Saturday.
    (
        "0 0 12 ? * L",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2026-01-03T12:00:00Z", "2026-01-10T12:00:00Z", "2026-01-17T12:00:00Z"],
    ),
    # Databricks UI-style: a seconds value, hourly, daily at midnight.
    (
        "13 24 6 * * ?",
        "America/New_York",
        "2026-01-01T06:24:13-05:00",
        ["2026-01-02T06:24:13-05:00", "2026-01-03T06:24:13-05:00"],
    ),
    (
        "0 0 * * * ?",
        "UTC",
        "2026-12-31T22:30:00Z",
        ["2026-12-31T23:00:00Z", "2027-01-01T00:00:00Z", "2027-01-01T01:00:00Z"],
    ),
    # Days a month does not have are skipped; Feb 29 waits for a leap year.
    (
        "0 0 12 31 * ?",
        "UTC",
        "2026-01-31T12:00:00Z",
        [
            "2026-03-31T12:00:00Z",
            "2026-05-31T12:00:00Z",
            "2026-07-31T12:00:00Z",
            "2026-08-31T12:00:00Z",
        ],
    ),
    (
        "0 0 12 29 2 ?",
        "UTC",
        "2026-01-01T00:00:00Z",
        ["2028-02-29T12:00:00Z", "2032-02-29T12:00:00Z"],
    ),
    # Java's own zone ids.
    (
        "0 0 9 * * ?",
        "PST",
        "2026-03-07T00:00:00-08:00",
        ["2026-03-07T09:00:00-08:00", "2026-03-08T09:00:00-07:00"],
    ),
    (
        "0 0 9 * * ?",
        "GMT+05:30",
        "2026-03-07T00:00:00Z",
        ["2026-03-07T09:00:00+05:30", "2026-03-08T09:00:00+05:30"],
    ),
]


@pytest.mark.parametrize(("expression", "zone", "start", "expected"), QUARTZ_EXAMPLES)
def test_quartz_examples(expression: str, zone: str, start: str, expected: list[str]) -> None:
    got = fires(expression, zone, start, len(expected))
    assert got == [at(e) for e in expected if e != "END"]
    assert all(g.tzinfo is UTC for g in got)


def test_the_table_covers_enough_expressions() -> None:
    assert len({e for e, *_ in QUARTZ_EXAMPLES}) >= 35


# --- daylight saving time, 2026 ------------------------------------------------------------
# America/Los_Angeles: 02:00 PST -> 03:00 PDT on Mar 8; 02:00 PDT -> 01:00 PST on Nov 1.
# Europe/Berlin: 02:00 CET -> 03:00 CEST on Mar 29; 03:00 CEST -> 02:00 CET on Oct 25.
# A wall time in the skipped hour does not fire; one in the repeated hour fires once, on the
# second pass. (quartz 2.3.2's CronExpression gives these same times.)

DST: list[tuple[str, str, str, list[str]]] = [
    # Spring: 02:30 does not exist on Mar 8, and there is no fire that day at all.
    (
        "0 30 2 * * ?",
        "America/Los_Angeles",
        "2026-03-07T00:00:00-08:00",
        ["2026-03-07T02:30:00-08:00", "2026-03-09T02:30:00-07:00", "2026-03-10T02:30:00-07:00"],
    ),
    (
        "0 30 * * * ?",
        "America/Los_Angeles",
        "2026-03-08T00:00:00-08:00",
        [
            "2026-03-08T00:30:00-08:00",
            "2026-03-08T01:30:00-08:00",
            "2026-03-08T03:30:00-07:00",
            "2026-03-08T04:30:00-07:00",
        ],
    ),
    (
        "0 0/20 2-3 * * ?",
        "America/Los_Angeles",
        "2026-03-08T01:00:00-08:00",
        [
            "2026-03-08T03:00:00-07:00",
            "2026-03-08T03:20:00-07:00",
            "2026-03-08T03:40:00-07:00",
            "2026-03-09T02:00:00-07:00",
        ],
    ),
    # The Jobs API example keeps its local time: an hour earlier in UTC after the change.
    (
        "0 15 22 * * ?",
        "America/Los_Angeles",
        "2026-03-07T00:00:00-08:00",
        ["2026-03-07T22:15:00-08:00", "2026-03-08T22:15:00-07:00"],
    ),
    # Autumn: 01:30 happens twice on Nov 1 and fires once, at 01:30 PST.
    (
        "0 30 1 * * ?",
        "America/Los_Angeles",
        "2026-10-31T00:00:00-07:00",
        ["2026-10-31T01:30:00-07:00", "2026-11-01T01:30:00-08:00", "2026-11-02T01:30:00-08:00"],
    ),
    # Every 15 minutes: nothing during the first 01:00-02:00 (PDT), then on through PST.
    (
        "0 0/15 * * * ?",
        "America/Los_Angeles",
        "2026-11-01T00:30:00-07:00",
        [
            "2026-11-01T00:45:00-07:00",
            "2026-11-01T01:00:00-08:00",
            "2026-11-01T01:15:00-08:00",
            "2026-11-01T01:30:00-08:00",
            "2026-11-01T01:45:00-08:00",
            "2026-11-01T02:00:00-08:00",
        ],
    ),
    # Asked from inside the first 01:00-02:00: the 01:30 still to come is the PST one (the
    # running trigger fires then; Quartz's getTimeAfter from this moment says Nov 2).
    (
        "0 30 1 * * ?",
        "America/Los_Angeles",
        "2026-11-01T01:40:00-07:00",
        ["2026-11-01T01:30:00-08:00", "2026-11-02T01:30:00-08:00"],
    ),
    (
        "0 30 2 * * ?",
        "Europe/Berlin",
        "2026-03-28T00:00:00+01:00",
        ["2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00"],
    ),
    (
        "0 0 * * * ?",
        "Europe/Berlin",
        "2026-03-29T00:00:00+01:00",
        ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
    ),
    (
        "0 30 2 * * ?",
        "Europe/Berlin",
        "2026-10-24T12:00:00+02:00",
        ["2026-10-25T02:30:00+01:00", "2026-10-26T02:30:00+01:00"],
    ),
    (
        "0 0/20 * * * ?",
        "Europe/Berlin",
        "2026-10-25T01:50:00+02:00",
        [
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T02:20:00+01:00",
            "2026-10-25T02:40:00+01:00",
            "2026-10-25T03:00:00+01:00",
        ],
    ),
    (
        "0 0 3 * * ?",
        "Europe/Berlin",
        "2026-10-24T12:00:00+02:00",
        ["2026-10-25T03:00:00+01:00", "2026-10-26T03:00:00+01:00"],
    ),
]


@pytest.mark.parametrize(("expression", "zone", "start", "expected"), DST)
def test_daylight_saving_changes(
    expression: str, zone: str, start: str, expected: list[str]
) -> None:
    assert fires(expression, zone, start, len(expected)) == [at(e) for e in expected]


@pytest.mark.parametrize(("expression", "zone", "start", "expected"), DST)
def test_backwards_finds_the_same_fire_times(
    expression: str, zone: str, start: str, expected: list[str]
) -> None:
    schedule = Schedule.parse(expression, zone)
    times = [at(e) for e in expected]
    for earlier, later in pairwise(times):
        assert schedule.latest_at_or_before(later) == later
        assert schedule.latest_at_or_before(later - timedelta(microseconds=1)) == earlier


def test_a_day_of_23_and_of_25_hours() -> None:
    daily = Schedule.parse("0 0 12 * * ?", "Europe/Berlin")
    assert daily.period_seconds(at("2026-03-28T18:00:00+01:00")) == 23 * 3600
    assert daily.period_seconds(at("2026-10-24T18:00:00+02:00")) == 25 * 3600
    hourly = Schedule.parse("0 0 * * * ?", "America/Los_Angeles")
    # 00:00 PDT -> 01:00 PST is two hours of real time.
    assert hourly.period_seconds(at("2026-11-01T00:30:00-07:00")) == 2 * 3600


# --- the other queries ----------------------------------------------------------------------


def test_fires_between_is_after_start_up_to_and_including_end() -> None:
    schedule = Schedule.parse("0 0/15 * * * ?", "UTC")
    got = list(schedule.fires_between(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:45:00Z")))
    assert got == [
        at("2026-01-01T00:15:00Z"),
        at("2026-01-01T00:30:00Z"),
        at("2026-01-01T00:45:00Z"),
    ]
    assert (
        list(schedule.fires_between(at("2026-01-01T00:01:00Z"), at("2026-01-01T00:14:59Z"))) == []
    )
    endless = Schedule.parse("* * * * * ?", "UTC").fires_between(
        at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z")
    )
    assert list(islice(endless, 2)) == [at("2026-01-01T00:00:01Z"), at("2026-01-01T00:00:02Z")]


def test_latest_at_or_before_includes_the_moment() -> None:
    schedule = Schedule.parse("0 0 12 ? * MON-FRI", "UTC")
    assert schedule.latest_at_or_before(at("2026-01-09T12:00:00Z")) == at("2026-01-09T12:00:00Z")
    assert schedule.latest_at_or_before(at("2026-01-11T23:00:00Z")) == at("2026-01-09T12:00:00Z")
    assert schedule.latest_at_or_before(at("2026-01-12T11:59:59Z")) == at("2026-01-09T12:00:00Z")
    assert (
        Schedule.parse("0 0 12 1 1 ? 2027", "UTC").latest_at_or_before(at("2026-06-01T00:00:00Z"))
        is None
    )


def test_any_aware_moment_is_accepted_and_naive_ones_are_not() -> None:
    schedule = Schedule.parse("0 0 12 * * ?", "UTC")
    tokyo = timezone(timedelta(hours=9))
    assert schedule.next_after(datetime(2026, 1, 1, 20, 0, tzinfo=tokyo)) == at(
        "2026-01-01T12:00:00Z"
    )
    assert schedule.next_after(at("2026-01-01T11:59:59.999999Z")) == at("2026-01-01T12:00:00Z")
    assert schedule.next_after(at("2026-01-01T12:00:00.000001Z")) == at("2026-01-02T12:00:00Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        schedule.next_after(datetime(2026, 1, 1))


def test_period_and_default_grace() -> None:
    hourly = Schedule.parse("0 0 * * * ?", "UTC")
    assert hourly.period_seconds(at("2026-01-01T10:30:00Z")) == 3600
    assert hourly.default_grace_seconds(at("2026-01-01T10:30:00Z")) == 600
    daily = Schedule.parse("0 0 2 * * ?", "UTC")
    assert daily.default_grace_seconds(at("2026-01-01T10:30:00Z")) == 8640
    twice = Schedule.parse("0 0 9,17 ? * MON-FRI", "UTC")
    assert twice.period_seconds(at("2026-01-07T12:00:00Z")) == 8 * 3600  # Wed 09:00 -> 17:00
    assert twice.period_seconds(at("2026-01-09T20:00:00Z")) == 64 * 3600  # Fri 17:00 -> Mon
    # At a fire time: from it to the next.
    assert twice.period_seconds(at("2026-01-07T09:00:00Z")) == 8 * 3600
    # Before the first fire and after the last, the gap to the neighbour.
    two = Schedule.parse("0 0 12 1 1,7 ? 2027", "UTC")
    assert two.period_seconds(at("2026-01-01T00:00:00Z")) == 181 * 86400
    assert two.period_seconds(at("2028-01-01T00:00:00Z")) == 181 * 86400
    once = Schedule.parse("0 0 12 1 1 ? 2027", "UTC")
    assert once.period_seconds(at("2026-01-01T00:00:00Z")) is None
    assert once.default_grace_seconds(at("2026-01-01T00:00:00Z")) == 600


def test_zone_ids() -> None:
    assert Schedule.parse("0 0 12 * * ?", "IST").next_after(at("2026-01-01T00:00:00Z")) == at(
        "2026-01-01T12:00:00+05:30"
    )
    assert Schedule.parse("0 0 12 * * ?", "GMT-3").next_after(at("2026-01-01T00:00:00Z")) == at(
        "2026-01-01T12:00:00-03:00"
    )
    assert Schedule.parse("0 0 12 * * ?", "Etc/UTC").timezone_id == "Etc/UTC"


# --- refused --------------------------------------------------------------------------------

INVALID: list[tuple[str, str, str]] = [
    ("0 0 12 * * *", "UTC", "exactly one of day-of-month and day-of-week must be '?'"),
    ("0 0 12 ? * ?", "UTC", "exactly one of day-of-month and day-of-week must be '?'"),
    ("0 0 12 * *", "UTC", "expected 6 or 7 fields"),
    ("0 0 12 * * ? 2026 X", "UTC", "got 8"),
    ("", "UTC", "got 0"),
    ("60 0 12 * * ?", "UTC", "seconds: 60 is out of range, values are 0-59"),
    ("0 60 12 * * ?", "UTC", "minutes: 60 is out of range"),
    ("0 0 24 * * ?", "UTC", "hours: 24 is out of range, values are 0-23"),
    ("0 0 12 32 * ?", "UTC", "day-of-month: 32 is out of range, values are 1-31"),
    ("0 0 12 0 * ?", "UTC", "day-of-month: 0 is out of range"),
    ("0 0 12 ? 13 MON", "UTC", "month: 13 is out of range, values are 1-12"),
    ("0 0 12 ? * 0", "UTC", "day-of-week: 0 is out of range, values are 1-7"),
    ("0 0 12 ? * 8", "UTC", "day-of-week: 8 is out of range"),
    ("0 0 12 ? FOO MON", "UTC", "month: unknown name 'FOO'"),
    ("0 0 12 ? * MOX", "UTC", "day-of-week: unknown name 'MOX'"),
    ("0 0 1X * * ?", "UTC", "hours: '1X' is not a number"),
    ("0 0 12 ? * 6#6", "UTC", "'#' must be followed by 1-5"),
    ("0 0 12 ? * 6#0", "UTC", "'#' must be followed by 1-5"),
    ("0 0 12 ? * 1#1,6#3", "UTC", "day-of-week: 'L' and '#' take a single day"),
    ("0 0 12 ? * 6L,1", "UTC", "day-of-week: 'L' and '#' take a single day"),
    ("0 0 12 L,15 * ?", "UTC", "day-of-month: 'L' and 'W' take a single day"),
    ("0 0 12 1-5W * ?", "UTC", "day-of-month: 'L' and 'W' take a single day"),
    ("0 0 12 L-31 * ?", "UTC", "offset from the last day must be <= 30"),
    ("0 0 12 32W * ?", "UTC", "day-of-month: 32 is out of range"),
    ("0 0 ? * * ?", "UTC", "hours: '?' is allowed only in day-of-month or day-of-week"),
    ("0 0 12 ?,1 * ?", "UTC", "day-of-month: '?' must be the whole field"),
    ("0 0/0 12 * * ?", "UTC", "minutes: step 0 in '0/0' must be between 1 and 59"),
    ("0 0/60 12 * * ?", "UTC", "step 60"),
    ("0 0 12 ? * MON-FRI/2", "UTC", "a step after a name"),
    ("0 0 12 ? JAN/2 *", "UTC", "a step after a name"),
    ("0 0 12 * * ? 1969", "UTC", "year: 1969 is out of range, values are 1970-2199"),
    ("0 0 12 * * ? 2027-2026", "UTC", "year: range '2027-2026' ends before it starts"),
    ("0 0 12 ,1 * ?", "UTC", "day-of-month: empty item"),
    ("0 0 12 1-5-7 * ?", "UTC", "day-of-month: cannot read '1-5-7'"),
    ("0 0 12 * * ?", "Mars/Olympus_Mons", "unknown time zone id 'Mars/Olympus_Mons'"),
    ("0 0 12 * * ?", "", "unknown time zone id ''"),
    ("0 0 12 * * ?", "GMT+25:00", "offset out of range"),
]


@pytest.mark.parametrize(("expression", "zone", "fragment"), INVALID)
def test_invalid(expression: str, zone: str, fragment: str) -> None:
    with pytest.raises(InvalidSchedule) as caught:
        Schedule.parse(expression, zone)
    assert fragment in str(caught.value)
    assert repr(expression) in str(caught.value)
    assert isinstance(caught.value, ValueError)


# --- properties -----------------------------------------------------------------------------

EXPRESSIONS = [e for e, *_ in QUARTZ_EXAMPLES + DST]
ZONES = ["UTC", "America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "America/Santiago"]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(EXPRESSIONS),
    st.sampled_from(ZONES),
    st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2029, 1, 1), timezones=st.just(UTC)
    ),
)
def test_next_and_latest_agree(expression: str, zone: str, moment: datetime) -> None:
    schedule = Schedule.parse(expression, zone)
    before = schedule.latest_at_or_before(moment)
    after = schedule.next_after(moment)
    if before is not None:
        assert before <= moment
        assert schedule.next_after(before) == after
        assert schedule.next_after(before - timedelta(seconds=1)) == before
    if after is not None:
        assert after > moment
        assert schedule.latest_at_or_before(after - timedelta(microseconds=1)) == before
