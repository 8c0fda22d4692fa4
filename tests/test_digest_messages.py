"""Digests (several alerts of one group as one message) through every channel, against
real receivers: the headline counts by type, the busiest jobs, one line per member up to
50 and `and N more`, each target's size limits kept, hostile names escaped."""

from __future__ import annotations

import email
import email.policy
import io
import json
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.notify_fixtures import (
    FAKE_SECRET,
    HOSTILE_NAME,
    Receiver,
    SmtpServer,
    email_channel,
    make_event,
)
from watcher.clock import ManualClock
from watcher.config.channels import (
    AlertmanagerChannelConfig,
    ConsoleChannelConfig,
    PagerDutyChannelConfig,
    SlackChannelConfig,
    TeamsChannelConfig,
    WebhookChannelConfig,
)
from watcher.events import Event, EventType, IncidentRef, RuleRef
from watcher.notify.alertmanager import AlertmanagerChannel
from watcher.notify.base import Digest, Sent
from watcher.notify.console import ConsoleChannel
from watcher.notify.pagerduty import PagerDutyChannel
from watcher.notify.slack import SlackChannel, pack
from watcher.notify.teams import TeamsChannel, fit
from watcher.notify.templates import digest_headline
from watcher.notify.webhook import WebhookChannel

AT = 1_700_000_000.0
RULE = RuleRef(name="job", value=1800, source="job")
TEAMS_MESSAGE_LIMIT = 28 * 1024


def member(i: int, name: str | None = None) -> Event:
    """Member `i`: every fifth a duration breach, the others failures (the third of each
    job's failures so far, with its incident), jobs `job-0` .. `job-6`."""
    job = i % 7
    if i % 5 == 4:
        return make_event(
            EventType.RUN_DURATION_EXCEEDED,
            job_id=job,
            name=name or f"job-{job}",
            run_id=1000 + i,
            at=AT + i,
            rule=RULE,
        )
    event = make_event(job_id=job, name=name or f"job-{job}", run_id=1000 + i, at=AT + i)
    incident = IncidentRef(
        id=f"incident-{job}",
        key=f"prod/job/{job}/failed",
        kind="failure",
        state="open",
        opened_at=datetime.fromtimestamp(AT, UTC) - timedelta(hours=1),
        count=3,
    )
    return event.model_copy(update={"incident": incident})


def digest(n: int, name: str | None = None) -> Digest:
    return Digest(
        id=f"digest-{n}",
        events=[member(i, name) for i in range(n)],
        group={"workspace": "prod"},
    )


COUNTS = {
    3: "3 alerts in prod: 2 FAILED, 1 running too long",
    200: "200 alerts in prod: 160 FAILED, 40 running too long",
}


def small() -> Digest:
    """Three members: two failures of job-0 and job-1, a breach of job-4."""
    events = [member(0), member(1), member(4)]
    return Digest(id="digest-3", events=events, group={"workspace": "prod"})


def shape(n: int) -> Digest:
    return small() if n == 3 else digest(n)


def listed_total(lines: list[str], more_texts: list[str]) -> int:
    """Members listed one per line, plus those counted by `and N more`."""
    more = [int(m) for t in more_texts for m in re.findall(r"and (\d+) more", t)]
    return len(lines) + sum(more)


def test_headline_counts_by_type_and_names_the_group() -> None:
    events = list(small().events)
    assert digest_headline(events, {"workspace": "prod"}) == COUNTS[3]
    assert digest_headline(events, {"tag:team": "data"}) == (
        "3 alerts in prod (team=data): 2 FAILED, 1 running too long"
    )
    tests = [e.model_copy(update={"test": True}) for e in events[:2]]
    assert digest_headline(tests, {"job": "0"}) == "[TEST] 2 alerts for job-0 in prod: 2 FAILED"
    mixed = [events[0], events[1].model_copy(update={"workspace": "dev"})]
    assert digest_headline(mixed, {}) == "2 alerts in 2 workspaces: 2 FAILED"


# -- Slack -------------------------------------------------------------------------------


