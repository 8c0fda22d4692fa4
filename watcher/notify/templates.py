"""Alert texts from Jinja2 templates: defaults in `templates/`, overridable per channel.

Templates run in a `SandboxedEnvironment` over a prepared context of plain values; event data
is only ever *substituted*, never compiled, so a job named `{{ 7*7 }}` stays that text. Each
flavour escapes for its target: HTML autoescapes, Slack escapes `& < >`, markdown escapes its
syntax, and plain text gets single-line names (no CR/LF to inject headers or log lines).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from jinja2 import PackageLoader, StrictUndefined, TemplateError
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import SandboxedEnvironment

from watcher.config.channels import BaseChannelConfig
from watcher.databricks.models import Run, RunState, RunTask
from watcher.events import Event, EventType, JobRef, RuleRef
from watcher.notify.text import (
    human_seconds,
    iso,
    markdown_escape,
    ms_iso,
    ms_seconds,
    one_line,
    slack_escape,
    truncate,
)

log = structlog.get_logger(__name__)

Flavour = Literal["text", "html", "slack", "markdown"]

NAME_LIMIT = 200
MESSAGE_LIMIT = 2000
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
}


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


def title(event: Event) -> str:
    """`<job name> FAILED`, `<job name> repair 2 FAILED` and so on: the one-line headline
    of an alert."""
    name = _name(event.job.name) or (
        f"job {event.job.job_id}" if event.job.job_id is not None else f"run {event.run.run_id}"
    )
    repair = f" repair {event.repair}" if event.repair else ""
    return f"{name}{repair} {_VERBS.get(event.type, event.type)}"


def headline(event: Event) -> str:
    """The `title`, marked `[TEST] ` for a test alert: the first line chat messages show."""
    return ("[TEST] " if event.test else "") + title(event)


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
        "verb": _VERBS.get(event.type, str(event.type)),
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


@functools.cache
def sample_events() -> tuple[Event, ...]:
    """An event of every type, shaped as the tracker makes them (a rule only on duration
    breaches, failed tasks on failures, a detail on unreadables), to render configured
    templates against: a template that renders all of them renders any event."""
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
    plain = {"rule": None, "observed_seconds": None}
    shapes: dict[EventType, dict[str, Any]] = {
        EventType.RUN_STARTED: plain,
        EventType.RUN_SUCCEEDED: plain | {"run": succeeded},
        EventType.RUN_FAILED: plain | {"run": failed, "raw_state": "FAILED"},
        EventType.RUN_CANCELED: plain | {"run": failed, "raw_state": "CANCELED"},
        EventType.RUN_SKIPPED: plain | {"run": failed, "raw_state": "SKIPPED"},
        EventType.RUN_DURATION_EXCEEDED: {},
        EventType.JOB_RECOVERED: plain | {"run": succeeded},
        EventType.RUN_UNREADABLE: plain | {"detail": "state.result_state: unknown value"},
        EventType.JOB_UNREADABLE: plain | {"detail": "settings.tags: not a mapping"},
    }
    return tuple(
        base.model_copy(update={"type": kind, **shapes.get(kind, plain)}) for kind in EventType
    )
