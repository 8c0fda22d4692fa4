"""What channels say about incidents: the incident line of chat, email, console and
summaries; Slack headers and verbatim text; Teams escaping; PagerDuty dedup keys and
resolves; Alertmanager times; the webhook's incident object; test alerts that resolve."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.notify_fixtures import (
    Receiver,
    SmtpServer,
    alertmanager_channel,
    email_channel,
    make_event,
    pagerduty_channel,
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
from watcher.events import Event, EventType, IncidentRef, RuleRef, Streak
from watcher.notify.alertmanager import RESOLVE_SKEW
from watcher.notify.base import Sent
from watcher.notify.console import ConsoleChannel
from watcher.notify.slack import HEADER_LIMIT, SlackChannel
from watcher.notify.teams import TeamsChannel
from watcher.notify.templates import context, headline, incident_line, title
from watcher.notify.text import markdown_escape, ordinal
from watcher.notify.webhook import WebhookChannel

AT = 1_700_000_000.0  # 2023-11-14T22:13:20Z, make_event's default time
OCCURRED = datetime.fromtimestamp(AT, UTC)
OPENED = OCCURRED - timedelta(minutes=42)  # 21:31:20 UTC
DURATION_RULE = RuleRef(name="job", value=1800, source="job")


def incident(
    kind: str = "failure",
    *,
    count: int = 1,
    resolved: str | None = None,
    key: str = "prod/job/42/failed",
    opened: datetime = OPENED,
) -> IncidentRef:
    """The job's incident as it stands after an event; `resolved` is the cause."""
    return IncidentRef.model_validate(
        {
            "id": "11111111-1111-5111-8111-111111111111",
            "key": key,
            "kind": kind,
            "state": "resolved" if resolved else "open",
            "opened_at": opened,
            "count": count,
            "resolved_at": OCCURRED if resolved else None,
            "cause": resolved,
        }
    )


def with_incident(event: Event, ref: IncidentRef | None, **update: Any) -> Event:
    return event.model_copy(update={"incident": ref, **update})


def failing(count: int = 3, repeat: int = 0) -> Event:
    streak = Streak(consecutive_failures=count, last_success_at=OPENED - timedelta(hours=1))
    return with_incident(make_event(), incident(count=count), streak=streak, repeat=repeat)


def breach() -> Event:
    return make_event(EventType.RUN_DURATION_EXCEEDED, rule=DURATION_RULE, run_id=7)


def duration_incident(**options: Any) -> IncidentRef:
    return incident("duration", key="prod/job/42/duration/job", **options)


def run_ended() -> Event:
    """The duration incident resolved because its runs ended (an `incident_resolved`
    carrying no rule, as an operator's resolve would not either)."""
    event = make_event(EventType.INCIDENT_RESOLVED, run_id=7)
    return with_incident(event, duration_incident(count=2, resolved="run_ended"))


# -- texts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"),
     (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")],
)  # fmt: skip
def test_ordinals(n: int, expected: str) -> None:
    assert ordinal(n) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (make_event(), None),
        (with_incident(make_event(), incident()), None),
        (failing(3), "still failing (3rd failure since 21:31 UTC)"),
        (failing(1, repeat=2), "reminder 2: still failing since 21:31 UTC"),
        (failing(4, repeat=1), "reminder 1: still failing (4th failure since 21:31 UTC)"),
        (
            with_incident(breach(), duration_incident(count=2)),
            "still running too long (2nd breach since 21:31 UTC)",
        ),
        (
            with_incident(
                make_event(EventType.JOB_RECOVERED), incident(count=3, resolved="recovered")
            ),
            "resolved after 42m 0s (3 failures since 21:31 UTC)",
        ),
        (
            run_ended(),
            "resolved after 42m 0s: every run over the limit has ended (2 breaches since "
            "21:31 UTC)",
        ),
        (
            with_incident(
                make_event(EventType.INCIDENT_RESOLVED),
                incident("unreadable", resolved="manual", key="prod/job/42/unreadable/run/1"),
            ),
            "resolved after 42m 0s by an operator (seen 1 time since 21:31 UTC)",
        ),
        (
            with_incident(make_event(), incident(count=2, opened=OCCURRED - timedelta(days=1))),
            "still failing (2nd failure since 2023-11-13 22:13 UTC)",
        ),
    ],
)
def test_incident_line(event: Event, expected: str | None) -> None:
    """The sentence every channel shows: nothing for an event that opened its incident,
    the count and opening time while it stays open, the reminder number, and how long it
    lasted and why it ended once resolved (the date when it opened on another day)."""
    assert incident_line(event) == expected
    assert context(event)["incident_line"] == expected


