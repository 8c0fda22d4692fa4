"""Alert texts from Jinja2 templates: defaults in `templates/`, overridable per channel.

Besides the event's own data, templates see its incident (`incident`, `streak`, `repeat`
and the ready-made sentence `incident_line`: "still failing (3rd failure since 02:10
UTC)", "resolved after 42m 0s", "reminder 2: ..."). Digests (several alerts as one
message) are summarised here too (`summarize`), for every channel to render alike.

Templates run in a `SandboxedEnvironment` over a prepared context of plain values; event data
is only ever *substituted*, never compiled, so a job named `{{ 7*7 }}` stays that text. Each
flavour escapes for its target: HTML autoescapes, Slack escapes `& < >`, markdown escapes its
syntax, and plain text gets single-line names (no CR/LF to inject headers or log lines).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import structlog
from jinja2 import PackageLoader, StrictUndefined, TemplateError
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import SandboxedEnvironment

from watcher.config.channels import BaseChannelConfig
from watcher.databricks.models import Run, RunState, RunTask
from watcher.events import Event, EventType, IncidentRef, JobRef, RuleRef, Streak
from watcher.notify.text import (
    hm_utc,
    human_seconds,
    iso,
    markdown_escape,
    ms_iso,
    ms_seconds,
    one_line,
    ordinal,
    plural,
    slack_escape,
    truncate,
)

log = structlog.get_logger(__name__)

Flavour = Literal["text", "html", "slack", "markdown"]

NAME_LIMIT = 200
MESSAGE_LIMIT = 2000
QUEUE_REASON_LIMIT = 500
_MAX_TAGS = 20
_MAX_TASKS = 10

_VERBS: dict[str, str] = {
    EventType.RUN_STARTED: "started",
    EventType.RUN_SUCCEEDED: "succeeded",
    EventType.RUN_FAILED: "FAILED",
    EventType.RUN_CANCELED: "was canceled",
    EventType.RUN_SKIPPED: "was skipped",
    EventType.RUN_DURATION_EXCEEDED: "is running too long",
    EventType.JOB_RECOVERED: "recovered",
    EventType.RUN_UNREADABLE: "has a run the watcher cannot read",
    EventType.JOB_UNREADABLE: "has settings the watcher cannot read",
    # Refined by `verb` from the state it is stuck in: `is stuck in QUEUED`.
    EventType.RUN_STUCK: "is stuck before running",
    EventType.RUN_MISSED: "missed a scheduled run",
    EventType.JOB_NOT_RUNNING: "is not running",
    EventType.JOB_STALE: "has not succeeded in time",
    # Refined by `verb` from the incident: who or what resolved it.
    EventType.INCIDENT_RESOLVED: "alert resolved",
}
_KIND_NOUNS = {
    "failure": "failure alert",
    "duration": "duration alert",
    "stuck": "stuck alert",
    "missed": "missed-schedule alert",
    "not_running": "not-running alert",
    "stale": "freshness alert",
}
_AGAIN = {
    ("missed", "ran"): "started a run again",
    ("not_running", "running"): "is running again",
    ("stale", "recovered"): "succeeded again",
}
"""Titles of the resolves of the checks of what Databricks never reports."""
_DETAIL_LABELS = {
    EventType.RUN_MISSED: "Detail",
    EventType.JOB_NOT_RUNNING: "Detail",
    EventType.JOB_STALE: "Detail",
}
"""How messages label an event's `detail` (what could not be read, for the others)."""
_COUNTED: dict[str, str] = {
    EventType.RUN_STARTED: "started",
    EventType.RUN_SUCCEEDED: "succeeded",
    EventType.RUN_FAILED: "FAILED",
    EventType.RUN_CANCELED: "canceled",
    EventType.RUN_SKIPPED: "skipped",
    EventType.RUN_DURATION_EXCEEDED: "running too long",
    EventType.JOB_RECOVERED: "recovered",
    EventType.RUN_UNREADABLE: "run unreadable",
    EventType.JOB_UNREADABLE: "settings unreadable",
    EventType.RUN_STUCK: "stuck",
    EventType.RUN_MISSED: "missed",
    EventType.JOB_NOT_RUNNING: "not running",
    EventType.JOB_STALE: "stale",
    EventType.INCIDENT_RESOLVED: "resolved",
}
"""How a digest headline counts members of each type: `10 FAILED, 2 running too long`."""
DIGEST_MEMBER_LIMIT = 50
"""Members a digest message lists one by one; the rest are counted (`and 150 more`)."""
DIGEST_TOP_JOBS = 5
DIGEST_NAME_LIMIT = 100


