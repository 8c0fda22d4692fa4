"""The run domain: what the watcher remembers of each run and job between cycles, and the
vocabulary of what happens to a run (its category, the kind of each transition). The
tracker decides these records and transitions, the store persists them, metrics read them;
none of those owns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from watcher.databricks.models import Job, Run

Outcome = Literal["success", "failure"]


class Category(StrEnum):
    """What a run snapshot says of the run: still active, or how it finished."""

    ACTIVE = "active"
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELED = "canceled"
    SKIPPED = "skipped"


class TransitionKind(StrEnum):
    """What a changed run record means, decided once by the tracker (or by the cycle plan
    for a vanished run)."""

    STARTED = "started"
    """First seen, active."""
    FINISHED = "finished"
    """Seen finished for the first time in its current repair: first seen finished, or
    finished since it was last seen active (including a repair found never to have
    happened)."""
    REPAIRED = "repaired"
    """A finished run reopened by a repair (active again, or already finished again)."""
    VANISHED = "vanished"
    """Closed out because it no longer exists: not a finish, nothing to measure."""
    UPDATED = "updated"
    """Anything else: an active run that progressed, or a record that changed otherwise."""


class RunRecord(BaseModel):
    """What the tracker remembers of one run between cycles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: str
    run_id: int
    job_id: int | None
    life_cycle_state: str | None
    result_state: str | None
    start_time: int | None
    end_time: int | None
    attempt_number: int = 0
    terminal: bool
    backfill: bool = False
    """First recorded from history (a transition before the watcher was watching)."""
    emitted: frozenset[str] = Field(default_factory=frozenset)
    """Keys of the events already emitted for the current repair of this run (an event
    type, or `run_duration_exceeded:<rule>`): each is emitted at most once per repair."""
    repair: int = 0
    """Repairs of this run seen so far: 0 for the original run. A repair re-runs tasks under
    the same run_id, so each repair has outcomes (and event ids) of its own."""
    repair_start: int | None = None
    """Start (epoch ms) of the current repair; duration rules of a repair count from it."""
    state_since: int | None = None
    """When (epoch ms) the run entered its current life-cycle state, as far as the watcher
    can tell: its start for the state it was first seen in, else the first cycle that saw
    the new state (late by up to one poll interval, never early)."""
    snapshot: Run


class JobRecord(BaseModel):
    """Per job: the last outcome (for recovery detection) and the latest name and tags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: str
    job_id: int
    name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    last_outcome: Outcome | None = None
    """`failure` only when that failure was alerted: a recovery answers a page."""
    last_outcome_run_id: int | None = None
    last_outcome_repair: int = 0
    """The repair of last_outcome_run_id that set last_outcome."""
    last_outcome_end_time: int | None = None
    """end_time (ms) of the run that set last_outcome: an older run's outcome never
    overrides a newer one."""
    consecutive_failures: int = 0
    """Failures that paged since the job's latest success."""
    last_success_ms: int | None = None
    """end_time (ms) of the job's latest success the watcher has seen."""
    last_start_ms: int | None = None
    """start_time (ms) of the job's latest run the watcher has seen (a missed schedule
    is an expected trigger with no run started after it)."""
    last_active_ms: int | None = None
    """When (ms, workspace time) a run of the job was last seen active, or last ended (a
    continuous job with none for long is not running)."""
    expect_sig: str | None = None
    """What the checks of what Databricks never reports last saw of the job: its
    schedule, time zone, pause status, periodic trigger, continuous setting and success
    window (`watcher.expectations.signature`)."""
    expect_since_ms: int | None = None
    """Since when (ms, workspace time) `expect_sig` holds: nothing before it is overdue (a
    job newly watched, a schedule edited or resumed is checked from then on)."""


class Incident(BaseModel):
    """Something wrong that stays wrong until it is resolved: a failing job, a job's runs
    over a duration rule, an unreadable item. At most one is open per key; the cycle plan
    opens, updates and resolves them, and the store writes them in the cycle's commit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: str
    id: str
    key: str
    """What it is about (see `watcher.incidents.incident_key`); PagerDuty's dedup_key."""
    kind: str
    """`failure`, `duration` or `unreadable`."""
    job_id: int | None = None
    rule: str | None = None
    """For a duration incident: the name of the rule its runs broke."""
    since_ms: int | None = None
    """For a job's missed trigger, continuous job not running or missing success: the
    instant the condition counts from (the first missed trigger, the last active run, the
    last success); a later start, active run or success ends it."""
    opened_at_ms: int
    opened_by: str
    """Id of the event that opened it."""
    count: int = 1
    """Events that opened or updated it."""
    last_event_id: str
    """The latest event that opened, updated or resolved it: what a reminder repeats."""
    runs: frozenset[int] = Field(default_factory=frozenset)
    """For a duration incident: the runs that broke the rule and have not ended yet."""
    resolved_at_ms: int | None = None
    resolved_by: str | None = None
    cause: str | None = None
    version: int = 0
    """Bumped by every write: a commit made from an older read fails instead of undoing a
    concurrent change (an operator's resolve while a cycle runs)."""

    @property
    def is_open(self) -> bool:
        return self.resolved_at_ms is None


@dataclass(frozen=True, slots=True)
class Transition:
    """One run record that changed in a cycle, with the record it replaces."""

    previous: RunRecord | None
    record: RunRecord
    kind: TransitionKind
    category: Category | None = None
    """The run's category as the tracker classified the record's snapshot (for FINISHED:
    how it finished); None for a vanished run, which was not observed."""
    raw_state: str | None = None
    """The raw state behind `category` (result state, else life-cycle state)."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A run or job the API answered in a shape the watcher cannot read, cycle after cycle."""

    kind: Literal["run", "job"]
    item_id: int
    job_id: int | None
    detail: str
    """Field paths and error kinds, never values."""


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll cycle of one workspace gathered: the input of the cycle plan."""

    workspace: str
    runs: list[Run]
    """One snapshot per run (by run_id), the most advanced the cycle saw, of every run
    whose state may have changed."""
    jobs: dict[int, Job]
    """Settings of every job with a run, unless the job no longer exists (or is unreadable)."""
    vanished: list[int]
    """Runs the store held active that runs/get says no longer exist: close them out."""
    watermark_ms: int
    """Commit this with the cycle: the server time at which the cycle started."""
    server_now_ms: int
    """Server time at the start of the cycle, for ages of active runs: every snapshot was
    taken after it, so an age computed from it is never overstated."""
    news_since_ms: int
    """Transitions before this server time are history (recorded, not alerted)."""
    requests: int
    """HTTP requests this cycle sent to the Jobs API: pages, runs/get, jobs/get, jobs/list,
    retries and 2.2 task pages."""
    unreadable: list[Unreadable] = field(default_factory=list)
    """Items unreadable for long enough to be reported (once: the event id is stable)."""
    watched_jobs: dict[int, Job] | None = None
    """Every watched job of the workspace, as its latest jobs/list walk read it (None when
    the checks that need them are off)."""
