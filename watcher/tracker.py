"""The run state tracker: a pure function from (previous record, observed run, job
context, rules, now) to (new record, events). No I/O, no clock reads: everything it needs
is an argument, so every transition is a table-driven test. The run semantics it
implements: docs/architecture.md §3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watcher.databricks.models import JobSettings, Run, RunTask
from watcher.databricks.models import RunLifeCycleState as L
from watcher.databricks.models import RunResultState as R
from watcher.domain import Category, Outcome, RunRecord, TransitionKind
from watcher.events import Event, EventType, JobRef, RuleRef, event_id

_TERMINAL_EVENT = {
    Category.SUCCESS: EventType.RUN_SUCCEEDED,
    Category.FAILURE: EventType.RUN_FAILED,
    Category.CANCELED: EventType.RUN_CANCELED,
    Category.SKIPPED: EventType.RUN_SKIPPED,
}
_SUCCESS = frozenset({R.SUCCESS, R.SUCCESS_WITH_FAILURES})
_CANCELED = frozenset({R.CANCELED, R.UPSTREAM_CANCELED})
# Runs that were deliberately not executed: reported as skipped, not as failures.
_NOT_RUN = frozenset({R.EXCLUDED, R.DISABLED})
# Failures a retry policy never retries.
_NOT_RETRIED = frozenset({R.MAXIMUM_CONCURRENT_RUNS_REACHED, R.UPSTREAM_FAILED})
# Progress order of active states: an observation lower in it than the record is stale.
_ACTIVE_RANK: dict[str, int] = {
    L.QUEUED: 0,
    L.BLOCKED: 1,
    L.WAITING_FOR_RETRY: 1,
    L.PENDING: 2,
    L.RUNNING: 3,
    L.TERMINATING: 4,
}
TERMINAL_KEY = "terminal"
STUCK_STATES = frozenset({L.QUEUED, L.PENDING, L.BLOCKED})
"""States of a run that waits before running: too long in one of them is `run_stuck`."""


def classify(run: Run) -> tuple[Category, str | None]:
    """The run's category and the raw value behind it. Unknown result states of a
    finished run count as failures (the raw value travels with the event); an unknown
    life-cycle state is terminal only if the run has an end time. Without the classic
    `state`, the newer `status` object decides."""
    life = run.state.life_cycle_state
    result = run.state.result_state
    if life is None and run.status is not None:
        life, result = _from_status(run)
    if life == L.SKIPPED:
        return Category.SKIPPED, life
    if life == L.INTERNAL_ERROR:
        return Category.FAILURE, life
    if life != L.TERMINATED and (life in _ACTIVE_RANK or not run.has_ended):
        return Category.ACTIVE, life
    if result in _SUCCESS:
        return Category.SUCCESS, result
    if result in _CANCELED:
        return Category.CANCELED, result
    if result in _NOT_RUN:
        return Category.SKIPPED, result
    return Category.FAILURE, result or life


# termination_details.code of the newer `status` object -> classic result state.
_STATUS_RESULT = {
    "SUCCESS": R.SUCCESS,
    "SUCCESS_WITH_FAILURES": R.SUCCESS_WITH_FAILURES,
    "CANCELED": R.CANCELED,
    "USER_CANCELED": R.CANCELED,
    "UPSTREAM_CANCELED": R.UPSTREAM_CANCELED,
    "TIMEOUT": R.TIMEDOUT,
    "MAX_CONCURRENT_RUNS_EXCEEDED": R.MAXIMUM_CONCURRENT_RUNS_REACHED,
    "UPSTREAM_FAILED": R.UPSTREAM_FAILED,
    "EXCLUDED": R.EXCLUDED,
    "DISABLED": R.DISABLED,
}


def _from_status(run: Run) -> tuple[str | None, str | None]:
    assert run.status is not None
    details = run.status.termination_details
    code = details.code if details else None
    if code == "SKIPPED":
        return L.SKIPPED, None
    if run.status.state != L.TERMINATED:
        return run.status.state, None
    if details is not None and details.type == "INTERNAL_ERROR":
        return L.INTERNAL_ERROR, code
    return L.TERMINATED, _STATUS_RESULT.get(code or "", code)


@dataclass(frozen=True, slots=True)
class JobContext:
    """What the tracker knows of the run's job."""

    job_id: int | None
    name: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    settings: JobSettings | None = None
    last_outcome: Outcome | None = None
    last_outcome_end_time: int | None = None
    last_outcome_run_id: int | None = None
    last_outcome_repair: int = 0


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The tracker's answer for one observation of one run. (It carries events, which the
    domain layer may not import: it stays with the tracker.)"""

    record: RunRecord
    events: tuple[Event, ...]
    outcome: Outcome | None
    """The job outcome this observation settles (a paging-relevant success or failure),
    for recovery detection; None when it settles nothing."""
    kind: TransitionKind = TransitionKind.UPDATED
    """What the change from the previous record means (UPDATED when nothing changed)."""
    category: Category | None = None
    """The category of the record's snapshot (None when nothing changed)."""
    raw_state: str | None = None
    """The raw state behind `category`."""


