"""Reminders of open incidents ("repeat while still bad"): the pure decision (which
reminder, its id, its content, the target's next time), the store's all-or-nothing
commit of it, and the daemon as app.build wires it, in simulated time, delivering to a
real SMTP server and real HTTP receivers: email every 4 h by default, a route's
repeat_interval (0: none; 600 s for chat), Alertmanager every resend_interval, silences,
crashes and replays."""

from __future__ import annotations

import email
import email.policy
import io
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.conftest import ReceiverFactory
from tests.notify_fixtures import Receiver, SmtpServer
from tests.wiring import config_for
from watcher.app import Daemon, build, close, run_once
from watcher.clock import ManualClock
from watcher.config.channels import EmailChannelConfig
from watcher.databricks.models import Run, RunState
from watcher.domain import Incident
from watcher.events import Event, EventType, JobRef, event_id
from watcher.incidents import IncidentBook, incident_ref
from watcher.notify import reminders
from watcher.notify.reminders import Decision, Reminders, decide, next_due, reminder_id
from watcher.notify.router import EMAIL_REPEAT_INTERVAL, RoutingTable
from watcher.silences import new_silence
from watcher.simulator import Simulator
from watcher.store.base import CycleCommit, DeliveryKey, DeliveryPolicy, DueReminder
from watcher.store.sqlite import SQLiteStore

HOUR = 3600.0
T0 = datetime(2024, 5, 1, 2, 10, tzinfo=UTC)
MAIL = DeliveryKey("mail")
PAGING = ["run_failed", "run_duration_exceeded", "job_recovered", "incident_resolved"]
AM_TIMES = {"resend_interval": 60, "resolve_after": 300}
MAIL_ROUTES = [{"match": {"event_types": PAGING}, "channels": ["mail"]}]


# -- the pure decision ---------------------------------------------------------------------


def failure(run_id: int, minute: int = 0, *, job: int = 7) -> Event:
    return Event(
        id=event_id("ws", run_id, "run_failed"),
        type=EventType.RUN_FAILED,
        workspace="ws",
        occurred_at=T0 + timedelta(minutes=minute),
        job=JobRef(job_id=job, name="etl"),
        run=Run(run_id=run_id, job_id=job, state=RunState(life_cycle_state="TERMINATED")),
    )


def failing_twice() -> tuple[Incident, Event]:
    """A job's failure incident after its second failure, and that failure."""
    book = IncidentBook.of("ws", {})
    book.record(failure(1))
    latest = book.record(failure(2, minute=5))
    (incident,) = book.changed.values()
    return incident, latest


def due(**changes: Any) -> DueReminder:
    incident, latest = failing_twice()
    base = DueReminder(
        incident_id=incident.id,
        incident=incident,
        key=MAIL,
        repeat_every=4 * HOUR,
        next_repeat_at=10_000.0,
        repeats=2,
        latest=latest,
    )
    return replace(base, **changes)


def decided(
    target: DueReminder, now: float, *, served: bool = True, silenced: bool = False
) -> Decision:
    return decide(
        target, now=now, delivers=lambda key, event: served, silenced=lambda event: silenced
    )


