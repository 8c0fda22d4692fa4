"""What channels say about a run stuck before running (`run_stuck`) and about the end of
its incident: titles, incident lines, the time in state and the queue reason in Slack,
Teams, email, console and summaries (hostile queue messages included); PagerDuty and
Alertmanager page on it with their warning severity and resolve it; the Databricks
webhook format has nothing to say about it."""

from __future__ import annotations

import email
import email.policy
import io
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from tests.notify_fixtures import (
    HOSTILE_NAME,
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
from watcher.databricks.models import RunState
from watcher.events import Event, EventType, IncidentRef
from watcher.notify.base import Sent
from watcher.notify.console import ConsoleChannel
from watcher.notify.slack import SlackChannel
from watcher.notify.teams import TeamsChannel
from watcher.notify.templates import (
    context,
    digest_headline,
    incident_line,
    sample_events,
    summarize,
    template_errors,
    title,
)
from watcher.notify.webhook import WebhookChannel

AT = 1_700_000_000.0  # 2023-11-14T22:13:20Z, make_event's default time
OCCURRED = datetime.fromtimestamp(AT, UTC)
OPENED = OCCURRED - timedelta(minutes=42)  # 21:31:20 UTC
KEY = "prod/job/42/stuck"
LIMIT_REASON = "ACTIVE_RUNS_LIMIT_REACHED: The job has reached its maximum concurrent runs"
HOSTILE_REASON = "CLUSTER_LIMIT: " + HOSTILE_NAME


def stuck_incident(
    *, count: int = 1, resolved: str | None = None, key: str = KEY, opened: datetime = OPENED
) -> IncidentRef:
    return IncidentRef.model_validate(
        {
            "id": "22222222-2222-5222-8222-222222222222",
            "key": key,
            "kind": "stuck",
            "state": "resolved" if resolved else "open",
            "opened_at": opened,
            "count": count,
            "resolved_at": OCCURRED if resolved else None,
            "cause": resolved,
        }
    )


def stuck(
    state: str | None = "QUEUED",
    *,
    reason: str | None = LIMIT_REASON,
    count: int = 1,
    repeat: int = 0,
    seconds: float = 3900.0,
    **options: Any,
) -> Event:
    """A run stuck in `state` for `seconds`, as the tracker makes it: the queue reason in
    `detail`, the state in `raw_state`, the run's snapshot in that state."""
    event = make_event(EventType.RUN_STUCK, message=None, **options)
    run = event.run.model_copy(
        update={
            "state": RunState(life_cycle_state=state or "QUEUED", queue_reason=reason),
            "execution_duration": 0,
        }
    )
    key = KEY if event.job.job_id is not None else f"prod/run/{event.run.run_id}/stuck"
    return event.model_copy(
        update={
            "run": run,
            "raw_state": state,
            "observed_seconds": seconds,
            "detail": reason,
            "incident": stuck_incident(count=count, key=key),
            "repeat": repeat,
        }
    )


def unstuck(cause: str = "running", *, count: int = 1, **options: Any) -> Event:
    """The stuck incident resolved: the run started running (or ended, or an operator)."""
    event = make_event(EventType.INCIDENT_RESOLVED, message=None, **options)
    key = KEY if event.job.job_id is not None else f"prod/run/{event.run.run_id}/stuck"
    return event.model_copy(
        update={"incident": stuck_incident(count=count, resolved=cause, key=key)}
    )


# -- texts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected_title", "expected_line"),
    [
        (stuck(), "nightly-etl is stuck in QUEUED", None),
        (stuck("BLOCKED", reason=None), "nightly-etl is stuck in BLOCKED", None),
        (stuck(None, reason=None), "nightly-etl is stuck before running", None),
        (
            stuck("PENDING", reason=None, count=2),
            "nightly-etl is stuck in PENDING",
            "still stuck (PENDING now, since 21:31 UTC)",
        ),
        (
            stuck(repeat=2),
            "nightly-etl is stuck in QUEUED",
            "reminder 2: still stuck in QUEUED since 21:31 UTC",
        ),
        (
            stuck("PENDING", count=2, repeat=1),
            "nightly-etl is stuck in PENDING",
            "reminder 1: still stuck (PENDING now, since 21:31 UTC)",
        ),
        (
            unstuck("running"),
            "nightly-etl is no longer stuck",
            "resolved after 42m 0s: the run started running",
        ),
        (
            unstuck("running", count=2),
            "nightly-etl is no longer stuck",
            "resolved after 42m 0s: the run started running (stuck in 2 states since 21:31 UTC)",
        ),
        (
            unstuck("run_ended"),
            "nightly-etl is no longer stuck",
            "resolved after 42m 0s: the run ended before it ran",
        ),
        (
            unstuck("manual"),
            "nightly-etl stuck alert resolved by an operator",
            "resolved after 42m 0s by an operator",
        ),
        (stuck(job_id=None, name=None), "run 1001 is stuck in QUEUED", None),
    ],
)
def test_titles_and_incident_lines(
    event: Event, expected_title: str, expected_line: str | None
) -> None:
    """The title names the state the run is stuck in; the incident line says when it got
    stuck in another state, which reminder this is, and how the incident ended (a stuck
    run that ended is not said to be 'no longer running too long')."""
    assert title(event) == expected_title
    assert incident_line(event) == expected_line
    assert context(event)["incident_line"] == expected_line


