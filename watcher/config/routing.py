"""Where events go and what is held back: routes, silences, and `RoutingConfig`, the slice
of the configuration that notify is handed (the channels, routes, silences and the
mapping of Databricks notification destinations)."""

from __future__ import annotations

from pydantic import AwareDatetime, Field, model_validator

from watcher.config.base import FieldErrors, Section
from watcher.config.channels import ChannelConfig
from watcher.config.jobs import JobMatch
from watcher.events import EventType


class RouteMatch(JobMatch):
    workspaces: list[str] = Field(default_factory=list, description="Workspace names, any of them.")
    event_types: list[EventType] = Field(default_factory=list, description="Event types, any.")
    triggers: list[str] = Field(default_factory=list, description="Run triggers (PERIODIC, ...).")
    run_types: list[str] = Field(default_factory=list, description="Run types (JOB_RUN, ...).")


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


class SilenceConfig(Section):
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="Events the silence holds back (empty: all)."
    )
    # Aware only: a naive time cannot be compared with the clock's (every cycle would fail).
    starts_at: AwareDatetime = Field(description="ISO 8601 start time, with a time zone.")
    ends_at: AwareDatetime = Field(description="ISO 8601 end time, with a time zone.")
    comment: str = Field(default="", description="Why, for the next on-call.")

    @model_validator(mode="after")
    def _ends_after_start(self) -> SilenceConfig:
        if self.ends_at <= self.starts_at:
            raise FieldErrors([("ends_at", "must be after starts_at (the silence is empty)")])
        return self


class RoutingConfig(Section):
    """What notify needs of the configuration, and nothing else: the channels, where each
    event goes, and what is held back. In the file these are top-level keys."""

    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    destinations: dict[str, str] = Field(default_factory=dict)
    honour_job_notifications: bool = False
    routes: list[RouteConfig] = Field(default_factory=list)
    silences: list[SilenceConfig] = Field(default_factory=list)
