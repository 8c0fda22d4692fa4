"""Typed models of the Jobs API objects the watcher reads (API 2.0, 2.1 and 2.2).

Tolerant by design: unknown fields are ignored, enum-like fields are plain strings so a
value Databricks adds tomorrow is carried along instead of failing validation, and absent
optional fields are None. Times are epoch milliseconds and durations milliseconds, as sent.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# Bounds that keep one absurd value from failing a whole cycle downstream (a datetime past
# year 9999, an integer SQLite cannot store): such a run or job is rejected on its own.
Id = Annotated[int, Field(ge=0, lt=2**63)]
EpochMs = Annotated[int, Field(ge=0, le=253_402_300_799_999)]
Millis = Annotated[int, Field(ge=0, lt=2**63)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RunLifeCycleState(StrEnum):
    QUEUED = "QUEUED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    SKIPPED = "SKIPPED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    BLOCKED = "BLOCKED"
    WAITING_FOR_RETRY = "WAITING_FOR_RETRY"


class RunResultState(StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    TIMEDOUT = "TIMEDOUT"
    CANCELED = "CANCELED"
    MAXIMUM_CONCURRENT_RUNS_REACHED = "MAXIMUM_CONCURRENT_RUNS_REACHED"
    EXCLUDED = "EXCLUDED"
    SUCCESS_WITH_FAILURES = "SUCCESS_WITH_FAILURES"
    UPSTREAM_FAILED = "UPSTREAM_FAILED"
    UPSTREAM_CANCELED = "UPSTREAM_CANCELED"
    DISABLED = "DISABLED"


TERMINAL_LIFE_CYCLE_STATES = frozenset(
    {RunLifeCycleState.TERMINATED, RunLifeCycleState.SKIPPED, RunLifeCycleState.INTERNAL_ERROR}
)


class RunState(_Model):
    life_cycle_state: str | None = None
    result_state: str | None = None
    state_message: str | None = None
    user_cancelled_or_timedout: bool | None = None
    queue_reason: str | None = None


class TerminationDetails(_Model):
    code: str | None = None
    type: str | None = None
    message: str | None = None


class RunStatus(_Model):
    """The newer `status` object (2.1+), next to the classic `state`."""

    state: str | None = None
    termination_details: TerminationDetails | None = None
    queue_details: dict[str, Any] | None = None


class ClusterInstance(_Model):
    cluster_id: str | None = None
    spark_context_id: str | None = None


class CronSchedule(_Model):
    quartz_cron_expression: str | None = None
    timezone_id: str | None = None
    pause_status: str | None = None


class Continuous(_Model):
    """A continuous job (2.1+): Databricks keeps one run of it active while UNPAUSED."""

    pause_status: str | None = None


class PeriodicTrigger(_Model):
    interval: int | None = None
    unit: str | None = None
    """HOURS, DAYS or WEEKS."""


class TriggerSettings(_Model):
    """A job's trigger (2.1+): periodic (checkable like a schedule), file arrival or table
    update (events outside Databricks' runs: not checkable)."""

    pause_status: str | None = None
    periodic: PeriodicTrigger | None = None
    file_arrival: dict[str, Any] | None = None
    table_update: dict[str, Any] | None = None


class JobsHealthRule(_Model):
    metric: str | None = None
    op: str | None = None
    value: int | None = None


class JobsHealthRules(_Model):
    rules: list[JobsHealthRule] = Field(default_factory=list)


class JobEmailNotifications(_Model):
    on_start: list[str] = Field(default_factory=list)
    on_success: list[str] = Field(default_factory=list)
    on_failure: list[str] = Field(default_factory=list)
    on_duration_warning_threshold_exceeded: list[str] = Field(default_factory=list)
    no_alert_for_skipped_runs: bool | None = None


class Webhook(_Model):
    id: str


class WebhookNotifications(_Model):
    on_start: list[Webhook] = Field(default_factory=list)
    on_success: list[Webhook] = Field(default_factory=list)
    on_failure: list[Webhook] = Field(default_factory=list)
    on_duration_warning_threshold_exceeded: list[Webhook] = Field(default_factory=list)


class JobNotificationSettings(_Model):
    no_alert_for_skipped_runs: bool | None = None
    no_alert_for_canceled_runs: bool | None = None
    alert_on_last_attempt: bool | None = None


class JobTaskSettings(_Model):
    """One task of a multitask job's settings (2.1+): retries, health and notifications
    live here too."""

    task_key: str | None = None
    description: str | None = None
    depends_on: list[dict[str, Any]] = Field(default_factory=list)
    max_retries: int | None = None
    min_retry_interval_millis: int | None = None
    retry_on_timeout: bool | None = None
    timeout_seconds: int | None = None
    health: JobsHealthRules | None = None
    email_notifications: JobEmailNotifications | None = None
    webhook_notifications: WebhookNotifications | None = None
    notification_settings: JobNotificationSettings | None = None


class JobSettings(_Model):
    name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    existing_cluster_id: str | None = None
    new_cluster: dict[str, Any] | None = None
    notebook_task: dict[str, Any] | None = None
    spark_jar_task: dict[str, Any] | None = None
    spark_python_task: dict[str, Any] | None = None
    spark_submit_task: dict[str, Any] | None = None
    pipeline_task: dict[str, Any] | None = None
    run_job_task: dict[str, Any] | None = None
    libraries: list[dict[str, Any]] = Field(default_factory=list)
    email_notifications: JobEmailNotifications | None = None
    webhook_notifications: WebhookNotifications | None = None
    notification_settings: JobNotificationSettings | None = None
    timeout_seconds: int | None = None
    max_retries: int | None = None
    min_retry_interval_millis: int | None = None
    retry_on_timeout: bool | None = None
    schedule: CronSchedule | None = None
    continuous: Continuous | None = None
    trigger: TriggerSettings | None = None
    max_concurrent_runs: int | None = None
    health: JobsHealthRules | None = None
    tasks: list[JobTaskSettings] = Field(default_factory=list)
    format: str | None = None


class Job(_Model):
    job_id: Id
    creator_user_name: str | None = None
    run_as_user_name: str | None = None
    settings: JobSettings = Field(default_factory=JobSettings)
    created_time: int | None = None
    # API 2.2 pages a job's tasks; the client merges the pages before handing the job out.
    next_page_token: str | None = Field(default=None, exclude=True)


class RunTask(_Model):
    run_id: Id | None = None
    task_key: str | None = None
    description: str | None = None
    state: RunState | None = None
    status: RunStatus | None = None
    start_time: EpochMs | None = None
    end_time: EpochMs | None = None
    setup_duration: Millis | None = None
    execution_duration: Millis | None = None
    cleanup_duration: Millis | None = None
    run_duration: Millis | None = None
    queue_duration: Millis | None = None
    attempt_number: int | None = None
    cluster_instance: ClusterInstance | None = None
    run_page_url: str | None = None
    depends_on: list[dict[str, Any]] = Field(default_factory=list)


class RepairHistoryItem(_Model):
    """One entry of a run's `repair_history` (runs/get with include_history=true): the
    original run, then one entry per repair of the same run_id."""

    type: str | None = None
    """ORIGINAL or REPAIR."""
    id: int | None = None
    """The repair id (REPAIR entries only)."""
    start_time: EpochMs | None = None
    end_time: EpochMs | None = None
    state: RunState | None = None
    status: RunStatus | None = None
    task_run_ids: list[int] = Field(default_factory=list)


class Run(_Model):
    job_id: Id | None = None
    run_id: Id
    run_name: str | None = None
    creator_user_name: str | None = None
    number_in_job: int | None = None
    original_attempt_run_id: int | None = None
    attempt_number: int | None = None
    state: RunState = Field(default_factory=RunState)
    status: RunStatus | None = None
    schedule: CronSchedule | None = None
    task: dict[str, Any] | None = None
    cluster_spec: dict[str, Any] | None = None
    cluster_instance: ClusterInstance | None = None
    overriding_parameters: dict[str, Any] | None = None
    start_time: EpochMs | None = None
    end_time: EpochMs | None = None
    setup_duration: Millis | None = None
    execution_duration: Millis | None = None
    cleanup_duration: Millis | None = None
    run_duration: Millis | None = None
    queue_duration: Millis | None = None
    trigger: str | None = None
    run_type: str | None = None
    run_page_url: str | None = None
    tasks: list[RunTask] = Field(default_factory=list)
    repair_history: list[RepairHistoryItem] | None = None
    """Only runs/get with include_history=true sends it; None when it was not sent."""
    # API 2.2 pages a run's tasks; the client merges the pages before handing the run out.
    next_page_token: str | None = Field(default=None, exclude=True)
    # API 2.2 runs/list (expand_tasks) shows at most 100 tasks of a run and flags the rest.
    has_more: bool | None = Field(default=None, exclude=True)

    @property
    def life_cycle_state(self) -> str | None:
        return self.state.life_cycle_state

    @property
    def result_state(self) -> str | None:
        return self.state.result_state

    @property
    def repair_count(self) -> int | None:
        """Repairs of this run by its repair_history; None when the history was not sent."""
        if self.repair_history is None:
            return None
        return sum(1 for item in self.repair_history if item.type == "REPAIR")

    @property
    def is_terminal(self) -> bool:
        return self.state.life_cycle_state in TERMINAL_LIFE_CYCLE_STATES

    @property
    def has_ended(self) -> bool:
        """`end_time` is 0 (or absent) until the run has ended."""
        return bool(self.end_time)

    @property
    def duration_ms(self) -> int | None:
        """Total duration of a finished run: `run_duration` for multitask runs, else the
        sum of the phases (setup + execution + cleanup), as the reference defines it. None
        while the run is active (the phases so far are not its duration)."""
        if not self.has_ended and not self.is_terminal:
            return None
        if self.run_duration:
            return self.run_duration
        phases = (self.setup_duration, self.execution_duration, self.cleanup_duration)
        total = sum(p or 0 for p in phases)
        if total:
            return total
        if self.has_ended and self.start_time is not None and self.end_time is not None:
            return max(0, self.end_time - self.start_time)
        return None


class RunsPage(_Model):
    """One page of runs/list. `runs` is omitted by the API when the page is empty;
    `has_more` is absent in 2.2, where only `next_page_token` says there is more."""

    runs: list[Run] = Field(default_factory=list)
    has_more: bool | None = None
    next_page_token: str | None = None
    prev_page_token: str | None = None


class JobsPage(_Model):
    jobs: list[Job] = Field(default_factory=list)
    has_more: bool | None = None
    next_page_token: str | None = None
    prev_page_token: str | None = None
