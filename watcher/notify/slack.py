"""Slack incoming webhook: a fallback `text` plus blocks (header, mrkdwn details, context,
a button to the run), each cut to Slack's limits. The URL is a secret and never logged."""

from __future__ import annotations

from typing import Any

from watcher.config.channels import SlackChannelConfig
from watcher.events import Event
from watcher.notify.http import ChatChannel
from watcher.notify.templates import context, headline
from watcher.notify.text import slack_escape, truncate

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
TEXT_LIMIT = 3000
URL_LIMIT = 3000


def slack_accepts(status: int, body: str) -> str | None:
    """Slack's incoming webhooks answer 200 with the body `ok` (errors are 4xx/5xx with a
    code such as `invalid_payload`): any other 2xx, an HTML page of a proxy or a login
    portal, did not come from Slack. Slack-compatible servers (Mattermost) answer `ok` too."""
    return None if body.strip() == "ok" else "Slack answers `ok`"


def _plain(text: str) -> dict[str, str]:
    # plain_text is never parsed for mrkdwn, links or mentions.
    return {"type": "plain_text", "text": text}


class SlackChannel(ChatChannel[SlackChannelConfig]):
    accepts = staticmethod(slack_accepts)
    details = ("slack.md.j2", "slack")

    def payload(self, event: Event) -> dict[str, Any]:
        values = context(event)
        head = headline(event)
        footer = f"{values['workspace']} · {values['type']} · event {values['event_id']}"
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": truncate(head, HEADER_LIMIT)},
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": truncate(self._details.render(event), SECTION_LIMIT),
                },
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": slack_escape(footer)}]},
        ]
        url = values["run_page_url"]
        if url and len(url) <= URL_LIMIT:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "text": {"type": "plain_text", "text": "Open run"},
                            "url": url,
                        }
                    ],
                }
            )
        return {"text": truncate(slack_escape(head), TEXT_LIMIT), "blocks": blocks}
