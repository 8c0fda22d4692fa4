"""Planning one workspace cycle: a pure function from what the poller gathered and what
the store remembers to everything the cycle commits (run and job records, events) and what
it reports to the metrics. No I/O and no clock: the pipeline reads, plans, routes, commits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from watcher.config import ExpectationsConfig, HealthRulesConfig, StartupConfig, StuckConfig
from watcher.databricks.models import Job, JobSettings, Run
from watcher.domain import (
    Incident,
    JobRecord,
    PollResult,
    RunRecord,
    Transition,
    TransitionKind,
    Unreadable,
)
from watcher.events import Event, EventType, JobRef, ResolveCause, RuleRef, Streak, event_id
from watcher.expectations import ScheduleFacts, check_jobs
from watcher.incidents import IncidentBook, resolution
from watcher.tracker import STUCK_STATES, Evaluation, JobContext, evaluate

_STREAK_EVENTS = frozenset({EventType.RUN_FAILED, EventType.RUN_SUCCEEDED, EventType.JOB_RECOVERED})


@dataclass(frozen=True, slots=True)
class CyclePlan:
    transitions: Sequence[Transition]
    """Every run record that changed, with the record it replaces and what it means."""
    events: Sequence[Event]
    settings_of: Mapping[str, JobSettings | None]
    """event id -> settings of the event's job, for routing (the job's own destinations)."""
    jobs: Mapping[int, JobRecord]
    """Every job seen this cycle, with its current name, tags and last outcome."""
    changed_jobs: Sequence[JobRecord]
    deleted_jobs: Sequence[int]
    """Jobs of observed runs that no longer exist in the workspace."""
    active_by_state: Mapping[str, int]
    incidents: Sequence[Incident] = ()
    """Every incident the cycle opened, updated or resolved."""
    stuck_by_state: Mapping[str, int] = field(default_factory=dict)
    """Runs waiting longer than their stuck threshold now, by state."""
    schedules: Mapping[int, ScheduleFacts] | None = None
    """Scheduled watched jobs: paused or not, the next trigger (None: not checked)."""


def _run_duration_rules(
    config: HealthRulesConfig,
    job_id: int | None,
    name: str | None,
    tags: Mapping[str, str],
    settings: JobSettings | None,
) -> list[RuleRef]:
    """Every duration rule that applies to a run: the job's own (job, then tasks), then the
    config's (the default only when the job has no rule at all)."""
    own = job_duration_rules(settings)
    return [*own, *_config_rules(config, job_id, name, tags, has_own_rule=bool(own))]


def job_duration_rules(settings: JobSettings | None) -> list[RuleRef]:
    """RUN_DURATION_SECONDS GREATER_THAN rules of the job and of its tasks."""
    if settings is None:
        return []
    rules: list[RuleRef] = []
    for rule in settings.health.rules if settings.health else []:
        if _is_duration_rule(rule.metric, rule.op, rule.value):
            assert rule.value is not None
            rules.append(RuleRef(name="job", value=rule.value, source="job"))
    for task in settings.tasks:
        for rule in task.health.rules if task.health else []:
            if _is_duration_rule(rule.metric, rule.op, rule.value) and task.task_key:
                assert rule.value is not None
                rules.append(
                    RuleRef(
                        name=f"task:{task.task_key}",
                        value=rule.value,
                        source="task",
                        task_key=task.task_key,
                    )
                )
    return rules


def _is_duration_rule(metric: str | None, op: str | None, value: int | None) -> bool:
    return metric == "RUN_DURATION_SECONDS" and op == "GREATER_THAN" and value is not None


def _config_rules(
    config: HealthRulesConfig,
    job_id: int | None,
    name: str | None,
    tags: Mapping[str, str],
    *,
    has_own_rule: bool,
) -> list[RuleRef]:
    """Duration rules from the config for one job: every matching rule, or the default
    when the job has no rule at all."""
    rules = [
        RuleRef(name=f"config:{rule.name}", value=rule.seconds, source="config")
        for rule in config.rules
        if rule.match.matches(job_id, name, tags)
    ]
    if not rules and not has_own_rule and config.default_seconds is not None:
        rules.append(RuleRef(name="config:default", value=config.default_seconds, source="config"))
    return rules