@dataclass(frozen=True, slots=True)
class _Seen:
    """One observation being evaluated: the snapshot it settles on, and its context."""

    workspace: str
    snapshot: Run
    category: Category
    raw: str | None
    repair: int
    repair_start: int | None
    now_ms: int
    history_before_ms: int | None
    alert_on_history: bool


@dataclass(frozen=True, slots=True)
class _Due:
    """An event due (unless it is history): its emitted key, type and time."""

    key: str
    type: EventType
    at_ms: int
    rule: RuleRef | None = None
    observed_seconds: float | None = None
    part: str | None = None
    """What else names the event in its id (the state of a `run_stuck`)."""
    detail: str | None = None


def evaluate(
    previous: RunRecord | None,
    observed: Run,
    *,
    workspace: str,
    job: JobContext,
    rules: Sequence[RuleRef],
    now_ms: int,
    history_before_ms: int | None = None,
    alert_on_history: bool = False,
    stuck_after_s: int = 0,
) -> Evaluation:
    """Decide the new record, the events due and the kind of transition for one
    observation of one run.

    `rules` are every duration rule that applies to the run, the job's own first (the
    cycle plan resolves them); `now_ms` is workspace (server) time. A transition before
    `history_before_ms` happened before the watcher was watching: it is recorded without
    paging (unless `alert_on_history`), except a duration breach of a run still active,
    which is news (and so is a run stuck now). A run waiting in QUEUED, PENDING or BLOCKED
    for longer than `stuck_after_s` (0: never) is stuck, once per state. Events already
    emitted for the run's current repair (by key) are never emitted again; a terminal
    record changes only when the run is repaired (seen active again, a later end, or a
    longer repair_history), which starts the next repair with events of its own.
    """
    reopened = False
    if previous is not None and previous.terminal:
        if not _reopened(previous, observed):
            return Evaluation(previous, (), None)
        previous, reopened = _next_repair(previous, observed, now_ms), True
    elif previous is not None and previous.repair and _before_repair(previous, observed):
        return _undone(previous, observed)
    seen = _see(previous, observed, workspace, now_ms, history_before_ms, alert_on_history)
    finished = seen.category is not Category.ACTIVE
    emitted = previous.emitted if previous else frozenset()
    since = _state_since(previous, seen, reopened)
    due = [
        *_start_due(seen, emitted),
        *_breaches_due(seen, rules, emitted),
        *_stuck_due(seen, since, stuck_after_s, emitted),
    ]
    outcome: Outcome | None = None
    answered: tuple[int, int] | None = None  # (run_id, repair) of the failure recovered from
    if finished and TERMINAL_KEY not in emitted:
        terminal_due, outcome, answered = _terminal_due(seen, job)
        due.extend(terminal_due)
    # Every key due counts as emitted, even when it is history and sent nowhere; so does
    # the terminal key of a finished run, even when its event is suppressed.
    emitted |= {d.key for d in due} | ({TERMINAL_KEY} if finished else set())
    events = _events(seen, due, job, answered)
    record = _record(seen, previous, emitted, since)
    kind = _kind(previous, reopened, seen.category)
    return Evaluation(record, tuple(events), outcome, kind, seen.category, seen.raw)