@pytest.mark.parametrize(
    ("target", "now", "served", "silenced", "held", "repeats", "next_at"),
    [
        (due(), 10_000.0, True, False, None, 3, 10_000 + 4 * HOUR),
        (due(), 10_060.0, True, False, None, 3, 10_000 + 4 * HOUR),  # found a minute late
        (due(), 10_000.0, True, True, "silenced", 2, 10_000 + 4 * HOUR),
        (due(), 10_000.0, False, False, "unserved", 2, 10_000 + 4 * HOUR),
        (due(latest=None), 10_000.0, True, False, "no_event", 2, 10_000 + 4 * HOUR),
        (due(incident=None), 10_000.0, True, False, "no_incident", 2, 10_000 + 4 * HOUR),
        (due(pending=True), 10_000.0, True, False, "pending", 2, 10_000 + 4 * HOUR),
        # Stopped for 10 h: one reminder now, the next on the cadence, no burst.
        (due(), 10_000 + 10 * HOUR, True, False, None, 3, 10_000 + 12 * HOUR),
        (due(repeat_every=600.0, repeats=0), 10_599.0, True, False, None, 1, 10_600.0),
    ],
    ids=[
        "due",
        "late",
        "silenced",
        "unserved",
        "no event",
        "no incident",
        "pending",
        "after a pause",
        "chat",
    ],
)
def test_decide(
    target: DueReminder,
    now: float,
    served: bool,
    silenced: bool,
    held: str | None,
    repeats: int,
    next_at: float,
) -> None:
    """A due target gets reminder N = repeats + 1 and its next time `repeat_every` later
    (on its cadence past `now`); a held one (silence, channel gone, no event, an
    incident that cannot be read) moves its
    next time on without a reminder and without counting one. The commit applies only to
    the target as it was read."""
    decision = decided(target, now, served=served, silenced=silenced)
    commit = decision.commit
    assert decision.held == held
    assert (commit.repeats, commit.next_repeat_at) == (repeats, next_at)
    assert (commit.read_repeats, commit.read_next_repeat_at) == (
        target.repeats,
        target.next_repeat_at,
    )
    assert (commit.incident_id, commit.key, commit.committed_at) == (
        target.incident_id,
        target.key,
        now,
    )
    assert (commit.event is None) == (held is not None)


def test_a_reminder_is_the_latest_event_again_numbered_with_a_derived_id() -> None:
    """The reminder copies the incident's latest event (its run, time, streak and the
    incident as that event left it: open, counted twice) and changes only its id and
    `repeat`; the id depends on the incident, the target and the number only."""
    target = due()
    event = decided(target, 10_000.0).commit.event
    assert event is not None
    assert target.latest is not None
    assert event.id == reminder_id(target.incident_id, MAIL, 3)
    assert event.repeat == 3
    assert event.model_copy(update={"id": target.latest.id, "repeat": 0}) == target.latest
    assert event.incident is not None
    assert (event.incident.state, event.incident.count) == ("open", 2)
    again = decided(due(), 10_500.0).commit.event
    assert again is not None
    assert again.id == event.id
    ids = {
        reminder_id(target.incident_id, key, n)
        for key in (MAIL, DeliveryKey("mail", "a@example.org"), DeliveryKey("chat"))
        for n in (1, 2)
    }
    assert len(ids) == 6


def test_a_latest_event_without_the_open_incident_gets_the_stored_one() -> None:
    incident, latest = failing_twice()
    bare = latest.model_copy(update={"incident": None})
    event = decided(due(latest=bare), 10_000.0).commit.event
    assert event is not None
    assert event.incident == incident_ref(incident)


@pytest.mark.parametrize(
    ("due_at", "now", "expected"),
    [(0.0, 0.0, 10.0), (0.0, 9.9, 10.0), (0.0, 10.0, 20.0), (0.0, 35.0, 40.0)],
)
def test_next_due_keeps_the_cadence(due_at: float, now: float, expected: float) -> None:
    assert next_due(due_at, 10.0, now) == expected


# -- the store -------------------------------------------------------------------------------


async def open_failure(
    store: SQLiteStore, every: float | None = 600.0, *, delivered: bool = True, job: int = 7
) -> tuple[Incident, Event]:
    """A failure incident of `job` committed at time 0 with its event for MAIL
    (delivered at 1)."""
    book = IncidentBook.of("ws", {})
    event = book.record(failure(job * 100 + 1, job=job))
    policies = {event.id: {MAIL: DeliveryPolicy(repeat_every=every)}}
    await store.commit_cycle(
        CycleCommit(
            "ws",
            1,
            0.0,
            events=[event],
            channels={event.id: [MAIL]},
            incidents=list(book.changed.values()),
            policies=policies,
        )
    )
    if delivered:
        await store.mark_delivered(event.id, MAIL, at=1.0)
    (incident,) = (await store.open_incidents("ws", [job])).values()
    return incident, event