class InvalidTemplate(ValueError):
    """A configured template does not compile or does not render; names the field."""


def _finalizer(escape: Callable[[str], str] | None) -> Callable[[Any], Any]:
    def finalize(value: Any) -> Any:
        if value is None:
            return ""
        if escape is not None and isinstance(value, str) and not hasattr(value, "__html__"):
            return escape(value)
        return value

    return finalize


@functools.cache
def _environment(flavour: Flavour) -> SandboxedEnvironment:
    escape = {"slack": slack_escape, "markdown": markdown_escape}.get(flavour)
    return SandboxedEnvironment(
        loader=PackageLoader("watcher.notify", "templates"),
        autoescape=flavour == "html",
        undefined=StrictUndefined,
        finalize=_finalizer(escape),
    )


class Template:
    """A default template, optionally replaced by a configured one."""

    def __init__(self, default: str, *, flavour: Flavour, override: str | None, field: str):
        env = _environment(flavour)
        self._field = field
        self._default = env.get_template(default)
        self._override: JinjaTemplate | None = None
        if override is not None:
            try:
                self._override = env.from_string(override)
                self._override.render(context(sample_event()))
            except TemplateError as exc:
                raise InvalidTemplate(f"{field}: {exc}") from None

    def render(self, event: Event) -> str:
        values = context(event)
        if self._override is not None:
            try:
                return self._override.render(values)
            except TemplateError as exc:
                # A template mistake must not cost the alert: fall back to the default text.
                log.warning("template_failed", field=self._field, error=str(exc))
        return self._default.render(values)


_CHANNEL_FLAVOURS: dict[str, Flavour] = {"slack": "slack", "teams": "markdown"}


def template_errors(name: str, channel: BaseChannelConfig) -> list[str]:
    """Why each configured template of channel `name` does not compile, or does not render
    an event of every type, naming its field. `Template` itself checks one event and falls
    back to the default text on a failure at runtime; check-config wants none of those:
    `{{ rule.limit }}` renders a duration breach, but no failure (only breaches carry a
    rule)."""
    errors = []
    for field, source in channel:
        if not field.endswith("_template") or not isinstance(source, str):
            continue
        where = f"channels.{name}.{field}"
        # The flavour the channel renders it in (see the channel modules); it decides the
        # escaping, not whether a variable or filter exists.
        kind = getattr(channel, "type", "")
        flavour = "html" if field == "html_template" else _CHANNEL_FLAVOURS.get(kind, "text")
        try:
            compiled = _environment(flavour).from_string(source)
        except TemplateError as exc:
            errors.append(f"{where}: {exc}")
            continue
        for event in sample_events():
            try:
                compiled.render(context(event))
            except TemplateError as exc:
                errors.append(f"{where}: {exc} (rendering a {event.type} event)")
                break
    return errors


def _url(value: str | None) -> str | None:
    return value if value and value.startswith(("https://", "http://")) else None


def _name(text: str | None, limit: int = NAME_LIMIT) -> str | None:
    return None if text is None else truncate(one_line(text), limit)


def verb(event: Event) -> str:
    """What happened, after the job's name: `FAILED`, `recovered`, `is stuck in QUEUED`,
    and for a resolved incident who or what resolved it (`is no longer running too
    long`, `is no longer stuck`, `failure alert resolved by an operator`)."""
    incident = event.incident
    if event.type == EventType.RUN_STUCK:
        state = _name(event.raw_state, 40)
        return f"is stuck in {state}" if state else _VERBS[EventType.RUN_STUCK]
    if event.type != EventType.INCIDENT_RESOLVED or incident is None:
        return _VERBS.get(event.type, str(event.type))
    if incident.kind == "stuck" and incident.cause in ("running", "run_ended"):
        return "is no longer stuck"
    again = _AGAIN.get((incident.kind, incident.cause or ""))
    if again is not None:
        return again
    if incident.cause == "run_ended":
        return "is no longer running too long"
    if incident.cause == "recovered":
        return _VERBS[EventType.JOB_RECOVERED]
    noun = _KIND_NOUNS.get(incident.kind, "unreadable alert")
    return f"{noun} resolved by an operator" if incident.cause == "manual" else f"{noun} resolved"