def _kind(previous: RunRecord | None, reopened: bool, category: Category) -> TransitionKind:
    """What the new record means: a repair reopened the finished run, the run was first
    seen active, it finished (first seen finished, or since last seen active), or else an
    update."""
    if reopened:
        return TransitionKind.REPAIRED
    if category is not Category.ACTIVE:
        return TransitionKind.FINISHED
    return TransitionKind.STARTED if previous is None else TransitionKind.UPDATED


def _undone(previous: RunRecord, observed: Run) -> Evaluation:
    """An observation from before the (non-terminal) record's repair: the repair undone,
    which finishes the run again, or nothing changed (a stale snapshot)."""
    record = _undo_repair(previous, observed)
    if not record.terminal:
        return Evaluation(record, (), None)
    category, raw = classify(record.snapshot)
    return Evaluation(record, (), None, TransitionKind.FINISHED, category, raw)


def _see(
    previous: RunRecord | None,
    observed: Run,
    workspace: str,
    now_ms: int,
    history_before_ms: int | None,
    alert_on_history: bool,
) -> _Seen:
    """The snapshot the observation settles on (never an older one than the record's), its
    category, and the repair it is in with when that repair started."""
    snapshot = _newest(previous, observed)
    category, raw = classify(snapshot)
    repair = previous.repair if previous else (observed.repair_count or 0)
    repair = max(repair, observed.repair_count or 0)
    repair_start = previous.repair_start if previous else None
    if repair and repair_start is None:
        repair_start = _repair_start(observed, None, now_ms)
    return _Seen(
        workspace=workspace,
        snapshot=snapshot,
        category=category,
        raw=raw,
        repair=repair,
        repair_start=repair_start,
        now_ms=now_ms,
        history_before_ms=history_before_ms,
        alert_on_history=alert_on_history,
    )


def _start_due(seen: _Seen, emitted: frozenset[str]) -> list[_Due]:
    """run_started, for an active run not yet reported started in this repair."""
    if seen.category is not Category.ACTIVE or "run_started" in emitted:
        return []
    started = seen.repair_start if seen.repair else seen.snapshot.start_time
    return [_Due("run_started", EventType.RUN_STARTED, started or seen.now_ms)]


def _breaches_due(seen: _Seen, rules: Sequence[RuleRef], emitted: frozenset[str]) -> list[_Due]:
    """A run_duration_exceeded per rule breached and not yet reported in this repair."""
    due: list[_Due] = []
    for rule in rules:
        key = f"{EventType.RUN_DURATION_EXCEEDED}:{rule.name}"
        if key in emitted:
            continue
        start = _rule_start(seen.snapshot, rule, seen.repair_start)
        seconds = _elapsed_seconds(seen.snapshot, rule, start, seen.now_ms)
        if seconds is not None and seconds > rule.value:
            at = (start or seen.now_ms) + rule.value * 1000
            due.append(_Due(key, EventType.RUN_DURATION_EXCEEDED, at, rule, seconds))
    return due


def _state_since(previous: RunRecord | None, seen: _Seen, reopened: bool) -> int:
    """When the run entered the state it is in now (see `RunRecord.state_since`)."""
    state = _life(seen)
    if previous is not None and not reopened and previous.state_since:
        if previous.life_cycle_state == state:
            return previous.state_since
        if state == L.PENDING and seen.snapshot.queue_duration:
            # Out of the queue: the queue time says when.
            return min(_began(seen) + seen.snapshot.queue_duration, seen.now_ms)
        return seen.now_ms
    # First seen, a repair seen for the first time, or a record from before the watcher
    # kept this: since the run (or repair) started, as far as anyone can tell; a pending
    # run after a known queue time, since that ended.
    started = _began(seen)
    if state == L.PENDING and seen.snapshot.queue_duration:
        started += seen.snapshot.queue_duration
    return min(started, seen.now_ms)


def _began(seen: _Seen) -> int:
    return (seen.repair_start if seen.repair else seen.snapshot.start_time) or seen.now_ms


