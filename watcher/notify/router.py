"""Which channels an event goes to: a pure function of the event, the configuration, the
job's settings and the time (for silences). See docs/alerts.md for the semantics.

Routes and silences are compiled once, at start, into an immutable `RoutingTable`. Routing
runs inside the commit of a poll cycle, so `router_for` never lets an error out: an event
whose routes cannot be evaluated goes to every channel instead (a duplicate page beats a
missed one), logged as `routing_failed` and counted.

Deliveries are keyed by `DeliveryKey`: a configured channel (`slack-oncall`), and for an
address from a job's own `email_notifications` the email channel with that address as the
recipient (shown as `smtp:alice@example.com`), so each recipient has its own delivery state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import structlog

from watcher.clock import Clock
from watcher.config import RouteConfig, RoutingConfig
from watcher.config.channels import (
    ADDRESS,
    AlertmanagerChannelConfig,
    BaseChannelConfig,
    EmailChannelConfig,
    PagerDutyChannelConfig,
)
from watcher.databricks.models import JobEmailNotifications, JobSettings, WebhookNotifications
from watcher.events import Event, EventType
from watcher.notify.base import excerpt
from watcher.silences import LiveSilences, Silence, compile_silence
from watcher.store.base import DeliveryKey, DeliveryPolicy, Routed

log = structlog.get_logger(__name__)

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


EMAIL_REPEAT_INTERVAL = 4 * 3600.0
"""Reminders of an open incident by email when the route says nothing (Alertmanager's
default repeat_interval); chat and other channels get none unless the route asks."""
_NOT_GROUPED = (PagerDutyChannelConfig, AlertmanagerChannelConfig)
"""Channels whose receivers keep one incident per job themselves: never sent digests."""


@dataclass(frozen=True, slots=True)
class Route:
    match: Callable[[Event], bool]
    channels: tuple[str, ...]
    continue_: bool = False
    repeat_interval: float | None = None
    """None: the channel's default; 0: no reminders."""
    group_by: tuple[str, ...] = ()
    group_wait: float = 0.0
    group_interval: float = 0.0
    index: int = 0

    @classmethod
    def of(cls, config: RouteConfig, index: int) -> Route:
        return cls(
            # A private copy: the table stays as compiled whatever happens to the config.
            config.match.model_copy(deep=True).selects,
            tuple(config.channels),
            config.continue_,
            config.repeat_interval,
            tuple(config.group_by),
            config.group_wait,
            config.group_interval,
            index,
        )

    def group_key(self, event: Event) -> str:
        """The values this route groups by, as one key ("" when it does not group)."""
        if not self.group_by:
            return ""
        return "\x1f".join(
            [f"route={self.index}", *(_group_value(event, f) for f in self.group_by)]
        )


def _group_value(event: Event, name: str) -> str:
    if name == "workspace":
        value = event.workspace
    elif name == "job":
        job_id = event.job.job_id
        value = f"job/{job_id}" if job_id is not None else f"run/{event.run.run_id}"
    elif name == "event_type":
        value = str(event.type)
    else:
        value = event.job.tags.get(name.removeprefix("tag:"), "")
    return f"{name}={value}"


def group_labels(group_key: str) -> dict[str, str]:
    """The values a group key was made of: {"workspace": "prod", "tag:team": "data"}."""
    labels = dict(part.partition("=")[::2] for part in group_key.split("\x1f") if part)
    labels.pop("route", None)
    return labels


_DEFAULT_POLICY = DeliveryPolicy()


def repeat_every(channel: BaseChannelConfig, route: Route | None) -> float | None:
    """Seconds between reminders of an open incident through `channel`, chosen by `route`
    (None: none)."""
    if isinstance(channel, AlertmanagerChannelConfig):
        return channel.resend_interval
    chosen = route.repeat_interval if route is not None else None
    if chosen is None and isinstance(channel, EmailChannelConfig):
        chosen = EMAIL_REPEAT_INTERVAL
    return chosen or None


