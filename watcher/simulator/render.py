"""JSON bodies of simulated jobs and runs, as the Jobs API sends them at a given instant.

A QUEUED run says why when it has a reason (`SimRun.current_queue_reason`): 2.1 in
`state.queue_reason` (the message), 2.2 in `status.queue_details` ({code, message}); 2.0
has neither."""

from __future__ import annotations

from typing import Any

from watcher.databricks.models import RunLifeCycleState as L
from watcher.databricks.models import RunResultState as R
from watcher.simulator.workspace import ACTIVE_STATES, Segment, SimJob, SimRun, TaskPlan

# The newer `status.state` folds SKIPPED and INTERNAL_ERROR into TERMINATED.
_STATUS_STATE: dict[str, str] = {L.SKIPPED: L.TERMINATED, L.INTERNAL_ERROR: L.TERMINATED}
_TERMINATION: dict[str, tuple[str, str]] = {
    R.SUCCESS: ("SUCCESS", "SUCCESS"),
    R.SUCCESS_WITH_FAILURES: ("SUCCESS_WITH_FAILURES", "SUCCESS"),
    R.FAILED: ("RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
    R.TIMEDOUT: ("TIMEOUT", "CLIENT_ERROR"),
    R.CANCELED: ("USER_CANCELED", "SUCCESS"),
}


_ACTIVE_ORDER: list[str] = [L.RUNNING, L.PENDING, L.TERMINATING]


def _phase_state(elapsed: int, setup: int, execution: int) -> str:
    if elapsed < setup:
        return L.PENDING
    if elapsed < setup + execution:
        return L.RUNNING
    return L.TERMINATING


def _state_json(life: str, result: str | None, ended: bool) -> dict[str, Any]:
    state: dict[str, Any] = {"life_cycle_state": life, "state_message": ""}
    if ended and result is not None:
        state["result_state"] = result
        state["user_cancelled_or_timedout"] = result in (R.CANCELED, R.TIMEDOUT)
    return state


def _status_json(life: str, result: str | None, ended: bool) -> dict[str, Any]:
    """The newer (2.1+) `status` object beside `state`."""
    status: dict[str, Any] = {"state": _STATUS_STATE.get(life, life)}
    if ended:
        code, kind = _TERMINATION.get(result or "", (life, "INTERNAL_ERROR"))
        if life == L.SKIPPED:
            code, kind = "SKIPPED", "SUCCESS"
        status["termination_details"] = {"code": code, "type": kind, "message": ""}
    return status


def _waiting_hold(run: SimRun) -> str | None:
    """The state a run is held in before its tasks may start (BLOCKED, WAITING_FOR_RETRY):
    its tasks wait in it too, unstarted."""
    return run.hold_state if run.hold_state not in ACTIVE_STATES else None


def _task_json(plan: TaskPlan, run: SimRun, now: int, ended: bool, url: str) -> dict[str, Any]:
    start = run.task_start_ms(plan)
    total = plan.total_ms
    elapsed = now - start
    pinned = plan.start_ms is not None  # a task a repair left alone: it ended before
    hold = None if pinned else _waiting_hold(run)
    started = now >= start and hold is None
    task_ended = ended or pinned or (started and elapsed >= total and run.hold_state is None)
    body: dict[str, Any] = {
        "run_id": plan.run_id,
        "task_key": plan.task_key,
        "attempt_number": run.attempt_number,
        "start_time": start if started else 0,
        "end_time": start + total if task_ended else 0,
        "setup_duration": plan.setup_ms if elapsed >= plan.setup_ms and started else 0,
        "execution_duration": plan.execution_ms if task_ended else 0,
        "cleanup_duration": plan.cleanup_ms if task_ended else 0,
        "run_page_url": f"{url}/run/{plan.run_id}",
    }
    if task_ended:
        body["state"] = {"life_cycle_state": L.TERMINATED, "result_state": plan.result}
    elif hold is not None:
        body["state"] = {"life_cycle_state": hold}
    elif now < start:
        body["state"] = {"life_cycle_state": L.QUEUED if run.queue_ms else L.PENDING}
    else:
        body["state"] = {
            "life_cycle_state": _phase_state(elapsed, plan.setup_ms, plan.execution_ms)
        }
    return body


def run_json(
    run: SimRun,
    *,
    now: int,
    version: str,
    base_url: str,
    workspace_id: int,
    with_tasks: bool,
    with_history: bool = False,
) -> dict[str, Any]:
    """The run as runs/get and runs/list show it at `now`; `with_history` adds the
    repair_history of runs/get?include_history=true."""
    end = run.end_ms
    ended = end is not None and end <= now
    elapsed = now - run.plan_start_ms  # the current plan: the run, or its latest repair
    work = elapsed - run.queue_ms
    url = f"{base_url}/?o={workspace_id}#job/{run.job_id}"
    if run.hold_state is not None:
        life = run.hold_state
    elif ended:
        life = run.end_state
    elif elapsed < run.queue_ms:
        life = L.QUEUED
    elif run.tasks:
        life = min(
            (
                _phase_state(now - run.task_start_ms(t), t.setup_ms, t.execution_ms)
                for t in run.tasks
                if now - run.task_start_ms(t) < t.total_ms
            ),
            key=_ACTIVE_ORDER.index,
            default=L.TERMINATING,
        )
    elif (attempt := _attempt(run, work))[2]:
        life = L.RUNNING  # the job run waits while its task waits for a retry
    else:
        life = _phase_state(attempt[1], run.setup_ms, run.execution_ms)
    state = _state_json(life, run.result, ended)
    multitask = bool(run.tasks)
    body: dict[str, Any] = {
        "job_id": run.job_id,
        "run_id": run.run_id,
        "run_name": run.run_name,
        "creator_user_name": "someone@example.com",
        "number_in_job": run.number_in_job,
        "original_attempt_run_id": run.original_attempt_run_id,
        "attempt_number": run.attempt_number,
        "state": state,
        "start_time": run.start_ms,
        "end_time": end if ended else 0,
        "queue_duration": min(max(elapsed, 0), run.queue_ms),
        "setup_duration": 0
        if multitask or life == L.QUEUED or _attempt(run, work)[1] < run.setup_ms
        else run.setup_ms,
        "execution_duration": run.execution_ms if ended and not multitask else 0,
        "cleanup_duration": run.cleanup_ms if ended and not multitask else 0,
        "trigger": run.trigger,
        "run_type": run.run_type,
        "run_page_url": f"{url}/run/{run.run_id}",
        "cluster_instance": {"cluster_id": f"0101-000000-sim{run.job_id:04d}"},
    }
    if ended:
        body["run_duration"] = run.run_duration_ms
    if version != "2.0":
        body["status"] = _status_json(life, run.result, ended)
    reason = run.current_queue_reason if life == L.QUEUED else None
    if reason is not None and version == "2.1":
        state["queue_reason"] = reason[1]
    elif reason is not None and version != "2.0":
        body["status"]["queue_details"] = {"code": reason[0], "message": reason[1]}
    if with_tasks:
        body["tasks"] = (
            [_task_json(p, run, now, ended, url) for p in run.tasks]
            if run.tasks
            else [_single_task_json(run, now, ended, url)]
        )
    if with_history:
        live = Segment(
            repair_id=run.repair_id,
            start_ms=run.plan_start_ms,
            end_ms=body["end_time"],
            end_state=life,
            result=run.result if ended else None,
            duration_ms=0,
            task_run_ids=tuple(run.task_run_ids),
        )
        body["repair_history"] = [_history_item(s, version, ended=True) for s in run.history] + [
            _history_item(live, version, ended)
        ]
    return body


def _history_item(segment: Segment, version: str, ended: bool) -> dict[str, Any]:
    """One item of repair_history: the original run, or a repair with its id."""
    item: dict[str, Any] = {"type": "ORIGINAL" if segment.repair_id is None else "REPAIR"}
    if segment.repair_id is not None:
        item["id"] = segment.repair_id
    item |= {
        "start_time": segment.start_ms,
        "end_time": segment.end_ms,
        "state": _state_json(segment.end_state, segment.result, ended),
        "task_run_ids": list(segment.task_run_ids),
    }
    if version != "2.0":
        item["status"] = _status_json(segment.end_state, segment.result, ended)
    return item


def _attempt(run: SimRun, work: int) -> tuple[int, int, bool]:
    """(attempt number, ms into that attempt, waiting for the next attempt) of a
    single-task run `work` ms after its queue."""
    if not run.failed_attempts:
        return 0, work, False
    cycle = run.attempt_ms + run.retry_interval_ms
    attempt = min(run.failed_attempts, max(0, work) // cycle)
    offset = work - attempt * cycle
    return attempt, offset, attempt < run.failed_attempts and offset >= run.attempt_ms


def _single_task_json(run: SimRun, now: int, ended: bool, url: str) -> dict[str, Any]:
    """The one task of a single-task run, as 2.1+ show it; with in-run retries, its
    latest attempt (each attempt is a task run of its own)."""
    started = run.plan_start_ms + run.queue_ms
    attempt, offset, waiting = _attempt(run, now - started)
    task_start = started + attempt * (run.attempt_ms + run.retry_interval_ms)
    hold = _waiting_hold(run)
    begun = now >= started and hold is None
    body: dict[str, Any] = {
        "run_id": run.task_run_ids[0] if attempt == 0 else run.run_id * 100 + attempt,
        "task_key": "main",
        "attempt_number": attempt,
        "start_time": task_start if begun else 0,
        "end_time": task_start + run.attempt_ms if ended else 0,
        "setup_duration": run.setup_ms if begun and offset >= run.setup_ms else 0,
        "execution_duration": run.execution_ms if ended else 0,
        "cleanup_duration": run.cleanup_ms if ended else 0,
        "run_page_url": f"{url}/run/{run.run_id}",
    }
    if ended:
        life, result = run.end_state, run.result
    elif hold is not None:
        life, result = hold, None
    elif now < started:
        life, result = (L.QUEUED if run.queue_ms else L.PENDING), None
    elif waiting:
        life, result = L.WAITING_FOR_RETRY, None
    else:
        life, result = _phase_state(offset, run.setup_ms, run.execution_ms), None
    body["state"] = {"life_cycle_state": life} | ({"result_state": result} if result else {})
    return body


# Settings that belong to the task in the multi-task format of API 2.1 and later.
_TASK_LEVEL = (
    "notebook_task",
    "max_retries",
    "min_retry_interval_millis",
    "retry_on_timeout",
    "timeout_seconds",
)


# Settings that API 2.0 does not know: continuous jobs and triggers came with 2.1.
_NEWER_SETTINGS = ("continuous", "trigger")


def job_json(job: SimJob, version: str) -> dict[str, Any]:
    """2.0 shows a single-task job flat (and has no continuous or trigger settings); 2.1+
    always in multi-task format, where retry settings live on each task."""
    settings = dict(job.settings)
    if version == "2.0":
        for key in _NEWER_SETTINGS:
            settings.pop(key, None)
    else:
        moved = {key: settings.pop(key) for key in _TASK_LEVEL if key in settings}
        tasks = settings.get("tasks") or [{"task_key": "main"}]
        settings["tasks"] = [moved | task for task in tasks]
    return {
        "job_id": job.job_id,
        "creator_user_name": job.creator_user_name,
        "run_as_user_name": job.creator_user_name,
        "settings": settings,
        "created_time": job.created_time,
    }


def poisoned(body: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`body` with poisoned top-level fields laid over it, as the very last step so that
    no later shaping trips over them; an object under "settings" merges into settings."""
    if not overrides:
        return body
    merged = body | overrides
    nested, settings = overrides.get("settings"), body.get("settings")
    if isinstance(nested, dict) and isinstance(settings, dict):
        merged["settings"] = settings | nested
    return merged
