"""Slack incoming webhook: a fallback `text` plus blocks (header, mrkdwn details, context,
a button to the run), each cut to Slack's limits. The URL is a secret and never logged.

Every mrkdwn text object is `verbatim`: Slack then links only what the message links
itself (`<url|text>`), never a URL, #channel or @name that appears in a job's data. A
header keeps its verb when it is cut: the job name is shortened instead.

A digest is one message: a header with the headline (`12 alerts in prod: 10 FAILED, ...`),
the jobs with most alerts, then the members one line each, packed into sections of at
most 3000 characters and at most 50 blocks in all; members that do not fit are counted
(`and 150 more`)."""

from __future__ import annotations

from typing import Any

from watcher.config.channels import SlackChannelConfig
from watcher.events import Event
from watcher.notify.base import Digest, Result
from watcher.notify.http import ChatChannel
from watcher.notify.templates import DigestItem, context, headline, summarize
from watcher.notify.text import slack_escape, truncate

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
TEXT_LIMIT = 3000
URL_LIMIT = 3000
BLOCK_LIMIT = 50
DIGEST_URL_LIMIT = 500  # a digest line links its run only when the URL is a usual one
_DIGEST_FIXED_BLOCKS = 4  # header, top jobs, "and N more", footer


def slack_accepts(status: int, body: str) -> str | None:
    """Slack's incoming webhooks answer 200 with the body `ok` (errors are 4xx/5xx with a
    code such as `invalid_payload`): any other 2xx, an HTML page of a proxy or a login
    portal, did not come from Slack. Slack-compatible servers (Mattermost) answer `ok` too."""
    return None if body.strip() == "ok" else "Slack answers `ok`"


def _plain(text: str) -> dict[str, str]:
    # plain_text is never parsed for mrkdwn, links or mentions.
    return {"type": "plain_text", "text": text}


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: no automatic links for URLs, channels or names found in the text.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": _plain(text)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(truncate(text, SECTION_LIMIT))}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [_mrkdwn(truncate(text, SECTION_LIMIT))]}


def _link(url: str | None, text: str) -> str:
    """`<url|text>`, or the text alone for a URL that is too long or could break out of
    the link."""
    if not url or len(url) > DIGEST_URL_LIMIT or any(c in url for c in "|<> \n"):
        return text
    return f"<{slack_escape(url)}|{text}>"


def digest_line(item: DigestItem) -> str:
    """One member: `• 02:10 UTC nightly-etl FAILED (run <url|1001>): still failing ...`."""
    mark = "[TEST] " if item.test else ""
    run = _link(item.url, str(item.run_id))
    note = f": {slack_escape(item.note)}" if item.note else ""
    return f"• {item.at} {mark}{slack_escape(item.name)} {item.verb} (run {run}){note}"


def pack(lines: list[str], *, limit: int, sections: int) -> tuple[list[str], int]:
    """`lines` joined into at most `sections` texts of at most `limit` characters each
    (a line longer than `limit` gets one text, cut later); and how many lines did not
    fit."""
    texts: list[str] = []
    for i, line in enumerate(lines):
        if texts and len(texts[-1]) + 1 + len(line) <= limit:
            texts[-1] += "\n" + line
        elif len(texts) < sections:
            texts.append(line)
        else:
            return texts, len(lines) - i
    return texts, 0


class SlackChannel(ChatChannel[SlackChannelConfig]):
    accepts = staticmethod(slack_accepts)
    details = ("slack.md.j2", "slack")

    def payload(self, event: Event) -> dict[str, Any]:
        values = context(event)
        head = headline(event, HEADER_LIMIT)
        footer = f"{values['workspace']} · {values['type']} · event {values['event_id']}"
        blocks: list[dict[str, Any]] = [
            _header(head),
            _section(self._details.render(event)),
            _context(slack_escape(footer)),
        ]
        url = values["run_page_url"]
        if url and len(url) <= URL_LIMIT:
            blocks.append(
                {
                    "type": "actions",
                    "elements": [{"type": "button", "text": _plain("Open run"), "url": url}],
                }
            )
        return {"text": truncate(slack_escape(headline(event)), TEXT_LIMIT), "blocks": blocks}

    def digest_payload(self, digest: Digest) -> dict[str, Any]:
        summary = summarize(digest.events, digest.group)
        lines = [digest_line(item) for item in summary.items]
        room = BLOCK_LIMIT - _DIGEST_FIXED_BLOCKS
        sections, unfit = pack(lines, limit=SECTION_LIMIT, sections=room)
        blocks = [_header(truncate(summary.headline, HEADER_LIMIT, marker="…"))]
        if summary.top_line:
            blocks.append(_section(slack_escape(summary.top_line)))
        blocks.extend(_section(text) for text in sections)
        more = summary.more + unfit
        if more:
            blocks.append(_context(f"and {more} more"))
        blocks.append(_context(slack_escape(f"digest {digest.id}")))
        return {"text": truncate(slack_escape(summary.headline), TEXT_LIMIT), "blocks": blocks}

    async def send_digest(self, digest: Digest) -> Result:
        """One message for the whole digest (see the module docstring)."""
        return await self.post(self.encode(self.digest_payload(digest)))
