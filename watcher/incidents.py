"""Incidents: what on-call tools page about. A job is failing until it recovers; a job's
runs are over a duration rule until every one of them has ended; an unreadable item stays
a problem until someone resolves it. Pure: the cycle plan feeds it the events it decided
(and the runs that ended), in order, and commits what it changed with those events.

Semantics: docs/alerts.md, "Incidents".
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watcher.domain import Incident
from watcher.events import Event, EventType, IncidentKind, IncidentRef, ResolveCause

Resolver = Callable[[Incident, ResolveCause], Event]
"""(incident, cause) -> the `incident_resolved` event that resolves it."""

_NAMESPACE = uuid.UUID("0b7f3c52-5d0e-4a4e-9d55-3f1f0b1e7c21")
KEY_LIMIT = 255
"""PagerDuty's dedup_key limit: longer keys (long task keys in rule names) are hashed."""

OPENS: dict[EventType, IncidentKind] = {
    # The kind of incident each event type opens (a recovery resolves, it opens nothing).
    EventType.RUN_FAILED: "failure",
    EventType.RUN_DURATION_EXCEEDED: "duration",
    EventType.RUN_UNREADABLE: "unreadable",
    EventType.JOB_UNREADABLE: "unreadable",
    EventType.RUN_STUCK: "stuck",
    EventType.RUN_MISSED: "missed",
    EventType.JOB_NOT_RUNNING: "not_running",
    EventType.JOB_STALE: "stale",
}
_PER_RUN: frozenset[IncidentKind] = frozenset({"duration", "stuck"})
"""Kinds that track the runs keeping them open."""


def incident_key(event: Event, kind: IncidentKind) -> str:
    """`<workspace>/job/<id>/failed`, `.../duration/<rule>`, `.../unreadable/run/<id>`,
    `.../stuck`, `.../missed`, `.../not_running`, `.../stale` (`run/<id>` for a run without
    a job): one open incident per key. A job's queue backlog is one stuck incident."""
    job_id = event.job.job_id
    if kind == "duration":
        what = f"duration/{event.rule.name if event.rule else 'default'}"
    elif kind == "unreadable":
        what = f"unreadable/run/{event.run.run_id}"
    elif kind in ("stuck", "missed", "not_running", "stale"):
        what = kind
    else:
        what = "failed"
    return subject_key(event.workspace, job_id, event.run.run_id, what)


def subject_key(workspace: str, job_id: int | None, run_id: int, what: str) -> str:
    """`<workspace>/job/<id>/<what>` (`run/<id>` without a job), hashed past the limit."""
    subject = f"job/{job_id}" if job_id is not None else f"run/{run_id}"
    key = f"{workspace}/{subject}/{what}"
    if len(key) > KEY_LIMIT:
        key = key[:190] + "#" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return key