def test_resolved_titles_read_as_sentences() -> None:
    """An incident_resolved says what ended: the runs over the limit, or an operator."""
    assert title(run_ended()) == "nightly-etl is no longer running too long"
    manual = with_incident(
        make_event(EventType.INCIDENT_RESOLVED), incident(count=2, resolved="manual")
    )
    assert title(manual) == "nightly-etl failure alert resolved by an operator"


def test_context_exposes_incident_and_streak() -> None:
    """Templates see the incident (with ordinal, opening time, duration) and the streak."""
    values = context(failing(3))
    assert values["incident"] == {
        "id": "11111111-1111-5111-8111-111111111111",
        "key": "prod/job/42/failed",
        "kind": "failure",
        "state": "open",
        "count": 3,
        "ordinal": "3rd",
        "opened_at": "2023-11-14T21:31:20Z",
        "opened_at_hm": "21:31 UTC",
        "resolved_at": None,
        "resolved_after": None,
        "cause": None,
    }
    assert values["streak"] == {
        "consecutive_failures": 3,
        "last_success_at": "2023-11-14T20:31:20Z",
        "since_success": "1h 42m 0s",
    }
    assert values["repeat"] == 0
    resolved = context(run_ended())["incident"]
    assert resolved["resolved_after"] == "42m 0s"
    assert resolved["cause"] == "run_ended"
    assert context(make_event())["incident"] is None
    assert context(make_event())["streak"] is None


# -- Slack -------------------------------------------------------------------------------


def mrkdwn_objects(node: Any) -> list[dict[str, Any]]:
    """Every `{"type": "mrkdwn", ...}` text object anywhere in a Slack payload."""
    if isinstance(node, list):
        return [found for item in node for found in mrkdwn_objects(item)]
    if not isinstance(node, dict):
        return []
    here = [node] if node.get("type") == "mrkdwn" else []
    return here + [found for value in node.values() for found in mrkdwn_objects(value)]


async def test_slack_long_name_keeps_the_verb(receiver: Receiver, clock: ManualClock) -> None:
    """A 171-character job name is cut in the header, not its verb: the failure and the
    recovery of that job have different headers, each within Slack's 150."""
    name = "very-long-job-name-" * 9
    slack = SlackChannel(
        "slack", SlackChannelConfig(type="slack", url=f"{receiver.url}/s"), clock=clock
    )
    await slack.send(make_event(name=name))
    await slack.send(make_event(EventType.JOB_RECOVERED, name=name, test=True))
    await slack.close()
    failed, recovered = (r.json()["blocks"][0]["text"]["text"] for r in receiver.requests)
    assert failed != recovered
    assert failed.endswith("… FAILED")
    assert recovered.startswith("[TEST] very-long-job-name-")
    assert recovered.endswith("… recovered")
    assert len(failed) == len(recovered) == HEADER_LIMIT
    assert headline(make_event(name=name)) == name + " FAILED"  # uncut without a limit


async def test_slack_text_is_verbatim_and_says_the_incident(
    receiver: Receiver, clock: ManualClock
) -> None:
    """Every mrkdwn object is verbatim (no auto-linking of names in job data); the
    details carry the incident line."""
    slack = SlackChannel(
        "slack", SlackChannelConfig(type="slack", url=f"{receiver.url}/s"), clock=clock
    )
    await slack.send(failing(3))
    await slack.close()
    body = receiver.requests[0].json()
    objects = mrkdwn_objects(body)
    assert len(objects) == 2  # the details and the footer
    assert all(o["verbatim"] is True for o in objects)
    assert "*still failing (3rd failure since 21:31 UTC)*" in body["blocks"][1]["text"]["text"]