def test_context_has_the_stuck_values() -> None:
    """Templates get `stuck` (state, time in it, one-line queue reason) on run_stuck only."""
    assert context(stuck())["stuck"] == {
        "state": "QUEUED",
        "observed": "1h 5m 0s",
        "seconds": 3900.0,
        "reason": LIMIT_REASON,
    }
    hostile = context(stuck(reason="a\r\nb" + "x" * 1000))["stuck"]["reason"]
    assert "\n" not in hostile
    assert len(hostile) == 500
    assert context(stuck(None, reason=None))["stuck"]["reason"] is None
    assert context(make_event())["stuck"] is None
    assert context(unstuck())["stuck"] is None


def test_digests_count_stuck_runs() -> None:
    """A digest headline counts them as `stuck`; each member reads as its title."""
    events = [stuck(), stuck("PENDING", count=2, run_id=1002), make_event()]
    assert digest_headline(events, {}) == "3 alerts in prod: 2 stuck, 1 FAILED"
    items = summarize(events, {}).items
    assert items[0].text == "nightly-etl is stuck in QUEUED"
    assert items[1].text == (
        "nightly-etl is stuck in PENDING: still stuck (PENDING now, since 21:31 UTC)"
    )


def test_configured_templates_are_checked_against_stuck_runs() -> None:
    """check-config renders templates against a stuck run (with and without a queue
    reason) and a stuck incident's resolve: `stuck` guarded by `{% if stuck %}` passes,
    unguarded it is reported; `stuck.reason` may be none."""
    events = sample_events()
    shapes = [e for e in events if e.type == EventType.RUN_STUCK]
    assert {e.detail is None for e in shapes} == {True, False}
    assert any(
        e.incident is not None and e.incident.kind == "stuck" and e.incident.cause == "running"
        for e in events
    )
    guarded = ConsoleChannelConfig(
        type="console",
        text_template="{% if stuck %}{{ stuck.state }} {{ stuck.observed }} "
        "{{ stuck.reason or 'no reason' }}{% endif %}",
    )
    assert template_errors("c", guarded) == []
    unguarded = ConsoleChannelConfig(type="console", text_template="{{ stuck.state }}")
    (error,) = template_errors("c", unguarded)
    assert error.startswith("channels.c.text_template: ")


# -- chat, email, console ------------------------------------------------------------------