def plan_cycle(
    result: PollResult,
    *,
    previous: Mapping[int, RunRecord],
    stored_jobs: Mapping[int, JobRecord],
    health_rules: HealthRulesConfig,
    startup: StartupConfig,
    incidents: Mapping[str, Incident] | None = None,
    known_events: Collection[str] = (),
    stuck: StuckConfig | None = None,
    expectations: ExpectationsConfig | None = None,
) -> CyclePlan:
    """Track every observed run against its stored record, keep each job's last outcome
    (and failing streak) for recovery detection, open, update and resolve incidents
    (`incidents`: the workspace's open ones by key, at least those of the cycle's jobs),
    close out vanished runs and report unreadable items. Events in `known_events` are
    committed already (an unreadable item is reported every cycle under one id): they
    are left out, and change no incident again. `stuck` says when a waiting run is stuck
    (default: `StuckConfig()`). With the workspace's watched jobs (`result.watched_jobs`),
    what Databricks never reports is checked too (`expectations`; stored records of the
    jobs it applies to must be in `stored_jobs`)."""
    workspace, now_ms = result.workspace, result.server_now_ms
    stuck = stuck or StuckConfig()
    plan = _Planned(IncidentBook.of(workspace, incidents or {}), frozenset(known_events))
    for run in _in_outcome_order(result.runs):
        job = result.jobs.get(run.job_id) if run.job_id is not None else None
        record = _job_record(workspace, run, job, plan.jobs, stored_jobs)
        settings = job.settings if job is not None else None
        context = _job_context(run, record, settings)
        rules = _run_duration_rules(health_rules, run.job_id, context.name, context.tags, settings)
        before = previous.get(run.run_id)
        stuck_after = stuck.threshold(run.job_id, context.name, context.tags)
        try:
            evaluation = evaluate(
                before,
                run,
                workspace=workspace,
                job=context,
                rules=rules,
                now_ms=now_ms,
                history_before_ms=result.news_since_ms,
                alert_on_history=startup.alert_on_backfill,
                stuck_after_s=stuck_after,
            )
        except (ValueError, OverflowError, TypeError) as exc:
            # A value the models let through but the tracker cannot use must not stop every
            # other run of the workspace: this one is reported instead, and asked again.
            item = Unreadable(
                "run", run.run_id, run.job_id, f"cannot be evaluated: {type(exc).__name__}"
            )
            plan.add_event(_unreadable_event(workspace, item, stored_jobs, now_ms), None)
            continue
        streak = None
        if record is not None and evaluation.outcome is not None:
            streak = plan.settle(record, run.run_id, evaluation, now_ms)
        if record is not None:
            plan.note_activity(record.job_id, evaluation.record, now_ms)
        plan.add_evaluation(before, evaluation, settings, streak)
        if _is_stuck(evaluation.record, stuck_after, now_ms):
            plan.stuck[evaluation.record.life_cycle_state or ""] += 1
        moved = _moved_on(evaluation)
        if moved is not None:
            ref = JobRef(job_id=run.job_id, name=context.name, tags=dict(context.tags))
            plan.run_moved_on(evaluation.record, moved, ref, rules, settings, now_ms)
    for transition in _vanished(result.vanished, previous):
        plan.transitions.append(transition)
        ref = _stored_ref(transition.record, stored_jobs)
        plan.run_moved_on(transition.record, "ended", ref, [], None, now_ms)
    for item in result.unreadable:
        plan.add_event(_unreadable_event(workspace, item, stored_jobs, now_ms), None)
    if result.watched_jobs is not None:
        records = {**stored_jobs, **plan.jobs}
        checked = check_jobs(
            workspace,
            result.watched_jobs,
            records,
            plan.book,
            now_ms=now_ms,
            config=expectations or ExpectationsConfig(),
            known=plan.known,
        )
        for event in checked.events:
            job = result.watched_jobs.get(event.job.job_id or 0)
            plan.events.append(event)
            plan.settings_of[event.id] = job.settings if job else None
        plan.schedules = checked.schedules
        for job_id, (sig, since) in checked.since.items():
            job = result.watched_jobs[job_id]
            plan.checked_since(workspace, job_id, job.settings.name, sig, since, records)
    return plan.plan(result, stored_jobs)


def _is_stuck(record: RunRecord, threshold_s: int, now_ms: int) -> bool:
    """Whether the run waits in one state for longer than its threshold right now."""
    if record.terminal or not threshold_s or record.life_cycle_state not in STUCK_STATES:
        return False
    return now_ms - (record.state_since or now_ms) > threshold_s * 1000


def _moved_on(evaluation: Evaluation) -> Literal["ended", "running"] | None:
    """ "ended" when the run ended in this evaluation (first seen finished in its current
    repair), "running" when it is running (no longer waiting), else None."""
    record = evaluation.record
    if record.terminal:
        finished = evaluation.kind in (TransitionKind.FINISHED, TransitionKind.REPAIRED)
        return "ended" if finished else None
    return "running" if record.life_cycle_state not in STUCK_STATES else None


def _stored_ref(record: RunRecord, stored_jobs: Mapping[int, JobRecord]) -> JobRef:
    job = stored_jobs.get(record.job_id) if record.job_id is not None else None
    return JobRef(
        job_id=record.job_id,
        name=job.name if job else record.snapshot.run_name,
        tags=dict(job.tags) if job else {},
    )