def _subject(event: Event) -> str:
    return _name(event.job.name) or (
        f"job {event.job.job_id}" if event.job.job_id is not None else f"run {event.run.run_id}"
    )


def _suffix(event: Event) -> str:
    repair = f" repair {event.repair}" if event.repair else ""
    return f"{repair} {verb(event)}"


def title(event: Event) -> str:
    """`<job name> FAILED`, `<job name> repair 2 FAILED` and so on: the one-line headline
    of an alert."""
    return _subject(event) + _suffix(event)


def headline(event: Event, limit: int | None = None) -> str:
    """The `title`, marked `[TEST] ` for a test alert: the first line chat messages show.
    With a `limit`, a long job name is cut (with `…`) rather than the verb: a failure and
    a recovery of the same long-named job must not read the same."""
    prefix = "[TEST] " if event.test else ""
    name, suffix = _subject(event), _suffix(event)
    if limit is None:
        return prefix + name + suffix
    room = limit - len(prefix) - len(suffix)
    if room >= 8:  # else the verb alone would not fit either: cut the whole line
        name = truncate(name, room, marker="…")
    return truncate(prefix + name + suffix, limit, marker="…")


def _incident_context(event: Event) -> dict[str, Any] | None:
    incident = event.incident
    if incident is None:
        return None
    resolved = incident.resolved_at or event.occurred_at
    return {
        "id": incident.id,
        "key": _name(incident.key, 300),
        "kind": incident.kind,
        "state": incident.state,
        "count": incident.count,
        "ordinal": ordinal(incident.count),
        "opened_at": iso(incident.opened_at, timespec="seconds"),
        "opened_at_hm": hm_utc(incident.opened_at),
        "resolved_at": iso(incident.resolved_at, timespec="seconds")
        if incident.resolved_at
        else None,
        "resolved_after": _elapsed(incident.opened_at, resolved)
        if incident.state == "resolved"
        else None,
        "cause": incident.cause,
    }


def _streak_context(event: Event) -> dict[str, Any] | None:
    streak = event.streak
    if streak is None:
        return None
    last = streak.last_success_at
    return {
        "consecutive_failures": streak.consecutive_failures,
        "last_success_at": iso(last, timespec="seconds") if last else None,
        "since_success": _elapsed(last, event.occurred_at) if last else None,
    }


def _elapsed(start: datetime, end: datetime) -> str:
    return human_seconds(max((end - start).total_seconds(), 0.0))


_THINGS = {
    "failure": ("failure", "failures"),
    "duration": ("breach", "breaches"),
    "missed": ("missed trigger", "missed triggers"),
}
_STILL = {
    "failure": "still failing",
    "duration": "still running too long",
    "missed": "still missing scheduled runs",
    "not_running": "still not running",
    "stale": "still without a success",
}
_WHY = {
    "run_ended": ": every run over the limit has ended",
    "manual": " by an operator",
    "ran": ": a run started",
    "running": ": a run is active again",
    "paused": ": paused in Databricks",
}
_STUCK_WHY = {
    "running": ": the run started running",
    "run_ended": ": the run ended before it ran",
    "manual": " by an operator",
}