# -- Teams -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("my_job", "my_job"),
        ("my__job_2", "my__job_2"),
        ("nightly-etl v1.2 (prod)!", "nightly-etl v1.2 (prod)!"),
        ("_private_", "\\_private\\_"),
        ("job_", "job\\_"),
        ("*bold* and **strong**", "\\*bold\\* and \\*\\*strong\\*\\*"),
        ("2*3*4", "2\\*3\\*4"),
        ("[x](https://phish.example)", "\\[x\\](https://phish.example)"),
        ("C:\\temp", "C:\\\\temp"),
        ("- item", "\\- item"),
        ("  + item", "  \\+ item"),
        ("1. first\n2) second", "1\\. first\n2\\) second"),
        ("a - b + c 1. d", "a - b + c 1. d"),
        ("-x", "-x"),
    ],
)
def test_markdown_escape_neutralises_only_what_cards_interpret(raw: str, escaped: str) -> None:
    assert markdown_escape(raw) == escaped


async def test_teams_escapes_only_what_it_would_interpret(
    receiver: Receiver, clock: ManualClock
) -> None:
    """`my_job` shows as typed; emphasis and links from a name are neutralised, in the
    title and the details; the details carry the incident line."""
    receiver.default = (202, {}, "")
    teams = TeamsChannel(
        "teams", TeamsChannelConfig(type="teams", url=f"{receiver.url}/w"), clock=clock
    )
    name = "my_job *bold* [x](https://phish.example)"
    await teams.send(failing(3).model_copy(update={"job": make_event(name=name).job}))
    await teams.close()
    card = receiver.requests[0].json()["attachments"][0]["content"]
    expected = "my_job \\*bold\\* \\[x\\](https://phish.example)"
    assert card["body"][0]["text"] == f"{expected} FAILED"
    details = card["body"][1]["text"]
    assert f"**Job:** {expected} (42)" in details
    assert "**still failing (3rd failure since 21:31 UTC)**" in details


# -- PagerDuty ---------------------------------------------------------------------------


async def test_pagerduty_duration_incident_triggers_then_resolves(
    receiver: Receiver, clock: ManualClock
) -> None:
    """A duration incident triggers on the incident's key, triggers again for a reminder
    (same key, the reminder in the summary), and its incident_resolved resolves that key;
    an incident_resolved without an incident resolves nothing."""
    pd = pagerduty_channel(receiver, clock)
    opened = with_incident(breach(), duration_incident())
    events = [
        opened,
        opened.model_copy(update={"repeat": 1, "id": "reminder-1"}),
        run_ended(),
        make_event(EventType.INCIDENT_RESOLVED, run_id=8),
    ]
    results = [await pd.send(e) for e in events]
    await pd.close()
    assert all(isinstance(r, Sent) for r in results)
    assert results[3] == Sent("nothing to send: incident_resolved does not page")
    bodies = [r.json() for r in receiver.requests]
    assert [(b["event_action"], b["dedup_key"]) for b in bodies] == [
        ("trigger", "prod/job/42/duration/job"),
        ("trigger", "prod/job/42/duration/job"),
        ("resolve", "prod/job/42/duration/job"),
    ]
    assert bodies[1]["payload"]["summary"].endswith(
        "- reminder 1: still running too long since 21:31 UTC"
    )
    details = bodies[0]["payload"]["custom_details"]
    assert details["incident"]["key"] == "prod/job/42/duration/job"
    assert details["incident"]["state"] == "open"
    assert details["repeat"] == 0
    assert bodies[2] == {
        "routing_key": "fake-routing-key",
        "event_action": "resolve",
        "dedup_key": "prod/job/42/duration/job",
    }


async def test_pagerduty_failure_incident_and_legacy_recovery(
    receiver: Receiver, clock: ManualClock
) -> None:
    """A failure triggers on its incident's key with the streak in custom_details; its
    recovery resolves that key; a recovery without incident resolves the job's failure
    key computed from the event, as before incidents."""
    pd = pagerduty_channel(receiver, clock)
    other = incident(count=3, key="prod/job/42/failed#custom")
    recovered = make_event(EventType.JOB_RECOVERED, run_id=2)
    for event in (
        with_incident(failing(3), other),
        with_incident(recovered, other.model_copy(update={"state": "resolved"})),
        recovered,
    ):
        assert isinstance(await pd.send(event), Sent)
    await pd.close()
    bodies = [r.json() for r in receiver.requests]
    assert [(b["event_action"], b["dedup_key"]) for b in bodies] == [
        ("trigger", "prod/job/42/failed#custom"),
        ("resolve", "prod/job/42/failed#custom"),
        ("resolve", "prod/job/42/failed"),
    ]
    assert bodies[0]["payload"]["custom_details"]["streak"]["consecutive_failures"] == 3
    assert bodies[0]["payload"]["summary"] == (
        "[prod] nightly-etl FAILED (FAILED) - still failing (3rd failure since 21:31 UTC)"
    )