@dataclass(slots=True)
class _Planned:
    """What plan_cycle gathers, run by run."""

    book: IncidentBook
    known: frozenset[str]
    jobs: dict[int, JobRecord] = field(default_factory=dict)
    active: Counter[str] = field(default_factory=Counter)
    stuck: Counter[str] = field(default_factory=Counter)
    schedules: dict[int, ScheduleFacts] | None = None
    transitions: list[Transition] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    settings_of: dict[str, JobSettings | None] = field(default_factory=dict)

    def add_event(self, event: Event, settings: JobSettings | None) -> None:
        """Add an event, with the incident it opens, updates or resolves."""
        if event.id in self.known:
            return
        event = self.book.record(event)
        self.events.append(event)
        self.settings_of[event.id] = settings

    def add_evaluation(
        self,
        before: RunRecord | None,
        evaluation: Evaluation,
        settings: JobSettings | None,
        streak: Streak | None,
    ) -> None:
        record = evaluation.record
        if not record.terminal:
            self.active[record.life_cycle_state or "UNKNOWN"] += 1
        if record != before:
            kind, category, raw = evaluation.kind, evaluation.category, evaluation.raw_state
            self.transitions.append(Transition(before, record, kind, category, raw))
        for event in evaluation.events:
            if streak is not None and event.type in _STREAK_EVENTS:
                event = event.model_copy(update={"streak": streak})
            self.add_event(event, settings)

    def run_moved_on(
        self,
        record: RunRecord,
        how: Literal["ended", "running"],
        job: JobRef,
        rules: Sequence[RuleRef],
        settings: JobSettings | None,
        now_ms: int,
    ) -> None:
        """A run ended (or vanished, at `now_ms`), or is running: resolve the incidents it
        alone kept open (breaches of duration rules when it ended; being stuck, either
        way)."""
        if not self.book.holding(record.run_id):
            return
        snapshot = record.snapshot
        ended_ms = (record.end_time or snapshot.end_time or now_ms) if how == "ended" else now_ms
        base = Event(
            id="",
            type=EventType.INCIDENT_RESOLVED,
            workspace=record.workspace,
            occurred_at=datetime.fromtimestamp(ended_ms / 1000, tz=UTC),
            job=job,
            run=snapshot,
            attempt_number=record.attempt_number,
            repair=record.repair,
        )

        def make(incident: Incident, cause: ResolveCause) -> Event:
            rule = None
            if incident.kind == "duration":
                rule_name = incident.rule or incident.key.rpartition("/duration/")[2]
                # The rule as the run has it now; a rule no longer applied (a vanished run,
                # a changed config) is named only: the resolve matches the alert by name.
                rule = next(
                    (r for r in rules if r.name == rule_name),
                    RuleRef(name=rule_name, value=0, source="unknown"),
                )
            opened = datetime.fromtimestamp(incident.opened_at_ms / 1000, tz=UTC)
            last = base.model_copy(update={"rule": rule})
            return resolution(incident, last, at=max(base.occurred_at, opened), cause=cause)

        release = self.book.run_ended if how == "ended" else self.book.run_running
        for event in release(record.run_id, record.job_id, make):
            self.events.append(event)
            self.settings_of[event.id] = settings

    def checked_since(
        self,
        workspace: str,
        job_id: int,
        name: str | None,
        sig: str,
        since: int,
        records: Mapping[int, JobRecord],
    ) -> None:
        """The job's checked settings are new or changed: checked from `since` on."""
        job = records.get(job_id) or JobRecord(workspace=workspace, job_id=job_id, name=name)
        self.jobs[job_id] = job.model_copy(update={"expect_sig": sig, "expect_since_ms": since})

    def note_activity(self, job_id: int, record: RunRecord, now_ms: int) -> None:
        """The job's latest run start and latest active run, from one of its runs."""
        job = self.jobs[job_id]
        start = max(job.last_start_ms or 0, record.start_time or 0) or None
        seen = now_ms if not record.terminal else (record.end_time or 0)
        active = max(job.last_active_ms or 0, seen) or None
        if (start, active) != (job.last_start_ms, job.last_active_ms):
            self.jobs[job_id] = job.model_copy(
                update={"last_start_ms": start, "last_active_ms": active}
            )

    def settle(self, job: JobRecord, run_id: int, evaluation: Evaluation, now_ms: int) -> Streak:
        """Record the job outcome the run settled, unless a later run's outcome is
        already recorded; the failing streak the outcome belongs to."""
        ended = evaluation.record.end_time or now_ms
        success = evaluation.outcome == "success"
        if job.last_outcome_end_time is not None and ended < job.last_outcome_end_time:
            # An older outcome found late: it changes nothing of the job's streak.
            return _streak(job.consecutive_failures, job.last_success_ms)
        failures = 0 if success else job.consecutive_failures + 1
        self.jobs[job.job_id] = job.model_copy(
            update={
                "last_outcome": evaluation.outcome,
                "last_outcome_run_id": run_id,
                "last_outcome_repair": evaluation.record.repair,
                "last_outcome_end_time": ended,
                "consecutive_failures": failures,
                "last_success_ms": ended if success else job.last_success_ms,
            }
        )
        if success:
            return _streak(job.consecutive_failures, job.last_success_ms)
        return _streak(failures, job.last_success_ms)

    def plan(self, result: PollResult, stored_jobs: Mapping[int, JobRecord]) -> CyclePlan:
        job_ids = {r.job_id for r in result.runs if r.job_id is not None}
        return CyclePlan(
            transitions=self.transitions,
            events=self.events,
            settings_of=self.settings_of,
            jobs=self.jobs,
            changed_jobs=[j for j in self.jobs.values() if stored_jobs.get(j.job_id) != j],
            deleted_jobs=sorted(j for j in job_ids if j not in result.jobs),
            active_by_state=dict(self.active),
            incidents=list(self.book.changed.values()),
            stuck_by_state=dict(self.stuck),
            schedules=self.schedules,
        )


