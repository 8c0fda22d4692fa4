"""Building channels from the configuration (templates are compiled and checked here, so a
broken template is a start-up error naming its field) and closing them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TextIO

from watcher.clock import Clock
from watcher.config import RoutingConfig
from watcher.config.channels import (
    AlertmanagerChannelConfig,
    ChannelConfig,
    ConsoleChannelConfig,
    EmailChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    TeamsChannelConfig,
    WebhookChannelConfig,
)
from watcher.notify.alertmanager import AlertmanagerChannel
from watcher.notify.base import Channel
from watcher.notify.console import ConsoleChannel
from watcher.notify.email import EmailChannel
from watcher.notify.pagerduty import PagerDutyChannel
from watcher.notify.slack import SlackChannel
from watcher.notify.teams import TeamsChannel
from watcher.notify.webhook import WebhookChannel


def build_channel(
    name: str,
    config: ChannelConfig,
    *,
    clock: Clock,
    stream: TextIO | None = None,
    workspace_ids: Mapping[str, str] | None = None,
) -> Channel:
    """One channel. Raises `InvalidTemplate` for a configured template that does not work."""
    match config:
        case ConsoleChannelConfig():
            return ConsoleChannel(name, config, stream=stream)
        case EmailChannelConfig():
            return EmailChannel(name, config, clock=clock)
        case WebhookChannelConfig():
            return WebhookChannel(name, config, clock=clock, workspace_ids=workspace_ids)
        case SlackChannelConfig():
            return SlackChannel(name, config, clock=clock)
        case TeamsChannelConfig():
            return TeamsChannel(name, config, clock=clock)
        case PagerDutyChannelConfig():
            return PagerDutyChannel(name, config, clock=clock)
        case AlertmanagerChannelConfig():
            return AlertmanagerChannel(name, config, clock=clock)


def build_channels(
    config: RoutingConfig,
    *,
    clock: Clock,
    stream: TextIO | None = None,
    workspace_ids: Mapping[str, str] | None = None,
) -> dict[str, Channel]:
    """Every configured channel by name. `stream` replaces stdout/stderr of console channels;
    `workspace_ids` (workspace name -> id, see `payloads.workspace_ids`) is what
    Databricks-format webhooks send as the workspace id (without it, the name)."""
    return {
        name: build_channel(name, channel, clock=clock, stream=stream, workspace_ids=workspace_ids)
        for name, channel in config.channels.items()
    }


async def close_channels(channels: Mapping[str, Channel]) -> None:
    """Close every channel's connections, even when some fail to close."""
    await asyncio.gather(*(c.close() for c in channels.values()), return_exceptions=True)