def test_incident_resolved_reaches_the_channels_that_can_say_it() -> None:
    """PagerDuty and Alertmanager take incident_resolved whatever they trigger on; a
    Databricks-format webhook does not (Databricks has no such notification)."""
    pd = PagerDutyChannelConfig(type="pagerduty", routing_key="k", trigger_on=["run_failed"])
    am = AlertmanagerChannelConfig(
        type="alertmanager", url="https://am.invalid", trigger_on=["run_failed"]
    )
    watcher_hook = WebhookChannelConfig(type="webhook", url="https://h.invalid")
    databricks_hook = watcher_hook.model_copy(update={"format": "databricks"})
    resolved = EventType.INCIDENT_RESOLVED
    assert pd.accepts(resolved)
    assert am.accepts(resolved)
    assert watcher_hook.accepts(resolved)
    assert not databricks_hook.accepts(resolved)
    assert not databricks_hook.accepts(EventType.JOB_RECOVERED)
    assert databricks_hook.accepts(EventType.RUN_FAILED)


# -- Alertmanager ------------------------------------------------------------------------


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_alertmanager_times_follow_the_incident(
    receiver: Receiver, clock: ManualClock
) -> None:
    """Firing: startsAt is when the incident opened, endsAt now + resolve_after. The
    resolve: same labels, startsAt the opening, endsAt the resolve time but at least a
    minute in the past, never before startsAt."""
    clock.advance(AT + 30 - clock.time())  # the watcher sends 30 s after the breach
    am = alertmanager_channel(receiver, clock, resolve_after=1200, resend_interval=600)
    opened = with_incident(breach(), duration_incident(count=2))
    await am.send(opened)
    await am.send(run_ended())  # resolved at OCCURRED, 30 s ago: now - 60 s is earlier
    await am.close()
    firing, resolving = (r.json()[0] for r in receiver.requests)
    now = datetime.fromtimestamp(clock.time(), UTC)
    assert parse(firing["startsAt"]) == OPENED
    assert parse(firing["endsAt"]) == now + timedelta(seconds=1200)
    assert firing["annotations"]["incident_line"] == (
        "still running too long (2nd breach since 21:31 UTC)"
    )
    assert resolving["labels"] == firing["labels"]
    assert resolving["labels"]["rule"] == "job"
    assert parse(resolving["startsAt"]) == OPENED
    assert parse(resolving["endsAt"]) == now - RESOLVE_SKEW
    assert parse(resolving["startsAt"]) <= parse(resolving["endsAt"])


async def test_alertmanager_resolve_of_a_fresh_incident_starts_no_later_than_it_ends(
    receiver: Receiver, clock: ManualClock
) -> None:
    """An incident opened and resolved within the last minute: endsAt = now - 60 s would
    be before the opening (Alertmanager would replace the firing alert, start time and
    all), so the alert ends as it opened."""
    clock.advance(AT + 5 - clock.time())
    am = alertmanager_channel(receiver, clock)
    fresh = duration_incident(resolved="run_ended", opened=OCCURRED - timedelta(seconds=10))
    await am.send(with_incident(make_event(EventType.INCIDENT_RESOLVED), fresh))
    await am.close()
    (alert,) = receiver.requests[0].json()
    now = datetime.fromtimestamp(clock.time(), UTC)
    assert parse(alert["startsAt"]) == OCCURRED - timedelta(seconds=10)
    assert alert["startsAt"] == alert["endsAt"]
    assert parse(alert["endsAt"]) > now - RESOLVE_SKEW


