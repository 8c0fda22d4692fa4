"""What Databricks never reports, checked job by job: a scheduled run that never started
(`run_missed`), a continuous job with no active run (`job_not_running`), a job that has
not succeeded for too long (`job_stale`). Pure: the cycle plan hands in every watched
job's settings (from the poller's periodic jobs/list walk), the jobs' records (latest
start, latest active run, latest success) and the open incidents; it gets back the
events (each opening, counting or resolving its incident) and per-job schedule facts
for the metrics. Semantics: docs/alerts.md, "What Databricks never reports".
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from watcher.config import ExpectationsConfig
from watcher.databricks.models import Job, Run
from watcher.domain import Incident, JobRecord
from watcher.events import Event, EventType, IncidentKind, JobRef, ResolveCause, event_id
from watcher.incidents import IncidentBook, resolution, subject_key
from watcher.schedule import InvalidSchedule, Schedule

EARLY_MS = 60_000
"""A run that started up to a minute before an expected trigger (clock skew between the
scheduler and the API's times) still counts as that trigger's run."""
_PERIODIC_UNITS = {"HOURS": 3600, "DAYS": 86_400, "WEEKS": 7 * 86_400}
_ISSUES: dict[EventType, tuple[IncidentKind, ResolveCause]] = {
    # event type -> (incident kind, the cause of its resolve)
    EventType.RUN_MISSED: ("missed", "ran"),
    EventType.JOB_NOT_RUNNING: ("not_running", "running"),
    EventType.JOB_STALE: ("stale", "recovered"),
}


@dataclass(frozen=True, slots=True)
class ScheduleFacts:
    """What the metrics show of one scheduled job."""

    name: str | None
    tags: Mapping[str, str]
    paused: bool
    next_expected_ms: int | None
    """The next trigger (cron schedules only; None for a periodic trigger before its first
    run, or a schedule that fires no more)."""


@dataclass(frozen=True, slots=True)
class Checked:
    events: list[Event]
    schedules: dict[int, ScheduleFacts]
    unreadable: dict[int, str]
    """job id -> why its schedule cannot be evaluated (an invalid expression or zone)."""
    since: dict[int, tuple[str, int]]
    """job id -> (signature, since when) for the jobs whose checked settings are new or
    changed this cycle: to record (`JobRecord.expect_sig`, `expect_since_ms`)."""


def signature(job: Job, window: int | None) -> str:
    """What the checks depend on in a job's settings: a change (an edited or resumed
    schedule, a job newly watched) restarts the checks from then on."""
    settings = job.settings
    cron, trigger, continuous = settings.schedule, settings.trigger, settings.continuous
    periodic = trigger.periodic if trigger else None
    return "|".join(
        str(part)
        for part in (
            cron.quartz_cron_expression if cron else None,
            cron.timezone_id if cron else None,
            cron.pause_status if cron else None,
            (periodic.interval, periodic.unit) if periodic else None,
            trigger.pause_status if trigger else None,
            continuous.pause_status if continuous else None,
            window,
        )
    )


@functools.lru_cache(maxsize=4096)
def _schedule(expression: str, timezone_id: str) -> Schedule:
    return Schedule.parse(expression, timezone_id)


@dataclass(frozen=True, slots=True)
class _CronTimes:
    upcoming_ms: int | None
    """The next trigger after now."""
    expected_ms: int | None
    """The latest trigger more than the grace ago."""
    grace_ms: int
    computed_at_ms: int
    valid_until_ms: int
    """Until when (workspace time) these stay true: the next trigger, or the next one
    after `expected` passing its grace, whichever comes first."""


_CRON_TIMES: dict[tuple[str, str, int | None], _CronTimes] = {}
_CRON_TIMES_LIMIT = 50_000


def _cron_times(expression: str, zone: str, now_ms: int, grace_s: int | None) -> _CronTimes:
    """The schedule's times as of `now_ms`, kept between cycles while they hold: a cron
    schedule changes its answer a few times a period, not every cycle (10,000 jobs would
    otherwise cost hundreds of ms a cycle)."""
    key = (expression, zone, grace_s)
    cached = _CRON_TIMES.get(key)
    if cached is not None and cached.computed_at_ms <= now_ms < cached.valid_until_ms:
        return cached
    schedule = _schedule(expression, zone)
    now = _moment(now_ms)
    upcoming = schedule.next_after(now)
    grace = grace_s if grace_s is not None else schedule.default_grace_seconds(now)
    grace_ms = int(grace * 1000)
    expected = schedule.latest_at_or_before(_moment(now_ms - grace_ms))
    after_expected = schedule.next_after(expected) if expected is not None else upcoming
    bounds = [_ms(t) for t in (upcoming,) if t is not None]
    if after_expected is not None:
        bounds.append(_ms(after_expected) + grace_ms)
    times = _CronTimes(
        _ms(upcoming) if upcoming else None,
        _ms(expected) if expected else None,
        grace_ms,
        now_ms,
        min(bounds, default=now_ms + 86_400_000),
    )
    if len(_CRON_TIMES) >= _CRON_TIMES_LIMIT:
        _CRON_TIMES.clear()
    _CRON_TIMES[key] = times
    return times


def checkable(job: Job, config: ExpectationsConfig) -> bool:
    """Whether any check applies to the job (only those need their records read)."""
    settings = job.settings
    trigger = settings.trigger
    return bool(
        (config.missed_schedules and settings.schedule is not None)
        or (config.missed_schedules and trigger is not None and trigger.periodic is not None)
        or (config.not_running_after and settings.continuous is not None)
        or config.success_window(job.job_id, settings.name, settings.tags)
    )


def check_jobs(
    workspace: str,
    jobs: Mapping[int, Job],
    records: Mapping[int, JobRecord],
    book: IncidentBook,
    *,
    now_ms: int,
    config: ExpectationsConfig,
    known: Collection[str] = (),
) -> Checked:
    """Check every job of `jobs` (workspace time `now_ms`): report what is overdue (once:
    the ids name the job and the instant the condition counts from) and resolve the
    incidents whose condition has ended. Nothing is overdue before the job was created,
    nor before its checked settings were first seen as they are now (the job's
    `expect_since_ms`; a job seen for the first time or changed is checked from now on).
    Events in `known` are committed already: not reported again."""
    events: list[Event] = []
    schedules: dict[int, ScheduleFacts] = {}
    unreadable: dict[int, str] = {}
    changed: dict[int, tuple[str, int]] = {}
    for job_id, job in sorted(jobs.items()):
        if not checkable(job, config):
            continue  # nothing to check (and its stored record may not have been read)
        record = records.get(job_id)
        window = config.success_window(job_id, job.settings.name, job.settings.tags)
        sig = signature(job, window)
        since_ms = record.expect_since_ms if record and record.expect_sig == sig else None
        if since_ms is None:
            since_ms = now_ms
            changed[job_id] = (sig, now_ms)
        floor = max(since_ms, job.created_time or 0)
        found: list[tuple[EventType, int, int]] = []  # (type, since, overdue at)
        if config.missed_schedules:
            try:
                facts, missed = _missed(job, record, now_ms, floor, config)
            except InvalidSchedule as exc:
                unreadable[job_id] = str(exc)
                facts, missed = None, None
            if facts is not None:
                schedules[job_id] = facts
            if missed is not None:
                found.append((EventType.RUN_MISSED, *missed))
        overdue = _not_running(job, record, now_ms, floor, config.not_running_after)
        if overdue is not None:
            found.append((EventType.JOB_NOT_RUNNING, *overdue))
        if window:
            since = max(record.last_success_ms or 0 if record else 0, floor)
            if now_ms - since > window * 1000:
                found.append((EventType.JOB_STALE, since, since + window * 1000))
        events.extend(_settle(workspace, job, record, book, found, known))
    return Checked(events, schedules, unreadable, changed)


def _missed(
    job: Job, record: JobRecord | None, now_ms: int, floor: int, config: ExpectationsConfig
) -> tuple[ScheduleFacts | None, tuple[int, int] | None]:
    """The job's schedule facts, and (expected trigger, when it became missed) of its
    latest trigger past its grace that no run started after, if any."""
    settings = job.settings
    last_start = record.last_start_ms if record else None
    cron = settings.schedule
    if cron is not None and cron.quartz_cron_expression:
        times = _cron_times(
            cron.quartz_cron_expression, cron.timezone_id or "UTC", now_ms, config.grace
        )
        paused = cron.pause_status == "PAUSED"
        facts = ScheduleFacts(settings.name, settings.tags, paused, times.upcoming_ms)
        if paused or times.expected_ms is None:
            return facts, None
        return facts, _if_missed(times.expected_ms, times.grace_ms, last_start, floor)
    trigger = settings.trigger
    periodic = trigger.periodic if trigger is not None else None
    if periodic is None or not periodic.interval or periodic.unit not in _PERIODIC_UNITS:
        return None, None
    assert trigger is not None
    period_ms = periodic.interval * _PERIODIC_UNITS[periodic.unit] * 1000
    paused = trigger.pause_status == "PAUSED"
    # A periodic trigger has no fixed phase: the next run is due a period after the last.
    anchor = max(last_start or 0, floor)
    facts = ScheduleFacts(
        settings.name, settings.tags, paused, anchor + period_ms if last_start else None
    )
    if paused:
        return facts, None
    grace_s = config.grace if config.grace is not None else max(600.0, 0.1 * period_ms / 1000)
    grace_ms = int(grace_s * 1000)
    expected_ms = anchor + period_ms
    if now_ms - expected_ms <= grace_ms:
        return facts, None
    return facts, _if_missed(expected_ms, grace_ms, last_start, floor)


def _if_missed(
    expected_ms: int, grace_ms: int, last_start: int | None, floor: int
) -> tuple[int, int] | None:
    if expected_ms < floor:
        return None  # before the watcher watched, or before the job existed
    if last_start is not None and last_start >= expected_ms - EARLY_MS:
        return None
    return expected_ms, expected_ms + grace_ms


def _not_running(
    job: Job, record: JobRecord | None, now_ms: int, floor: int, after_s: int
) -> tuple[int, int] | None:
    continuous = job.settings.continuous
    if not after_s or continuous is None or continuous.pause_status == "PAUSED":
        return None
    since = max(record.last_active_ms or 0 if record else 0, floor)
    if now_ms - since <= after_s * 1000:
        return None
    return since, since + after_s * 1000


def _settle(
    workspace: str,
    job: Job,
    record: JobRecord | None,
    book: IncidentBook,
    found: list[tuple[EventType, int, int]],
    known: Collection[str],
) -> list[Event]:
    """The events of what was found overdue, and the resolves of this job's incidents of
    these kinds whose condition has ended."""
    keys = {kind: subject_key(workspace, job.job_id, 0, kind) for kind, _ in _ISSUES.values()}
    if not found and not any(key in book.open for key in keys.values()):
        return []  # the common case, for every job every cycle: build nothing
    ref = JobRef(job_id=job.job_id, name=job.settings.name, tags=dict(job.settings.tags))
    base = Event(
        id="",
        type=EventType.RUN_MISSED,
        workspace=workspace,
        occurred_at=_moment(0),
        job=ref,
        run=Run(run_id=0, job_id=job.job_id),
    )
    events = []
    for type_, since, at in found:
        id_ = event_id(workspace, job.job_id, str(type_), str(since))
        open_ = book.open.get(keys[_ISSUES[type_][0]])
        if id_ in known or (open_ is not None and open_.last_event_id == id_):
            continue  # reported already: the condition is the same one
        event = base.model_copy(
            update={
                "id": id_,
                "type": type_,
                "occurred_at": _moment(at),
                "expected_at": _moment(since),
                "detail": _detail(type_, record),
            }
        )
        recorded = book.record(event)
        events.append(recorded)
    overdue = {type_ for type_, _, _ in found}
    paused = _paused(job)
    for type_, (kind, cause) in _ISSUES.items():
        if type_ in overdue:
            continue
        key = keys[kind]
        incident = book.open.get(key)
        if incident is None:
            continue
        if kind in paused:
            # Paused on purpose: nothing is expected any more, whatever was missed.
            events.append(book.resolve_open(key, _resolver(base, record), "paused"))
        elif _over(incident, record, kind):
            events.append(book.resolve_open(key, _resolver(base, record), cause))
    return events


def _paused(job: Job) -> set[str]:
    """The incident kinds whose checks the job's settings pause now."""
    settings = job.settings
    kinds = set()
    trigger = settings.trigger
    if (settings.schedule and settings.schedule.pause_status == "PAUSED") or (
        trigger is not None and trigger.periodic is not None and trigger.pause_status == "PAUSED"
    ):
        kinds.add("missed")
    if settings.continuous is not None and settings.continuous.pause_status == "PAUSED":
        kinds.add("not_running")
    return kinds