def slack(receiver: Receiver, clock: ManualClock) -> SlackChannel:
    return SlackChannel(
        "slack", SlackChannelConfig(type="slack", url=f"{receiver.url}/s"), clock=clock
    )


@pytest.mark.parametrize("n", [3, 200])
async def test_slack_digest(receiver: Receiver, clock: ManualClock, n: int) -> None:
    """One message: the headline as header, the busiest jobs, the members one line each
    (with their incident line and run link), `and N more` beyond 50; at most 50 blocks,
    sections within 3000 characters, every mrkdwn verbatim, every member counted."""
    channel = slack(receiver, clock)
    assert isinstance(await channel.send_digest(shape(n)), Sent)
    await channel.close()
    (request,) = receiver.requests
    body = request.json()
    blocks = body["blocks"]
    assert len(blocks) <= 50
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": COUNTS[n]}}
    assert body["text"] == COUNTS[n]
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    texts += [e["text"] for b in blocks if b["type"] == "context" for e in b["elements"]]
    assert all(len(t) <= 3000 for t in texts)
    mrkdwn = [b["text"] for b in blocks if b["type"] == "section"]
    mrkdwn += [e for b in blocks if b["type"] == "context" for e in b["elements"]]
    assert all(o["type"] == "mrkdwn" and o["verbatim"] is True for o in mrkdwn)
    lines = [line for t in texts for line in t.splitlines() if line.startswith("• ")]
    assert listed_total(lines, texts) == n
    assert lines[0] == (
        "• 22:13 UTC job-0 FAILED (run <https://adb-1234567890123456.7.azuredatabricks.net/"
        "?o=1234567890123456#job/0/run/1000|1000>): still failing (3rd failure since "
        "21:13 UTC)"
    )
    if n == 200:  # job-0 .. job-3 have 29 members, the other three 28
        assert texts[0] == "most alerts: job-0 (29), job-1 (29), job-2 (29), job-3 (29), job-4 (28)"
    else:  # one member per job: nobody stands out
        assert texts[0].startswith("• 22:13 UTC job-0 FAILED")
    assert texts[-1] == f"digest digest-{n}"
    if n == 200:
        assert len(lines) == 50
        assert "and 150 more" in texts


async def test_slack_digest_cuts_long_names(receiver: Receiver, clock: ManualClock) -> None:
    """5000-character names are cut (digest lines name a job in at most 100 characters):
    still at most 50 blocks of at most 3000 characters, every member counted."""
    channel = slack(receiver, clock)
    await channel.send_digest(digest(200, name="n" * 5000))
    await channel.close()
    blocks = receiver.requests[0].json()["blocks"]
    assert len(blocks) <= 50
    texts = [b["text"]["text"] for b in blocks if b["type"] == "section"]
    texts += [e["text"] for b in blocks if b["type"] == "context" for e in b["elements"]]
    assert all(len(t) <= 3000 for t in texts)
    lines = [line for t in texts for line in t.splitlines() if line.startswith("• ")]
    assert listed_total(lines, texts) == 200
    assert all(line.count("n") < 120 for line in lines)


def test_slack_packing_counts_what_does_not_fit() -> None:
    """Lines are packed into as few sections as their length allows; beyond the section
    budget they are counted, not dropped."""
    assert pack(["a" * 1000] * 7, limit=3000, sections=46) == (
        ["\n".join(["a" * 1000] * 2)] * 3 + ["a" * 1000],
        0,
    )
    texts, unfit = pack(["b" * 2999] * 100, limit=3000, sections=46)
    assert (len(texts), unfit) == (46, 54)


def test_teams_fit_counts_json_bytes() -> None:
    """The Teams budget counts the posted JSON: escaped backslashes cost two bytes."""
    assert fit(["x" * 99] * 10, 1000) == (["x" * 99] * 9, 1)  # 99 + 2 quotes + newline each
    assert fit(["\\" * 80] * 10, 1000)[1] == 4  # 163 bytes each: 6 fit


