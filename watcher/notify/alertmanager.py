"""Prometheus Alertmanager: alerts pushed to POST /api/v2/alerts.

An alert's identity is its label set, stable per job (`DatabricksJobFailed`) and per job and
rule (`DatabricksRunDurationExceeded`), so re-sending is idempotent and `job_recovered`
resolves the failure alert by sending the same labels with `endsAt` = the recovery time
(at least a minute in the past).
Firing alerts carry `endsAt` = send time + `resolve_after`: a breach nobody resolves expires.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from watcher.clock import Clock
from watcher.config.channels import AlertmanagerChannelConfig
from watcher.events import Event, EventType
from watcher.notify.http import HttpChannel
from watcher.notify.templates import context
from watcher.notify.text import iso, one_line, truncate

_ANNOTATION_LIMIT = 4096
RESOLVE_SKEW = timedelta(minutes=1)


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
        if event.test:
            alertname, severity = "DatabricksWatcherTest", "none"
        elif event.type == EventType.RUN_DURATION_EXCEEDED:
            alertname, severity = "DatabricksRunDurationExceeded", self._config.duration_severity
        elif event.type in (EventType.RUN_UNREADABLE, EventType.JOB_UNREADABLE):
            alertname, severity = "DatabricksWatcherUnreadable", self._config.severity
        else:
            alertname, severity = "DatabricksJobFailed", self._config.severity
        labels = {**self._config.labels, "alertname": alertname, "severity": severity}
        labels["workspace"] = event.workspace
        if event.job.job_id is not None:
            labels["job_id"] = str(event.job.job_id)
        else:
            labels["run_id"] = str(event.run.run_id)
        if event.type == EventType.RUN_DURATION_EXCEEDED and event.rule is not None:
            labels["rule"] = truncate(one_line(event.rule.name), 200)
        if event.type == EventType.RUN_UNREADABLE:
            labels["run_id"] = str(event.run.run_id)
        if event.test:
            labels["event_id"] = event.id
        return labels

    def alert(self, event: Event) -> dict[str, Any] | None:
        """The alert to post; None for event types this channel does not alert on."""
        resolving = event.type == EventType.JOB_RECOVERED and not event.test
        if not resolving and event.type not in self._config.trigger_on and not event.test:
            return None
        values = context(event)
        annotations = {
            "summary": truncate(one_line(self._summary.render(event)), _ANNOTATION_LIMIT),
            "job_name": values["job_name"],
            "event_id": event.id,
            "event_type": str(event.type),
            "run_id": str(event.run.run_id),
        }
        for key in ("result_state", "state_message", "run_page_url"):
            if values[key]:
                annotations[key] = truncate(str(values[key]), _ANNOTATION_LIMIT)
        now = datetime.fromtimestamp(self._clock.time(), UTC)
        if resolving:
            # An endsAt in Alertmanager's future does not resolve (the firing endsAt wins),
            # so stay clear of clock skew between the workspace, us and Alertmanager.
            starts = ends = min(event.occurred_at, now - RESOLVE_SKEW)
        else:
            starts = event.occurred_at
            ends = max(event.occurred_at, now) + timedelta(seconds=self._config.resolve_after)
        alert: dict[str, Any] = {
            "labels": self.labels(event),
            "annotations": annotations,
            "startsAt": iso(starts),
            "endsAt": iso(ends),
        }
        if values["run_page_url"]:
            alert["generatorURL"] = values["run_page_url"]
        return alert