def serves(key: DeliveryKey, channels: Mapping[str, BaseChannelConfig]) -> bool:
    """Whether a configured channel delivers `key`: its channel is configured, and a
    recipient is one address of an email channel. False for a channel removed from the
    configuration."""
    config = channels.get(key.channel)
    if config is None:
        return False
    if not key.recipient:
        return True
    return isinstance(config, EmailChannelConfig) and ADDRESS.match(key.recipient) is not None


def job_email_channels(config: RoutingConfig) -> list[str]:
    """The email channels that carry jobs' own addresses: those marked `job_notifications`,
    else the first email channel."""
    emails = {n: c for n, c in config.channels.items() if isinstance(c, EmailChannelConfig)}
    marked = [n for n, c in emails.items() if c.job_notifications]
    return marked or list(emails)[:1]


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Routes, silences and channels compiled from a configuration, immutable."""

    channels: Mapping[str, BaseChannelConfig]
    routes: tuple[Route, ...]
    silences: tuple[Silence, ...] = ()
    """The configured ones."""
    live: LiveSilences | None = None
    """Those added at run time, as last read from the store."""
    destinations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    job_emails: tuple[str, ...] | None = None
    """Email channels carrying jobs' own addresses; None unless honour_job_notifications."""

    @classmethod
    def compile(cls, config: RoutingConfig, live: LiveSilences | None = None) -> RoutingTable:
        """Raises for a configuration that cannot be compiled: at start, not per event."""
        routes = [Route.of(r, i) for i, r in enumerate(config.routes)]
        return cls(
            channels=MappingProxyType(dict(config.channels)),
            # Without routes every channel gets every event it accepts.
            routes=tuple(routes) or (Route(lambda _: True, tuple(config.channels)),),
            silences=tuple(
                compile_silence(s, where=f"silences.{i}") for i, s in enumerate(config.silences)
            ),
            live=live,
            destinations=MappingProxyType(dict(config.destinations)),
            job_emails=tuple(job_email_channels(config))
            if config.honour_job_notifications
            else None,
        )

    def route(
        self,
        event: Event,
        job_settings: JobSettings | None,
        now: float,
        follow: Sequence[DeliveryKey] = (),
    ) -> Routed:
        """Routes are tried in order; the first that matches decides, unless it says
        `continue`, in which case later routes may add channels. With
        honour_job_notifications, the job's own webhook destinations (mapped through
        `destinations`) and email addresses are added. Channels that cannot express the
        event type are dropped; an active matching silence holds everything back.
        `follow` (where the incident an event resolves was delivered) is added and never
        silenced: a resolve goes wherever its incident was paged."""
        wanted: dict[DeliveryKey, Route | None] = {}
        for rule in self.routes:
            if rule.match(event):
                for name in rule.channels:
                    wanted.setdefault(DeliveryKey(name), rule)
                if not rule.continue_:
                    break
        if self.job_emails is not None and job_settings is not None:
            for key in self._job_channels(event, job_settings):
                wanted.setdefault(key, None)
        followed = list(dict.fromkeys(k for k in follow if self._expresses(k, event)))
        # A resolve goes to its incident's channels as it is: never silenced, never grouped.
        keys = [k for k in wanted if k not in followed and self._expresses(k, event)]
        policies = self._policies(followed, {}, event)
        if keys and self.silenced(event, now):
            return Routed(channels=followed, silenced=keys, policies=policies)
        policies |= self._policies(keys, wanted, event)
        return Routed(channels=[*keys, *followed], silenced=[], policies=policies)

    def silenced(self, event: Event, now: float) -> bool:
        """Whether a silence active at `now` matches `event` (reminders ask this; raises
        like `route` for a silence that cannot be evaluated)."""
        return any(s.holds(event, now) for s in self.all_silences)

    @property
    def all_silences(self) -> tuple[Silence, ...]:
        """The configured silences and those added at run time."""
        return self.silences + (self.live.current if self.live else ())

    def _expresses(self, key: DeliveryKey, event: Event) -> bool:
        return serves(key, self.channels) and self.channels[key.channel].accepts(event.type)

    def _policies(
        self,
        keys: Sequence[DeliveryKey],
        routes: Mapping[DeliveryKey, Route | None],
        event: Event,
    ) -> dict[DeliveryKey, DeliveryPolicy]:
        """How each delivery is sent: reminders by the route, else by channel type (and
        always for Alertmanager, which expires an alert not re-posted); digests for the
        routes that group, except to PagerDuty and Alertmanager."""
        policies: dict[DeliveryKey, DeliveryPolicy] = {}
        for key in keys:
            channel = self.channels[key.channel]
            rule = routes.get(key)
            policy = DeliveryPolicy(repeat_every=repeat_every(channel, rule))
            if rule is not None and rule.group_by and not isinstance(channel, _NOT_GROUPED):
                policy = DeliveryPolicy(
                    repeat_every=policy.repeat_every,
                    group_key=rule.group_key(event),
                    group_wait=rule.group_wait,
                    group_interval=rule.group_interval,
                )
            if policy != _DEFAULT_POLICY:
                policies[key] = policy
        return policies

    def everyone(self, event: Event) -> list[DeliveryKey]:
        """Every configured channel that can express the event (every channel at all when
        even that cannot be decided): where an event goes when routing it failed."""
        try:
            return [DeliveryKey(n) for n, c in self.channels.items() if c.accepts(event.type)]
        except Exception:
            return [DeliveryKey(n) for n in self.channels]

    def _job_channels(self, event: Event, settings: JobSettings) -> list[DeliveryKey]:
        key = JOB_NOTIFICATION_KEYS.get(event.type)
        if key is None:
            return []
        found: list[DeliveryKey] = []
        hooks = settings.webhook_notifications or WebhookNotifications()
        for hook in getattr(hooks, key):
            if hook.id in self.destinations:
                found.append(DeliveryKey(self.destinations[hook.id]))
        emails = settings.email_notifications or JobEmailNotifications()
        addresses: dict[str, str] = {}
        for address in getattr(emails, key):
            address = address.strip()
            if ADDRESS.match(address):
                addresses.setdefault(address.lower(), address)
        for channel in self.job_emails or ():
            found.extend(DeliveryKey(channel, a) for a in addresses.values())
        return found