def _life(seen: _Seen) -> str | None:
    """The life-cycle state of the snapshot, from the newer `status` object when the
    classic `state` has none."""
    return seen.snapshot.state.life_cycle_state or (
        seen.raw if seen.category is Category.ACTIVE else None
    )


def _stuck_due(seen: _Seen, since: int, after_s: int, emitted: frozenset[str]) -> list[_Due]:
    """run_stuck, for a run waiting in one state longer than `after_s`, once per state."""
    state = _life(seen)
    if not after_s or seen.category is not Category.ACTIVE or state not in STUCK_STATES:
        return []
    key = f"{EventType.RUN_STUCK}:{state}"
    waited = (seen.now_ms - since) / 1000
    if key in emitted or waited <= after_s:
        return []
    at = since + after_s * 1000
    detail = queue_reason(seen.snapshot)
    return [_Due(key, EventType.RUN_STUCK, at, None, waited, part=state, detail=detail)]


def queue_reason(run: Run) -> str | None:
    """Why the API says the run waits: `code: message` of the 2.2 status' queue_details,
    else the 2.1 state's queue_reason."""
    details = run.status.queue_details if run.status else None
    if details:
        code, message = details.get("code"), details.get("message")
        text = ": ".join(str(v) for v in (code, message) if v)
        if text:
            return text
    return run.state.queue_reason or None


def _terminal_due(
    seen: _Seen, job: JobContext
) -> tuple[list[_Due], Outcome | None, tuple[int, int] | None]:
    """For a run seen finished in this repair for the first time: its terminal event
    (unless suppressed), the job outcome it settles, and a recovery it makes due with the
    (run_id, repair) of the failure that recovery answers."""
    due: list[_Due] = []
    outcome: Outcome | None = None
    ended = seen.snapshot.end_time or seen.now_ms
    if not _suppressed(seen.category, seen.snapshot, job.settings, seen.raw):
        due.append(_Due(TERMINAL_KEY, _TERMINAL_EVENT[seen.category], ended))
        silent = _is_history(ended, seen.history_before_ms, seen.alert_on_history)
        outcome = _outcome(seen.category, silent)
    recovery = _recovery(seen, job, outcome, ended)
    if recovery is None:
        return due, outcome, None
    answered, at = recovery
    due.append(_Due("job_recovered", EventType.JOB_RECOVERED, at))
    return due, outcome, answered


def _recovery(
    seen: _Seen, job: JobContext, outcome: Outcome | None, ended: int
) -> tuple[tuple[int, int], int] | None:
    """The recovery an outcome makes due, if any: the (run_id, repair) of the failure it
    answers, and when it happened."""
    last_end = job.last_outcome_end_time
    if job.last_outcome == "failure" and outcome == "success":
        if last_end is None or ended >= last_end:
            return (job.last_outcome_run_id or seen.snapshot.run_id, job.last_outcome_repair), ended
    elif job.last_outcome == "success" and outcome == "failure" and ended < (last_end or 0):
        # Found after a later success of the job (the sweep finds runs late): it
        # pages, and that success has resolved it already.
        return (seen.snapshot.run_id, seen.repair), last_end or ended
    return None


def _events(
    seen: _Seen, due: Sequence[_Due], job: JobContext, answered: tuple[int, int] | None
) -> list[Event]:
    """The events of what is due, but history (unless alerted on): a breach of a run still
    active is news, and a recovery always answers a failure that paged, however old."""
    ref = JobRef(
        job_id=seen.snapshot.job_id, name=job.name or seen.snapshot.run_name, tags=dict(job.tags)
    )
    events: list[Event] = []
    for item in due:
        live_breach = (
            item.type in (EventType.RUN_DURATION_EXCEEDED, EventType.RUN_STUCK)
            and seen.category is Category.ACTIVE
        )
        history = seen.history_before_ms is not None and item.at_ms < seen.history_before_ms
        answers_page = item.type is EventType.JOB_RECOVERED
        if history and not seen.alert_on_history and not live_breach and not answers_page:
            continue
        events.append(_event(seen, item, ref, answered, history))
    return events