# -- Teams -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 200])
async def test_teams_digest(receiver: Receiver, clock: ManualClock, n: int) -> None:
    """One card: the headline, the busiest jobs, a list of members with links to their
    runs, `and N more`; under Teams' 28 KB; every member counted."""
    receiver.default = (202, {}, "")
    teams = TeamsChannel(
        "teams", TeamsChannelConfig(type="teams", url=f"{receiver.url}/w"), clock=clock
    )
    assert isinstance(await teams.send_digest(shape(n)), Sent)
    await teams.close()
    (request,) = receiver.requests
    assert len(request.body) < TEAMS_MESSAGE_LIMIT
    card = request.json()["attachments"][0]["content"]
    texts = [b["text"] for b in card["body"]]
    assert texts[0] == COUNTS[n]
    assert card["body"][0]["color"] == "Attention"
    lines = [line for t in texts for line in t.splitlines() if line.startswith("- ")]
    assert listed_total(lines, texts) == n
    assert lines[-1].startswith(f"- 22:{13 if n == 3 else 14} UTC job-")
    assert "([run 1000](https://adb-1234567890123456.7.azuredatabricks.net/" in lines[0]
    assert lines[0].endswith("#job/0/run/1000)): still failing (3rd failure since 21:13 UTC)")


# -- email -------------------------------------------------------------------------------


def received(smtp: SmtpServer) -> EmailMessage:
    raw = smtp.mailbox.envelopes[-1].original_content or b""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize("n", [3, 200])
async def test_email_digest(smtp: SmtpServer, clock: ManualClock, n: int) -> None:
    """One message: the headline as subject, Message-ID from the digest id, text and
    HTML listing up to 50 members then `and N more`."""
    assert await email_channel(smtp, clock).send_digest(shape(n)) == Sent()
    message = received(smtp)
    assert message["Subject"] == COUNTS[n]
    assert message["Message-ID"] == f"<digest-{n}@example.com>"
    assert message["X-Watcher-Digest-Count"] == str(n)
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None
    assert html is not None
    body = text.get_content()
    lines = [line for line in body.splitlines() if line.startswith("- ")]
    assert listed_total(lines, [body]) == n
    assert lines[0] == (
        "- 22:13 UTC job-0 FAILED (run 1000): still failing (3rd failure since 21:13 UTC)"
    )
    rows = html.get_content().count("<tr>")
    assert rows == min(n, 50)
    assert ("and 150 more" in html.get_content()) == (n == 200)


# -- webhook -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 200])
async def test_webhook_digest_is_one_signed_post(
    receiver: Receiver, now_clock: ManualClock, n: int
) -> None:
    """The watcher format posts every member in one body with `webhook-id` = the digest
    id, signed like any delivery."""
    config = WebhookChannelConfig.model_validate(
        {"type": "webhook", "url": f"{receiver.url}/h", "secret": FAKE_SECRET}
    )
    hook = WebhookChannel("hook", config, clock=now_clock)
    sent = shape(n)
    assert isinstance(await hook.send_digest(sent), Sent)
    await hook.close()
    (request,) = receiver.requests
    assert request.headers["webhook-id"] == f"digest-{n}"
    body = Webhook(FAKE_SECRET).verify(request.body, request.headers)
    assert {k: body[k] for k in ("version", "type", "id", "group", "count")} == {
        "version": 1,
        "type": "digest",
        "id": f"digest-{n}",
        "group": {"workspace": "prod"},
        "count": n,
    }
    assert [e["id"] for e in body["events"]] == [e.id for e in sent.events]
    assert body["events"][0]["incident"]["key"] == "prod/job/0/failed"


async def test_databricks_webhook_digest_posts_each_member(
    receiver: Receiver, clock: ManualClock
) -> None:
    """Databricks has no digests: each member is posted as Databricks would send it."""
    config = WebhookChannelConfig(type="webhook", url=f"{receiver.url}/h", format="databricks")
    hook = WebhookChannel("hook", config, clock=clock, workspace_ids={"prod": "99"})
    assert isinstance(await hook.send_digest(small()), Sent)
    await hook.close()
    assert [r.headers["webhook-id"] for r in receiver.requests] == [e.id for e in small().events]
    assert [r.json()["event_type"] for r in receiver.requests] == [
        "jobs.on_failure",
        "jobs.on_failure",
        "jobs.on_duration_warning_threshold_exceeded",
    ]


