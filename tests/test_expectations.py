"""What Databricks never reports, job by job and in workspace time: a scheduled trigger
that no run followed, a continuous job with no active run, a job without a success for
too long; each once, each resolved when it is over."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from watcher.config import ExpectationsConfig
from watcher.databricks.models import Job
from watcher.domain import JobRecord
from watcher.events import Event, EventType
from watcher.expectations import Checked, check_jobs, signature
from watcher.incidents import IncidentBook

WS = "prod"
NIGHTLY = "0 15 22 * * ?"  # the Jobs API reference's example: 22:15 every day
T0 = int(datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp() * 1000)  # a Monday, noon
H = 3_600_000
M = 60_000


def ms(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2026, 3, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


def job(job_id: int = 1, *, created: int = T0 - 30 * 24 * H, **settings: Any) -> Job:
    return Job.model_validate(
        {
            "job_id": job_id,
            "created_time": created,
            "settings": {"name": f"job-{job_id}", **settings},
        }
    )


def scheduled(expression: str = NIGHTLY, pause: str = "UNPAUSED", **kwargs: Any) -> Job:
    cron = {"quartz_cron_expression": expression, "timezone_id": "UTC", "pause_status": pause}
    return job(schedule=cron, **kwargs)


def record(**times: int | str | None) -> JobRecord:
    return JobRecord(workspace=WS, job_id=1, name="job-1", **times)


class Checker:
    """check_jobs over cycles, with the incident book carried from one to the next."""

    def __init__(self, config: ExpectationsConfig | None = None, since: int = T0) -> None:
        self.book = IncidentBook.of(WS, {})
        self.config = config or ExpectationsConfig()
        self.since = since
        self.events: list[Event] = []

    def at(self, now: int, jobs: list[Job], records: dict[int, JobRecord] | None = None) -> Checked:
        """One check at `now`; each job's checked settings as first seen at `since` (the
        records given keep their times)."""
        self.book = IncidentBook.of(WS, dict(self.book.open))
        seen = {}
        for j in jobs:
            window = self.config.success_window(j.job_id, j.settings.name, j.settings.tags)
            known = (records or {}).get(j.job_id) or record()
            update = {"job_id": j.job_id, "expect_sig": signature(j, window)}
            seen[j.job_id] = known.model_copy(update=update | {"expect_since_ms": self.since})
        checked = check_jobs(
            WS, {j.job_id: j for j in jobs}, seen, self.book, now_ms=now, config=self.config
        )
        self.events.extend(checked.events)
        return checked


def types(events: list[Event]) -> list[str]:
    return [e.type.value for e in events]


def test_a_trigger_no_run_followed_is_missed_once_after_its_grace() -> None:
    """22:15 passes with no run: nothing within the grace (10 min for a daily schedule's
    10% is 2.4 h: the grace is 2.4 h), run_missed once after it, then never again for that
    trigger; its incident resolves when a run starts."""
    check = Checker()
    assert check.at(ms(2, 23, 0), [scheduled()]).events == []  # within the grace
    (missed,) = check.at(ms(3, 0, 40), [scheduled()]).events
    assert missed.type is EventType.RUN_MISSED
    assert missed.expected_at == datetime(2026, 3, 2, 22, 15, tzinfo=UTC)
    assert missed.occurred_at == datetime(2026, 3, 3, 0, 39, tzinfo=UTC)
    assert missed.detail == "latest run started: none seen"
    assert missed.incident is not None
    assert (missed.incident.kind, missed.incident.key) == ("missed", "prod/job/1/missed")
    assert check.at(ms(3, 1, 0), [scheduled()]).events == []
    # A late run of the job ends it.
    (resolved,) = check.at(
        ms(3, 1, 30), [scheduled()], {1: record(last_start_ms=ms(3, 1, 20))}
    ).events
    assert resolved.type is EventType.INCIDENT_RESOLVED
    assert resolved.incident is not None
    assert (resolved.incident.cause, resolved.incident.id) == ("ran", missed.incident.id)


def test_a_run_that_started_at_the_trigger_is_no_miss() -> None:
    check = Checker()
    started = {1: record(last_start_ms=ms(2, 22, 15) + 20_000)}
    assert check.at(ms(3, 6, 0), [scheduled()], started).events == []
    early = {
        1: record(
            last_start_ms=ms(
                2,
                22,
                14,
            )
            + 30_000
        )
    }  # clock skew: 30 s early
    assert check.at(ms(3, 6, 0), [scheduled()], early).events == []


@pytest.mark.parametrize(
    ("jobs", "since"),
    [
        pytest.param([scheduled(pause="PAUSED")], T0, id="paused"),
        pytest.param([scheduled()], ms(2, 23, 0), id="trigger before the watcher started"),
        pytest.param([scheduled(created=ms(2, 22, 30))], T0, id="trigger before the job existed"),
        pytest.param([job()], T0, id="no schedule"),
    ],
)
def test_no_miss(jobs: list[Job], since: int) -> None:
    assert Checker(since=since).at(ms(3, 6, 0), jobs).events == []


def test_several_missed_triggers_are_one_incident_counted_again() -> None:
    """An hourly schedule (grace 10 min) stays unfulfilled for three triggers: one
    incident, three run_missed events (one id per trigger), counted 1, 2, 3."""
    hourly = scheduled("0 0 * * * ?")
    check = Checker(since=ms(2, 12))
    for hour in (13, 14, 15):
        check.at(ms(2, hour, 11), [hourly])
    assert types(check.events) == ["run_missed"] * 3
    assert len({e.id for e in check.events}) == 3
    assert [e.incident.count for e in check.events if e.incident] == [1, 2, 3]
    assert check.at(ms(2, 15, 30), [hourly]).events == []  # nothing new between triggers


def test_a_paused_schedule_is_shown_with_its_next_trigger() -> None:
    checked = Checker().at(ms(3, 6), [scheduled(pause="PAUSED"), scheduled(job_id=2)])
    assert {j: (f.paused, f.next_expected_ms) for j, f in checked.schedules.items()} == {
        1: (True, ms(3, 22, 15)),
        2: (False, ms(3, 22, 15)),
    }


def test_an_invalid_schedule_is_reported_not_raised() -> None:
    checked = Checker().at(ms(3, 6), [scheduled("0 0 * * *")])
    assert checked.events == []
    assert "6 or 7 fields" in checked.unreadable[1]


def test_a_periodic_trigger_is_due_a_period_after_the_last_run() -> None:
    every_4h = job(
        trigger={"pause_status": "UNPAUSED", "periodic": {"interval": 4, "unit": "HOURS"}}
    )
    check = Checker(since=ms(2, 0))
    ran = {1: record(last_start_ms=ms(2, 8))}
    assert check.at(ms(2, 12, 20), [every_4h], ran).events == []  # grace: 24 min
    (missed,) = check.at(ms(2, 12, 30), [every_4h], ran).events
    assert missed.expected_at == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_a_continuous_job_without_an_active_run_is_not_running_until_one_is() -> None:
    streaming = job(continuous={"pause_status": "UNPAUSED"})
    check = Checker(since=ms(2, 0))
    last_seen = {1: record(last_active_ms=ms(2, 10))}
    assert check.at(ms(2, 10, 10), [streaming], last_seen).events == []
    (down,) = check.at(ms(2, 10, 20), [streaming], last_seen).events
    assert down.type is EventType.JOB_NOT_RUNNING
    assert down.expected_at == datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    assert check.at(ms(2, 11), [streaming], last_seen).events == []
    running = {1: record(last_active_ms=ms(2, 11, 30))}
    (back,) = check.at(ms(2, 11, 30), [streaming], running).events
    assert back.incident is not None
    assert (back.type, back.incident.cause) == (EventType.INCIDENT_RESOLVED, "running")
    paused = job(continuous={"pause_status": "PAUSED"})
    assert Checker(since=ms(2, 0)).at(ms(3, 0), [paused], last_seen).events == []


def test_a_job_expected_to_succeed_daily_is_stale_after_26_hours_until_it_succeeds() -> None:
    tagged = job(tags={"watcher.expect_success_within": "26h"})
    check = Checker(since=ms(1, 0))
    last = {1: record(last_success_ms=ms(2, 6))}
    assert check.at(ms(3, 7, 59), [tagged], last).events == []
    (stale,) = check.at(ms(3, 8, 1), [tagged], last).events
    assert stale.type is EventType.JOB_STALE
    assert stale.detail == "latest success: 2026-03-02T06:00:00Z"
    (fresh,) = check.at(ms(3, 9), [tagged], {1: record(last_success_ms=ms(3, 8, 30))}).events
    assert fresh.incident is not None
    assert fresh.incident.cause == "recovered"
    config = ExpectationsConfig.model_validate(
        {"success_within": [{"name": "daily", "seconds": 3600, "match": {"names": ["job-*"]}}]}
    )
    (by_rule,) = Checker(config, since=ms(1, 0)).at(ms(2, 7, 1), [job()], last).events
    assert by_rule.type is EventType.JOB_STALE


def test_an_edited_schedule_and_a_newly_watched_job_are_checked_from_then_on() -> None:
    """A job seen for the first time, or whose schedule changed, is checked from that
    cycle: yesterday's 23:00 of a schedule moved from 22:15 at noon is no miss, nor is a
    trigger before a job joined the watch."""
    nightly = scheduled()
    book = IncidentBook.of(WS, {})
    config = ExpectationsConfig()
    first = check_jobs(WS, {1: nightly}, {}, book, now_ms=T0, config=config)
    assert first.events == []
    sig, since = first.since[1]
    assert since == T0
    seen = record(expect_sig=sig, expect_since_ms=since, last_start_ms=ms(1, 22, 15))
    moved = scheduled("0 0 23 * * ?")
    edited = check_jobs(WS, {1: moved}, {1: seen}, book, now_ms=T0 + H, config=config)
    assert edited.events == []
    assert edited.since[1][1] == T0 + H  # the edit restarts the checks
    # The edited schedule's first trigger (23:00) passes unanswered: that one is missed.
    again = record(expect_sig=edited.since[1][0], expect_since_ms=T0 + H)
    (missed,) = check_jobs(WS, {1: moved}, {1: again}, book, now_ms=ms(3, 2), config=config).events
    assert missed.expected_at == datetime(2026, 3, 2, 23, 0, tzinfo=UTC)


def test_pausing_resolves_an_open_missed_incident() -> None:
    check = Checker(since=ms(1, 0))
    (missed,) = check.at(ms(3, 6), [scheduled()]).events
    (resolved,) = check.at(ms(3, 7), [scheduled(pause="PAUSED")]).events
    assert resolved.incident is not None
    assert missed.incident is not None
    assert (resolved.incident.id, resolved.incident.cause) == (missed.incident.id, "paused")
    assert check.book.open == {}