def _event(
    seen: _Seen, item: _Due, ref: JobRef, answered: tuple[int, int] | None, history: bool
) -> Event:
    if item.type is EventType.JOB_RECOVERED and answered is not None:
        # Named after the failure it answers, not the success that happened to be seen
        # first: however late each is found, a failure is recovered from once.
        key = event_id(seen.workspace, answered[0], item.type, None, answered[1])
    else:
        rule_name = item.rule.name if item.rule else item.part
        key = event_id(seen.workspace, seen.snapshot.run_id, item.type, rule_name, seen.repair)
    return Event(
        id=key,
        type=item.type,
        workspace=seen.workspace,
        occurred_at=datetime.fromtimestamp(item.at_ms / 1000, tz=UTC),
        job=ref,
        run=seen.snapshot,
        rule=item.rule,
        observed_seconds=item.observed_seconds,
        attempt_number=seen.snapshot.attempt_number or 0,
        repair=seen.repair,
        raw_state=item.part or seen.raw,
        backfill=history,
        detail=item.detail,
    )


def _record(
    seen: _Seen, previous: RunRecord | None, emitted: frozenset[str], since: int
) -> RunRecord:
    snapshot = seen.snapshot
    first_seen = snapshot.end_time or snapshot.start_time or seen.now_ms
    return RunRecord(
        workspace=seen.workspace,
        run_id=snapshot.run_id,
        job_id=snapshot.job_id,
        life_cycle_state=_life(seen),
        result_state=snapshot.state.result_state,
        start_time=snapshot.start_time,
        end_time=snapshot.end_time or None,
        attempt_number=snapshot.attempt_number or 0,
        terminal=seen.category is not Category.ACTIVE,
        backfill=previous.backfill
        if previous
        else _is_history(first_seen, seen.history_before_ms, alert_on_history=False),
        emitted=emitted,
        repair=seen.repair,
        repair_start=seen.repair_start,
        state_since=since,
        snapshot=snapshot,
    )


def _is_history(at_ms: int, history_before_ms: int | None, alert_on_history: bool) -> bool:
    return history_before_ms is not None and at_ms < history_before_ms and not alert_on_history


def _outcome(category: Category, silent: bool) -> Outcome | None:
    """The job outcome a paged terminal event settles: a success always (even from
    history, it ends a failing streak), a failure only when it was alerted, so that a
    recovery always answers a page."""
    if category is Category.SUCCESS:
        return "success"
    if category is Category.FAILURE and not silent:
        return "failure"
    return None


def _reopened(previous: RunRecord, observed: Run) -> bool:
    """Whether a run recorded as finished has been repaired since. A repair_history
    (runs/get) is authoritative; without one, the run seen active again or ending later
    than recorded is."""
    count = observed.repair_count
    if count is not None:
        return count > previous.repair
    if classify(observed)[0] is Category.ACTIVE:
        return True
    return (observed.end_time or 0) > (previous.end_time or 0)


def _before_repair(record: RunRecord, observed: Run) -> bool:
    """An observation older than the repair the record is in: a repair_history with fewer
    repairs, or the end of the run before the repair started (a stale snapshot)."""
    count = observed.repair_count
    if count is not None and count < record.repair:
        return True
    ended = observed.end_time or 0
    return bool(ended) and record.repair_start is not None and ended < record.repair_start


def _undo_repair(record: RunRecord, observed: Run) -> RunRecord:
    """The record as it was before a repair that runs/get's repair_history does not have (a
    stale list reopened it): finished again, at Databricks' repair count, so the next real
    repair counts. A merely stale snapshot changes nothing."""
    count = observed.repair_count
    if count is None or count >= record.repair or classify(observed)[0] is Category.ACTIVE:
        return record
    return record.model_copy(
        update={
            "terminal": True,
            "repair": count,
            "emitted": record.emitted | {TERMINAL_KEY, "run_started"},
            "snapshot": observed,
            "end_time": observed.end_time or None,
            "life_cycle_state": observed.state.life_cycle_state,
            "result_state": observed.state.result_state,
        }
    )