async def test_slack_says_state_time_and_reason(receiver: Receiver, clock: ManualClock) -> None:
    """The header names the state; the details say how long and why; a hostile queue
    message mentions nobody, links nothing and stays on its line; the resolve says the run
    started running."""
    slack = SlackChannel(
        "slack", SlackChannelConfig(type="slack", url=f"{receiver.url}/s"), clock=clock
    )
    await slack.send(stuck())
    await slack.send(stuck(reason=HOSTILE_REASON, run_id=1002))
    await slack.send(unstuck())
    await slack.close()
    plain, hostile, resolved = (r.json() for r in receiver.requests)
    assert plain["blocks"][0]["text"]["text"] == "nightly-etl is stuck in QUEUED"
    details = plain["blocks"][1]["text"]["text"]
    assert "*State:* QUEUED" in details
    assert "*Stuck:* in QUEUED for 1h 5m 0s\n" in details
    assert f"*Queue reason:* {LIMIT_REASON}\n" in details
    assert "Unreadable" not in details
    section = hostile["blocks"][1]["text"]["text"]
    assert "<!channel>" not in section
    assert "<script>" not in section
    assert "&lt;!channel&gt;" in section
    assert "{{ 7*7 }}" in section
    reason_line = next(line for line in section.splitlines() if "Queue reason" in line)
    assert "Bcc: victim@example.org" in reason_line  # the CR/LF became spaces
    assert hostile["blocks"][1]["text"]["verbatim"] is True
    assert resolved["blocks"][0]["text"]["text"] == "nightly-etl is no longer stuck"
    assert (
        "*resolved after 42m 0s: the run started running*"
        in (resolved["blocks"][1]["text"]["text"])
    )


async def test_teams_says_state_time_and_reason(receiver: Receiver, clock: ManualClock) -> None:
    """A warning-coloured card with the state, the time and the queue reason, markdown of
    a hostile queue message escaped; the resolve is a good-coloured card."""
    receiver.default = (202, {}, "")
    teams = TeamsChannel(
        "teams", TeamsChannelConfig(type="teams", url=f"{receiver.url}/w"), clock=clock
    )
    await teams.send(stuck("PENDING", reason=HOSTILE_REASON, count=2))
    await teams.send(unstuck("run_ended"))
    await teams.close()
    card, resolved = (r.json()["attachments"][0]["content"] for r in receiver.requests)
    assert card["body"][0] == {
        "type": "TextBlock",
        "text": "nightly-etl is stuck in PENDING",
        "wrap": True,
        "size": "Large",
        "weight": "Bolder",
        "color": "Warning",
    }
    details = card["body"][1]["text"]
    assert "**still stuck (PENDING now, since 21:31 UTC)**" in details
    assert "**Stuck:** in PENDING for 1h 5m 0s" in details
    assert "**Queue reason:** CLUSTER_LIMIT: evil  Bcc: victim@example.org" in details
    assert "\\[link\\](https://phish.example)" in details
    assert "\\*bold\\*" in details
    assert resolved["body"][0]["text"] == "nightly-etl is no longer stuck"
    assert resolved["body"][0]["color"] == "Good"
    assert "**resolved after 42m 0s: the run ended before it ran**" in resolved["body"][1]["text"]