def incident_line(event: Event) -> str | None:
    """The sentence saying where the event stands in its incident, for chat, email,
    console and PagerDuty summaries: `still failing (3rd failure since 02:10 UTC)`,
    `resolved after 42m 0s (3 failures since 02:10 UTC)`, `reminder 2: still failing
    since 02:10 UTC`. None when there is nothing to add: no incident, or the event that
    opened it (its own time says when)."""
    incident = event.incident
    if incident is None:
        return None
    since = hm_utc(incident.opened_at, since=event.occurred_at)
    if incident.state == "resolved":
        return _resolved_line(incident, event, since)
    if incident.kind == "stuck":
        return _stuck_line(incident, event, since)
    one = _THINGS.get(incident.kind, ("time", "times"))[0]
    still = _STILL.get(incident.kind, "still unreadable")
    if incident.count > 1:
        line = f"{still} ({ordinal(incident.count)} {one} since {since})"
    elif event.repeat:
        line = f"{still} since {since}"
    else:
        return None
    return f"reminder {event.repeat}: {line}" if event.repeat else line


def _stuck_line(incident: IncidentRef, event: Event, since: str) -> str | None:
    """`still stuck (PENDING now, since 02:10 UTC)` once the run is stuck in a second
    state; `reminder 2: still stuck in QUEUED since 02:10 UTC` for a reminder."""
    state = _name(event.raw_state, 40) if event.type == EventType.RUN_STUCK else None
    if incident.count > 1:
        line = (
            f"still stuck ({state} now, since {since})" if state else f"still stuck since {since}"
        )
    elif event.repeat:
        line = f"still stuck in {state} since {since}" if state else f"still stuck since {since}"
    else:
        return None
    return f"reminder {event.repeat}: {line}" if event.repeat else line


def _resolved_line(incident: IncidentRef, event: Event, since: str) -> str:
    after = _elapsed(incident.opened_at, incident.resolved_at or event.occurred_at)
    if incident.kind == "stuck":
        # One run: how long it was stuck says it all, unless it was stuck in several states.
        why = _STUCK_WHY.get(incident.cause or "", "")
        states = f" (stuck in {incident.count} states since {since})" if incident.count > 1 else ""
        return f"resolved after {after}{why}{states}"
    why = _WHY.get(incident.cause or "", "")
    if incident.kind == "stale" and incident.cause == "recovered":
        why = ": the job succeeded"
    one, many = _THINGS.get(incident.kind, ("time", "times"))
    counted = plural(incident.count, one, many)
    if incident.kind not in _THINGS:
        counted = "seen " + counted
    return f"resolved after {after}{why} ({counted} since {since})"


def _stuck_context(event: Event) -> dict[str, Any] | None:
    """For `run_stuck`: the state, the time in it and the queue reason, as plain values."""
    if event.type != EventType.RUN_STUCK:
        return None
    return {
        "state": _name(event.raw_state, 40),
        "observed": human_seconds(event.observed_seconds),
        "seconds": event.observed_seconds,
        "reason": _name(event.detail, QUEUE_REASON_LIMIT),
    }


