"""Which channels an event goes to: a pure function of the event, the configuration, the
job's settings and the time (for silences). See docs/alerts.md for the semantics.

Outbox channel keys are plain strings: a configured channel's name (`slack-oncall`), or for
an address from a job's own `email_notifications` the email channel's name, a colon and the
address (`smtp:alice@example.com`), so each recipient has its own delivery state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watcher.clock import Clock
from watcher.config import Config, RouteMatch
from watcher.databricks.models import JobEmailNotifications, JobSettings, WebhookNotifications
from watcher.events import Event, EventType
from watcher.notify.config import ADDRESS, BaseChannelConfig, EmailChannelConfig

# Databricks' notification keys for each event type. Databricks counts canceled and skipped
# runs as unsuccessful: they go to on_failure unless the job's no_alert_for_canceled_runs /
# no_alert_for_skipped_runs say otherwise, which the tracker applies before any event exists.
# job_recovered has no Databricks counterpart (the same run's on_success already covers it).
JOB_NOTIFICATION_KEYS: dict[EventType, str] = {
    EventType.RUN_STARTED: "on_start",
    EventType.RUN_SUCCEEDED: "on_success",
    EventType.RUN_FAILED: "on_failure",
    EventType.RUN_CANCELED: "on_failure",
    EventType.RUN_SKIPPED: "on_failure",
    EventType.RUN_DURATION_EXCEEDED: "on_duration_warning_threshold_exceeded",
}


@dataclass(frozen=True, slots=True)
class Routing:
    """Channel keys to deliver an event to, or, when a silence holds it, that would have
    received it."""

    channels: list[str] = field(default_factory=list)
    silenced: list[str] = field(default_factory=list)


def matches(match: RouteMatch, event: Event) -> bool:
    """Every criterion given must hold; lists match when any element does."""
    if match.workspaces and event.workspace not in match.workspaces:
        return False
    if match.event_types and event.type not in match.event_types:
        return False
    if match.triggers and event.run.trigger not in match.triggers:
        return False
    if match.run_types and event.run.run_type not in match.run_types:
        return False
    return match.matches(event.job.job_id, event.job.name, event.job.tags)


def address_key(channel: str, address: str) -> str:
    """The outbox key of one address delivered through email channel `channel`."""
    return f"{channel}:{address}"


def parse_key(key: str, channels: Mapping[str, BaseChannelConfig]) -> tuple[str, str | None] | None:
    """(channel name, recipient or None) of an outbox key; None when no configured channel
    serves it (the channel was removed from the configuration)."""
    if key in channels:
        return key, None
    for name, config in channels.items():
        if isinstance(config, EmailChannelConfig) and key.startswith(f"{name}:"):
            address = key[len(name) + 1 :]
            return (name, address) if ADDRESS.match(address) else None
    return None


def job_email_channels(config: Config) -> list[str]:
    """The email channels that carry jobs' own addresses: those marked `job_notifications`,
    else the first email channel."""
    emails = {n: c for n, c in config.channels.items() if isinstance(c, EmailChannelConfig)}
    marked = [n for n, c in emails.items() if c.job_notifications]
    return marked or list(emails)[:1]


def _job_channels(event: Event, config: Config, settings: JobSettings) -> list[str]:
    key = JOB_NOTIFICATION_KEYS.get(event.type)
    if key is None:
        return []
    found: list[str] = []
    hooks = settings.webhook_notifications or WebhookNotifications()
    for hook in getattr(hooks, key):
        if hook.id in config.destinations:
            found.append(config.destinations[hook.id])
    emails = settings.email_notifications or JobEmailNotifications()
    addresses: dict[str, str] = {}
    for address in getattr(emails, key):
        address = address.strip()
        if ADDRESS.match(address):
            addresses.setdefault(address.lower(), address)
    for channel in job_email_channels(config):
        found.extend(address_key(channel, a) for a in addresses.values())
    return found


def silenced_by(event: Event, config: Config, now: datetime) -> list[int]:
    """Indexes of the silences active at `now` that match the event."""
    return [
        i
        for i, silence in enumerate(config.silences)
        if silence.starts_at <= now < silence.ends_at and matches(silence.match, event)
    ]


def route(
    event: Event, *, config: Config, job_settings: JobSettings | None, now: datetime
) -> Routing:
    """Routes are tried in order; the first that matches decides, unless it says `continue`,
    in which case later routes may add channels. Without any routes every channel gets every
    event it accepts. With honour_job_notifications, the job's own webhook destinations
    (mapped through `destinations`) and email addresses are added. Channels that cannot
    express the event type are dropped; an active matching silence holds everything back."""
    wanted: list[str] = []
    if not config.routes:
        wanted.extend(config.channels)
    for rule in config.routes:
        if matches(rule.match, event):
            wanted.extend(rule.channels)
            if not rule.continue_:
                break
    if config.honour_job_notifications and job_settings is not None:
        wanted.extend(_job_channels(event, config, job_settings))
    keys: list[str] = []
    for key in dict.fromkeys(wanted):
        parsed = parse_key(key, config.channels)
        if parsed is not None and config.channels[parsed[0]].accepts(event.type):
            keys.append(key)
    if keys and silenced_by(event, config, now):
        return Routing(silenced=keys)
    return Routing(channels=keys)


def router_for(
    config: Config, *, clock: Clock
) -> Callable[[Event, JobSettings | None], tuple[list[str], list[str]]]:
    """`route` bound to a configuration and a clock, in the shape the pipeline calls:
    (event, job settings) -> (channels, silenced)."""

    def route_event(event: Event, job_settings: JobSettings | None) -> tuple[list[str], list[str]]:
        now = datetime.fromtimestamp(clock.time(), UTC)
        routing = route(event, config=config, job_settings=job_settings, now=now)
        return routing.channels, routing.silenced

    return route_event
