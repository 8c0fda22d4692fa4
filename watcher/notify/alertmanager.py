"""Prometheus Alertmanager: alerts pushed to POST /api/v2/alerts.

An alert's identity is its label set, stable per job (`DatabricksJobFailed`), per job and
rule (`DatabricksRunDurationExceeded`), per unreadable run (`DatabricksWatcherUnreadable`)
and per job for stuck runs (`DatabricksRunStuck`: a backlog is one alert), the same for every
event of one watcher incident, so re-sending is idempotent.

- Firing: `startsAt` is when the incident opened (`event.incident.opened_at`, else the
  event's time), `endsAt` = send time + `resolve_after`. The router re-posts an open
  incident's latest alert every `resend_interval` (its reminders), so an alert stays
  active while the incident is open and expires by itself if the watcher stops sending;
  `resolve_after` must be at least twice `resend_interval` for it not to lapse between
  two posts.
- Resolved: the event that resolves the incident (`job_recovered`, `incident_resolved`)
  sends the same labels with `startsAt` = the opening time and `endsAt` = the resolve
  time, at least a minute in the past (an `endsAt` in Alertmanager's future would not
  resolve), but never before `startsAt`. A recovery without an incident resolves the job's failure
  alert, as before incidents.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from watcher.clock import Clock
from watcher.config.channels import AlertmanagerChannelConfig
from watcher.events import Event, EventType, IncidentKind
from watcher.incidents import OPENS
from watcher.notify.base import Digest, Result
from watcher.notify.http import HttpChannel
from watcher.notify.pagerduty import resolves
from watcher.notify.templates import context
from watcher.notify.text import iso, one_line, truncate

_ANNOTATION_LIMIT = 4096
RESOLVE_SKEW = timedelta(minutes=1)
_ALERTNAMES: dict[str, str] = {
    "failure": "DatabricksJobFailed",
    "duration": "DatabricksRunDurationExceeded",
    "unreadable": "DatabricksWatcherUnreadable",
    "stuck": "DatabricksRunStuck",
    "missed": "DatabricksJobRunMissed",
    "not_running": "DatabricksJobNotRunning",
    "stale": "DatabricksJobStale",
}
_WARNINGS = ("duration", "stuck")
"""Kinds labelled with `duration_severity`: a run taking long, not a failure."""
_UNREADABLE_RUN = "/unreadable/run/"
"""Unreadable items are an alert per run: where their incident's key names it."""


def alertmanager_accepts(status: int, body: str) -> str | None:
    """POST /api/v2/alerts answers 200 with an empty body (compatible servers may send
    JSON): a 2xx with any other body, such as a proxy's HTML page, is not an acceptance."""
    if not body.strip():
        return None
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return "Alertmanager answers an empty or JSON body"
    return None


def kind(event: Event) -> IncidentKind:
    """What the alert is about: the incident's kind, else the event's."""
    if event.incident is not None:
        return event.incident.kind
    return OPENS.get(event.type, "failure")


def _rule_name(event: Event) -> str | None:
    # An `incident_resolved` may come without the rule: its key ends with the rule name.
    if event.rule is not None:
        return event.rule.name
    if event.incident is not None and "/duration/" in event.incident.key:
        return event.incident.key.partition("/duration/")[2]
    return None


def _unreadable_run(event: Event) -> str:
    # The run the incident is about (its key ends with it), else the event's.
    if event.incident is not None and _UNREADABLE_RUN in event.incident.key:
        return event.incident.key.rpartition(_UNREADABLE_RUN)[2]
    return str(event.run.run_id)