def test_resolve_after_must_cover_two_resends() -> None:
    """resolve_after below 2 x resend_interval would let a firing alert lapse between
    re-posts: a configuration error naming the field."""
    with pytest.raises(ValueError, match="resolve_after: 900s is less than twice"):
        AlertmanagerChannelConfig(
            type="alertmanager", url="https://am.invalid", resolve_after=900, resend_interval=600
        )
    with pytest.raises(ValueError, match="resend_interval"):
        AlertmanagerChannelConfig(type="alertmanager", url="https://am.invalid", resend_interval=0)
    config = AlertmanagerChannelConfig(type="alertmanager", url="https://am.invalid")
    assert (config.resend_interval, config.resolve_after) == (300.0, 3600.0)


# -- webhook, email, console -------------------------------------------------------------


async def test_webhook_payload_carries_incident_streak_and_repeat(
    receiver: Receiver, clock: ManualClock
) -> None:
    """The watcher payload has `incident` and `streak` objects (null without) and
    `repeat`; a Databricks-format hook sends nothing for incident_resolved."""
    hook = WebhookChannel(
        "hook", WebhookChannelConfig(type="webhook", url=f"{receiver.url}/h"), clock=clock
    )
    await hook.send(failing(3, repeat=2))
    await hook.send(run_ended())
    await hook.send(make_event(EventType.RUN_STARTED))
    await hook.close()
    still, ended, started = (r.json() for r in receiver.requests)
    assert still["version"] == 1
    assert still["incident"] == {
        "id": "11111111-1111-5111-8111-111111111111",
        "key": "prod/job/42/failed",
        "kind": "failure",
        "state": "open",
        "opened_at": "2023-11-14T21:31:20Z",
        "count": 3,
        "resolved_at": None,
        "cause": None,
    }
    assert still["streak"] == {
        "consecutive_failures": 3,
        "last_success_at": "2023-11-14T20:31:20Z",
    }
    assert still["repeat"] == 2
    assert ended["type"] == "incident_resolved"
    assert ended["incident"]["state"] == "resolved"
    assert ended["incident"]["resolved_at"] == "2023-11-14T22:13:20Z"
    assert ended["incident"]["cause"] == "run_ended"
    assert (started["incident"], started["streak"], started["repeat"]) == (None, None, 0)

    databricks = WebhookChannel(
        "db",
        WebhookChannelConfig(type="webhook", url=f"{receiver.url}/db", format="databricks"),
        clock=clock,
    )
    assert await databricks.send(run_ended()) == Sent(
        "nothing to send: no Databricks notification for incident_resolved"
    )
    await databricks.close()
    assert len(receiver.requests) == 3


async def test_email_and_console_say_the_incident_line(
    smtp: SmtpServer, clock: ManualClock
) -> None:
    """The email's text and HTML parts and the console line carry the incident line."""
    assert await email_channel(smtp, clock).send(failing(3)) == Sent()
    raw = (smtp.mailbox.envelopes[0].original_content or b"").decode()
    assert "nightly-etl FAILED\r\nstill failing (3rd failure since 21:31 UTC)\r\n" in raw
    assert "<p><strong>still failing (3rd failure since 21:31 UTC)</strong></p>" in raw

    stream = io.StringIO()
    console = ConsoleChannel("c", ConsoleChannelConfig(type="console"), stream=stream)
    await console.send(run_ended())
    line = stream.getvalue()
    assert "incident_resolved" in line
    assert "[resolved after 42m 0s: every run over the limit has ended" in line


def test_sample_events_carry_incidents() -> None:
    """Configured templates are checked against events with incidents and streaks, a
    reminder and an incident_resolved, so `{{ incident.count }}` guarded by `{% if
    incident %}` passes and an unguarded one is reported."""
    from watcher.notify.templates import sample_events, template_errors

    events = sample_events()
    assert any(e.type == EventType.INCIDENT_RESOLVED for e in events)
    assert any(e.repeat for e in events)
    assert any(e.streak for e in events)
    guarded = ConsoleChannelConfig(
        type="console", text_template="{% if incident %}{{ incident.ordinal }}{% endif %}"
    )
    unguarded = ConsoleChannelConfig(type="console", text_template="{{ incident.ordinal }}")
    assert template_errors("c", guarded) == []
    (error,) = template_errors("c", unguarded)
    assert error.startswith("channels.c.text_template: ")
    assert json.dumps(error)  # a plain string