async def test_email_says_state_time_and_reason(smtp: SmtpServer, clock: ManualClock) -> None:
    """Subject, text and HTML name the state, the time and the queue reason; a hostile
    queue message adds no header and is escaped in HTML."""
    mail = email_channel(smtp, clock)
    assert await mail.send(stuck(reason=HOSTILE_REASON)) == Sent()
    assert await mail.send(unstuck()) == Sent()
    first, second = smtp.mailbox.envelopes
    assert first.rcpt_tos == ["oncall@example.com"]
    message = email.message_from_bytes(first.original_content or b"", policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "[prod] nightly-etl is stuck in QUEUED"
    assert message["Bcc"] is None
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    lines = text.get_content().splitlines()
    assert "Stuck:        in QUEUED for 1h 5m 0s" in lines
    (reason,) = (line for line in lines if line.startswith("Queue reason: "))
    assert reason.startswith("Queue reason: CLUSTER_LIMIT: evil  Bcc: victim@example.org  <script>")
    assert not any("Unreadable" in line for line in lines)
    html_content = html.get_content()
    assert '<th align="left">Stuck</th><td>in QUEUED for 1h 5m 0s</td>' in html_content
    assert "<script>" not in html_content
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_content
    assert "{{ 7*7 }}" in html_content
    resolve = email.message_from_bytes(second.original_content or b"", policy=email.policy.default)
    assert resolve["Subject"] == "[prod] nightly-etl is no longer stuck"
    resolve_text = resolve.get_body(("plain",))
    assert resolve_text is not None
    assert (
        "resolved after 42m 0s: the run started running" in resolve_text.get_content().splitlines()
    )


async def test_console_line_says_state_time_and_reason() -> None:
    """One line, whatever the queue message holds."""
    stream = io.StringIO()
    console = ConsoleChannel("c", ConsoleChannelConfig(type="console"), stream=stream)
    await console.send(stuck())
    await console.send(stuck(reason=HOSTILE_REASON))
    await console.send(unstuck())
    plain, hostile, resolved = stream.getvalue().splitlines()
    assert (
        f'run_stuck              prod job=42 "nightly-etl" run=1001 stuck in QUEUED for 1h 5m 0s '
        f"queue_reason: {LIMIT_REASON} https://" in plain
    )
    assert "unreadable" not in plain
    assert "queue_reason: CLUSTER_LIMIT: evil  Bcc: victim@example.org  <script>" in hostile
    assert "[resolved after 42m 0s: the run started running]" in resolved


# -- PagerDuty, Alertmanager, webhooks ---------------------------------------------------


async def test_pagerduty_pages_a_stuck_run_as_a_warning_and_resolves_it(
    receiver: Receiver, clock: ManualClock
) -> None:
    """By default: a trigger on the incident's key with duration_severity, the state, time
    and reason in the summary and in custom_details; a reminder triggers the same key; the
    run starting resolves it."""
    pd = pagerduty_channel(receiver, clock, duration_severity="info")
    for event in (stuck(), stuck(repeat=1), unstuck()):
        assert isinstance(await pd.send(event), Sent)
    await pd.close()
    trigger, reminder, resolve = (r.json() for r in receiver.requests)
    assert (trigger["event_action"], trigger["dedup_key"]) == ("trigger", KEY)
    payload = trigger["payload"]
    assert payload["severity"] == "info"
    assert payload["class"] == "run_stuck"
    assert payload["summary"] == (
        f"[prod] nightly-etl is stuck in QUEUED: for 1h 5m 0s ({LIMIT_REASON})"
    )
    assert payload["custom_details"]["stuck"] == {
        "state": "QUEUED",
        "observed": "1h 5m 0s",
        "seconds": 3900.0,
        "reason": LIMIT_REASON,
    }
    assert payload["custom_details"]["incident"]["kind"] == "stuck"
    assert (reminder["event_action"], reminder["dedup_key"]) == ("trigger", KEY)
    assert reminder["payload"]["summary"].endswith(
        " - reminder 1: still stuck in QUEUED since 21:31 UTC"
    )
    assert resolve == {
        "routing_key": "fake-routing-key",
        "event_action": "resolve",
        "dedup_key": KEY,
    }
    failed = pagerduty_channel(receiver, clock).payload(make_event())
    assert failed is not None
    assert "stuck" not in failed["payload"]["custom_details"]


async def test_pagerduty_summary_of_a_hostile_reason_is_one_bounded_line(
    receiver: Receiver, clock: ManualClock
) -> None:
    pd = pagerduty_channel(receiver, clock)
    await pd.send(stuck(reason=HOSTILE_REASON + "x" * 5000))
    await pd.close()
    summary = receiver.requests[0].json()["payload"]["summary"]
    assert "\n" not in summary
    assert "\r" not in summary
    assert len(summary) <= 1024
    assert summary.startswith("[prod] nightly-etl is stuck in QUEUED: for 1h 5m 0s (CLUSTER")


def test_stuck_pages_by_default_and_databricks_hooks_decline_it() -> None:
    """run_stuck is in the default trigger_on of PagerDuty and Alertmanager; a channel
    that leaves it out still takes the resolve of a stuck incident; the Databricks
    webhook format has no notification for it."""
    pd = PagerDutyChannelConfig(type="pagerduty", routing_key="k")
    am = AlertmanagerChannelConfig(type="alertmanager", url="https://am.invalid")
    assert EventType.RUN_STUCK in pd.trigger_on
    assert EventType.RUN_STUCK in am.trigger_on
    assert pd.accepts(EventType.RUN_STUCK)
    assert am.accepts(EventType.RUN_STUCK)
    narrow = PagerDutyChannelConfig(type="pagerduty", routing_key="k", trigger_on=["run_failed"])
    assert not narrow.accepts(EventType.RUN_STUCK)
    assert narrow.accepts(EventType.INCIDENT_RESOLVED)
    hook = WebhookChannelConfig(type="webhook", url="https://h.invalid")
    assert hook.accepts(EventType.RUN_STUCK)
    databricks = hook.model_copy(update={"format": "databricks"})
    assert not databricks.accepts(EventType.RUN_STUCK)
    assert databricks.accepts(EventType.RUN_FAILED)


async def test_alertmanager_labels_are_the_same_on_trigger_reminder_and_resolve(
    receiver: Receiver, clock: ManualClock
) -> None:
    """`DatabricksRunStuck` per job (workspace, job_id: a backlog of stuck runs is one
    alert, and a resolve made from another run's snapshot still matches) and the warning
    severity; annotations carry the state, time and reason."""
    clock.advance(AT + 30 - clock.time())
    am = alertmanager_channel(receiver, clock, labels={"team": "data"})
    resolve = unstuck().model_copy(update={"run": make_event(run_id=999).run})
    for event in (stuck(), stuck("PENDING", count=2, repeat=1), resolve):
        assert isinstance(await am.send(event), Sent)
    await am.close()
    fired, reminded, resolved = (r.json()[0] for r in receiver.requests)
    assert fired["labels"] == {
        "team": "data",
        "alertname": "DatabricksRunStuck",
        "severity": "warning",
        "workspace": "prod",
        "job_id": "42",
    }
    assert reminded["labels"] == fired["labels"]
    assert resolved["labels"] == fired["labels"]
    assert fired["annotations"]["stuck_state"] == "QUEUED"
    assert fired["annotations"]["stuck_for"] == "1h 5m 0s"
    assert fired["annotations"]["queue_reason"] == LIMIT_REASON
    assert fired["annotations"]["summary"] == (
        f"[prod] nightly-etl is stuck in QUEUED: for 1h 5m 0s ({LIMIT_REASON})"
    )
    assert reminded["annotations"]["stuck_state"] == "PENDING"
    assert "queue_reason" not in resolved["annotations"]
    assert resolved["annotations"]["incident_line"] == (
        "resolved after 42m 0s: the run started running"
    )
    assert fired["startsAt"] == resolved["startsAt"] == "2023-11-14T21:31:20Z"


async def test_alertmanager_labels_of_a_run_without_a_job(
    receiver: Receiver, clock: ManualClock
) -> None:
    """A one-time run stuck: the run_id label alone names it, on trigger and resolve."""
    am = alertmanager_channel(receiver, clock, labels={})
    await am.send(stuck(job_id=None, name=None))
    await am.send(unstuck(job_id=None, name=None))
    await am.close()
    fired, resolved = (r.json()[0]["labels"] for r in receiver.requests)
    assert (
        fired
        == resolved
        == {
            "alertname": "DatabricksRunStuck",
            "severity": "warning",
            "workspace": "prod",
            "run_id": "1001",
        }
    )


async def test_webhooks_carry_or_decline_a_stuck_run(
    receiver: Receiver, clock: ManualClock
) -> None:
    """The watcher payload has the state, the time and the reason as the event has them;
    a Databricks-format hook sends nothing."""
    hook = WebhookChannel(
        "hook", WebhookChannelConfig(type="webhook", url=f"{receiver.url}/h"), clock=clock
    )
    await hook.send(stuck(reason=HOSTILE_REASON))
    await hook.close()
    body = receiver.requests[0].json()
    assert body["type"] == "run_stuck"
    assert body["raw_state"] == "QUEUED"
    assert body["observed_seconds"] == 3900.0
    assert body["detail"] == HOSTILE_REASON  # verbatim: JSON is its own escaping
    assert body["incident"]["key"] == KEY
    databricks = WebhookChannel(
        "db",
        WebhookChannelConfig(type="webhook", url=f"{receiver.url}/db", format="databricks"),
        clock=clock,
    )
    assert await databricks.send(stuck()) == Sent(
        "nothing to send: no Databricks notification for run_stuck"
    )
    await databricks.close()
    assert len(receiver.requests) == 1