def context(event: Event) -> dict[str, Any]:
    """Everything templates may use, as plain, length-bounded values."""
    run = event.run
    total = run.duration_ms
    rule = event.rule
    failed_tasks = [
        {
            "task_key": _name(task.task_key),
            "result_state": task.state.result_state if task.state else None,
            "state_message": _name(task.state.state_message if task.state else None),
        }
        for task in run.tasks
        if task.state and task.state.result_state not in (None, "SUCCESS", "EXCLUDED")
    ][:_MAX_TASKS]
    return {
        "test": event.test,
        "backfill": event.backfill,
        "type": str(event.type),
        "title": title(event),
        "verb": verb(event),
        "event_id": event.id,
        "occurred_at": iso(event.occurred_at, timespec="seconds"),
        "workspace": _name(event.workspace),
        "job_id": event.job.job_id,
        "job_name": _name(event.job.name) or "(unnamed)",
        "tags": {_name(k, 100): _name(v, 100) for k, v in list(event.job.tags.items())[:_MAX_TAGS]},
        "run_id": run.run_id,
        "run_name": _name(run.run_name),
        "run_page_url": _url(run.run_page_url),
        "attempt_number": event.attempt_number or run.attempt_number or 0,
        "repair": event.repair,
        "detail": truncate(event.detail or "", MESSAGE_LIMIT) or None,
        "detail_label": _DETAIL_LABELS.get(event.type, "Unreadable"),
        "expected_at": iso(event.expected_at, timespec="seconds") if event.expected_at else None,
        "trigger": _name(run.trigger, 40),
        "run_type": _name(run.run_type, 40),
        "life_cycle_state": _name(run.state.life_cycle_state, 40),
        "result_state": _name(run.state.result_state, 40),
        "raw_state": _name(event.raw_state, 40),
        "state_message": truncate(run.state.state_message or "", MESSAGE_LIMIT) or None,
        "started_at": ms_iso(run.start_time, timespec="seconds"),
        "ended_at": ms_iso(run.end_time, timespec="seconds"),
        "duration": human_seconds(ms_seconds(total) if total else event.observed_seconds),
        "duration_seconds": ms_seconds(total),
        "queue_seconds": ms_seconds(run.queue_duration),
        "setup_seconds": ms_seconds(run.setup_duration),
        "execution_seconds": ms_seconds(run.execution_duration),
        "cleanup_seconds": ms_seconds(run.cleanup_duration),
        "rule": None
        if rule is None
        else {
            "name": _name(rule.name),
            "value": rule.value,
            "limit": human_seconds(rule.value),
            "source": rule.source,
            "task_key": _name(rule.task_key),
        },
        "observed": human_seconds(event.observed_seconds),
        "observed_seconds": event.observed_seconds,
        "failed_tasks": failed_tasks,
        "stuck": _stuck_context(event),
        "incident": _incident_context(event),
        "streak": _streak_context(event),
        "repeat": event.repeat,
        "incident_line": incident_line(event),
        "event": event.model_dump(mode="json"),
    }


def sample_event() -> Event:
    """A representative event to check configured templates against at start-up."""
    return Event(
        id="00000000-0000-5000-8000-000000000000",
        type=EventType.RUN_DURATION_EXCEEDED,
        workspace="example",
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        job=JobRef(job_id=1, name="example-job", tags={"team": "data"}),
        run=Run(
            run_id=1,
            job_id=1,
            state=RunState(life_cycle_state="RUNNING"),
            start_time=1_704_067_200_000,
            run_page_url="https://example.cloud.databricks.com/?o=1#job/1/run/1",
        ),
        rule=RuleRef(name="job", value=1800, source="job"),
        observed_seconds=3600.0,
    )


SAMPLE_QUEUE_REASON = "ACTIVE_RUNS_LIMIT_REACHED: The job has reached its maximum concurrent runs"