class AlertmanagerChannel(HttpChannel[AlertmanagerChannelConfig]):
    accepts = staticmethod(alertmanager_accepts)
    skipped = "nothing to send: {type} raises no alert"

    def __init__(self, name: str, config: AlertmanagerChannelConfig, *, clock: Clock) -> None:
        url = str(config.url).rstrip("/") + "/api/v2/alerts"
        super().__init__(name, config, url=url, clock=clock, ca_bundle=config.ca_bundle)
        self._summary = self.template("summary.txt.j2", flavour="text", field="summary_template")

    def payload(self, event: Event) -> list[dict[str, Any]] | None:
        alert = self.alert(event)
        return None if alert is None else [alert]

    def labels(self, event: Event) -> dict[str, str]:
        about = kind(event)
        alertname = _ALERTNAMES[about]
        severity = self._config.duration_severity if about in _WARNINGS else self._config.severity
        if event.test:
            alertname, severity = "DatabricksWatcherTest", "none"
        labels = {**self._config.labels, "alertname": alertname, "severity": severity}
        labels["workspace"] = event.workspace
        if event.job.job_id is not None:
            labels["job_id"] = str(event.job.job_id)
        else:
            labels["run_id"] = str(event.run.run_id)
        rule = _rule_name(event)
        if about == "duration" and rule is not None:
            labels["rule"] = truncate(one_line(rule), 200)
        if about == "unreadable":
            labels["run_id"] = _unreadable_run(event)
        if event.test:
            # The trigger and the resolve of one test share the incident.
            labels["event_id"] = event.incident.id if event.incident else event.id
        return labels

    def alert(self, event: Event) -> dict[str, Any] | None:
        """The alert to post; None for event types this channel does not alert on."""
        resolving = resolves(event)
        if not resolving and event.type == EventType.INCIDENT_RESOLVED:
            return None
        if not resolving and event.type not in self._config.trigger_on and not event.test:
            return None
        starts, ends = self.times(event, resolving=resolving)
        values = context(event)
        alert: dict[str, Any] = {
            "labels": self.labels(event),
            "annotations": self.annotations(event, values),
            "startsAt": iso(starts),
            "endsAt": iso(ends),
        }
        if values["run_page_url"]:
            alert["generatorURL"] = values["run_page_url"]
        return alert

    def times(self, event: Event, *, resolving: bool) -> tuple[datetime, datetime]:
        """startsAt and endsAt (see the module docstring)."""
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        incident = event.incident
        opened = incident.opened_at if incident is not None else event.occurred_at
        if not resolving:
            return opened, max(event.occurred_at, now) + timedelta(
                seconds=self._config.resolve_after
            )
        resolved = (incident.resolved_at if incident else None) or event.occurred_at
        # An endsAt in Alertmanager's future does not resolve (the firing endsAt wins),
        # so stay clear of clock skew between the workspace, us and Alertmanager...
        ends = min(resolved, now - RESOLVE_SKEW)
        if incident is None:
            return ends, ends  # a recovery of a failure paged before incidents: start unknown
        # ...but never before the incident opened: Alertmanager would take an alert that
        # ended before the firing one started for a new alert, and replace the firing one
        # with it, start time and all. An incident younger than the skew ends as it opened.
        ends = max(opened, ends)
        return opened, ends

    def annotations(self, event: Event, values: dict[str, Any]) -> dict[str, str]:
        annotations = {
            "summary": truncate(one_line(self._summary.render(event)), _ANNOTATION_LIMIT),
            "job_name": values["job_name"],
            "event_id": event.id,
            "event_type": str(event.type),
            "run_id": str(event.run.run_id),
        }
        for key in ("result_state", "state_message", "run_page_url", "incident_line"):
            if values[key]:
                annotations[key] = truncate(str(values[key]), _ANNOTATION_LIMIT)
        stuck = values["stuck"]
        if stuck is not None:
            annotations["stuck_state"] = stuck["state"] or ""
            annotations["stuck_for"] = stuck["observed"]
            if stuck["reason"]:
                annotations["queue_reason"] = stuck["reason"]
        if event.incident is not None:
            annotations["incident_id"] = event.incident.id
            annotations["incident_count"] = str(event.incident.count)
        return annotations

    async def send_digest(self, digest: Digest) -> Result:
        """Each member on its own: Alertmanager groups alerts itself (its route's
        group_by) and is never sent a digest by the router; this is the fallback."""
        return await self.send_each(digest)
