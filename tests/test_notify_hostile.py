"""Hostile job names and messages (CR/LF, HTML, Slack mrkdwn, Jinja syntax, 100 kB) are
delivered safely to real receivers and cut to each target's limits with a marker."""

from __future__ import annotations

import email
import email.policy
import io
import json
from email.message import EmailMessage

import pytest
import structlog

from tests.notify_fixtures import HOSTILE_NAME, Receiver, SmtpServer, make_event
from watcher.clock import ManualClock
from watcher.config.channels import (
    ConsoleChannelConfig,
    EmailChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    TeamsChannelConfig,
    WebhookChannelConfig,
)
from watcher.events import Event, EventType
from watcher.notify.base import Sent
from watcher.notify.console import ConsoleChannel
from watcher.notify.email import EmailChannel
from watcher.notify.pagerduty import PagerDutyChannel
from watcher.notify.slack import SlackChannel
from watcher.notify.teams import TeamsChannel
from watcher.notify.templates import InvalidTemplate, Template
from watcher.notify.text import MARKER
from watcher.notify.webhook import WebhookChannel

HUGE = "x" * 100_000


def hostile(huge: bool = False) -> Event:
    return make_event(
        name=HOSTILE_NAME + (HUGE if huge else ""),
        message=HOSTILE_NAME + HUGE,
        tags={"team\r\nX-Evil: 1": "<b>ml</b>"},
    )


@pytest.mark.parametrize("huge", [False, True])
async def test_email_cannot_be_injected(smtp: SmtpServer, clock: ManualClock, huge: bool) -> None:
    """CR/LF in a job name adds no header and no recipient; the HTML part is escaped;
    Jinja syntax stays text; a 100 kB name gives a short subject ending in the marker."""
    config = EmailChannelConfig(
        type="email",
        host="127.0.0.1",
        port=smtp.port,
        security="none",
        sender="watcher@example.com",
        recipients=["oncall@example.com"],
    )
    assert isinstance(await EmailChannel("mail", config, clock=clock).send(hostile(huge)), Sent)
    (envelope,) = smtp.mailbox.envelopes
    assert envelope.rcpt_tos == ["oncall@example.com"]
    raw = envelope.original_content or b""
    assert len(raw) < 60_000
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Bcc"] is None
    assert message["X-Evil"] is None
    subject = str(message["Subject"])
    assert "\n" not in subject
    assert "\r" not in subject
    assert len(subject) <= 250
    assert (MARKER in subject) == huge
    assert "{{ 7*7 }}" in subject
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None
    assert text is not None
    html_content = html.get_content()
    assert "<script>" not in html_content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_content
    assert "{{ 7*7 }}" in html_content
    assert "49" not in html_content
    assert MARKER in text.get_content()  # the 100 kB state message was cut


@pytest.mark.parametrize("huge", [False, True])
async def test_slack_mentions_and_links_are_escaped(
    receiver: Receiver, clock: ManualClock, huge: bool
) -> None:
    """`<!channel>` and `<url|text>` cannot be smuggled in; every block stays within
    Slack's limits (header 150, section 3000) with a visible marker when cut."""
    config = SlackChannelConfig(type="slack", url=f"{receiver.url}/services/fake")
    slack = SlackChannel("slack", config, clock=clock)
    await slack.send(hostile(huge))
    await slack.close()
    body = receiver.requests[0].json()
    section = body["blocks"][1]["text"]["text"]
    assert "<!channel>" not in section
    assert "&lt;!channel&gt;" in section
    assert "<script>" not in section
    assert "<!channel>" not in body["text"]
    assert len(body["blocks"][0]["text"]["text"]) <= 150
    assert len(section) <= 3000
    assert MARKER in section
    assert len(body["text"]) <= 3000
    assert "{{ 7*7 }}" in section


async def test_slack_section_is_cut_at_its_limit(receiver: Receiver, clock: ManualClock) -> None:
    """Even a template that prints the raw 100 kB name yields a section of at most 3000
    characters ending with the marker."""
    config = SlackChannelConfig(
        type="slack", url=f"{receiver.url}/services/fake", text_template="{{ event.job.name }}"
    )
    slack = SlackChannel("slack", config, clock=clock)
    await slack.send(hostile(huge=True))
    await slack.close()
    section = receiver.requests[0].json()["blocks"][1]["text"]["text"]
    assert len(section) == 3000
    assert section.endswith(MARKER)


