"""The state of a simulated Databricks workspace: jobs, and runs whose life cycle is
derived from the clock.

A run is a plan (queue, setup, execution and cleanup durations and an outcome) laid on a
start time; its snapshot at any instant is computed, so advancing the clock by a day costs
nothing. Forcing a state, releasing a hold or repairing a run rewrites the plan from now on.

A job created with `max_concurrent_runs` enforces it: a run started (now) while the job
has that many runs active stays QUEUED (queue reason `ACTIVE_RUNS_LIMIT_REACHED`) until
one of them ends, first come first served, then carries on with its plan, the wait being
its queue time.

The workspace also starts runs on its own, as Databricks' scheduler does, whenever its
clock passes the moment (triggers are evaluated as time is brought up to now: `settle`,
and before any run is started by hand):

* a job with a `schedule` (a Quartz expression in `timezone_id`, as
  `watcher.schedule.Schedule` evaluates it) or a periodic `trigger` (every `interval`
  HOURS, DAYS or WEEKS from the job's creation) starts a run (trigger PERIODIC) at each
  trigger time, unless PAUSED (`pause_job` / `resume_job`); `skip_next_trigger` makes the
  scheduler silently forget its next trigger. The run follows the job's `RunPlan`, and
  queues like any other at the job's max_concurrent_runs.
* a `continuous` job keeps one run active (trigger CONTINUOUS): the next starts when the
  previous ends, until `stop_continuous` (the job, still UNPAUSED, then runs no more until
  `start_continuous`) or `pause_job` (which cancels the active run).
"""

from __future__ import annotations

import bisect
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.clock import Clock
from watcher.databricks.models import TERMINAL_LIFE_CYCLE_STATES
from watcher.databricks.models import RunLifeCycleState as L
from watcher.databricks.models import RunResultState as R
from watcher.schedule import InvalidSchedule, Schedule

RETENTION_MS = 60 * 24 * 3600 * 1000  # runs disappear after 60 days
RETRIED_RESULTS = frozenset({R.FAILED, R.TIMEDOUT})
ACTIVE_STATES = frozenset({L.QUEUED, L.PENDING, L.RUNNING, L.TERMINATING})
LIMIT_REASON = ("ACTIVE_RUNS_LIMIT_REACHED", "The job has reached its maximum concurrent runs")
"""The queue reason of a run waiting for a slot under its job's max_concurrent_runs."""
_WAITING_MS = 10 * 365 * 86_400_000
"""The queue of a run waiting for a slot, until it gets one: longer than any test runs."""
PERIODIC_UNITS = {"HOURS": 3600, "DAYS": 86_400, "WEEKS": 7 * 86_400}
"""Seconds in each unit of a periodic trigger's interval."""


class NotFoundError(KeyError):
    """A job or run that does not exist (answered as 400 INVALID_PARAMETER_VALUE)."""


class InProgressError(ValueError):
    """A run asked to do what only a finished run can (answered as 400 INVALID_STATE)."""


