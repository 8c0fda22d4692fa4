"""`watcher routes test`: where an event would go, without sending anything (like
`amtool config routes test`). A sample event of the given type, workspace, job and tags
is routed by the configuration as the running watcher routes it, at the current time:
which routes match, which channels it goes to and how (at once, grouped, reminded),
which a silence holds back or which cannot express the event, and the message each
channel would send, rendered by the channel itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import SecretStr

from watcher.clock import Clock
from watcher.config import RoutingConfig
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, IncidentRef, JobRef, RuleRef, Streak
from watcher.notify.base import Channel, redact
from watcher.notify.channels import build_channels
from watcher.notify.console import ConsoleChannel
from watcher.notify.email import EmailChannel
from watcher.notify.http import HttpChannel
from watcher.notify.router import RoutingTable
from watcher.store.base import DeliveryKey, DeliveryPolicy

_RESULT = {
    EventType.RUN_FAILED: "FAILED",
    EventType.RUN_SUCCEEDED: "SUCCESS",
    EventType.RUN_CANCELED: "CANCELED",
    EventType.JOB_RECOVERED: "SUCCESS",
}
# The incident each paging type opens or resolves: its kind and key suffix.
_INCIDENT = {
    EventType.RUN_FAILED: ("failure", "failed"),
    EventType.JOB_RECOVERED: ("failure", "failed"),
    EventType.RUN_DURATION_EXCEEDED: ("duration", "duration/job"),
}


@dataclass(frozen=True, slots=True)
class Sample:
    """What the operator asks about."""

    event_type: EventType
    workspace: str
    job: str
    job_id: int = 1
    tags: Mapping[str, str] = field(default_factory=dict)
    consecutive_failures: int = 1


def sample_event(sample: Sample, *, now: float) -> Event:
    """A plausible event of the sample's type, its run named as a routing test."""
    ms = int(now * 1000)
    terminal = sample.event_type in _RESULT
    incident = None
    if sample.event_type in _INCIDENT:
        kind, suffix = _INCIDENT[sample.event_type]
        resolved = sample.event_type is EventType.JOB_RECOVERED
        incident = IncidentRef(
            id=str(uuid.uuid4()),
            key=f"{sample.workspace}/job/{sample.job_id}/{suffix}",
            kind=kind,
            state="resolved" if resolved else "open",
            opened_at=datetime.fromtimestamp(now - 600, UTC),
            count=sample.consecutive_failures,
            resolved_at=datetime.fromtimestamp(now, UTC) if resolved else None,
            cause="recovered" if resolved else None,
        )
    return Event(
        id=str(uuid.uuid4()),
        type=sample.event_type,
        workspace=sample.workspace,
        occurred_at=datetime.fromtimestamp(now, UTC),
        job=JobRef(job_id=sample.job_id, name=sample.job, tags=dict(sample.tags)),
        run=Run(
            run_id=0,
            job_id=sample.job_id,
            run_name=f"{sample.job} (watcher routes test)",
            state=RunState(
                life_cycle_state="TERMINATED" if terminal else "RUNNING",
                result_state=_RESULT.get(sample.event_type),
            ),
            start_time=ms - 600_000,
            end_time=ms if terminal else 0,
        ),
        rule=RuleRef(name="job", value=3600, source="job")
        if sample.event_type is EventType.RUN_DURATION_EXCEEDED
        else None,
        observed_seconds=4000.0 if sample.event_type is EventType.RUN_DURATION_EXCEEDED else None,
        incident=incident,
        streak=Streak(consecutive_failures=sample.consecutive_failures) if terminal else None,
    )


async def explain(config: RoutingConfig, sample: Sample, *, clock: Clock) -> str:
    """The routing of the sample, then each channel's rendered message."""
    now = clock.time()
    event = sample_event(sample, now=now)
    table = RoutingTable.compile(config)
    lines = [
        f"event: {event.type}  workspace: {event.workspace}  job: {event.job.name} "
        f"(id {event.job.job_id}){_tags(sample.tags)}",
        "routes:",
    ]
    decided = False
    for route in table.routes:
        if decided:
            lines.append(f"  {route.index + 1}. not tried (an earlier route decided)")
            continue
        matched = route.match(event)
        verdict = "matches" if matched else "does not match"
        more = ", continue" if matched and route.continue_ else ""
        lines.append(f"  {route.index + 1}. {verdict}: {', '.join(route.channels)}{more}")
        decided = matched and not route.continue_
    routed = table.route(event, None, now)
    wanted = {name for route in table.routes if route.match(event) for name in route.channels}
    dropped = sorted(
        n for n in wanted if n in table.channels and not table.channels[n].accepts(event.type)
    )
    lines.append("deliveries:")
    for key in routed.channels:
        lines.append(f"  {key} ({_type(config, key)}): {_how(routed.policies.get(key))}")
    for key in routed.silenced:
        lines.append(f"  {key} ({_type(config, key)}): held back by an active silence")
    for name in dropped:
        lines.append(f"  {name} ({config.channels[name].type}): does not send {event.type}")
    if not (routed.channels or routed.silenced or dropped):
        lines.append("  none: no route sends this event anywhere")
    channels = build_channels(config, clock=clock)
    for key in routed.channels:
        lines += [
            "",
            f"--- {key} ({_type(config, key)}) ---",
            render(channels[key.channel], key, event),
        ]
    return "\n".join(lines)


def render(channel: Channel, key: DeliveryKey, event: Event) -> str:
    """What `channel` would send for `event`, as the channel builds it, every secret of
    its configuration (a PagerDuty routing key in the body) redacted."""
    secrets = [
        value.get_secret_value()
        for value in dict(channel.config).values()
        if isinstance(value, SecretStr)
    ]
    return redact(_render(channel, key, event), secrets)


def _render(channel: Channel, key: DeliveryKey, event: Event) -> str:
    if isinstance(channel, HttpChannel):
        body = channel.body(event)
        if body is None:
            return f"(nothing: the channel sends no {event.type})"
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    if isinstance(channel, EmailChannel):
        recipients = [key.recipient] if key.recipient else list(channel.config.recipients)
        message = channel.message(event, recipients)
        text = message.get_body(("plain",))
        content = text.get_content() if text is not None else ""
        return f"Subject: {message['Subject']}\nTo: {message['To']}\n\n{content}".rstrip()
    if isinstance(channel, ConsoleChannel):
        return channel.line(event)
    return f"(a {type(channel).__name__} cannot be previewed)"


def _how(policy: DeliveryPolicy | None) -> str:
    policy = policy or DeliveryPolicy()
    parts = ["sent at once"]
    if policy.group_key:
        parts = [f"grouped (wait {policy.group_wait:g}s, then every {policy.group_interval:g}s)"]
    if policy.repeat_every:
        parts.append(f"reminded every {policy.repeat_every:g}s while open")
    return "; ".join(parts)


def _type(config: RoutingConfig, key: DeliveryKey) -> str:
    return config.channels[key.channel].type


def _tags(tags: Mapping[str, str]) -> str:
    return f"  tags: {', '.join(f'{k}={v}' for k, v in sorted(tags.items()))}" if tags else ""