async def test_teams_card_stays_under_the_message_limit(
    receiver: Receiver, clock: ManualClock
) -> None:
    """A 100 kB name and message still make a card under Teams' 28 KB, with the
    markdown the card would interpret (emphasis, links) escaped."""
    config = TeamsChannelConfig(type="teams", url=f"{receiver.url}/workflows/fake")
    teams = TeamsChannel("teams", config, clock=clock)
    await teams.send(hostile(huge=True))
    await teams.close()
    request = receiver.requests[0]
    assert len(request.body) < 28 * 1024
    details = request.json()["attachments"][0]["content"]["body"][1]["text"]
    assert "\\[link\\](https://phish.example)" in details
    assert "\\*bold\\*" in details
    assert "[link]" not in details.replace("\\[link\\]", "")
    assert "truncated" in details


async def test_teams_text_is_cut_in_bytes(receiver: Receiver, clock: ManualClock) -> None:
    """A template printing 100 kB of multi-byte text is cut to the card's byte budget."""
    config = TeamsChannelConfig(
        type="teams", url=f"{receiver.url}/workflows/fake", text_template="{{ event.job.name }}"
    )
    teams = TeamsChannel("teams", config, clock=clock)
    await teams.send(make_event(name="é" * 100_000))
    await teams.close()
    request = receiver.requests[0]
    assert len(request.body) < 28 * 1024
    assert request.json()["attachments"][0]["content"]["body"][1]["text"].endswith(MARKER)


async def test_pagerduty_summary_is_one_bounded_line(
    receiver: Receiver, clock: ManualClock
) -> None:
    """The PagerDuty summary is a single line of at most 1024 characters."""
    receiver.default = (202, {}, "{}")
    config = PagerDutyChannelConfig(
        type="pagerduty", routing_key="fake-key", url=f"{receiver.url}/v2/enqueue"
    )
    pd = PagerDutyChannel("pd", config, clock=clock)
    await pd.send(hostile(huge=True))
    await pd.close()
    payload = receiver.requests[0].json()["payload"]
    assert len(payload["summary"]) <= 1024
    assert "\n" not in payload["summary"]
    assert "\r" not in payload["summary"]
    assert len(payload["component"]) <= 255


async def test_webhook_carries_the_name_verbatim_as_json(
    receiver: Receiver, clock: ManualClock
) -> None:
    """Our own payload carries the data unchanged (JSON-encoded): the receiver decides."""
    config = WebhookChannelConfig(type="webhook", url=f"{receiver.url}/hook")
    hook = WebhookChannel("hook", config, clock=clock)
    await hook.send(hostile())
    await hook.close()
    assert json.loads(receiver.requests[0].body)["job"]["name"] == HOSTILE_NAME


async def test_console_line_stays_one_line() -> None:
    """A name with CR/LF cannot start a new console line."""
    stream = io.StringIO()
    console = ConsoleChannel("c", ConsoleChannelConfig(type="console"), stream=stream)
    await console.send(hostile(huge=True))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert len(lines[0]) <= 2000


def test_templates_cannot_reach_python_internals() -> None:
    """Configured templates run sandboxed: reaching for internals is a start-up error
    naming the field."""
    with pytest.raises(InvalidTemplate, match=r"channels\.x\.text_template"):
        Template(
            "console.txt.j2",
            flavour="text",
            override="{{ job_name.__class__.__mro__ }}",
            field="channels.x.text_template",
        )
    with pytest.raises(InvalidTemplate, match="unknown"):
        Template("console.txt.j2", flavour="text", override="{{ unknown }}", field="f")


def test_a_template_failing_at_runtime_falls_back_to_the_default() -> None:
    """An override that fails on a particular event still yields the default text (and
    a warning), never a lost alert."""
    template = Template(
        "console.txt.j2",
        flavour="text",
        override="{{ rule.name }} broke",
        field="channels.console.text_template",
    )
    with structlog.testing.capture_logs() as logs:
        text = template.render(make_event(EventType.RUN_FAILED))
    assert "run_failed" in text
    assert [entry["event"] for entry in logs] == ["template_failed"]