@dataclass
class TaskPlan:
    task_key: str
    setup_ms: int = 0
    execution_ms: int = 60_000
    cleanup_ms: int = 0
    result: str = R.SUCCESS
    run_id: int = 0
    start_ms: int | None = None
    """Pinned start of a task that a repair left alone; None: right after the run's queue."""

    @property
    def total_ms(self) -> int:
        return self.setup_ms + self.execution_ms + self.cleanup_ms


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What a run the workspace starts on its own (a schedule's, a periodic trigger's, a
    continuous job's) does: its phases in seconds and its outcome."""

    queue_s: float = 0
    setup_s: float = 10
    execution_s: float = 60
    cleanup_s: float = 5
    result: str | None = R.SUCCESS

    @property
    def total_s(self) -> float:
        return self.queue_s + self.setup_s + self.execution_s + self.cleanup_s


CONTINUOUS_PLAN = RunPlan(setup_s=30, execution_s=6 * 3600, cleanup_s=10)
"""A continuous job's runs, unless told otherwise: a stream that restarts every 6 hours."""


@dataclass
class SimJob:
    job_id: int
    settings: dict[str, Any]
    created_time: int
    creator_user_name: str = "someone@example.com"
    overrides: dict[str, Any] = field(default_factory=dict)
    """Poisoned fields, laid over every rendering of the job."""
    concurrency_limit: int | None = None
    """max_concurrent_runs, when the job was created with it: enforced (else not, as the
    simulator always did, whatever the settings say)."""
    plan: RunPlan = field(default_factory=RunPlan)
    """What the runs the workspace starts on its own do."""
    schedule: Schedule | None = None
    """The parsed `settings.schedule` it fires on (None: none, or one Quartz refuses)."""
    next_trigger_ms: int | None = None
    """The scheduler's next trigger (schedule or periodic trigger); None: none left."""
    skipped_triggers: int = 0
    """Triggers still to be silently forgotten (`skip_next_trigger`)."""
    continuous_stopped: bool = False
    """A continuous job that `stop_continuous` stopped: no run starts until started again."""
    continuous_run_id: int | None = None
    """The continuous job's latest run."""

    @property
    def max_retries(self) -> int:
        return int(self.settings.get("max_retries") or 0)

    @property
    def min_retry_interval_ms(self) -> int:
        return int(self.settings.get("min_retry_interval_millis") or 0)

    @property
    def period_ms(self) -> int | None:
        """The interval of its periodic trigger, if it has a usable one."""
        periodic = (self.settings.get("trigger") or {}).get("periodic") or {}
        unit = PERIODIC_UNITS.get(periodic.get("unit", ""))
        interval = periodic.get("interval")
        if unit is None or not isinstance(interval, int) or interval < 1:
            return None
        return interval * unit * 1000

    @property
    def continuous(self) -> bool:
        return isinstance(self.settings.get("continuous"), dict)

    def pausable(self) -> dict[str, Any] | None:
        """The settings object whose pause_status rules its automatic runs: its schedule,
        periodic trigger or continuous setting."""
        for key in ("schedule", "trigger", "continuous"):
            value = self.settings.get(key)
            if isinstance(value, dict):
                return value
        return None

    @property
    def paused(self) -> bool:
        holder = self.pausable()
        return holder is not None and holder.get("pause_status") == "PAUSED"


@dataclass(frozen=True, slots=True)
class Segment:
    """A finished item of a run's repair history: the original run or one repair."""

    repair_id: int | None  # None: the original run
    start_ms: int
    end_ms: int
    end_state: str
    result: str | None
    duration_ms: int
    task_run_ids: tuple[int, ...]


@dataclass
class SimRun:
    run_id: int
    job_id: int
    number_in_job: int
    start_ms: int
    plan_start_ms: int
    """When the current plan began: the run's start, or the instant of its latest repair."""
    queue_ms: int
    setup_ms: int
    execution_ms: int
    cleanup_ms: int
    result: str | None
    end_state: str
    attempt_number: int
    original_attempt_run_id: int
    trigger: str
    run_type: str
    run_name: str
    tasks: list[TaskPlan] = field(default_factory=list)
    # Outcomes of the retries that follow a failure, in order (then SUCCESS).
    retry_results: list[str] = field(default_factory=list)
    hold_state: str | None = None
    # In-run retries (2.1+ task retries): failed attempts before the final one, each
    # followed by the job's min_retry_interval.
    failed_attempts: int = 0
    retry_interval_ms: int = 0
    task_run_id: int = 0
    """Run id of a single-task run's one task (0: the run's own id, until a repair)."""
    repair_id: int | None = None  # of the repair under way or last done
    history: list[Segment] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    """Poisoned fields, laid over every rendering of the run."""
    queue_reason: tuple[str, str] | None = None
    """(code, message) shown while the run is QUEUED: 2.1 `state.queue_reason` (the
    message), 2.2 `status.queue_details`."""
    waiting_for_slot: bool = False
    """QUEUED behind its job's max_concurrent_runs (queue_ms is a placeholder until it
    gets a slot); its queue reason is then `LIMIT_REASON`."""
    planned_queue_ms: int = 0
    """The queue it was started with: a run that waited for a slot queues at least this."""
    slot_ms: int | None = None
    """When a run that waited for a slot got it (None: it took one at its start)."""

    @property
    def current_queue_reason(self) -> tuple[str, str] | None:
        """What a QUEUED snapshot of the run says it waits for."""
        return LIMIT_REASON if self.waiting_for_slot else self.queue_reason

    @property
    def attempt_ms(self) -> int:
        return self.setup_ms + self.execution_ms + self.cleanup_ms

    def task_start_ms(self, task: TaskPlan) -> int:
        return self.plan_start_ms + self.queue_ms if task.start_ms is None else task.start_ms

    @property
    def end_ms(self) -> int | None:
        if self.hold_state is not None:
            return None
        if self.tasks:
            return max(self.task_start_ms(t) + t.total_ms for t in self.tasks)
        retries = self.failed_attempts * (self.attempt_ms + self.retry_interval_ms)
        return self.plan_start_ms + self.queue_ms + retries + self.attempt_ms

    @property
    def plan_duration_ms(self) -> int:
        """The current plan's share of run_duration: its work after the queue, once ended."""
        end = self.end_ms
        return 0 if end is None else end - self.plan_start_ms - self.queue_ms

    @property
    def run_duration_ms(self) -> int:
        """The run and all its repairs, as the reference defines run_duration."""
        return sum(s.duration_ms for s in self.history) + self.plan_duration_ms

    @property
    def task_run_ids(self) -> list[int]:
        """Task runs of the current plan (a repair's: only the tasks it re-ran)."""
        if not self.tasks:
            return [self.task_run_id or self.run_id]
        return [t.run_id for t in self.tasks if t.start_ms is None]

    def ended_by(self, now: int) -> bool:
        end = self.end_ms
        return end is not None and end <= now

    @property
    def sort_key(self) -> tuple[int, int]:
        return (self.start_ms, self.run_id)


ListHook = Callable[["Workspace", list[SimRun]], None]


class Workspace:
    """Jobs and runs of one simulated workspace. All times are epoch milliseconds."""

    def __init__(
        self, *, clock: Clock, workspace_id: int = 1234567890123456, in_run_retries: bool = False
    ) -> None:
        self.clock = clock
        self.workspace_id = workspace_id
        self.in_run_retries = in_run_retries
        """Retry a failed single-task run inside the same run, as 2.1+ task retries do
        (task attempts, WAITING_FOR_RETRY between them), instead of as new runs (2.0)."""
        self.jobs: dict[int, SimJob] = {}
        self.runs: dict[int, SimRun] = {}
        self._by_start: list[tuple[int, int]] = []  # sorted (start_ms, run_id)
        self._unsettled: set[int] = set()  # runs not yet seen ended (active or future end)
        self._retries_due: list[tuple[int, int]] = []  # (due_ms, failed run_id)
        self._waiting: set[int] = set()  # runs QUEUED behind their job's max_concurrent_runs
        self._self_started: set[int] = set()  # jobs the workspace starts runs of on its own
        self._ids = itertools.count(1001)
        self._job_ids = itertools.count(1)
        self.tickers: list[Callable[[Workspace, int], None]] = []
        self.list_hooks: list[ListHook] = []
        """Called with every runs/list page served: lets tests start or delete runs mid-walk."""

    def now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    # -- jobs ------------------------------------------------------------------------

    def create_job(
        self,
        name: str,
        *,
        tags: dict[str, str] | None = None,
        duration_threshold_s: int | None = None,
        max_retries: int = 0,
        min_retry_interval_ms: int = 0,
        task_keys: list[str] | None = None,
        task_health_s: dict[str, int] | None = None,
        email_on_failure: list[str] | None = None,
        webhook_on_failure: list[str] | None = None,
        notification_settings: dict[str, bool] | None = None,
        schedule: str | None = None,
        extra: dict[str, Any] | None = None,
        max_concurrent_runs: int | None = None,
        timezone_id: str = "UTC",
        pause_status: str = "UNPAUSED",
        continuous: bool = False,
        periodic: tuple[int, str] | None = None,
        plan: RunPlan | None = None,
    ) -> int:
        """A new job; its id. With `max_concurrent_runs` (at least 1) runs started beyond it
        queue (see the module docstring); without, the settings say 1 and nothing queues.

        `schedule` (a Quartz expression in `timezone_id`), `periodic` ((interval, unit):
        `settings.trigger.periodic`) and `continuous` (`settings.continuous`) make the
        workspace start runs of the job on its own, following `plan` (default `RunPlan()`,
        `CONTINUOUS_PLAN` for a continuous job); `pause_status` is the schedule's or
        trigger's (or the continuous setting's). A schedule Quartz refuses is shown but
        never fires. A continuous job's first run starts now."""
        if max_concurrent_runs is not None and max_concurrent_runs < 1:
            raise ValueError("max_concurrent_runs must be at least 1")
        if sum(bool(x) for x in (schedule, periodic, continuous)) > 1:
            raise ValueError("a job has at most one of schedule, periodic and continuous")
        if periodic is not None and (periodic[1] not in PERIODIC_UNITS or periodic[0] < 1):
            raise ValueError(f"invalid periodic trigger {periodic!r}")
        plan = plan or (CONTINUOUS_PLAN if continuous else RunPlan())
        if continuous and plan.total_s <= 0:
            raise ValueError("a continuous job's runs must last some time")
        job_id = next(self._job_ids)
        settings: dict[str, Any] = {
            "name": name,
            "max_concurrent_runs": max_concurrent_runs or 1,
            "format": "MULTI_TASK",
        }
        if tags:
            settings["tags"] = dict(tags)
        if duration_threshold_s is not None:
            settings["health"] = {"rules": [_duration_rule(duration_threshold_s)]}
        if max_retries:
            settings["max_retries"] = max_retries
            settings["min_retry_interval_millis"] = min_retry_interval_ms
        if task_keys:
            settings["tasks"] = [
                {"task_key": key, "notebook_task": {"notebook_path": f"/Jobs/{name}/{key}"}}
                | (
                    {"health": {"rules": [_duration_rule(task_health_s[key])]}}
                    if task_health_s and key in task_health_s
                    else {}
                )
                for key in task_keys
            ]
        else:
            settings["notebook_task"] = {"notebook_path": f"/Jobs/{name}"}
        if email_on_failure:
            settings["email_notifications"] = {"on_failure": list(email_on_failure)}
        if webhook_on_failure:
            settings["webhook_notifications"] = {
                "on_failure": [{"id": hook} for hook in webhook_on_failure]
            }
        if notification_settings:
            settings["notification_settings"] = dict(notification_settings)
        if schedule:
            settings["schedule"] = {
                "quartz_cron_expression": schedule,
                "timezone_id": timezone_id,
                "pause_status": pause_status,
            }
        if periodic is not None:
            settings["trigger"] = {
                "pause_status": pause_status,
                "periodic": {"interval": periodic[0], "unit": periodic[1]},
            }
        if continuous:
            settings["continuous"] = {"pause_status": pause_status}
        settings.update(copy.deepcopy(extra or {}))
        now = self.now_ms()
        job = SimJob(job_id, settings, now, concurrency_limit=max_concurrent_runs, plan=plan)
        job.schedule = _parsed_schedule(settings.get("schedule"))
        if job.schedule is not None:
            job.next_trigger_ms = _next_fire(job.schedule, now)
        elif job.period_ms is not None:
            job.next_trigger_ms = now + job.period_ms
        self.jobs[job_id] = job
        if job.next_trigger_ms is not None or job.continuous:
            self._self_started.add(job_id)
        if job.continuous:
            self._keep_running(job, now)
        return job_id

    # -- the scheduler -----------------------------------------------------------------

    def pause_job(self, job_id: int) -> None:
        """PAUSE the job's schedule, periodic trigger or continuous setting: no trigger
        fires (and none is made up later); a continuous job's active run is canceled."""
        job = self._automatic(job_id)
        now = self.now_ms()
        self._fire_due(now)  # what was due before the pause still fired
        holder = job.pausable()
        assert holder is not None
        holder["pause_status"] = "PAUSED"
        if job.continuous:
            self._end_continuous_run(job, R.CANCELED)

    def resume_job(self, job_id: int) -> None:
        """UNPAUSE it: the next trigger fires; a continuous job starts a run now (unless
        stopped)."""
        job = self._automatic(job_id)
        now = self.now_ms()
        self._fire_due(now)  # triggers passed while paused are over, not owed
        holder = job.pausable()
        assert holder is not None
        holder["pause_status"] = "UNPAUSED"
        if job.continuous:
            self._restart(job, now)

    def skip_next_trigger(self, job_id: int) -> None:
        """The scheduler silently forgets the job's next trigger that would fire: no run,
        no SKIPPED run, nothing in the API says so. Cumulative."""
        job = self._automatic(job_id)
        if job.next_trigger_ms is None:
            raise ValueError(f"job {job_id} has no trigger to skip")
        self._fire_due(self.now_ms())
        job.skipped_triggers += 1

    def stop_continuous(self, job_id: int, result: str | None = R.FAILED) -> None:
        """The continuous job stops running while its settings still say UNPAUSED: its
        active run ends now with `result` (None: it runs on to the end of its plan), and
        no run follows until `start_continuous`."""
        job = self._continuous(job_id)
        self._fire_due(self.now_ms())
        job.continuous_stopped = True
        if result is not None:
            self._end_continuous_run(job, result)

    def start_continuous(self, job_id: int) -> None:
        """A stopped continuous job runs again: a run starts now (unless PAUSED)."""
        job = self._continuous(job_id)
        now = self.now_ms()
        self._fire_due(now)
        job.continuous_stopped = False
        self._restart(job, now)

    def _restart(self, job: SimJob, now: int) -> None:
        """A continuous job that was not running runs from now (not from its last end)."""
        current = self.runs.get(job.continuous_run_id or 0)
        if current is not None and current.ended_by(now):
            job.continuous_run_id = None
        self._keep_running(job, now)

    def _automatic(self, job_id: int) -> SimJob:
        job = self.get_job(job_id)
        if job.pausable() is None:
            raise ValueError(f"job {job_id} has no schedule, trigger or continuous setting")
        return job

    def _continuous(self, job_id: int) -> SimJob:
        job = self.get_job(job_id)
        if not job.continuous:
            raise ValueError(f"job {job_id} is not continuous")
        return job

    def _end_continuous_run(self, job: SimJob, result: str) -> None:
        run = self.runs.get(job.continuous_run_id or 0)
        if run is not None and not run.ended_by(self.now_ms()):
            self.force(run.run_id, L.TERMINATED, result)

    def _fire_due(self, now: int) -> None:
        """Start every run the scheduler owes by `now`: each trigger passed (at its time),
        each continuous job's next run (when the previous ended)."""
        for job_id in sorted(self._self_started):
            job = self.jobs.get(job_id)
            if job is None:
                self._self_started.discard(job_id)
                continue
            while job.next_trigger_ms is not None and job.next_trigger_ms <= now:
                at = job.next_trigger_ms
                job.next_trigger_ms = (
                    _next_fire(job.schedule, at) if job.schedule is not None else None
                )
                if job.next_trigger_ms is None and (period := job.period_ms) is not None:
                    job.next_trigger_ms = at + period
                if job.paused:
                    continue
                if job.skipped_triggers:
                    job.skipped_triggers -= 1
                    continue
                self._start_planned(job, at, "PERIODIC")
            if job.continuous:
                self._keep_running(job, now)

    def _keep_running(self, job: SimJob, now: int) -> None:
        """A continuous job, unless stopped or paused: a run from its previous run's end
        (or now, the first), again and again up to now."""
        if job.continuous_stopped or job.paused:
            return
        while True:
            current = self.runs.get(job.continuous_run_id or 0)
            if current is not None and not current.ended_by(now):
                return
            # Ended (so its end is known), or gone: the next starts as it ended, or now.
            at = now if current is None else max(current.end_ms or now, current.start_ms + 1)
            job.continuous_run_id = self._start_planned(job, at, "CONTINUOUS")

    def _start_planned(self, job: SimJob, at: int, trigger: str) -> int:
        """A run of the job's plan started at `at` (up to now) by the workspace itself: it
        waits for a slot like a run started by hand (given one from `at` if free then)."""
        plan = job.plan
        run_id = self.start_run(
            job.job_id,
            queue_s=plan.queue_s,
            setup_s=plan.setup_s,
            execution_s=plan.execution_s,
            cleanup_s=plan.cleanup_s,
            result=plan.result,
            trigger=trigger,
            start_ms=at,
        )
        if job.concurrency_limit is not None:
            run = self.runs[run_id]
            run.waiting_for_slot, run.queue_ms = True, _WAITING_MS
            self._waiting.add(run_id)
            self._admit(self.now_ms())
        return run_id

    def delete_job(self, job_id: int) -> None:
        self.get_job(job_id)
        del self.jobs[job_id]

    def get_job(self, job_id: int) -> SimJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFoundError(f"Job {job_id} does not exist.") from None

    # -- runs ------------------------------------------------------------------------

    def start_run(
        self,
        job_id: int,
        *,
        queue_s: float = 0,
        setup_s: float = 10,
        execution_s: float = 60,
        cleanup_s: float = 5,
        result: str | None = R.SUCCESS,
        end_state: str = L.TERMINATED,
        trigger: str = "PERIODIC",
        run_type: str = "JOB_RUN",
        tasks: list[TaskPlan] | None = None,
        retry_results: list[str] | None = None,
        start_ms: int | None = None,
        hold_state: str | None = None,
        queue_reason: tuple[str, str] | None = None,
    ) -> int:
        """Start a run now (or at `start_ms`, for history). Multitask runs take `tasks`,
        which run side by side after the queue; their worst outcome is the run's. A
        `hold_state` (such as BLOCKED) keeps the run there until `release`d. A
        `queue_reason` (code, message) is what the run says it waits for while QUEUED.
        A run started now of a job at its enforced max_concurrent_runs waits for a slot
        (see the module docstring); history, holds and skipped runs never do."""
        if hold_state in TERMINAL_LIFE_CYCLE_STATES:
            raise ValueError(f"cannot hold a run in terminal state {hold_state}")
        job = self.get_job(job_id)
        if start_ms is None:
            self._fire_due(self.now_ms())  # the scheduler's runs due before this one go first
        run_id = next(self._ids)
        number = 1 + sum(1 for r in self.runs.values() if r.job_id == job_id)
        plans = [TaskPlan(**vars(t)) for t in tasks or []]
        for plan in plans:
            plan.run_id, plan.start_ms = next(self._ids), None
        if end_state == L.SKIPPED:
            result, queue_s, setup_s, execution_s, cleanup_s = None, 0, 0, 0, 0
        start = self.now_ms() if start_ms is None else start_ms
        run = SimRun(
            run_id=run_id,
            job_id=job_id,
            number_in_job=number,
            start_ms=start,
            plan_start_ms=start,
            queue_ms=int(queue_s * 1000),
            setup_ms=int(setup_s * 1000),
            execution_ms=int(execution_s * 1000),
            cleanup_ms=int(cleanup_s * 1000),
            result=_worst(plans) if plans and result == R.SUCCESS else result,
            end_state=end_state,
            attempt_number=0,
            original_attempt_run_id=run_id,
            trigger=trigger,
            run_type=run_type,
            run_name=str(job.settings.get("name", "")),
            tasks=plans,
            retry_results=list(retry_results or []),
            hold_state=hold_state,
            queue_reason=queue_reason,
            planned_queue_ms=int(queue_s * 1000),
        )
        if self.in_run_retries and not plans and run.result in RETRIED_RESULTS:
            self._plan_in_run_retries(run, job)
        if start_ms is None and hold_state is None and end_state != L.SKIPPED:
            self._queue_at_limit(run, job)
        self._add(run)
        return run_id

    # -- max_concurrent_runs -----------------------------------------------------------

    def _queue_at_limit(self, run: SimRun, job: SimJob) -> None:
        """Make a run being started now wait for a slot when its job has none free (or
        other runs already wait: first come, first served)."""
        limit = job.concurrency_limit
        if limit is None:
            return
        now = self.now_ms()
        self._admit(now)  # runs whose slot came free before now go first
        if any(self.runs[r].job_id == job.job_id for r in self._waiting) or (
            self._occupancy(job.job_id, now) >= limit
        ):
            run.waiting_for_slot, run.queue_ms = True, _WAITING_MS

    def _occupancy(self, job_id: int, at: int) -> int:
        """Runs of the job holding a slot at `at` (not those waiting for one)."""
        return sum(
            1
            for r in self.runs.values()
            if r.job_id == job_id and not r.waiting_for_slot and _holds_slot(r, at)
        )

    def _admit(self, now: int) -> bool:
        """Give each run waiting for a slot the first instant up to `now` its job had one
        free, oldest first; whether any got one."""
        admitted = False
        full: set[int] = set()  # jobs whose oldest waiting run is still waiting
        for run in sorted((self.runs[r] for r in self._waiting), key=lambda r: r.sort_key):
            if run.job_id in full:
                continue
            at = self._free_slot(run, now)
            if at is None:
                full.add(run.job_id)
                continue
            self._waiting.discard(run.run_id)
            run.waiting_for_slot, run.slot_ms = False, at
            run.queue_ms = max(at - run.plan_start_ms, run.planned_queue_ms)
            admitted = True
        return admitted

    def _free_slot(self, run: SimRun, now: int) -> int | None:
        job = self.jobs.get(run.job_id)
        if job is None or job.concurrency_limit is None:
            return now  # the job is gone (or unlimited since): nothing to wait for
        others = [
            r
            for r in self.runs.values()
            if r.job_id == run.job_id and r is not run and not r.waiting_for_slot
        ]
        ends = {end for r in others if (end := r.end_ms) is not None and run.start_ms <= end <= now}
        for at in sorted(ends | {run.start_ms}):
            if sum(1 for r in others if _holds_slot(r, at)) < job.concurrency_limit:
                return at
        return None

    @staticmethod
    def _plan_in_run_retries(run: SimRun, job: SimJob) -> None:
        """The attempts a failing run makes within itself: each retried outcome from
        retry_results (then SUCCESS) until one is not retried or max_retries is spent."""
        outcomes = [run.result or R.FAILED, *run.retry_results]
        attempt = 0
        while outcomes[attempt] in RETRIED_RESULTS and attempt < job.max_retries:
            attempt += 1
            if attempt == len(outcomes):
                outcomes.append(R.SUCCESS)
        run.failed_attempts = attempt
        run.retry_interval_ms = job.min_retry_interval_ms
        run.result = outcomes[attempt]
        run.retry_results = []

    def _add(self, run: SimRun) -> None:
        self.runs[run.run_id] = run
        bisect.insort(self._by_start, run.sort_key)
        self._unsettled.add(run.run_id)
        if run.waiting_for_slot:
            self._waiting.add(run.run_id)

    def get_run(self, run_id: int) -> SimRun:
        self.settle()
        try:
            return self.runs[run_id]
        except KeyError:
            raise NotFoundError(f"Run {run_id} does not exist.") from None

    def delete_run(self, run_id: int) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            raise NotFoundError(f"Run {run_id} does not exist.")
        index = bisect.bisect_left(self._by_start, run.sort_key)
        del self._by_start[index]
        self._unsettled.discard(run_id)
        self._waiting.discard(run_id)

    def force(self, run_id: int, life_cycle_state: str, result_state: str | None = None) -> None:
        """Move a run to a state now. An active state holds until forced again; a
        terminal one ends the run now, its phases cut short at this instant."""
        run = self.get_run(run_id)
        now = self.now_ms()
        if run.ended_by(now):
            raise ValueError(f"run {run_id} has already ended")
        if life_cycle_state not in TERMINAL_LIFE_CYCLE_STATES:
            run.hold_state = life_cycle_state
            return
        self._stop_waiting(run)
        run.hold_state = None
        elapsed = max(0, now - run.plan_start_ms)
        run.queue_ms = min(run.queue_ms, elapsed)
        remaining = elapsed - run.queue_ms
        if run.tasks:
            last = max(run.tasks, key=lambda t: run.task_start_ms(t) + t.total_ms)
            for plan in run.tasks:
                if plan is last or run.task_start_ms(plan) + plan.total_ms > now:
                    plan.setup_ms, plan.execution_ms, plan.cleanup_ms = _fit(
                        plan.setup_ms,
                        plan.execution_ms,
                        plan.cleanup_ms,
                        max(0, now - run.task_start_ms(plan)),
                    )
                    if result_state is not None:
                        plan.result = result_state
        else:
            cycle = run.attempt_ms + run.retry_interval_ms
            if run.failed_attempts:  # ends within the attempt under way
                run.failed_attempts = min(run.failed_attempts, remaining // cycle)
                remaining -= run.failed_attempts * cycle
            run.setup_ms, run.execution_ms, run.cleanup_ms = _fit(
                run.setup_ms, run.execution_ms, run.cleanup_ms, remaining
            )
        run.end_state = life_cycle_state
        run.result = result_state

    def release(self, run_id: int) -> None:
        """End a run's hold: its plan carries on from now, the held time counting as its
        queue, so it goes PENDING, RUNNING, ... and ends after its setup, execution and
        cleanup."""
        run = self.get_run(run_id)
        if run.hold_state is None:
            raise ValueError(f"run {run_id} is not held")
        self._stop_waiting(run)
        run.hold_state = None
        run.queue_ms = max(0, self.now_ms() - run.plan_start_ms)

    def _stop_waiting(self, run: SimRun) -> None:
        """A run waiting for a slot is ended or released by hand: it waits no more."""
        if run.waiting_for_slot:
            self._waiting.discard(run.run_id)
            run.waiting_for_slot, run.queue_ms = False, max(0, self.now_ms() - run.plan_start_ms)

    def repair_run(
        self,
        run_id: int,
        *,
        rerun_tasks: list[str] | None = None,
        queue_s: float = 0.0,
        setup_s: float = 10.0,
        execution_s: float = 60.0,
        cleanup_s: float = 5.0,
        result: str = R.SUCCESS,
    ) -> int:
        """Re-run a finished run's failed tasks (or `rerun_tasks`; a single-task run's one
        task) under the same run_id, from now; the new repair_id. The run is active again
        until the repair ends with `result` for the tasks it re-ran."""
        run = self.get_run(run_id)
        if not run.ended_by(self.now_ms()):
            raise InProgressError(f"Run {run_id} is in progress and cannot be repaired.")
        keys = _repaired_keys(run, rerun_tasks)
        run.history.append(_segment(run))
        phases = int(setup_s * 1000), int(execution_s * 1000), int(cleanup_s * 1000)
        for plan in run.tasks:
            if plan.task_key in keys:
                plan.setup_ms, plan.execution_ms, plan.cleanup_ms = phases
                plan.result, plan.run_id, plan.start_ms = result, next(self._ids), None
            else:  # keeps its times from the earlier attempt, whatever the new queue
                plan.start_ms = run.task_start_ms(plan)
        run.setup_ms, run.execution_ms, run.cleanup_ms = phases
        run.plan_start_ms, run.queue_ms = self.now_ms(), int(queue_s * 1000)
        run.result = _worst(run.tasks) if run.tasks else result
        run.end_state = L.TERMINATED
        # A repair is one attempt: no task retries inside it.
        run.failed_attempts, run.retry_interval_ms, run.retry_results = 0, 0, []
        run.task_run_id = 0 if run.tasks else next(self._ids)
        run.repair_id = next(self._ids)
        self._unsettled.add(run_id)
        # The user repairs instead: a 2.0 retry still waiting for its interval is dropped.
        self._retries_due = [due for due in self._retries_due if due[1] != run_id]
        return run.repair_id

    def poison_run(self, run_id: int, overrides: dict[str, Any]) -> None:
        """Lay `overrides` over the top-level fields of every rendering of the run."""
        self.get_run(run_id).overrides.update(overrides)

    def poison_job(self, job_id: int, overrides: dict[str, Any]) -> None:
        """Lay `overrides` over every rendering of the job; a "settings" object merges
        into its settings."""
        self.get_job(job_id).overrides.update(overrides)

    def advance(self, seconds: float) -> None:
        """Move a ManualClock forward (other clocks move on their own)."""
        advance = getattr(self.clock, "advance", None)
        if advance is None:
            raise TypeError("this workspace's clock cannot be advanced by hand")
        advance(seconds)
        self.settle()

    def settle(self) -> None:
        """Bring derived state up to now: retries of failed runs start, old runs expire,
        and the random workload (if any) starts what is due."""
        now = self.now_ms()
        self._fire_due(now)
        for ticker in self.tickers:
            ticker(self, now)
        # A retry may itself have started and failed in the past, a run waiting for a slot
        # got it and ended: repeat until settled.
        while True:
            admitted = self._admit(now) if self._waiting else False
            ended = [r for r in self._unsettled if self.runs[r].ended_by(now)]
            for run_id in ended:
                self._unsettled.discard(run_id)
                self._schedule_retry(self.runs[run_id])
            due = [item for item in self._retries_due if item[0] <= now]
            self._retries_due = [item for item in self._retries_due if item[0] > now]
            for due_ms, failed_id in sorted(due):
                self._start_retry(failed_id, due_ms)
            if not ended and not due and not admitted:
                break
        cutoff = now - RETENTION_MS
        while self._by_start and self._by_start[0][0] < cutoff:
            _, run_id = self._by_start.pop(0)
            self.runs.pop(run_id, None)
            self._unsettled.discard(run_id)
            self._waiting.discard(run_id)

    def _schedule_retry(self, run: SimRun) -> None:
        job = self.jobs.get(run.job_id)
        if job is None or run.result not in RETRIED_RESULTS or self.in_run_retries:
            return
        if run.repair_id is not None:  # a failed repair is the user's to repair again
            return
        if run.attempt_number >= job.max_retries:
            return
        assert run.end_ms is not None
        self._retries_due.append((run.end_ms + job.min_retry_interval_ms, run.run_id))

    def _start_retry(self, failed_id: int, due_ms: int) -> None:
        failed = self.runs.get(failed_id)
        if failed is None or failed.job_id not in self.jobs:
            return
        outcomes = failed.retry_results or [R.SUCCESS]
        run_id = next(self._ids)
        tasks = [TaskPlan(**vars(t)) for t in failed.tasks]
        for plan in tasks:
            plan.run_id, plan.start_ms = next(self._ids), None
            plan.result = outcomes[0] if plan.result != R.SUCCESS else R.SUCCESS
        retry = SimRun(
            run_id=run_id,
            job_id=failed.job_id,
            number_in_job=failed.number_in_job,
            start_ms=due_ms,
            plan_start_ms=due_ms,
            queue_ms=0,
            setup_ms=failed.setup_ms,
            execution_ms=failed.execution_ms,
            cleanup_ms=failed.cleanup_ms,
            result=outcomes[0],
            end_state=L.TERMINATED,
            attempt_number=failed.attempt_number + 1,
            original_attempt_run_id=failed.original_attempt_run_id,
            trigger="RETRY",
            run_type=failed.run_type,
            run_name=failed.run_name,
            tasks=tasks,
            retry_results=outcomes[1:],
        )
        self._add(retry)

    # -- queries ---------------------------------------------------------------------

    def is_active(self, run: SimRun, now: int) -> bool:
        """What runs/list?active_only=true lists: started, not ended, and not held in a
        state outside QUEUED, PENDING, RUNNING, TERMINATING (BLOCKED, WAITING_FOR_RETRY)."""
        if run.hold_state is not None and run.hold_state not in ACTIVE_STATES:
            return False
        return run.start_ms <= now and not run.ended_by(now)

    def active_runs(self) -> list[SimRun]:
        """Active runs, newest start first."""
        now = self.now_ms()
        runs = [self.runs[r] for r in self._unsettled if self.is_active(self.runs[r], now)]
        return sorted(runs, key=lambda r: r.sort_key, reverse=True)

    def runs_newest_first(self, start_from: int | None, start_to: int | None) -> Iterator[SimRun]:
        """Runs by start time, newest first, within inclusive start bounds."""
        hi = len(self._by_start)
        if start_to is not None:
            hi = bisect.bisect_right(self._by_start, (start_to, 2**63))
        lo = 0 if start_from is None else bisect.bisect_left(self._by_start, (start_from, -1))
        now = self.now_ms()
        for start_ms, run_id in reversed(self._by_start[lo:hi]):
            if start_ms <= now:
                yield self.runs[run_id]


def _holds_slot(run: SimRun, at: int) -> bool:
    """Whether a run (not waiting for a slot) counts against its job's
    max_concurrent_runs at `at`: from its start (or the slot it waited for) until it ends,
    and during each repair; a held run until released."""
    if any(s.start_ms <= at < s.end_ms for s in run.history):
        return True
    begin = run.slot_ms if run.slot_ms is not None and not run.history else run.plan_start_ms
    end = run.end_ms
    return begin <= at and (end is None or at < end)


def _repaired_keys(run: SimRun, rerun_tasks: list[str] | None) -> set[str]:
    """The task keys a repair re-runs: those named, or else every task that did not
    succeed. A single-task run has one task, "main", re-run whatever is named."""
    known = {t.task_key for t in run.tasks} if run.tasks else {"main"}
    if rerun_tasks is not None and not set(rerun_tasks) <= known:
        unknown = ", ".join(sorted(set(rerun_tasks) - known))
        raise ValueError(f"Run {run.run_id} has no task {unknown}.")
    if not run.tasks:
        return known
    if rerun_tasks is not None:
        keys = set(rerun_tasks)
    else:
        keys = {t.task_key for t in run.tasks if t.result != R.SUCCESS}
    if not keys:
        raise ValueError(f"Run {run.run_id} has no failed tasks to repair.")
    return keys


def _segment(run: SimRun) -> Segment:
    """The run's current plan, ended, as an item of its repair history."""
    assert run.end_ms is not None
    return Segment(
        repair_id=run.repair_id,
        start_ms=run.plan_start_ms,
        end_ms=run.end_ms,
        end_state=run.end_state,
        result=run.result,
        duration_ms=run.plan_duration_ms,
        task_run_ids=tuple(run.task_run_ids),
    )


def _parsed_schedule(schedule: Any) -> Schedule | None:
    """The Schedule of a `settings.schedule` object; None for none or one Quartz refuses
    (shown, never fired)."""
    if not isinstance(schedule, dict):
        return None
    expression, zone = schedule.get("quartz_cron_expression"), schedule.get("timezone_id")
    if not isinstance(expression, str) or not isinstance(zone or "UTC", str):
        return None
    try:
        return Schedule.parse(expression, zone or "UTC")
    except InvalidSchedule:
        return None


def _next_fire(schedule: Schedule, after_ms: int) -> int | None:
    """The schedule's first trigger strictly after `after_ms`, in ms."""
    fire = schedule.next_after(datetime.fromtimestamp(after_ms / 1000, tz=UTC))
    return None if fire is None else int(fire.timestamp() * 1000)


def _duration_rule(seconds: int) -> dict[str, Any]:
    return {"metric": "RUN_DURATION_SECONDS", "op": "GREATER_THAN", "value": seconds}


def _fit(setup: int, execution: int, cleanup: int, total: int) -> tuple[int, int, int]:
    """Phases cut (or execution stretched) so that they add up to exactly `total`."""
    setup = min(setup, total)
    execution = min(execution, total - setup)
    cleanup = min(cleanup, total - setup - execution)
    return setup, execution + total - setup - execution - cleanup, cleanup


def _worst(tasks: list[TaskPlan]) -> str:
    results = {t.result for t in tasks}
    for result in (R.TIMEDOUT, R.FAILED, R.CANCELED):
        if result in results:
            return result
    return R.SUCCESS