async def test_the_store_hands_out_due_targets_of_open_incidents(store: SQLiteStore) -> None:
    """A target is due `repeat_every` after its event was committed, with the incident's
    latest event."""
    incident, event = await open_failure(store)
    assert await store.next_reminder_at() == 600.0
    assert await store.due_reminders(now=599.0, limit=10) == []
    (target,) = await store.due_reminders(now=600.0, limit=10)
    assert (target.incident, target.key, target.latest) == (incident, MAIL, event)
    assert target.incident_id == incident.id
    assert (target.repeat_every, target.next_repeat_at, target.repeats) == (600.0, 600.0, 0)
    assert target.pending is False


async def test_a_target_with_an_undelivered_alert_is_held(store: SQLiteStore) -> None:
    """While the failure is still undelivered to the target (its channel is down), the
    reminder would only queue up behind it: it is held, and the target moves on."""
    await open_failure(store, delivered=False)
    (target,) = await store.due_reminders(now=600.0, limit=10)
    assert target.pending is True
    decision = decide(
        target, now=600.0, delivers=lambda key, event: True, silenced=lambda event: False
    )
    assert (decision.held, decision.commit.event, decision.commit.repeats) == ("pending", None, 0)
    assert await store.commit_reminder(decision.commit) is False
    (later,) = await store.due_reminders(now=1200.0, limit=10)
    assert (later.next_repeat_at, later.repeats) == (1200.0, 0)
    assert (await store.outbox_stats()).pending == 1


async def test_a_reminder_commit_is_applied_once_and_only_while_open(store: SQLiteStore) -> None:
    """Committing a decided reminder queues one delivery to its target; the same decision
    again (a replay) is refused; a reminder event already stored is not queued again,
    even when decided from a target restored to its earlier state."""
    await open_failure(store)
    (target,) = await store.due_reminders(now=600.0, limit=10)
    decision = decided(target, 600.0)
    assert decision.commit.event is not None
    assert await store.commit_reminder(decision.commit) is True
    assert await store.commit_reminder(decision.commit) is False
    pending = await store.due_deliveries(now=600.0, limit=10)
    assert [(d.event.id, d.event.repeat, d.key) for d in pending] == [
        (decision.commit.event.id, 1, MAIL)
    ]
    (after,) = await store.due_reminders(now=1200.0, limit=10)
    assert (after.next_repeat_at, after.repeats, after.pending) == (1200.0, 1, True)
    stale = replace(decision.commit, read_next_repeat_at=1200.0, read_repeats=1)
    assert await store.commit_reminder(stale) is False
    (moved,) = await store.due_reminders(now=1e9, limit=10)
    assert (moved.next_repeat_at, moved.repeats) == (1200.0, 1)
    assert (await store.outbox_stats()).pending == 1


async def test_a_new_event_of_the_incident_restarts_the_wait(store: SQLiteStore) -> None:
    """A target read before the incident's next event was committed (which restarted its
    wait) is left alone: that event has just gone out."""
    incident, _ = await open_failure(store)
    (target,) = await store.due_reminders(now=600.0, limit=10)
    book = IncidentBook.of("ws", {incident.key: incident})
    again = book.record(failure(2, minute=10))
    await store.commit_cycle(
        CycleCommit(
            "ws",
            2,
            600.0,
            events=[again],
            channels={again.id: [MAIL]},
            incidents=list(book.changed.values()),
            policies={again.id: {MAIL: DeliveryPolicy(repeat_every=600.0)}},
        )
    )
    assert await store.commit_reminder(decided(target, 600.0).commit) is False
    assert await store.next_reminder_at() == 1200.0