def _streak(failures: int, last_success_ms: int | None) -> Streak:
    last = None if last_success_ms is None else datetime.fromtimestamp(last_success_ms / 1000, UTC)
    return Streak(consecutive_failures=failures, last_success_at=last)


def _in_outcome_order(runs: Sequence[Run]) -> list[Run]:
    """Finished runs in end order, then active ones: a failure followed by a success of
    the same job within one cycle is a recovery, the other way round is not."""
    return sorted(runs, key=lambda r: (r.end_time or 2**62, r.start_time or 0, r.run_id))


def _job_context(run: Run, record: JobRecord | None, settings: JobSettings | None) -> JobContext:
    """What the tracker needs to know of the run's job."""
    return JobContext(
        job_id=run.job_id,
        name=record.name if record else run.run_name,
        tags=record.tags if record else {},
        settings=settings,
        last_outcome=record.last_outcome if record else None,
        last_outcome_end_time=record.last_outcome_end_time if record else None,
        last_outcome_run_id=record.last_outcome_run_id if record else None,
        last_outcome_repair=record.last_outcome_repair if record else 0,
    )


def _vanished(run_ids: Sequence[int], previous: Mapping[int, RunRecord]) -> list[Transition]:
    """Runs deleted while we watched them: closed out, with nothing to alert on."""
    transitions: list[Transition] = []
    for run_id in run_ids:
        before = previous.get(run_id)
        if before is not None and not before.terminal:
            closed = before.model_copy(update={"terminal": True})
            transitions.append(Transition(before, closed, TransitionKind.VANISHED))
    return transitions


def _job_record(
    workspace: str,
    run: Run,
    job: Job | None,
    updated: dict[int, JobRecord],
    stored: Mapping[int, JobRecord],
) -> JobRecord | None:
    """The job's record as of this point in the cycle, refreshed with its settings."""
    if run.job_id is None:
        return None
    record = (
        updated.get(run.job_id)
        or stored.get(run.job_id)
        or JobRecord(workspace=workspace, job_id=run.job_id, name=run.run_name)
    )
    if job is not None:
        name = job.settings.name or record.name
        if (name, job.settings.tags) != (record.name, record.tags):
            record = record.model_copy(update={"name": name, "tags": dict(job.settings.tags)})
    updated[run.job_id] = record
    return record


def _unreadable_event(
    workspace: str, item: Unreadable, stored_jobs: Mapping[int, JobRecord], now_ms: int
) -> Event:
    """One report per unreadable run or job; its id is stable, so it is sent once."""
    job = stored_jobs.get(item.job_id) if item.job_id is not None else None
    if item.kind == "run":
        type_, run = EventType.RUN_UNREADABLE, Run(run_id=item.item_id, job_id=item.job_id)
    else:
        # A job has no run: the event names the job, with run_id 0.
        type_, run = EventType.JOB_UNREADABLE, Run(run_id=0, job_id=item.item_id)
    return Event(
        id=event_id(workspace, item.item_id, type_),
        type=type_,
        workspace=workspace,
        occurred_at=datetime.fromtimestamp(now_ms / 1000, tz=UTC),
        job=JobRef(
            job_id=run.job_id,
            name=job.name if job else None,
            tags=dict(job.tags) if job else {},
        ),
        run=run,
        detail=item.detail,
    )
