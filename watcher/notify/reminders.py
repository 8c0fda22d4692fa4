"""Reminders: an incident that stays open is sent again, to each target its events went
to, every `repeat_every` of that target (the route's `repeat_interval`; email 4 h by
default; Alertmanager every `resend_interval`, which keeps its alert firing).

A reminder is a copy of the incident's latest event with a new id and `repeat` = N (the
Nth reminder to that target), committed with one pending delivery to that target only
and the target's next reminder time, in one transaction. Its id is derived from the
incident, the target and N, so a reminder decided twice (a crash, a replay, two
processes) is stored and sent once. A silence matching the reminder holds it (except to
Alertmanager, whose reminders keep an alert it already has firing: its own silences mute
it), and so does an alert of the incident still undelivered to that target, or an
incident or event that cannot be read: the target's next reminder moves on, nothing is
sent or counted. Resolved incidents are never reminded of: the store only hands out
targets of open incidents, and commits a reminder only while its incident is still open.

An Alertmanager target repeats at its channel's current `resend_interval` (a restart
with a new one applies to the incidents already open); other targets keep the interval
their route gave them when the incident's latest event was committed.

The decision is pure (`decide`); the loop (`Reminders`) reads what is due, commits what
was decided and wakes the dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import structlog

from watcher.aio import first_of
from watcher.clock import Clock
from watcher.config.channels import AlertmanagerChannelConfig
from watcher.events import Event
from watcher.incidents import derived_id, incident_ref
from watcher.notify.base import excerpt
from watcher.notify.router import RoutingTable, serves
from watcher.store.base import DeliveryKey, DueReminder, ReminderCommit, ReminderStore

log = structlog.get_logger(__name__)

BATCH = 100
"""Due reminders decided per store read."""
MAX_IDLE = 30.0
"""Longest wait between passes: new targets wake the loop, this bounds a missed wake."""
MIN_IDLE = 0.25
"""Shortest wait between passes (a due target whose commit keeps being refused)."""
ERROR_IDLE = 5.0

Held = Literal["silenced", "pending", "unserved", "no_event", "no_incident"]
"""Why a due reminder is not sent: a silence matches it, an earlier alert of the incident
to that target is still undelivered (a reminder would queue up behind it: a channel that
comes back gets the backlog, not a burst of reminders), no configured channel delivers it
any more, the incident's latest event cannot be read, or the incident's stored record
cannot be read."""


@dataclass(frozen=True, slots=True)
class Decision:
    commit: ReminderCommit
    held: Held | None = None


def reminder_id(incident_id: str, key: DeliveryKey, n: int) -> str:
    """The id of the `n`th reminder of an incident to one target: the same however often
    it is decided."""
    return derived_id(incident_id, "repeat", key.channel, key.recipient, str(n))


def next_due(due_at: float, every: float, now: float) -> float:
    """The target's next reminder after the one due at `due_at`: `every` later, on the
    same cadence past `now` when the daemon was stopped meanwhile (one reminder after a
    pause, not a burst of the missed ones)."""
    missed = max(0, math.floor((now - due_at) / every))
    return due_at + (missed + 1) * every


def reminder(due: DueReminder) -> Event | None:
    """The reminder due: the incident's latest event again, numbered, with a new id and
    the incident as that event left it (open, its count); None without that event or
    without the incident."""
    latest, incident = due.latest, due.incident
    if latest is None or incident is None:
        return None
    ref = latest.incident
    if ref is None or ref.id != incident.id or ref.state != "open":
        ref = incident_ref(incident)  # defensive: the stored incident is the truth
    n = due.repeats + 1
    return latest.model_copy(
        update={"id": reminder_id(incident.id, due.key, n), "repeat": n, "incident": ref}
    )


def decide(
    due: DueReminder,
    *,
    now: float,
    delivers: Callable[[DeliveryKey, Event], bool],
    silenced: Callable[[Event], bool],
) -> Decision:
    """What to commit for one due target: the reminder (or why it is held), its number
    and the target's next reminder time."""
    event = reminder(due)
    held: Held | None = None
    if due.incident is None:
        held = "no_incident"
    elif event is None:
        held = "no_event"
    elif not delivers(due.key, event):
        held = "unserved"
    elif due.pending:
        held = "pending"
    elif silenced(event):
        held = "silenced"
    sent = held is None
    commit = ReminderCommit(
        incident_id=due.incident_id,
        key=due.key,
        read_next_repeat_at=due.next_repeat_at,
        read_repeats=due.repeats,
        next_repeat_at=next_due(due.next_repeat_at, due.repeat_every, now),
        repeats=due.repeats + 1 if sent else due.repeats,
        committed_at=now,
        event=event if sent else None,
    )
    return Decision(commit, held)


