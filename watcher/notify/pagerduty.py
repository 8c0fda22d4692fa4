"""PagerDuty Events API v2: trigger an incident on a failure, a duration breach or a stuck
run, resolve it when the watcher's incident ends.

The dedup_key is the key of the watcher's incident the event belongs to (`event.incident`:
`<workspace>/job/<id>/failed`, `<workspace>/job/<id>/duration/<rule>`,
`<workspace>/job/<id>/stuck`, ...), so
repeated failures of a job update one PagerDuty incident instead of paging again, a
reminder (`repeat` > 0) triggers the same incident again, retries of one delivery are
idempotent, and the event that resolves the watcher's incident (`job_recovered`,
`incident_resolved`: `incident.state == "resolved"`) resolves exactly that one. An event
without an incident (from before incidents, or a recovery whose incident an operator
already resolved) uses the same key computed from the event (`dedup_key`), a recovery
resolving the job's failure key as it always did. Test alerts use `watcher-test/<id>`.
"""

from __future__ import annotations

import json
from typing import Any

from watcher.clock import Clock
from watcher.config.channels import PagerDutyChannelConfig
from watcher.events import Event, EventType
from watcher.incidents import OPENS, incident_key
from watcher.notify.base import Digest, Result
from watcher.notify.http import HttpChannel
from watcher.notify.templates import context
from watcher.notify.text import iso, one_line, truncate

SUMMARY_LIMIT = 1024
_FIELD_LIMIT = 255
_DETAILS = (
    "event_id",
    "type",
    "workspace",
    "job_id",
    "job_name",
    "run_id",
    "attempt_number",
    "life_cycle_state",
    "result_state",
    "state_message",
    "duration",
    "rule",
    "observed",
    "run_page_url",
    "test",
    "incident",
    "streak",
    "repeat",
)
_WARNINGS = (EventType.RUN_DURATION_EXCEEDED, EventType.RUN_STUCK)
"""Event types that trigger with `duration_severity`: a run taking long, not a failure."""


def dedup_key(event: Event) -> str:
    """The incident an event belongs to (see the module docstring); for an event without
    one (a recovery of a failure paged before incidents existed), the key its incident
    would have."""
    if event.incident is not None:
        return event.incident.key
    if event.test:
        return f"watcher-test/{event.id}"
    return incident_key(event, OPENS.get(event.type, "failure"))


def resolves(event: Event) -> bool:
    """Whether `event` ends its incident: a resolved `event.incident`, or a recovery
    without one (it resolves the job's failure key, as before incidents)."""
    if event.incident is not None:
        return event.incident.state == "resolved"
    return event.type == EventType.JOB_RECOVERED and not event.test


def pagerduty_accepts(status: int, body: str) -> str | None:
    """The Events API v2 answers 202 with `{"status": "success", ...}`: a 2xx without it
    (a proxy's page, an empty body) is not an acceptance."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        answer = None
    if isinstance(answer, dict) and answer.get("status") == "success":
        return None
    return 'PagerDuty answers {"status": "success"}'


class PagerDutyChannel(HttpChannel[PagerDutyChannelConfig]):
    accepts = staticmethod(pagerduty_accepts)
    skipped = "nothing to send: {type} does not page"

    def __init__(self, name: str, config: PagerDutyChannelConfig, *, clock: Clock) -> None:
        key = config.routing_key.get_secret_value()
        super().__init__(name, config, url=str(config.url), clock=clock, secrets=[key])
        self._summary = self.template("summary.txt.j2", flavour="text", field="summary_template")

    def payload(self, event: Event) -> dict[str, Any] | None:
        """The Events API v2 body; None for event types this channel does not page on."""
        key = self._config.routing_key.get_secret_value()
        if resolves(event):
            return {"routing_key": key, "event_action": "resolve", "dedup_key": dedup_key(event)}
        if event.type == EventType.INCIDENT_RESOLVED:
            return None  # without a resolved incident there is nothing to resolve
        if event.type not in self._config.trigger_on and not event.test:
            return None
        return self._trigger(event, key)

    def _trigger(self, event: Event, routing_key: str) -> dict[str, Any]:
        values = context(event)
        severity = (
            self._config.duration_severity if event.type in _WARNINGS else self._config.severity
        )
        body: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key(event),
            "client": "databricks run watcher",
            "payload": {
                "summary": truncate(one_line(self._summary.render(event)), SUMMARY_LIMIT),
                "source": truncate(values["workspace"], _FIELD_LIMIT),
                "severity": severity,
                "timestamp": iso(event.occurred_at),
                "component": truncate(values["job_name"], _FIELD_LIMIT),
                "group": truncate(values["workspace"], _FIELD_LIMIT),
                "class": str(event.type),
                "custom_details": {name: values[name] for name in _DETAILS},
            },
        }
        if values["stuck"] is not None:
            # The state, the time in it and the queue reason (`stuck` of the templates).
            body["payload"]["custom_details"]["stuck"] = values["stuck"]
        if values["run_page_url"]:
            body["links"] = [{"href": values["run_page_url"], "text": "Databricks run"}]
            body["client_url"] = values["run_page_url"]
        return body

    async def send_digest(self, digest: Digest) -> Result:
        """Each member on its own: PagerDuty has no digests (one Events API event per
        incident change) and is never sent one by the router; this is the fallback."""
        return await self.send_each(digest)