def _over(incident: Incident, record: JobRecord | None, kind: str) -> bool:
    """Whether the condition of a job's incident has ended: a run started after the
    missed trigger, a run was active again, the job succeeded again."""
    if record is None or incident.since_ms is None:
        return False
    if kind == "missed":
        return (record.last_start_ms or 0) >= incident.since_ms - EARLY_MS
    if kind == "not_running":
        return (record.last_active_ms or 0) > incident.since_ms
    return (record.last_success_ms or 0) > incident.since_ms


def _resolver(base: Event, record: JobRecord | None) -> Callable[[Incident, ResolveCause], Event]:
    def make(incident: Incident, cause: ResolveCause) -> Event:
        # When it ended: the run that started, the run active again, the success.
        moments = {
            "ran": record.last_start_ms if record else None,
            "running": record.last_active_ms if record else None,
            "recovered": record.last_success_ms if record else None,
        }
        ended = moments.get(cause) or incident.opened_at_ms
        at = _moment(max(ended, incident.opened_at_ms))
        return resolution(incident, base, at=at, cause=cause)

    return make


def _detail(type_: EventType, record: JobRecord | None) -> str:
    """The latest run the watcher knows of: a start for a missed trigger, an active run
    for a continuous job, a success for a stale job."""
    moments = {
        EventType.RUN_MISSED: ("latest run started", record.last_start_ms if record else None),
        EventType.JOB_NOT_RUNNING: ("last seen running", record.last_active_ms if record else None),
        EventType.JOB_STALE: ("latest success", record.last_success_ms if record else None),
    }
    what, ms = moments[type_]
    shown = _moment(ms).replace(microsecond=0).isoformat().replace("+00:00", "Z") if ms else None
    return f"{what}: {shown or 'none seen'}"


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