async def test_no_reminder_for_a_resolved_incident(store: SQLiteStore) -> None:
    """An incident resolved after its target was read: the commit is refused and nothing
    is due any more."""
    incident, _ = await open_failure(store)
    (target,) = await store.due_reminders(now=600.0, limit=10)
    book = IncidentBook.of("ws", {incident.key: incident})
    recovered = book.record(
        failure(2).model_copy(
            update={"id": event_id("ws", 2, "job_recovered"), "type": EventType.JOB_RECOVERED}
        )
    )
    await store.commit_cycle(
        CycleCommit("ws", 2, 601.0, events=[recovered], incidents=list(book.changed.values()))
    )
    assert await store.commit_reminder(decided(target, 601.0).commit) is False
    assert await store.due_reminders(now=1e9, limit=10) == []
    assert await store.next_reminder_at() is None


@pytest.mark.parametrize(
    "corrupt",
    [
        "UPDATE incidents SET record = json_set(record, '$.kind', 42) WHERE id = ?",
        "UPDATE incidents SET record = '{not json' WHERE id = ?",
    ],
    ids=["invalid", "not json"],
)
async def test_a_target_whose_incident_cannot_be_read_is_held_and_moves_on(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, corrupt: str
) -> None:
    """An open incident whose stored record cannot be read (a field of the wrong type,
    or not even JSON): its due target is still handed out, without the incident, and the
    loop holds it (logged `reminder_held`, reason `no_incident`) and moves it on like any
    hold. So it neither keeps the loop waking (its time stays in the past) nor, filling
    a batch, starves the readable targets due with it."""
    first, _ = await open_failure(sqlite_store)
    second, _ = await open_failure(sqlite_store, job=8)
    broken, readable = sorted([first, second], key=lambda i: i.id)  # broken is read first
    conn = sqlite3.connect(sqlite_store.path)
    conn.execute(corrupt, (broken.id,))
    conn.commit()
    conn.close()
    (target, _) = await sqlite_store.due_reminders(now=600.0, limit=10)
    assert (target.incident_id, target.incident, target.key) == (broken.id, None, MAIL)
    mail = EmailChannelConfig.model_validate(
        {"type": "email", "host": "127.0.0.1", "sender": "w@example.org"}
    )
    table = RoutingTable(channels={"mail": mail}, routes=())
    loop = Reminders(store=sqlite_store, table=table, clock=ManualClock(600.0))
    monkeypatch.setattr(reminders, "BATCH", 1)
    with structlog.testing.capture_logs() as logs:
        assert await loop.tick() == 0
        assert await loop.tick() == 1
    held = [(e["reason"], e["incident_id"]) for e in logs if e["event"] == "reminder_held"]
    assert held == [("no_incident", broken.id)]
    queued = [e["incident_id"] for e in logs if e["event"] == "reminder_queued"]
    assert queued == [readable.id]
    assert await sqlite_store.next_reminder_at() == 1200.0


async def test_a_target_without_reminders_is_never_due(store: SQLiteStore) -> None:
    await open_failure(store, every=None)
    assert await store.due_reminders(now=1e12, limit=10) == []
    assert await store.next_reminder_at() is None


# -- the daemon, in simulated time -----------------------------------------------------------


@dataclass
class Watch:
    """The daemon as app.build wires it, stepped by hand: a cycle, a reminder pass and
    the deliveries, every `step` seconds of the test's ManualClock."""

    sim: Simulator
    clock: ManualClock
    config: Any
    daemon: Daemon

    async def cycle(self, seconds: float = 30.0) -> list[Event]:
        self.clock.advance(seconds)
        events = await run_once(self.daemon)
        await self.daemon.reminders.tick()
        await self.daemon.dispatcher.drain()
        return events

    async def run_for(self, seconds: float, step: float = 600.0) -> None:
        """Time passes: a cycle and a reminder pass every `step` seconds."""
        while seconds > 0:
            await self.cycle(min(step, seconds))
            seconds -= step

    async def restart(self) -> None:
        await close(self.daemon)
        self.daemon = await build(self.config, clock=self.clock, console=io.StringIO())

    def fail(self, job: int) -> None:
        self.sim.workspace.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")

    def succeed(self, job: int) -> None:
        self.sim.workspace.start_run(job, setup_s=0, execution_s=10, cleanup_s=0)


