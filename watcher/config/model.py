"""`Config`, the whole file: its top-level keys, and the checks that span sections (unique
workspace names, plain channel names, names that refer to something)."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from watcher.config.base import NAME_PATTERN, FieldErrors, Section, require_unique
from watcher.config.channels import ChannelConfig
from watcher.config.daemon import (
    ExpectationsConfig,
    HAConfig,
    HealthRulesConfig,
    LoggingConfig,
    MetricsConfig,
    ServerConfig,
    StartupConfig,
    StoreConfig,
    StuckConfig,
)
from watcher.config.routing import RouteConfig, RoutingConfig, SilenceConfig
from watcher.config.workspace import WorkspaceConfig


class Config(Section):
    workspaces: list[WorkspaceConfig] = Field(
        min_length=1, description="The Databricks workspaces to watch, each polled on its own."
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Durable state.")
    ha: HAConfig = Field(
        default_factory=HAConfig, description="Several replicas sharing the workspaces."
    )
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="/metrics, /healthz, /readyz, /status."
    )
    health_rules: HealthRulesConfig = Field(
        default_factory=HealthRulesConfig,
        description="RUN_DURATION_SECONDS rules besides the jobs' own health rules.",
    )
    expectations: ExpectationsConfig = Field(
        default_factory=ExpectationsConfig,
        description="Missed schedules, continuous jobs not running, jobs not succeeding.",
    )
    stuck: StuckConfig = Field(
        default_factory=StuckConfig,
        description="When a run waiting in QUEUED, PENDING or BLOCKED is stuck (run_stuck).",
    )
    channels: dict[str, ChannelConfig] = Field(
        default_factory=dict, description="Alert channels by name (see docs/alerts.md)."
    )
    destinations: dict[str, str] = Field(
        default_factory=dict,
        description="Databricks notification-destination id -> channel name.",
    )
    honour_job_notifications: bool = Field(
        default=False,
        description="Also deliver to the jobs' own email_notifications / webhook_notifications.",
    )
    routes: list[RouteConfig] = Field(
        default_factory=list, description="Which events go to which channels, in order."
    )
    silences: list[SilenceConfig] = Field(
        default_factory=list, description="Time windows in which matching alerts are held back."
    )
    startup: StartupConfig = Field(
        default_factory=StartupConfig, description="First start and catching up after downtime."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics (see docs/metrics.md)."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log output.")

    @property
    def routing(self) -> RoutingConfig:
        """The routing slice handed to notify."""
        return RoutingConfig.model_construct(
            channels=self.channels,
            destinations=self.destinations,
            honour_job_notifications=self.honour_job_notifications,
            routes=self.routes,
            silences=self.silences,
        )

    @field_validator("workspaces")
    @classmethod
    def _unique_workspaces(cls, value: list[WorkspaceConfig]) -> list[WorkspaceConfig]:
        require_unique([w.name for w in value], "workspace names")
        return value

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Names stay plain (no ':'): a delivery is shown, and given on the command line
        # (`test-alert --channel`), as `channel:address`.
        bad = [name for name in value if not re.match(NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"channel names must match {NAME_PATTERN}: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        # A name that refers to nothing would silently route or silence nothing.
        problems: list[tuple[str, str]] = []
        workspaces = [w.name for w in self.workspaces]
        channels = list(self.channels)
        for i, route in enumerate(self.routes):
            for j, name in enumerate(route.channels):
                problems += _unknown("channel", name, channels, f"routes.{i}.channels.{j}")
        matches = [(f"routes.{i}", r.match) for i, r in enumerate(self.routes)]
        matches += [(f"silences.{i}", s.match) for i, s in enumerate(self.silences)]
        for where, match in matches:
            for j, name in enumerate(match.workspaces):
                problems += _unknown("workspace", name, workspaces, f"{where}.match.workspaces.{j}")
        for dest, name in self.destinations.items():
            problems += _unknown("channel", name, channels, f"destinations.{dest}")
        if problems:
            raise FieldErrors(problems)
        return self


def _unknown(kind: str, name: str, known: list[str], where: str) -> list[tuple[str, str]]:
    if name in known:
        return []
    return [(where, f"unknown {kind} {name!r}{_did_you_mean(name, known)}")]


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    if close:
        return f"; did you mean `{close[0]}`?"
    return f" (known: {', '.join(known)})" if known and len(known) <= 10 else ""