class Reminders:
    """The loop: every pass commits the due reminders and wakes the dispatcher; between
    passes it waits until the next one is due (at most MAX_IDLE), or a wake (a commit
    that may have added targets)."""

    def __init__(
        self,
        *,
        store: ReminderStore,
        table: RoutingTable,
        clock: Clock,
        on_queued: Callable[[], None] | None = None,
        max_consecutive_errors: int = 30,
    ) -> None:
        self._store = store
        self._table = table
        self._clock = clock
        self._on_queued = on_queued
        self._max_errors = max_consecutive_errors
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look again now (call after a commit that may have added targets)."""
        self._wake.set()

    async def tick(self) -> int:
        """One pass over what is due now; the reminders queued."""
        queued, _ = await self._pass()
        return queued

    async def run(self, *, stop: asyncio.Event) -> None:
        """Remind until `stop` is set. Store errors are logged and retried; after
        `max_consecutive_errors` in a row the loop ends with the last, failing the
        process rather than idling silently."""
        errors = 0
        while not stop.is_set():
            self._wake.clear()
            try:
                _, idle = await self._pass()
                errors = 0
            except Exception:
                errors += 1
                log.exception("reminders_failed", consecutive=errors)
                if errors >= self._max_errors:
                    raise
                idle = ERROR_IDLE
            if idle > 0:
                await first_of(stop.wait(), self._wake.wait(), self._clock.sleep(idle))

    async def _pass(self) -> tuple[int, float]:
        """Decide and commit one batch; (reminders queued, seconds until the next pass)."""
        now = self._clock.time()
        due = await self._store.due_reminders(now=now, limit=BATCH)
        if due and self._table.live is not None:
            # Reminders run on every replica, also one that polls nothing (and so reads
            # no silences for its cycles): those added at run time hold them too.
            await self._table.live.refresh()
        queued = 0
        for target in due:
            queued += await self._remind(target, now)
        if queued and self._on_queued is not None:
            self._on_queued()
        if len(due) >= BATCH:
            return queued, 0.0  # more are due: no wait
        next_at = await self._store.next_reminder_at()
        if next_at is None:
            return queued, MAX_IDLE
        return queued, min(MAX_IDLE, max(MIN_IDLE, next_at - self._clock.time()))

    async def _remind(self, due: DueReminder, now: float) -> int:
        due = self._current(due)
        decision = decide(
            due,
            now=now,
            delivers=self._delivers,
            silenced=lambda e: self._silenced(due.key, e, now),
        )
        queued = await self._store.commit_reminder(decision.commit)
        fields = {"channel": str(due.key), "incident_id": due.incident_id}
        if due.incident is not None:
            fields["incident_key"] = due.incident.key
        if decision.held is not None:
            log.info("reminder_held", reason=decision.held, **fields)
        elif queued:
            assert decision.commit.event is not None
            event = decision.commit.event
            log.info("reminder_queued", event_id=event.id, repeat=event.repeat, **fields)
        return int(queued)

    def _current(self, due: DueReminder) -> DueReminder:
        """The target with its channel's current interval where the channel, not the
        route, decides it: Alertmanager's `resend_interval`, so a changed one applies to
        the incidents already open (from their next re-post on)."""
        channel = self._table.channels.get(due.key.channel)
        if isinstance(channel, AlertmanagerChannelConfig):
            return replace(due, repeat_every=channel.resend_interval)
        return due

    def _delivers(self, key: DeliveryKey, event: Event) -> bool:
        channels = self._table.channels
        return serves(key, channels) and channels[key.channel].accepts(event.type)

    def _silenced(self, key: DeliveryKey, event: Event, now: float) -> bool:
        """Whether a silence holds the reminder; one that cannot be evaluated holds
        nothing (like routing: a duplicate page beats a missed one). Never to
        Alertmanager: its reminders are the keep-alives of an alert it already has,
        which would lapse and be notified as resolved while the job still fails (mute it
        with Alertmanager's own silences)."""
        if isinstance(self._table.channels.get(key.channel), AlertmanagerChannelConfig):
            return False
        try:
            return self._table.silenced(event, now)
        except Exception as exc:
            with contextlib.suppress(Exception):
                log.error(
                    "reminder_silence_failed",
                    event_id=event.id,
                    error_type=type(exc).__name__,
                    error=excerpt(str(exc), 500),
                )
            return False