WatchFactory = Callable[..., Any]


@pytest.fixture
async def watch(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """`await watch(channels, routes, **top)`: the daemon after its first (history) cycle."""
    built: list[Watch] = []

    async def start(channels: dict[str, Any], routes: list[dict[str, Any]], **top: Any) -> Watch:
        config = config_for(
            sim,
            tmp_path / "watcher.db",
            top={"channels": channels, "routes": routes, **top},
            poll_interval=30,
        )
        daemon = await build(config, clock=clock, console=io.StringIO())
        w = Watch(sim, clock, config, daemon)
        built.append(w)
        await w.cycle()
        return w

    yield start
    for w in built:
        await close(w.daemon)


def mail_channel(smtp: SmtpServer) -> dict[str, Any]:
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "sender": "watcher@example.org",
        "recipients": ["oncall@example.org"],
    }


def mails(smtp: SmtpServer) -> list[email.message.EmailMessage]:
    found = []
    for envelope in smtp.mailbox.envelopes:
        assert isinstance(envelope.content, bytes)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        found.append(message)
    return found


def mail_ids(smtp: SmtpServer) -> list[str]:
    return [str(m["X-Watcher-Event-Id"]) for m in mails(smtp)]


def text_of(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_email_reminds_every_4_hours_until_the_job_recovers(
    watch: WatchFactory, smtp: SmtpServer
) -> None:
    """A job that failed once and stays failed: the email route says nothing of
    reminders, so email's default (4 h) applies: after 8 h 1 min two reminders have gone
    out, numbered 1 and 2, each the failure again with its derived id. The job recovers:
    the recovery is sent, and no reminder follows in the next 12 h."""
    w = await watch({"mail": mail_channel(smtp)}, MAIL_ROUTES)
    assert EMAIL_REPEAT_INTERVAL == 4 * HOUR
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    (failed,) = [e for e in await w.cycle() if e.type is EventType.RUN_FAILED]
    assert failed.incident is not None
    incident_id = failed.incident.id
    assert mail_ids(smtp) == [failed.id]
    await w.run_for(8 * HOUR + 60, step=60.0 * 30)
    expected = [reminder_id(incident_id, MAIL, n) for n in (1, 2)]
    assert mail_ids(smtp) == [failed.id, *expected]
    first, second = mails(smtp)[1:]
    assert "reminder 1" in text_of(first)
    assert "reminder 2" in text_of(second)
    for n, reminder in enumerate([await w.daemon.store.get_event(i) for i in expected], 1):
        assert reminder is not None
        assert (reminder.repeat, reminder.run, reminder.incident) == (
            n,
            failed.run,
            failed.incident,
        )
    w.succeed(job)
    recovered = [e for e in await w.cycle() if e.type is EventType.JOB_RECOVERED]
    assert len(recovered) == 1
    await w.run_for(12 * HOUR, step=HOUR)
    assert mail_ids(smtp) == [failed.id, *expected, recovered[0].id]


async def test_a_route_repeat_interval_of_0_turns_reminders_off(
    watch: WatchFactory, smtp: SmtpServer
) -> None:
    w = await watch(
        {"mail": mail_channel(smtp)},
        [{"match": {"event_types": PAGING}, "channels": ["mail"], "repeat_interval": 0}],
    )
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    await w.cycle()
    await w.run_for(9 * HOUR, step=HOUR)
    assert len(smtp.mailbox.envelopes) == 1
    assert await w.daemon.store.next_reminder_at() is None


async def test_a_chat_route_repeats_at_its_repeat_interval(
    watch: WatchFactory, make_receiver: ReceiverFactory
) -> None:
    """Chat has no reminders by default; a route with repeat_interval 600 repeats every
    10 minutes; a second failure restarts the wait (it was just sent)."""
    slack: Receiver = await make_receiver()
    quiet: Receiver = await make_receiver()
    w = await watch(
        {
            "chat": {"type": "slack", "url": f"{slack.url}/services/fake"},
            "other": {"type": "slack", "url": f"{quiet.url}/services/fake"},
        },
        [
            {"match": {"event_types": PAGING}, "channels": ["chat"], "repeat_interval": 600,
             "continue": True},
            {"match": {"event_types": PAGING}, "channels": ["other"]},
        ],
    )  # fmt: skip
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    await w.cycle()  # committed at +30 s: reminders due at +630, +1230, +1830
    await w.run_for(1830, step=30.0)
    assert len(slack.requests) == 4
    assert len(quiet.requests) == 1  # its route has no repeat_interval
    w.fail(job)
    await w.cycle()  # the second failure, at +1860: the next reminder at +2460
    assert len(slack.requests) == 5
    await w.run_for(570, step=30.0)
    assert len(slack.requests) == 5
    await w.run_for(30, step=30.0)
    assert len(slack.requests) == 6


async def test_a_channel_that_is_down_is_not_sent_a_pile_of_reminders(
    watch: WatchFactory, make_receiver: ReceiverFactory
) -> None:
    """Slack is down for an hour while the failure is retried: the reminders due meanwhile
    are held (they would queue up behind it). Slack comes back: the failure goes out,
    and the next reminder on the cadence, not six at once."""
    slack: Receiver = await make_receiver(default=(503, {}, "down"))
    w = await watch(
        {"chat": {"type": "slack", "url": f"{slack.url}/services/fake", "retry_max_delay": 60}},
        [{"match": {"event_types": PAGING}, "channels": ["chat"], "repeat_interval": 600}],
    )
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    dispatcher = w.daemon.dispatcher
    for _ in range(12):  # an hour, five minutes at a time, without waiting for deliveries
        w.clock.advance(300)
        await run_once(w.daemon)
        await w.daemon.reminders.tick()
        await dispatcher.dispatch_due()
        await dispatcher.settle()
    assert len(slack.requests) >= 12
    assert len({r.body for r in slack.requests}) == 1  # every one the failure, retried
    assert (await w.daemon.store.outbox_stats()).pending == 1
    slack.default = (200, {}, "ok")
    await dispatcher.drain()
    down = len(slack.requests)
    await w.run_for(600, step=60.0)
    assert len(slack.requests) == down + 1
    assert b"reminder 1" in slack.requests[-1].body
    assert b"reminder" not in slack.requests[-2].body


async def test_a_silence_holds_reminders(
    watch: WatchFactory, smtp: SmtpServer, clock: ManualClock
) -> None:
    """A silence that starts after the failure was sent holds its reminders while it
    lasts (the 4 h and 8 h ones: held, logged, not counted); the first after it ends is
    reminder 1."""
    start = datetime.fromtimestamp(clock.time(), UTC)
    silence = {
        "match": {"names": ["nightly"]},
        "starts_at": (start + timedelta(hours=1)).isoformat(),
        "ends_at": (start + timedelta(hours=9)).isoformat(),
        "comment": "maintenance",
    }
    w = await watch(
        {"mail": mail_channel(smtp)},
        MAIL_ROUTES,
        silences=[silence],
    )
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    (failed,) = [e for e in await w.cycle() if e.type is EventType.RUN_FAILED]
    assert failed.incident is not None
    with structlog.testing.capture_logs() as logs:
        await w.run_for(8 * HOUR + 60, step=HOUR / 2)
    assert mail_ids(smtp) == [failed.id]
    held = [e for e in logs if e["event"] == "reminder_held"]
    assert [e["reason"] for e in held] == ["silenced", "silenced"]
    await w.run_for(4 * HOUR, step=HOUR / 2)  # the 12 h reminder, after the silence
    assert mail_ids(smtp) == [failed.id, reminder_id(failed.incident.id, MAIL, 1)]


async def test_a_runtime_silence_holds_reminders_without_a_cycle_to_read_it(
    watch: WatchFactory, smtp: SmtpServer, clock: ManualClock
) -> None:
    """Reminders go out on every replica, also one that polls nothing and so never reads
    the silences for a cycle: a silence added at run time after the failure holds the
    4 h reminder though no cycle ran since."""
    w = await watch({"mail": mail_channel(smtp)}, MAIL_ROUTES)
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    (failed,) = [e for e in await w.cycle() if e.type is EventType.RUN_FAILED]
    await w.daemon.dispatcher.drain()
    assert mail_ids(smtp) == [failed.id]
    silence = new_silence(
        matchers=["job=nightly"],
        comment="fixing it",
        created_by="me",
        now=clock.time(),
        duration=9 * HOUR,
    )
    await w.daemon.store.add_silence(silence)
    clock.advance(4 * HOUR + 60)
    with structlog.testing.capture_logs() as logs:
        assert await w.daemon.reminders._pass() == (0, reminders.MAX_IDLE)
    assert [e["reason"] for e in logs if e["event"] == "reminder_held"] == ["silenced"]


async def test_a_crash_or_replay_never_doubles_a_reminder(
    watch: WatchFactory, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reminder commit that dies half-way (after its event, before its delivery) leaves
    nothing behind, and the next pass commits it under the same id; a restart after the
    commit (before any delivery) sends it once; replaying a decision from a stale read
    queues nothing."""
    w = await watch({"mail": mail_channel(smtp)}, MAIL_ROUTES)
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    (failed,) = [e for e in await w.cycle() if e.type is EventType.RUN_FAILED]
    assert failed.incident is not None
    w.clock.advance(4 * HOUR)
    store = w.daemon.store
    assert isinstance(store, SQLiteStore)
    (target,) = await store.due_reminders(now=w.clock.time(), limit=10)

    async def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("the disk went away")

    with monkeypatch.context() as patch:
        patch.setattr(store, "_add_deliveries", crash)
        with pytest.raises(OSError, match="disk"):
            await w.daemon.reminders.tick()
    first = reminder_id(failed.incident.id, MAIL, 1)
    assert await store.get_event(first) is None
    assert await store.due_reminders(now=w.clock.time(), limit=10) == [target]
    assert await w.daemon.reminders.tick() == 1
    await w.restart()  # before the dispatcher ran
    assert await w.daemon.reminders.tick() == 0
    stale = await w.daemon.store.commit_reminder(decided(target, w.clock.time()).commit)
    assert stale is False
    await w.daemon.dispatcher.drain()
    assert mail_ids(smtp) == [failed.id, first]


async def test_alertmanager_is_re_posted_every_resend_interval(
    watch: WatchFactory, make_receiver: ReceiverFactory, clock: ManualClock
) -> None:
    """An Alertmanager target repeats every resend_interval whatever the route says (a
    route's repeat_interval 0 too): each post fires the alert again from the incident's
    opening with endsAt resolve_after later; the recovery resolves it and the posts stop."""
    am: Receiver = await make_receiver(default=(200, {}, ""))
    w = await watch(
        {"am": {"type": "alertmanager", "url": am.url, **AM_TIMES}},
        [{"match": {"event_types": PAGING}, "channels": ["am"], "repeat_interval": 0}],
    )
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    (failed,) = [e for e in await w.cycle() if e.type is EventType.RUN_FAILED]
    assert failed.incident is not None
    await w.run_for(5 * 60 + 1, step=10.0)
    posts = [r.json()[0] for r in am.requests]
    assert len(posts) == 6
    assert [p["annotations"]["event_id"] for p in posts] == [
        failed.id,
        *(reminder_id(failed.incident.id, DeliveryKey("am"), n) for n in range(1, 6)),
    ]
    for request, alert in zip(am.requests, posts, strict=True):
        assert parse(alert["startsAt"]) == failed.incident.opened_at
        assert parse(alert["endsAt"]) == datetime.fromtimestamp(request.at + 300, UTC)
    w.succeed(job)
    await w.cycle()
    resolved = am.requests[-1].json()[0]
    assert parse(resolved["endsAt"]) <= datetime.fromtimestamp(clock.time(), UTC)
    count = len(am.requests)
    await w.run_for(600, step=10.0)
    assert len(am.requests) == count


async def test_a_silence_holds_no_alertmanager_re_post(
    watch: WatchFactory, make_receiver: ReceiverFactory, smtp: SmtpServer, clock: ManualClock
) -> None:
    """A silence that starts after the failure was sent holds the email reminders, not
    Alertmanager's re-posts: they keep firing an alert Alertmanager already has, which
    would otherwise expire resolve_after after the last one and be notified as resolved
    while the job still fails (Alertmanager's own silences are where to mute it)."""
    start = datetime.fromtimestamp(clock.time(), UTC)
    silence = {
        "match": {"names": ["nightly"]},
        "starts_at": (start + timedelta(minutes=2)).isoformat(),
        "ends_at": (start + timedelta(hours=1)).isoformat(),
        "comment": "maintenance",
    }
    am: Receiver = await make_receiver(default=(200, {}, ""))
    w = await watch(
        {"am": {"type": "alertmanager", "url": am.url, **AM_TIMES}, "mail": mail_channel(smtp)},
        [{"match": {"event_types": PAGING}, "channels": ["am", "mail"], "repeat_interval": 120}],
        silences=[silence],
    )
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    (failed,) = [e for e in await w.cycle() if e.type is EventType.RUN_FAILED]
    with structlog.testing.capture_logs() as logs:
        await w.run_for(600, step=10.0)
    assert len(am.requests) == 11  # the failure, then every resend_interval (60 s)
    for before, after in zip(am.requests, am.requests[1:], strict=False):
        assert after.at < parse(before.json()[0]["endsAt"]).timestamp()  # never lapsed
    assert mail_ids(smtp) == [failed.id]
    held = {(e["channel"], e["reason"]) for e in logs if e["event"] == "reminder_held"}
    assert held == {("mail", "silenced")}


async def test_a_changed_resend_interval_applies_to_open_incidents(
    watch: WatchFactory, make_receiver: ReceiverFactory
) -> None:
    """Alertmanager's resend_interval changed and the watcher restarted: an incident
    already open is re-posted at the new interval (after the re-post already due on the
    old one), with the new resolve_after."""
    am: Receiver = await make_receiver(default=(200, {}, ""))
    w = await watch(
        {"am": {"type": "alertmanager", "url": am.url, **AM_TIMES}},
        [{"match": {"event_types": PAGING}, "channels": ["am"]}],
    )
    job = w.sim.workspace.create_job("nightly")
    w.fail(job)
    await w.cycle()
    await w.run_for(150, step=10.0)
    assert len(am.requests) == 3  # the failure and two re-posts, 60 s apart
    channels = dict(w.config.channels)
    channels["am"] = channels["am"].model_copy(
        update={"resend_interval": 120.0, "resolve_after": 600.0}
    )
    w.config = w.config.model_copy(update={"channels": channels})
    await w.restart()
    await w.run_for(600, step=10.0)
    sent = am.requests[0].at
    assert [r.at - sent for r in am.requests] == [0, 60, 120, 180, 300, 420, 540, 660]
    last = am.requests[-1]
    assert parse(last.json()[0]["endsAt"]) == datetime.fromtimestamp(last.at + 600, UTC)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