def derived_id(*parts: str) -> str:
    """A UUID (version 5) of `parts`: stable across restarts and replays of a cycle."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def resolved_event_id(incident: Incident) -> str:
    """An incident is resolved once: its `incident_resolved` event has one id."""
    return derived_id(incident.id, "resolved")


def _moment(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def incident_ref(incident: Incident) -> IncidentRef:
    """How events carry an incident."""
    return IncidentRef(
        id=incident.id,
        key=incident.key,
        kind=incident.kind,
        state="open" if incident.is_open else "resolved",
        opened_at=datetime.fromtimestamp(incident.opened_at_ms / 1000, tz=UTC),
        count=incident.count,
        resolved_at=_moment(incident.resolved_at_ms),
        cause=incident.cause,
    )


def resolve(incident: Incident, event: Event, cause: str) -> Incident:
    """The incident resolved by `event` (at the event's time)."""
    return incident.model_copy(
        update={
            "resolved_at_ms": max(_ms(event.occurred_at), incident.opened_at_ms),
            "resolved_by": event.id,
            "cause": cause,
            "last_event_id": event.id,
            "runs": frozenset(),
        }
    )


def resolution(incident: Incident, last: Event, *, at: datetime, cause: ResolveCause) -> Event:
    """The `incident_resolved` event of `incident`, about the job and run of `last` (the
    run that ended last, or the incident's latest event), at `at`. Its `incident` is the
    resolved incident."""
    event = last.model_copy(
        update={
            "id": resolved_event_id(incident),
            "type": EventType.INCIDENT_RESOLVED,
            "occurred_at": at,
            "rule": last.rule,
            "observed_seconds": None,
            "detail": None,
            "streak": None,
            "repeat": 0,
            "backfill": False,
        }
    )
    return event.model_copy(update={"incident": incident_ref(resolve(incident, event, cause))})


@dataclass(slots=True)
class IncidentBook:
    """The open incidents of one workspace while a cycle is planned, and every incident
    the cycle changed (to commit)."""

    workspace: str
    open: dict[str, Incident]
    """key -> open incident, as of this point in the cycle."""
    changed: dict[str, Incident] = field(default_factory=dict)
    """id -> the incident as the cycle leaves it."""

    @classmethod
    def of(cls, workspace: str, incidents: Mapping[str, Incident]) -> IncidentBook:
        return cls(workspace, {k: i for k, i in incidents.items() if i.is_open})

    def record(self, event: Event) -> Event:
        """Apply one event: a failure, breach or unreadable item opens its incident (or
        counts again in the open one); a recovery resolves the job's failure incident.
        Returns the event carrying its incident as it now stands."""
        if event.test:
            return event
        if event.type is EventType.JOB_RECOVERED:
            return self._recovered(event)
        kind = OPENS.get(event.type)
        if kind is None or (kind == "failure" and event.job.job_id is None):
            # A run without a job (a one-time submit) has no later run to recover it: its
            # failure is a one-off alert, not an incident that could never resolve.
            return event
        key = incident_key(event, kind)
        existing = self.open.get(key)
        runs = frozenset({event.run.run_id}) if kind in _PER_RUN else frozenset[int]()
        if existing is None:
            incident = Incident(
                workspace=self.workspace,
                id=derived_id(key, event.id),
                key=key,
                kind=kind,
                job_id=event.job.job_id,
                rule=event.rule.name if kind == "duration" and event.rule else None,
                since_ms=_ms(event.expected_at) if event.expected_at else None,
                opened_at_ms=_ms(event.occurred_at),
                opened_by=event.id,
                last_event_id=event.id,
                runs=runs,
            )
        else:
            incident = existing.model_copy(
                update={
                    "count": existing.count + 1,
                    "last_event_id": event.id,
                    "runs": existing.runs | runs,
                }
            )
        self._put(incident)
        return event.model_copy(update={"incident": incident_ref(incident)})

    def holding(self, run_id: int) -> bool:
        """Whether the run keeps an incident open (cheap: most runs keep none)."""
        return any(run_id in i.runs for i in self.open.values() if i.runs)

    def run_ended(self, run_id: int, job_id: int | None, make_event: Resolver) -> list[Event]:
        """A run ended (or vanished): it no longer breaks any duration rule nor waits. An
        incident left with no such run is resolved by the event `make_event` builds."""
        return self._release(run_id, job_id, _PER_RUN, "run_ended", make_event)

    def run_running(self, run_id: int, job_id: int | None, make_event: Resolver) -> list[Event]:
        """A run started running: it is no longer stuck."""
        return self._release(run_id, job_id, frozenset({"stuck"}), "running", make_event)

    def _release(
        self,
        run_id: int,
        job_id: int | None,
        kinds: frozenset[IncidentKind],
        cause: ResolveCause,
        make_event: Resolver,
    ) -> list[Event]:
        events: list[Event] = []
        for incident in [i for i in self.open.values() if run_id in i.runs]:
            if incident.kind not in kinds or incident.job_id != job_id:
                continue
            remaining = incident.runs - {run_id}
            if remaining:
                self._put(incident.model_copy(update={"runs": remaining}))
                continue
            event = make_event(incident, cause)
            assert event.incident is not None
            self._put(resolve(incident, event, cause))
            events.append(event)
        return events

    def resolve_open(self, key: str, make_event: Resolver, cause: ResolveCause) -> Event:
        """Resolve the open incident `key` by the event `make_event` builds."""
        incident = self.open[key]
        event = make_event(incident, cause)
        self._put(resolve(incident, event, cause))
        return event

    def _recovered(self, event: Event) -> Event:
        key = incident_key(event, "failure")
        incident = self.open.get(key)
        if incident is None:
            return event
        resolved = resolve(incident, event, "recovered")
        self._put(resolved)
        return event.model_copy(update={"incident": incident_ref(resolved)})

    def _put(self, incident: Incident) -> None:
        self.changed[incident.id] = incident
        if incident.is_open:
            self.open[incident.key] = incident
        else:
            self.open.pop(incident.key, None)