def route(
    event: Event,
    *,
    config: RoutingConfig,
    job_settings: JobSettings | None,
    now: datetime,
    follow: Sequence[DeliveryKey] = (),
) -> Routed:
    """`RoutingTable.route` of a configuration at one moment (compiling it each call)."""
    return RoutingTable.compile(config).route(event, job_settings, now.timestamp(), follow)


EventRouter = Callable[[Event, JobSettings | None, Sequence[DeliveryKey]], Routed]
"""(event, job settings, where the incident it resolves was delivered) -> Routed."""


def router_for(
    config: RoutingConfig, *, clock: Clock, on_failure: Callable[[], None] | None = None
) -> EventRouter:
    """The routing table of `config`, compiled now, bound to a clock, in the shape the
    pipeline calls. It never raises: when an event's routes cannot be evaluated, the
    event goes to `RoutingTable.everyone` (silences ignored), logged as
    `routing_failed` and reported to `on_failure`."""
    return table_router(RoutingTable.compile(config), clock=clock, on_failure=on_failure)


def table_router(
    table: RoutingTable, *, clock: Clock, on_failure: Callable[[], None] | None = None
) -> EventRouter:
    """`router_for` of an already compiled table."""

    def route_event(
        event: Event, job_settings: JobSettings | None, follow: Sequence[DeliveryKey] = ()
    ) -> Routed:
        try:
            routing = table.route(event, job_settings, clock.time(), follow)
        except Exception as exc:
            channels = table.everyone(event)
            with contextlib.suppress(Exception):
                log.error(
                    "routing_failed",
                    event_id=event.id,
                    type=str(event.type),
                    error_type=type(exc).__name__,
                    error=excerpt(str(exc), 500),
                    channels=[str(c) for c in channels],
                )
            if on_failure is not None:
                with contextlib.suppress(Exception):
                    on_failure()
            return Routed(channels=channels)
        return routing

    return route_event
