"""What notify reads of the configuration: the routing slice (`RoutingConfig`: channels,
routes, silences, destinations) and, for Databricks-format webhooks and the test alert,
the workspaces. Entry points also take the root configuration while its callers move to
the slice; `routing_of` and `workspaces_of` read either."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from watcher.config import RoutingConfig, WorkspaceConfig


class WholeConfig(Protocol):
    """The root configuration, as far as notify reads it."""

    @property
    def routing(self) -> RoutingConfig: ...

    @property
    def workspaces(self) -> Sequence[WorkspaceConfig]: ...


NotifyConfig = RoutingConfig | WholeConfig
"""The routing slice, or (during the transition) the root configuration it comes from."""


def routing_of(config: NotifyConfig) -> RoutingConfig:
    return config if isinstance(config, RoutingConfig) else config.routing


def workspaces_of(config: NotifyConfig) -> Sequence[WorkspaceConfig]:
    """The configured workspaces; none for the routing slice alone."""
    return () if isinstance(config, RoutingConfig) else config.workspaces
