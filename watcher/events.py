"""Events: what the tracker decides happened to a run, and what alerts are made of.

Every event has a deterministic id derived from (workspace, run_id, type, rule): the same
transition always yields the same id, which is the outbox's UNIQUE key and the idempotency
key of every channel (webhook-id header, PagerDuty dedup, Alertmanager labels).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from watcher.databricks.models import Run

_NAMESPACE = uuid.UUID("6f1c1f4e-63a4-4f0e-9a39-1c1d2b9f7a10")
PAYLOAD_VERSION = 1


class EventType(StrEnum):
    RUN_STARTED = "run_started"
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELED = "run_canceled"
    RUN_SKIPPED = "run_skipped"
    RUN_DURATION_EXCEEDED = "run_duration_exceeded"
    JOB_RECOVERED = "job_recovered"
    RUN_UNREADABLE = "run_unreadable"
    """A run the API keeps answering in a shape the watcher cannot read."""
    JOB_UNREADABLE = "job_unreadable"
    """A job whose settings the API keeps answering in a shape the watcher cannot read."""
    RUN_STUCK = "run_stuck"
    """A run has waited in QUEUED, PENDING or BLOCKED longer than its stuck threshold (once
    per run, repair and state); `raw_state` is the state, `observed_seconds` the time in
    it, `detail` the queue reason when the API gives one."""
    RUN_MISSED = "run_missed"
    """A scheduled job did not start a run within `grace` after an expected trigger
    (`expected_at`); `detail` names the job's latest run start the watcher knows."""
    JOB_NOT_RUNNING = "job_not_running"
    """A continuous job (UNPAUSED) has had no active run for longer than its threshold."""
    JOB_STALE = "job_stale"
    """A job with an expected-success window has not succeeded within it."""
    INCIDENT_RESOLVED = "incident_resolved"
    """An incident ended without a recovery of its job: every run that broke a duration
    rule has ended, a stuck run started running or ended, or an operator resolved it
    (`watcher incidents resolve`)."""


IncidentKind = Literal[
    "failure", "duration", "unreadable", "stuck", "missed", "not_running", "stale"
]
IncidentState = Literal["open", "resolved"]
ResolveCause = Literal["recovered", "run_ended", "manual", "running", "ran", "paused"]


def event_id(
    workspace: str, run_id: int, type_: str, rule: str | None = None, repair: int = 0
) -> str:
    """A UUID (version 5) naming one transition of one run (of one repair of it), stable
    across restarts. Repair 0 keeps the key of releases that knew no repairs."""
    key = f"{workspace}\x1f{run_id}\x1f{type_}\x1f{rule or ''}"
    if repair:
        key += f"\x1frepair={repair}"
    return str(uuid.uuid5(_NAMESPACE, key))


class _Frozen(BaseModel):
    # Stored payloads outlive releases: fields a newer release wrote are ignored on read.
    model_config = ConfigDict(frozen=True, extra="ignore")


class JobRef(_Frozen):
    job_id: int | None = None
    name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class RuleRef(_Frozen):
    """A RUN_DURATION_SECONDS GREATER_THAN rule and where it came from."""

    name: str
    """Stable identifier, part of the event id: e.g. `job`, `task:<task_key>`, `config:<name>`."""
    metric: str = "RUN_DURATION_SECONDS"
    op: str = "GREATER_THAN"
    value: int
    source: str
    """`job`, `task` or `config`."""
    task_key: str | None = None


class IncidentRef(_Frozen):
    """The incident an event opened, updated or resolved, as it stood after the event."""

    id: str
    """Stable per incident: derived from its key and the event that opened it."""
    key: str
    """What the incident is about, one open at a time: `<workspace>/job/<id>/failed`,
    `<workspace>/job/<id>/duration/<rule>`, `<workspace>/job/<id>/unreadable/run/<id>`
    (`run/<id>` instead of `job/<id>` for a run without a job). PagerDuty's dedup_key."""
    kind: IncidentKind
    state: IncidentState
    opened_at: datetime
    """When the event that opened it happened (workspace time)."""
    count: int = 1
    """Events that opened or updated it: the failures of a failing job, the breaches of a
    duration rule."""
    resolved_at: datetime | None = None
    cause: ResolveCause | None = None
    """Why it was resolved: the job recovered, the runs over their time ended, a stuck run
    started running (or ended), an operator."""


class Streak(_Frozen):
    """The job's failing streak an outcome belongs to: for a failure, the consecutive
    failures up to and including it; for a success (and its recovery), the streak it ended."""

    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    """The job's latest success before this outcome, when the watcher has seen one."""


class Event(_Frozen):
    id: str
    type: EventType
    workspace: str
    occurred_at: datetime
    """Workspace (server) time of the transition, timezone-aware UTC."""
    job: JobRef
    run: Run
    """The full run snapshot the event was decided on."""
    rule: RuleRef | None = None
    observed_seconds: float | None = None
    """For duration events: the run's age or duration that broke the rule."""
    attempt_number: int = 0
    repair: int = 0
    """Which repair of the run this event is about: 0 for the original run, N for the
    Nth repair (the run re-run under the same run_id)."""
    raw_state: str | None = None
    """The raw result_state (or life_cycle_state) behind the classification, kept for
    values this version does not know."""
    backfill: bool = False
    detail: str | None = None
    """For `run_unreadable` / `job_unreadable`: what could not be read (field paths and
    error kinds, never values)."""
    test: bool = False
    """Set on `watcher test-alert` events only."""
    incident: IncidentRef | None = None
    """The incident this event opened, updated or resolved (None for events that are no
    part of one: starts, successes that recover nothing, cancellations, skips)."""
    streak: Streak | None = None
    """On terminal events and recoveries: the job's failing streak."""
    expected_at: datetime | None = None
    """For `run_missed`: the trigger time (workspace time) no run started after; for
    `job_not_running` and `job_stale`: since when (the last active run, the last success,
    or the watcher's start when it knows of none)."""
    repeat: int = 0
    """0 for the event itself; N for the Nth reminder of an incident still open, sent
    again after the route's `repeat_interval` (and to Alertmanager to keep it firing)."""