@functools.cache
def sample_events() -> tuple[Event, ...]:
    """An event of every type, shaped as the tracker makes them (a rule only on duration
    breaches, failed tasks on failures, a detail on unreadables, the state, time and queue
    reason of a stuck run, an incident and a streak where the cycle sets them), then the
    other shapes a type comes in (a reminder, a recovery that resolves nothing, an
    operator's resolve, a run stuck in a second state without a queue reason, a stuck run
    that started running), to render configured templates against: a template that
    renders all of them renders any event."""
    base = sample_event()
    ended = base.run.model_copy(update={"end_time": 1_704_070_800_000})
    failed = ended.model_copy(
        update={
            "state": RunState(
                life_cycle_state="TERMINATED", result_state="FAILED", state_message="boom"
            ),
            "tasks": [
                RunTask(
                    task_key="load",
                    state=RunState(life_cycle_state="TERMINATED", result_state="FAILED"),
                )
            ],
        }
    )
    succeeded = ended.model_copy(
        update={"state": RunState(life_cycle_state="TERMINATED", result_state="SUCCESS")}
    )
    opened = base.occurred_at - timedelta(hours=2)
    failing = IncidentRef(
        id="00000000-0000-5000-8000-000000000001",
        key="example/job/1/failed",
        kind="failure",
        state="open",
        opened_at=opened,
        count=3,
    )
    over = failing.model_copy(
        update={
            "id": "00000000-0000-5000-8000-000000000002",
            "key": "example/job/1/duration/job",
            "kind": "duration",
            "count": 1,
        }
    )
    unreadable = failing.model_copy(
        update={"kind": "unreadable", "count": 1, "key": "example/job/1/unreadable/run/1"}
    )
    stuck = failing.model_copy(update={"kind": "stuck", "count": 1, "key": "example/job/1/stuck"})
    queued = base.run.model_copy(
        update={"state": RunState(life_cycle_state="QUEUED", queue_reason=SAMPLE_QUEUE_REASON)}
    )
    resolved = {"state": "resolved", "resolved_at": base.occurred_at}
    streak = Streak(consecutive_failures=3, last_success_at=opened - timedelta(days=1))
    plain = {"rule": None, "observed_seconds": None}
    shapes: dict[EventType, dict[str, Any]] = {
        EventType.RUN_STARTED: plain,
        EventType.RUN_SUCCEEDED: plain | {"run": succeeded, "streak": Streak()},
        EventType.RUN_FAILED: plain
        | {"run": failed, "raw_state": "FAILED", "incident": failing, "streak": streak},
        EventType.RUN_CANCELED: plain | {"run": failed, "raw_state": "CANCELED"},
        EventType.RUN_SKIPPED: plain | {"run": failed, "raw_state": "SKIPPED"},
        EventType.RUN_DURATION_EXCEEDED: {"incident": over},
        EventType.JOB_RECOVERED: plain
        | {
            "run": succeeded,
            "incident": failing.model_copy(update=resolved | {"cause": "recovered"}),
            "streak": streak,
        },
        EventType.RUN_UNREADABLE: plain
        | {"detail": "state.result_state: unknown value", "incident": unreadable},
        EventType.JOB_UNREADABLE: plain
        | {"detail": "settings.tags: not a mapping", "incident": unreadable},
        EventType.RUN_STUCK: {
            "rule": None,
            "run": queued,
            "raw_state": "QUEUED",
            "observed_seconds": 3900.0,
            "detail": SAMPLE_QUEUE_REASON,
            "incident": stuck,
        },
        EventType.INCIDENT_RESOLVED: {
            "incident": over.model_copy(update=resolved | {"cause": "run_ended"})
        },
        **{
            kind: plain
            | {
                "run": Run(run_id=0, job_id=1),
                "expected_at": datetime(2023, 12, 31, 22, 15, tzinfo=UTC),
                "detail": "latest run started: 2023-12-30T22:15:04Z",
                "incident": failing.model_copy(update={"kind": incident_kind}),
            }
            for kind, incident_kind in (
                (EventType.RUN_MISSED, "missed"),
                (EventType.JOB_NOT_RUNNING, "not_running"),
                (EventType.JOB_STALE, "stale"),
            )
        },
    }
    every = [
        base.model_copy(update={"type": kind, **shapes.get(kind, plain)}) for kind in EventType
    ]
    by_type = {event.type: event for event in every}
    variants = [
        by_type[EventType.RUN_FAILED].model_copy(update={"repeat": 2}),
        by_type[EventType.JOB_RECOVERED].model_copy(update={"incident": None}),
        by_type[EventType.INCIDENT_RESOLVED].model_copy(
            update={
                "rule": None,
                "observed_seconds": None,
                "incident": unreadable.model_copy(update=resolved | {"cause": "manual"}),
            }
        ),
        # Stuck in a second state, without a queue reason (the API gives none).
        by_type[EventType.RUN_STUCK].model_copy(
            update={
                "run": base.run.model_copy(update={"state": RunState(life_cycle_state="PENDING")}),
                "raw_state": "PENDING",
                "detail": None,
                "incident": stuck.model_copy(update={"count": 2}),
            }
        ),
        # The stuck run started running.
        by_type[EventType.INCIDENT_RESOLVED].model_copy(
            update={
                "rule": None,
                "observed_seconds": None,
                "incident": stuck.model_copy(update=resolved | {"cause": "running"}),
            }
        ),
    ]
    return (*every, *variants)


# -- digests -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestItem:
    """One member of a digest as its message lists it: plain, one-line, bounded values;
    each channel escapes them for its markup."""

    name: str
    verb: str
    run_id: int
    url: str | None
    note: str | None
    """The member's `incident_line`."""
    at: str
    """When it happened, `02:10 UTC`."""
    test: bool

    @property
    def text(self) -> str:
        """`nightly-etl FAILED: still failing (...)` (no escaping, no link)."""
        mark = "[TEST] " if self.test else ""
        return f"{mark}{self.name} {self.verb}" + (f": {self.note}" if self.note else "")


