"""Microsoft Teams through a Workflows webhook: a message with one Adaptive Card, kept under
Teams' 28 KB message limit. The URL is a secret and never logged.

Names and messages are escaped for what the Adaptive Card Markdown subset interprets
(`watcher.notify.text.markdown_escape`): emphasis, links and list markers, not every
punctuation mark, so `my_job` and `nightly-etl` show as typed.

A digest is one card: the headline, the jobs with most alerts, then the members as a list,
one line each, within the same byte budget; members that do not fit are counted (`and 150
more`)."""

from __future__ import annotations

import json
from typing import Any

from watcher.config.channels import TeamsChannelConfig
from watcher.events import Event, EventType
from watcher.notify.base import Digest, Result
from watcher.notify.http import ChatChannel
from watcher.notify.templates import DigestItem, context, headline, summarize
from watcher.notify.text import markdown_escape, truncate, truncate_bytes

CARD_TEXT_LIMIT = 20_000  # bytes: the whole message must stay under 28 KB
_TITLE_LIMIT = 300
_URL_LIMIT = 500
_COLOURS: dict[str, str] = {
    EventType.RUN_FAILED: "Attention",
    EventType.RUN_DURATION_EXCEEDED: "Warning",
    EventType.RUN_STUCK: "Warning",
    EventType.RUN_CANCELED: "Warning",
    EventType.RUN_SKIPPED: "Warning",
    EventType.RUN_SUCCEEDED: "Good",
    EventType.JOB_RECOVERED: "Good",
    EventType.INCIDENT_RESOLVED: "Good",
}


def teams_accepts(status: int, body: str) -> str | None:
    """A Workflows webhook answers 202 Accepted (empty body); the retired Office 365
    connectors answered 200 with `1`, and their errors as 200 with a message. So 202, or
    any 2xx with an empty body or `1`; a 2xx with another body (a proxy's HTML page, a
    connector's error text) is not an acceptance."""
    if status == 202 or body.strip() in ("", "1"):
        return None
    return "Workflows answer 202, connectors `1`"


def _text_block(text: str, **options: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **options}


def _title(text: str, colour: str) -> dict[str, Any]:
    return _text_block(text, size="Large", weight="Bolder", color=colour)


def _message(card_body: list[dict[str, Any]], url: str | None) -> dict[str, Any]:
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": card_body,
        "msteams": {"width": "Full"},
    }
    if url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open run", "url": url}]
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


def _link(url: str | None, text: str) -> str:
    """`[text](url)`, or the text alone for a URL that is too long or could end the link
    early."""
    if not url or len(url) > _URL_LIMIT or any(c in url for c in "()[]<> \n\\"):
        return text
    return f"[{text}]({url})"


def digest_line(item: DigestItem) -> str:
    """One list item: `- 02:10 UTC nightly-etl FAILED ([run 1001](url)): still failing ...`."""
    mark = "\\[TEST\\] " if item.test else ""
    run = _link(item.url, f"run {item.run_id}")
    note = f": {markdown_escape(item.note)}" if item.note else ""
    return f"- {item.at} {mark}{markdown_escape(item.name)} {item.verb} ({run}){note}"


def _json_bytes(text: str) -> int:
    # What a line costs in the posted JSON (escaped backslashes and quotes count twice).
    return len(json.dumps(text, ensure_ascii=False).encode())


def fit(lines: list[str], budget: int) -> tuple[list[str], int]:
    """The leading `lines` whose JSON encoding fits in `budget` bytes, and how many did
    not fit."""
    used = 0
    for i, line in enumerate(lines):
        used += _json_bytes(line) + 1
        if used > budget:
            return lines[:i], len(lines) - i
    return lines, 0


class TeamsChannel(ChatChannel[TeamsChannelConfig]):
    accepts = staticmethod(teams_accepts)
    details = ("teams.md.j2", "markdown")

    def payload(self, event: Event) -> dict[str, Any]:
        values = context(event)
        colour = _COLOURS.get(event.type, "Default")
        body = [
            _title(markdown_escape(headline(event, _TITLE_LIMIT)), colour),
            _text_block(truncate_bytes(self._details.render(event), CARD_TEXT_LIMIT)),
        ]
        return _message(body, values["run_page_url"])

    def digest_payload(self, digest: Digest) -> dict[str, Any]:
        summary = summarize(digest.events, digest.group)
        lines, unfit = fit([digest_line(i) for i in summary.items], CARD_TEXT_LIMIT)
        failing = any(e.type == EventType.RUN_FAILED for e in digest.events)
        head = truncate(summary.headline, _TITLE_LIMIT, marker="…")
        body = [_title(markdown_escape(head), "Attention" if failing else "Default")]
        if summary.top_line:
            body.append(_text_block(markdown_escape(summary.top_line)))
        if lines:
            body.append(_text_block("\n".join(lines)))
        more = summary.more + unfit
        if more:
            body.append(_text_block(f"and {more} more"))
        body.append(_text_block(f"digest {digest.id}", isSubtle=True, size="Small"))
        return _message(body, None)

    async def send_digest(self, digest: Digest) -> Result:
        """One card for the whole digest (see the module docstring)."""
        return await self.post(self.encode(self.digest_payload(digest)))
