"""Webhook bodies: our versioned `watcher` payload, and the body Databricks' own webhook
notification destinations send (`databricks`), for receivers built for those.

The `watcher` payload of an event carries its incident (`incident`: null or `{id, key, kind,
state, opened_at, count, resolved_at, cause}`), the job's failing streak (`streak`: null or
`{consecutive_failures, last_success_at}`) and `repeat` (0, or N for the Nth reminder). A
digest is `{"version", "type": "digest", "id", "group", "count", "events": [...]}` with
every member's payload. Databricks has neither incidents nor digests: its format sends
nothing for `job_recovered`, `incident_resolved` and `run_stuck`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from watcher.config import WorkspaceConfig
from watcher.databricks.models import Run, RunTask
from watcher.events import PAYLOAD_VERSION, Event, EventType, IncidentRef, Streak
from watcher.notify.text import iso, ms_iso, ms_seconds

DATABRICKS_EVENT_TYPES: dict[EventType, str] = {
    EventType.RUN_STARTED: "jobs.on_start",
    EventType.RUN_SUCCEEDED: "jobs.on_success",
    # Databricks counts canceled and skipped runs as unsuccessful (its no_alert_for_*
    # settings exist to silence exactly those on_failure notifications).
    EventType.RUN_FAILED: "jobs.on_failure",
    EventType.RUN_CANCELED: "jobs.on_failure",
    EventType.RUN_SKIPPED: "jobs.on_failure",
    EventType.RUN_DURATION_EXCEEDED: "jobs.on_duration_warning_threshold_exceeded",
    # No run_stuck: Databricks notifies of no run waiting to start.
}

_AZURE_HOST = re.compile(r"^adb-(\d+)\.\d+\.")
_GCP_HOST = re.compile(r"^(\d+)\.\d+\.gcp\.databricks\.com$")


def _task(task: RunTask) -> dict[str, Any]:
    return {
        "task_key": task.task_key,
        "run_id": task.run_id,
        "life_cycle_state": task.state.life_cycle_state if task.state else None,
        "result_state": task.state.result_state if task.state else None,
        "state_message": task.state.state_message if task.state else None,
        "attempt_number": task.attempt_number,
        "start_time": ms_iso(task.start_time),
        "end_time": ms_iso(task.end_time),
        "duration_seconds": ms_seconds(task.run_duration)
        or ms_seconds(
            sum(
                d or 0
                for d in (task.setup_duration, task.execution_duration, task.cleanup_duration)
            )
        ),
        "run_page_url": task.run_page_url,
    }


def _run(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "run_name": run.run_name,
        "run_page_url": run.run_page_url,
        "number_in_job": run.number_in_job,
        "original_attempt_run_id": run.original_attempt_run_id,
        "attempt_number": run.attempt_number,
        "trigger": run.trigger,
        "run_type": run.run_type,
        "state": {
            "life_cycle_state": run.state.life_cycle_state,
            "result_state": run.state.result_state,
            "state_message": run.state.state_message,
            "user_cancelled_or_timedout": run.state.user_cancelled_or_timedout,
        },
        "start_time": ms_iso(run.start_time),
        "end_time": ms_iso(run.end_time),
        "durations": {
            "queue_seconds": ms_seconds(run.queue_duration),
            "setup_seconds": ms_seconds(run.setup_duration),
            "execution_seconds": ms_seconds(run.execution_duration),
            "cleanup_seconds": ms_seconds(run.cleanup_duration),
            "run_seconds": ms_seconds(run.run_duration),
            "total_seconds": ms_seconds(run.duration_ms),
        },
        "tasks": [_task(task) for task in run.tasks],
    }


def watcher_payload(event: Event) -> dict[str, Any]:
    """Our payload, version `PAYLOAD_VERSION`: fields are only ever added within a version."""
    rule = event.rule
    return {
        "version": PAYLOAD_VERSION,
        "id": event.id,
        "type": str(event.type),
        "occurred_at": iso(event.occurred_at),
        "workspace": event.workspace,
        "test": event.test,
        "backfill": event.backfill,
        "job": {"job_id": event.job.job_id, "name": event.job.name, "tags": dict(event.job.tags)},
        "run": _run(event.run),
        "attempt_number": event.attempt_number,
        "repair": event.repair,
        "raw_state": event.raw_state,
        "detail": event.detail,
        "rule": None
        if rule is None
        else {
            "name": rule.name,
            "metric": rule.metric,
            "op": rule.op,
            "value": rule.value,
            "source": rule.source,
            "task_key": rule.task_key,
        },
        "observed_seconds": event.observed_seconds,
        "expected_at": iso(event.expected_at) if event.expected_at else None,
        "incident": _incident(event.incident),
        "streak": _streak(event.streak),
        "repeat": event.repeat,
    }


def _incident(incident: IncidentRef | None) -> dict[str, Any] | None:
    if incident is None:
        return None
    return {
        "id": incident.id,
        "key": incident.key,
        "kind": incident.kind,
        "state": incident.state,
        "opened_at": iso(incident.opened_at),
        "count": incident.count,
        "resolved_at": iso(incident.resolved_at) if incident.resolved_at else None,
        "cause": incident.cause,
    }


def _streak(streak: Streak | None) -> dict[str, Any] | None:
    if streak is None:
        return None
    last = streak.last_success_at
    return {
        "consecutive_failures": streak.consecutive_failures,
        "last_success_at": iso(last) if last else None,
    }


def digest_payload(
    digest_id: str, group: Mapping[str, str], events: Sequence[Event]
) -> dict[str, Any]:
    """A digest in our payload's version: the group's values and every member, oldest
    first (`id` is the digest id, also sent as `webhook-id`)."""
    return {
        "version": PAYLOAD_VERSION,
        "type": "digest",
        "id": digest_id,
        "group": dict(group),
        "count": len(events),
        "events": [watcher_payload(event) for event in events],
    }


def workspace_id_from_host(host: str) -> str | None:
    """The numeric workspace id embedded in Azure (`adb-<id>.<n>.azuredatabricks.net`) and
    GCP (`<id>.<n>.gcp.databricks.com`) hosts; AWS hosts carry none."""
    hostname = urlsplit(host if "//" in host else f"//{host}").hostname or ""
    match = _AZURE_HOST.match(hostname) or _GCP_HOST.match(hostname)
    return match.group(1) if match else None


def workspace_ids(workspaces: Iterable[WorkspaceConfig]) -> dict[str, str]:
    """Workspace name -> the id in its host, for the workspaces whose host carries one."""
    return {w.name: found for w in workspaces if (found := workspace_id_from_host(str(w.host)))}


def workspace_id(event: Event, known: Mapping[str, str]) -> str:
    """The workspace id Databricks would send: the `o=` of the run page URL, else the id in
    the configured host, else the workspace's configured name."""
    url = event.run.run_page_url
    if url:
        found = parse_qs(urlsplit(url).query).get("o")
        if found and found[0].isdigit():
            return found[0]
    return known.get(event.workspace, event.workspace)


def databricks_payload(event: Event, *, workspace: str) -> dict[str, Any] | None:
    """The body of Databricks' webhook notifications (ids as strings, as Databricks sends
    them); None for events Databricks has no notification for (`job_recovered`,
    `incident_resolved`, `run_stuck`, the unreadables)."""
    event_type = DATABRICKS_EVENT_TYPES.get(event.type)
    if event_type is None:
        return None
    return {
        "event_type": event_type,
        "workspace_id": workspace,
        "run": {"run_id": str(event.run.run_id)},
        "job": {
            "job_id": "" if event.job.job_id is None else str(event.job.job_id),
            "name": event.job.name or "",
        },
    }