@dataclass(frozen=True, slots=True)
class DigestSummary:
    """What every channel's digest message says, in that order."""

    headline: str
    """`12 alerts in prod: 10 FAILED, 2 running too long`."""
    top_jobs: tuple[tuple[str, int], ...]
    """The jobs with the most members, most first (empty when there is one job, or
    when every job has one member)."""
    items: tuple[DigestItem, ...]
    """The first `DIGEST_MEMBER_LIMIT` members, oldest first."""
    total: int

    @property
    def more(self) -> int:
        """Members not listed in `items`."""
        return self.total - len(self.items)

    @property
    def top_line(self) -> str | None:
        """`most alerts: nightly-etl (6), load (3)`."""
        if not self.top_jobs:
            return None
        return "most alerts: " + ", ".join(f"{n} ({c})" for n, c in self.top_jobs)


def summarize(
    events: Sequence[Event], group: Mapping[str, str], *, limit: int = DIGEST_MEMBER_LIMIT
) -> DigestSummary:
    """The summary of a digest of `events` grouped by `group`, listing up to `limit`."""
    jobs = Counter(_name(_subject(e), DIGEST_NAME_LIMIT) or "" for e in events)
    top = tuple(jobs.most_common(DIGEST_TOP_JOBS))
    if len(jobs) == 1 or top[0][1] == 1:
        top = ()  # one job (the headline says it all), or no job stands out
    return DigestSummary(
        headline=digest_headline(events, group),
        top_jobs=top,
        items=tuple(_item(e) for e in events[:limit]),
        total=len(events),
    )


def digest_headline(events: Sequence[Event], group: Mapping[str, str]) -> str:
    """`12 alerts in prod: 10 FAILED, 2 running too long` (`[TEST] ` first when every
    member is a test alert; `for <job>` when grouped by job; tags grouped by in
    parentheses)."""
    types = Counter(str(e.type) for e in events)
    order = list(_COUNTED)
    counts = sorted(
        types.items(), key=lambda kv: (-kv[1], order.index(kv[0]) if kv[0] in order else 99)
    )
    counted = ", ".join(f"{n} {_COUNTED.get(t, t)}" for t, n in counts)
    mark = "[TEST] " if events and all(e.test for e in events) else ""
    return f"{mark}{plural(len(events), 'alert')}{_group_text(events, group)}: {counted}"


def _group_text(events: Sequence[Event], group: Mapping[str, str]) -> str:
    text = ""
    if "job" in group and events:
        text += f" for {_name(_subject(events[0]), DIGEST_NAME_LIMIT)}"
    workspaces = sorted({e.workspace for e in events})
    where = group.get("workspace") or (workspaces[0] if len(workspaces) == 1 else None)
    text += f" in {_name(where, 60)}" if where else f" in {len(workspaces)} workspaces"
    tags = [
        f"{_name(k.removeprefix('tag:'), 60)}={_name(v, 60)}"
        for k, v in sorted(group.items())
        if k.startswith("tag:")
    ]
    return text + (f" ({', '.join(tags)})" if tags else "")


def render_digest(template: str, flavour: Flavour, summary: DigestSummary, digest_id: str) -> str:
    """A default digest template (`digest_email.txt.j2`...) over `summary`, escaped for
    `flavour` like every event template (digests have no configured templates)."""
    values = {
        "headline": summary.headline,
        "top_line": summary.top_line,
        "items": [asdict(i) for i in summary.items],
        "more": summary.more,
        "total": summary.total,
        "digest_id": digest_id,
    }
    return _environment(flavour).get_template(template).render(values)


def _item(event: Event) -> DigestItem:
    return DigestItem(
        name=_name(_subject(event), DIGEST_NAME_LIMIT) or "",
        verb=(f"repair {event.repair} " if event.repair else "") + verb(event),
        run_id=event.run.run_id,
        url=_url(event.run.run_page_url),
        note=incident_line(event),
        at=hm_utc(event.occurred_at),
        test=event.test,
    )
