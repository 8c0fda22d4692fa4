"""Microsoft Teams through a Workflows webhook: a message with one Adaptive Card, kept under
Teams' 28 KB message limit. The URL is a secret and never logged."""

from __future__ import annotations

from typing import Any

from watcher.config.channels import TeamsChannelConfig
from watcher.events import Event, EventType
from watcher.notify.http import ChatChannel
from watcher.notify.templates import context, headline
from watcher.notify.text import markdown_escape, truncate, truncate_bytes

CARD_TEXT_LIMIT = 20_000  # bytes: the whole message must stay under 28 KB
_TITLE_LIMIT = 300
_COLOURS: dict[str, str] = {
    EventType.RUN_FAILED: "Attention",
    EventType.RUN_DURATION_EXCEEDED: "Warning",
    EventType.RUN_CANCELED: "Warning",
    EventType.RUN_SKIPPED: "Warning",
    EventType.RUN_SUCCEEDED: "Good",
    EventType.JOB_RECOVERED: "Good",
}


def teams_accepts(status: int, body: str) -> str | None:
    """A Workflows webhook answers 202 Accepted (empty body); the retired Office 365
    connectors answered 200 with `1`, and their errors as 200 with a message. So 202, or
    any 2xx with an empty body or `1`; a 2xx with another body (a proxy's HTML page, a
    connector's error text) is not an acceptance."""
    if status == 202 or body.strip() in ("", "1"):
        return None
    return "Workflows answer 202, connectors `1`"


class TeamsChannel(ChatChannel[TeamsChannelConfig]):
    accepts = staticmethod(teams_accepts)
    details = ("teams.md.j2", "markdown")

    def payload(self, event: Event) -> dict[str, Any]:
        values = context(event)
        head = headline(event)
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {
                    "type": "TextBlock",
                    "text": markdown_escape(truncate(head, _TITLE_LIMIT)),
                    "size": "Large",
                    "weight": "Bolder",
                    "color": _COLOURS.get(event.type, "Default"),
                    "wrap": True,
                },
                {
                    "type": "TextBlock",
                    "text": truncate_bytes(self._details.render(event), CARD_TEXT_LIMIT),
                    "wrap": True,
                },
            ],
            "msteams": {"width": "Full"},
        }
        if values["run_page_url"]:
            card["actions"] = [
                {"type": "Action.OpenUrl", "title": "Open run", "url": values["run_page_url"]}
            ]
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": card,
                }
            ],
        }