# -- console, PagerDuty, Alertmanager ------------------------------------------------------


@pytest.mark.parametrize("n", [3, 200])
async def test_console_digest(n: int) -> None:
    """The headline line, then each listed member's own line indented, then `and N more`."""
    stream = io.StringIO()
    console = ConsoleChannel("c", ConsoleChannelConfig(type="console"), stream=stream)
    assert isinstance(await console.send_digest(shape(n)), Sent)
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"digest digest-{n}: {COUNTS[n]}"
    members = [line for line in lines[1:] if line.startswith("  2023-")]
    assert listed_total(members, lines) == n
    assert "[still failing (3rd failure since 21:13 UTC)]" in members[0]


async def test_pagerduty_and_alertmanager_take_digests_member_by_member(
    make_receiver: Any, clock: ManualClock
) -> None:
    """Neither has digests: each member goes out as its own event, on its own key."""
    pd_receiver: Receiver = await make_receiver(default=(202, {}, '{"status":"success"}'))
    am_receiver: Receiver = await make_receiver(default=(200, {}, ""))
    pd = PagerDutyChannel(
        "pd",
        PagerDutyChannelConfig(type="pagerduty", routing_key="k", url=f"{pd_receiver.url}/e"),
        clock=clock,
    )
    am = AlertmanagerChannel(
        "am", AlertmanagerChannelConfig(type="alertmanager", url=am_receiver.url), clock=clock
    )
    for channel in (pd, am):
        assert isinstance(await channel.send_digest(small()), Sent)
        await channel.close()
    assert [r.json()["dedup_key"] for r in pd_receiver.requests] == [
        "prod/job/0/failed",
        "prod/job/1/failed",
        "prod/job/4/duration/job",
    ]
    alerts = [r.json()[0]["labels"]["alertname"] for r in am_receiver.requests]
    assert alerts == ["DatabricksJobFailed", "DatabricksJobFailed", "DatabricksRunDurationExceeded"]


# -- hostile names -----------------------------------------------------------------------


def hostile() -> Digest:
    return digest(3, name=HOSTILE_NAME + "x" * 100_000)


async def test_hostile_names_in_digests_stay_text(
    receiver: Receiver, smtp: SmtpServer, clock: ManualClock
) -> None:
    """A name with CR/LF, HTML, mentions, links and markdown is escaped in every digest
    as in single alerts: no mention or link in Slack, no emphasis or link in Teams, no
    header or tag in email, one line per member on the console."""
    slack_channel = slack(receiver, clock)
    await slack_channel.send_digest(hostile())
    await slack_channel.close()
    slack_text = json.dumps(receiver.requests[0].json())
    assert "<!channel>" not in slack_text
    assert "&lt;!channel&gt;" in slack_text

    receiver.default = (202, {}, "")
    teams = TeamsChannel(
        "teams", TeamsChannelConfig(type="teams", url=f"{receiver.url}/w"), clock=clock
    )
    await teams.send_digest(hostile())
    await teams.close()
    card = receiver.requests[1].json()["attachments"][0]["content"]
    teams_lines = "\n".join(block["text"] for block in card["body"])
    assert "\\*bold\\*" in teams_lines
    assert "\\[link" in teams_lines  # the digest cuts names at 100 characters
    assert re.search(r"(?<!\\)\[link", teams_lines) is None
    assert len(receiver.requests[1].body) < TEAMS_MESSAGE_LIMIT

    await email_channel(smtp, clock).send_digest(hostile())
    message = received(smtp)
    assert message["Bcc"] is None
    assert smtp.mailbox.envelopes[0].rcpt_tos == ["oncall@example.com"]
    html = message.get_body(("html",))
    assert html is not None
    assert "<script>" not in html.get_content()
    assert "&lt;script&gt;" in html.get_content()

    stream = io.StringIO()
    console = ConsoleChannel("c", ConsoleChannelConfig(type="console"), stream=stream)
    await console.send_digest(hostile())
    assert len(stream.getvalue().splitlines()) == 1 + 3