def _next_repair(previous: RunRecord, observed: Run, now_ms: int) -> RunRecord:
    """The record a repair starts from: the next repair number, nothing emitted yet."""
    repair = max(previous.repair + 1, observed.repair_count or 0)
    return previous.model_copy(
        update={
            "terminal": False,
            "emitted": frozenset(),
            "repair": repair,
            "repair_start": _repair_start(observed, previous.end_time, now_ms),
        }
    )


def _repair_start(observed: Run, ended_ms: int | None, now_ms: int) -> int:
    """When the latest repair started: from repair_history if sent, else the earliest task
    that started after the run had ended (the re-run tasks), else now."""
    for item in reversed(observed.repair_history or []):
        if item.type == "REPAIR" and item.start_time:
            return item.start_time
    if ended_ms is not None:
        rerun = [t.start_time for t in observed.tasks if (t.start_time or 0) > ended_ms]
        return min((start for start in rerun if start is not None), default=now_ms)
    return now_ms


def _suppressed(
    category: Category, run: Run, settings: JobSettings | None, raw: str | None
) -> bool:
    """Terminal events the job's notification settings ask not to send. A failed attempt
    that will be retried is left to a later attempt: it neither pages nor fails the job."""
    if category is Category.FAILURE:
        return _will_be_retried(run, settings, raw)
    if category is Category.SKIPPED:
        return _flag(settings, "no_alert_for_skipped_runs")
    if category is Category.CANCELED:
        return _flag(settings, "no_alert_for_canceled_runs")
    return False


def _newest(previous: RunRecord | None, observed: Run) -> Run:
    """The observation, unless it is older than what the record already holds."""
    if previous is None:
        return observed
    if classify(observed)[0] is not Category.ACTIVE:
        return observed
    before = _ACTIVE_RANK.get(previous.snapshot.state.life_cycle_state or "", -1)
    after = _ACTIVE_RANK.get(observed.state.life_cycle_state or "", -1)
    return previous.snapshot if after < before else observed


def _task(run: Run, task_key: str | None) -> RunTask | None:
    return next((t for t in run.tasks if t.task_key == task_key), None)


def _rule_start(run: Run, rule: RuleRef, repair_start: int | None) -> int | None:
    """Where the rule's clock starts: the run's (or the repair's) start, or the task's. In a
    repair, a task that was not re-run keeps its old times and is not measured again."""
    if rule.task_key is None:
        return repair_start or run.start_time or None
    task = _task(run, rule.task_key)
    start = (task.start_time or None) if task else None
    if start is not None and repair_start is not None and start < repair_start:
        return None
    return start


def _elapsed_seconds(run: Run, rule: RuleRef, start: int | None, now_ms: int) -> float | None:
    """Wall-clock seconds from `start` to end (finished) or to now (active), for the run or
    for the rule's task. Queue time counts: a run stuck in the queue is late too."""
    if rule.task_key is None:
        end = run.end_time
    else:
        task = _task(run, rule.task_key)
        if task is None:
            return None
        end = task.end_time
    if not start:
        return None
    return max(0, (end or now_ms) - start) / 1000


def _flag(settings: JobSettings | None, name: str) -> bool:
    """A job-level notification flag. Task-level settings (2.1+) govern the task
    notifications Databricks sends, not the job's own events."""
    if settings is None:
        return False
    if name == "no_alert_for_skipped_runs":
        email = settings.email_notifications
        if email is not None and email.no_alert_for_skipped_runs:
            return True
    notification = settings.notification_settings
    return notification is not None and bool(getattr(notification, name))


def _will_be_retried(run: Run, settings: JobSettings | None, raw: str | None) -> bool:
    """A failed attempt that the job's retry policy will retry as a new run, when the job
    asks to be alerted on the last attempt only.

    Only job-level max_retries (API 2.0) retry a job run as a new run. Task-level retries
    (2.1+) happen inside the same job run, so a job run that ends failed has already used
    them up: its failure is final and pages."""
    if settings is None or not _flag(settings, "alert_on_last_attempt"):
        return False
    max_retries = settings.max_retries
    if raw in _NOT_RETRIED or not max_retries:
        return False
    if raw == R.TIMEDOUT and not settings.retry_on_timeout:
        return False
    return max_retries < 0 or (run.attempt_number or 0) < max_retries
