"""Where events go and what is held back: routes, silences, and `RoutingConfig`, the slice
of the configuration that notify is handed (the channels, routes, silences and the
mapping of Databricks notification destinations)."""

from __future__ import annotations

from pydantic import AwareDatetime, Field, model_validator

from watcher.config.base import FieldErrors, Section
from watcher.config.channels import ChannelConfig
from watcher.config.jobs import JobMatch
from watcher.events import Event, EventType
from watcher.schedule import InvalidSchedule, Schedule


class RouteMatch(JobMatch):
    workspaces: list[str] = Field(default_factory=list, description="Workspace names, any of them.")
    event_types: list[EventType] = Field(default_factory=list, description="Event types, any.")
    triggers: list[str] = Field(default_factory=list, description="Run triggers (PERIODIC, ...).")
    run_types: list[str] = Field(default_factory=list, description="Run types (JOB_RUN, ...).")
    min_consecutive_failures: int | None = Field(
        default=None,
        ge=1,
        description="Only events of a failing streak at least this long (failures, and the "
        "recovery that ends such a streak).",
    )

    def selects(self, event: Event) -> bool:
        """Whether every criterion given holds for `event` (a list holds when any of its
        elements does)."""
        if self.workspaces and event.workspace not in self.workspaces:
            return False
        if self.min_consecutive_failures is not None:
            streak = event.streak.consecutive_failures if event.streak else 0
            if streak < self.min_consecutive_failures:
                return False
        if self.event_types and event.type not in self.event_types:
            return False
        if self.triggers and event.run.trigger not in self.triggers:
            return False
        if self.run_types and event.run.run_type not in self.run_types:
            return False
        return self.matches(event.job.job_id, event.job.name, event.job.tags)


GROUP_FIELDS = ("workspace", "job", "event_type")
MIN_REPEAT_INTERVAL = 60.0
"""Reminders more often than this would be a storm of their own."""
"""What a route may group by, besides `tag:<name>`."""


class RouteConfig(Section):
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="Events this route takes (empty: all)."
    )
    channels: list[str] = Field(min_length=1, description="Channel names to deliver to.")
    continue_: bool = Field(
        default=False,
        alias="continue",
        description="Also try the routes after this one when it matches.",
    )
    repeat_interval: float | None = Field(
        default=None,
        ge=0,
        description="Seconds between reminders while an incident stays open (at least 60); "
        "0 = none "
        "(default: 4 h for email, none for other channels; Alertmanager is re-posted every "
        "its resend_interval regardless).",
    )
    group_by: list[str] = Field(
        default_factory=list,
        description="Send the events alike in these as one digest: `workspace`, `job`, "
        "`event_type`, `tag:<name>` (empty: every event alone).",
    )
    group_wait: float = Field(
        default=30.0, ge=0, description="Seconds a new group waits for company."
    )
    group_interval: float = Field(
        default=300.0, gt=0, description="Seconds between digests of one group."
    )

    @model_validator(mode="after")
    def _group_fields(self) -> RouteConfig:
        bad = [
            (f"group_by.{i}", f"{name!r}: use workspace, job, event_type or tag:<name>")
            for i, name in enumerate(self.group_by)
            if name not in GROUP_FIELDS and not (name.startswith("tag:") and len(name) > 4)
        ]
        if self.repeat_interval and self.repeat_interval < MIN_REPEAT_INTERVAL:
            bad.append(
                (
                    "repeat_interval",
                    f"{self.repeat_interval:g}: at least {MIN_REPEAT_INTERVAL:g} seconds, "
                    "or 0 for no reminders",
                )
            )
        if bad:
            raise FieldErrors(bad)
        return self


_YEAR_10000 = 253_402_300_800.0
"""Epoch seconds of 10000-01-01T00:00Z, the first instant a datetime cannot hold."""


class RecurringWindow(Section):
    """A silence that holds only in windows that recur: planned maintenance."""

    cron: str = Field(
        description="When each window starts, as a Quartz cron expression (the syntax of "
        "Databricks job schedules): `0 0 2 ? * SAT` is every Saturday at 02:00."
    )
    timezone: str = Field(
        default="UTC",
        description="Time zone the cron expression is read in (`Europe/Berlin`): windows "
        "are wall-clock times there, across daylight saving changes.",
    )
    duration: float = Field(
        gt=0, le=366 * 86400, description="Seconds of wall-clock time each window lasts."
    )

    @model_validator(mode="after")
    def _parses(self) -> RecurringWindow:
        try:
            Schedule.parse(self.cron, self.timezone)
        except InvalidSchedule as exc:
            field = "timezone" if "time zone:" in str(exc) else "cron"
            raise FieldErrors([(field, str(exc))]) from None
        return self

    def schedule(self) -> Schedule:
        return Schedule.parse(self.cron, self.timezone)


class SilenceConfig(Section):
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="Events the silence holds back (empty: all)."
    )
    # Aware only: a naive time cannot be compared with the clock's (every cycle would fail).
    starts_at: AwareDatetime | None = Field(
        default=None,
        description="ISO 8601 start time, with a time zone (optional with `recurring`).",
    )
    ends_at: AwareDatetime | None = Field(
        default=None,
        description="ISO 8601 end time, with a time zone (optional with `recurring`: "
        "without it the windows recur for ever).",
    )
    recurring: RecurringWindow | None = Field(
        default=None,
        description="Hold only in these recurring windows, between starts_at and ends_at.",
    )
    comment: str = Field(default="", description="Why, for the next on-call.")

    @model_validator(mode="after")
    def _window(self) -> SilenceConfig:
        if self.recurring is None:
            missing = [f for f in ("starts_at", "ends_at") if getattr(self, f) is None]
            if missing:
                raise FieldErrors([(f, "required unless `recurring` is set") for f in missing])
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise FieldErrors([("ends_at", "must be after starts_at (the silence is empty)")])
        # Times every display can show: from 1970 through the year 9999, in UTC.
        outside = [
            (f, "must lie between 1970 and the year 9999 (UTC)")
            for f in ("starts_at", "ends_at")
            if (at := getattr(self, f)) is not None and not 0 <= at.timestamp() < _YEAR_10000
        ]
        if outside:
            raise FieldErrors(outside)
        return self


class RoutingConfig(Section):
    """What notify needs of the configuration, and nothing else: the channels, where each
    event goes, and what is held back. In the file these are top-level keys."""

    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    destinations: dict[str, str] = Field(default_factory=dict)
    honour_job_notifications: bool = False
    routes: list[RouteConfig] = Field(default_factory=list)
    silences: list[SilenceConfig] = Field(default_factory=list)
