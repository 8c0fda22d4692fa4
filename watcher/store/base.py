"""The store's protocols and the records they carry. Each user asks for the narrow part it
needs: the cycle (`CycleStore`), the dispatcher (`Outbox`), the reminder loop
(`ReminderStore`), the lease keeper (`LeaseStore`), the silences added at run time
(`SilenceStore`) and housekeeping and the CLI (`Maintenance`). `Store` is all of them:
SQLite is the embedded default for one replica, PostgreSQL serves several; both pass the
same contract suite, and nothing outside `watcher/store/` knows which one runs."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from watcher.config import SilenceConfig
from watcher.domain import Incident, JobRecord, RunRecord
from watcher.events import Event

DeliveryStatus = Literal["pending", "delivered", "dead", "silenced"]


RETRY_AFTER = "Retry-After "
"""How the error of an attempt the target asked to wait for begins (`Retry-After 600s:
HTTP 429 ...`): stored with the delivery, so no replica, and no restart, ever releases it
early (`Outbox.expedite`)."""


class StoreError(Exception):
    """The store cannot be opened, read or written; the message names the database (never
    a password)."""


class StoreUnavailable(StoreError):
    """The database could not be reached, broke off, or did not answer in time (a server
    down, hung or restarting; a connection reset): nothing is known to have been written,
    and the same call may succeed later."""


class StoreNotMigrated(StoreError):
    """The database's schema is older than this watcher's (or missing), and the store was
    opened not to migrate it (the operator's commands): `watcher run` migrates it."""


class StoreConflict(StoreError):
    """A commit was decided on data another writer changed meanwhile (an incident an
    operator resolved while a cycle ran): nothing was written; decide again."""


class StoreFenced(StoreError):
    """A cycle commit fenced off: the workspace's lease has moved to another epoch (this
    replica stalled or was partitioned past its lease, and another one took the
    workspace). Nothing was written, and this replica no longer owns the workspace."""


@dataclass(frozen=True, slots=True)
class Lease:
    """Who polls a workspace: one replica at a time, until `expires_at` unless renewed.
    `epoch` goes up by one at every change of hands: it is the fencing token each cycle
    commit of the owner carries. `owner` is "" once released."""

    workspace: str
    owner: str
    epoch: int
    expires_at: float


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    """What the poller needs to know before a cycle."""

    watermark_ms: int | None
    """Server time (epoch ms) up to which completed runs have been committed; None before
    the first cycle ever."""
    active_run_ids: frozenset[int]
    """Runs whose last committed record is not terminal."""
    news_since_ms: int | None = None
    """Server time from which transitions are news (alerted); earlier ones are history,
    recorded without paging. Set at the first cycle ever to the instant the watcher
    started, raised when a catch-up is truncated."""


@dataclass(frozen=True, slots=True, order=True)
class DeliveryKey:
    """Where one delivery of an event goes: a configured channel, and for an address from
    a job's own `email_notifications` that address (the email channel sends to it alone),
    so each recipient has its own delivery state. `recipient` is "" for the channel's own
    target."""

    channel: str
    recipient: str = ""

    def __str__(self) -> str:
        """`channel`, or `channel:recipient`: how operators see and type a key."""
        return f"{self.channel}:{self.recipient}" if self.recipient else self.channel

    @classmethod
    def parse(cls, text: str) -> DeliveryKey:
        """The key `str(key)` shows, as an operator types it (channel names cannot
        contain `:`)."""
        channel, colon, recipient = text.partition(":")
        if colon and not recipient:
            raise ValueError(f"{text!r}: an address must follow the ':'")
        return cls(channel, recipient)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How the route that chose a delivery wants it sent."""

    repeat_every: float | None = None
    """Seconds between reminders while the event's incident stays open (None: none)."""
    group_key: str = ""
    """Deliveries to one target with the same non-empty group key go out together as one
    digest (the route's `group_by` values)."""
    group_wait: float = 0.0
    """Seconds a new group waits for company before its first digest."""
    group_interval: float = 0.0
    """Seconds between digests of one group."""


@dataclass(frozen=True, slots=True)
class Routed:
    """Where routing sends one event: the deliveries, those a silence holds back, and how
    each delivery is to be sent."""

    channels: Sequence[DeliveryKey] = ()
    silenced: Sequence[DeliveryKey] = ()
    policies: Mapping[DeliveryKey, DeliveryPolicy] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CycleCommit:
    """Everything one workspace cycle decided, committed in one transaction."""

    workspace: str
    watermark_ms: int | None
    """None for a commit that is no cycle (an operator's resolve): the watermark stays."""
    committed_at: float
    """Local wall-clock time of the commit (epoch seconds): delivery timestamps start here."""
    runs: Sequence[RunRecord] = ()
    jobs: Sequence[JobRecord] = ()
    events: Sequence[Event] = ()
    channels: Mapping[str, Sequence[DeliveryKey]] = field(default_factory=dict)
    """event id -> where to deliver it (from routing)."""
    silenced: Mapping[str, Sequence[DeliveryKey]] = field(default_factory=dict)
    """event id -> where it would have gone, held back by a silence."""
    news_since_ms: int | None = None
    """Raise the workspace's news horizon to this (it never moves back)."""
    epoch: int | None = None
    """The lease epoch the cycle ran under: the commit is refused (StoreFenced) unless the
    workspace's lease is still at this epoch. None: not fenced (one-shot commands, an
    operator's resolve)."""
    incidents: Sequence[Incident] = ()
    """Incidents opened, updated or resolved; each written only if its stored version is
    still the one it was read at (else StoreConflict)."""
    policies: Mapping[str, Mapping[DeliveryKey, DeliveryPolicy]] = field(default_factory=dict)
    """event id -> delivery key -> how to send it (default: at once, alone, no reminder)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (event, delivery key) pair in the outbox."""

    event: Event
    key: DeliveryKey
    status: DeliveryStatus
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None = None
    group_key: str = ""

    @property
    def channel(self) -> str:
        """The configured channel that delivers it."""
        return self.key.channel


@dataclass(frozen=True, slots=True)
class EventDeliveries:
    """A stored event with every delivery of it: what the status page shows of the outbox."""

    event: Event
    committed_at: float
    """When it was committed (local wall-clock time, epoch seconds)."""
    deliveries: tuple[Delivery, ...] = ()
    """Its deliveries (silenced ones too), by channel and recipient."""


@dataclass(frozen=True, slots=True)
class JobTimes:
    """A job's latest finish and success (epoch ms) among the stored runs, with its name
    and tags: restores the per-job timestamp metrics after a restart."""

    workspace: str
    job_id: int
    name: str | None
    tags: dict[str, str]
    last_finish_ms: int | None
    last_success_ms: int | None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    silenced: int
    incidents_open: Mapping[str, int] = field(default_factory=dict)
    """Open incidents by kind."""


@dataclass(frozen=True, slots=True)
class PruneResult:
    runs: int
    events: int


@dataclass(frozen=True, slots=True)
class DueReminder:
    """A target of an open incident whose next reminder is due: what the reminder loop
    reads to decide it (watcher.notify.reminders)."""

    incident_id: str
    incident: Incident | None
    """The open incident; None if its stored record cannot be read (the reminder is held
    and the target moves on, like any hold)."""
    key: DeliveryKey
    repeat_every: float
    next_repeat_at: float
    """As read: the commit applies only while the target still has this value."""
    repeats: int
    """Reminders committed so far to this target."""
    latest: Event | None
    """The incident's latest event (`incident.last_event_id`), None if it is unreadable."""
    pending: bool = False
    """An event of the incident is still undelivered to this target (a channel down):
    a reminder would only queue up behind it."""


@dataclass(frozen=True, slots=True)
class ReminderCommit:
    """One reminder decided, committed in one transaction: the target's next reminder and
    count move on, and with `event` (None: held) the reminder event and one pending
    delivery to that target only."""

    incident_id: str
    key: DeliveryKey
    read_next_repeat_at: float
    read_repeats: int
    """The target as it was read: a target changed since (a new event of the incident
    restarted its wait, another writer committed this reminder) is left alone."""
    next_repeat_at: float
    repeats: int
    committed_at: float
    event: Event | None = None


class CycleStore(Protocol):
    """What one workspace cycle reads and commits (the poller and the pipeline)."""

    async def workspace_state(self, workspace: str) -> WorkspaceState: ...

    async def get_runs(self, workspace: str, run_ids: Collection[int]) -> dict[int, RunRecord]: ...

    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]:
        """run_id -> stored end_time (0 if none) of those runs whose record is terminal."""

    async def get_jobs(self, workspace: str, job_ids: Collection[int]) -> dict[int, JobRecord]: ...

    async def open_incidents(self, workspace: str, job_ids: Collection[int]) -> dict[str, Incident]:
        """key -> open incident, of those jobs and of runs without a job."""

    async def incident_targets(self, incident_ids: Collection[str]) -> dict[str, list[DeliveryKey]]:
        """incident id -> where its events were to be delivered (not held by a silence)."""

    async def known_events(self, event_ids: Collection[str]) -> set[str]:
        """Those of `event_ids` already stored."""

    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        """Write records, events, deliveries and the watermark atomically. Events whose id
        is already stored are skipped; the events actually inserted are returned. A
        commit with an `epoch` is refused with StoreFenced unless the workspace's lease
        is at that epoch (checked under the lease row's lock, so a takeover waits for
        the commit or the commit for the takeover)."""


class Outbox(Protocol):
    """The deliveries the dispatcher sends. Several dispatchers (one per replica) share
    it: a delivery is claimed before it is sent, and a claimed delivery is handed to no
    other dispatcher until it is settled or its claim expires."""

    async def due_deliveries(
        self, *, now: float, limit: int, channels: Collection[str] | None = None
    ) -> list[Delivery]:
        """Pending deliveries whose next attempt is due and that no unexpired claim holds,
        oldest event first: of ungrouped ones at most one per (key, workspace, job), the
        oldest pending delivery of that job to that key (grouped or not, claimed or
        not), so that a job's alerts reach a recipient in order; of grouped ones at most
        one per (key, group key), the group's oldest pending member, standing for its
        group's next digest (`take_group`), whatever else its job has pending.
        `channels` limits them to those channels (every recipient of each)."""

    async def claim(
        self, event_id: str, key: DeliveryKey, *, now: float, until: float, owner: str
    ) -> bool:
        """Claim a pending delivery for one attempt, until `until`, unless another claim
        holds it at `now`: whether it is now `owner`'s to send."""

    async def release_claims(self, owner: str) -> int:
        """Drop every claim `owner` holds (its attempts were cancelled, or belonged to a
        former life of this replica): those deliveries are due again at once. How many."""

    async def expedite(self, channel: str, *, now: float, at: float, limit: int) -> int:
        """Make due at `at` the channel's pending deliveries that wait on a failed
        attempt's back-off (attempted, next attempt after `at`, no claim held at `now`,
        not waiting for a Retry-After: `last_error` starting with RETRY_AFTER), those of
        its `limit` oldest waiting slots, a slot being a delivery or all of a group's
        waiting members to one recipient (a digest is retried whole). How many."""

    async def mark_delivered(self, event_id: str, key: DeliveryKey, *, at: float) -> None:
        """Record a pending delivery delivered (and its claim settled)."""

    async def mark_failed(
        self,
        event_id: str,
        key: DeliveryKey,
        *,
        error: str,
        next_attempt_at: float | None,
        owner: str | None = None,
    ) -> None:
        """Count a failed attempt of a pending delivery (its claim settled);
        `next_attempt_at=None` dead-letters it. A delivery settled meanwhile (delivered
        by another replica after this one's claim expired) is left as it is. With an
        `owner` (the replica whose attempt failed), the failure is recorded only while
        the delivery is not claimed by someone else (unclaimed, or claimed by `owner`):
        a replica whose claim expired and was taken by another replica neither resets
        nor dead-letters what that replica is sending. None: whoever holds it."""

    async def take_group(
        self,
        key: DeliveryKey,
        group_key: str,
        *,
        now: float,
        limit: int,
        claim_until: float | None = None,
        owner: str = "",
    ) -> list[Delivery]:
        """What the group's next digest to `key` carries: its pending members due at
        `now` that no other claim holds, oldest event first, at most `limit` (the rest go
        in the next one). With `claim_until` they are claimed by `owner` until then.
        Unless there are none, `now` is recorded as the group's last digest, in the same
        transaction: members arriving from then on wait for the next digest."""

    async def mark_group_delivered(
        self, key: DeliveryKey, group_key: str, event_ids: Collection[str], *, at: float
    ) -> None:
        """Mark a digest's members delivered and `at` as the group's last digest, in one
        transaction (members arriving later wait `group_interval` from `at`)."""

    async def mark_group_failed(
        self,
        key: DeliveryKey,
        event_ids: Collection[str],
        *,
        error: str,
        next_attempt_at: float | None,
        owner: str | None = None,
    ) -> None:
        """`mark_failed` of each of a digest's members, in one transaction: one failed
        attempt each, all with the same next attempt (None: all dead-lettered). With an
        `owner`, a member claimed by someone else is left alone (as `mark_failed`)."""

    async def outbox_stats(self) -> OutboxStats: ...


class ReminderStore(Protocol):
    """Reminders of open incidents (watcher.notify.reminders)."""

    async def due_reminders(self, *, now: float, limit: int) -> list[DueReminder]:
        """Targets of open incidents whose next reminder is due at `now`, earliest first;
        also those whose incident or latest event cannot be read (None), to be held and
        moved on."""

    async def next_reminder_at(self) -> float | None:
        """When the next reminder of an open incident falls due (None: none is planned)."""

    async def commit_reminder(self, commit: ReminderCommit) -> bool:
        """Apply `commit` if its incident is still open and its target unchanged since it
        was read; whether a new reminder delivery was queued. A reminder event already
        stored (same id) is not queued again."""


class LeaseStore(Protocol):
    """Per-workspace leases shared by the replicas (watcher.leases). Times are the
    replicas' wall clocks (epoch seconds): they decide only when a lease may change
    hands; the epoch check of every commit keeps a late writer out whatever the clocks
    say."""

    async def heartbeat(self, replica: str, *, now: float, ttl: float) -> list[str]:
        """Record `replica` alive until `now + ttl`; the replicas alive at `now`
        (itself included), sorted."""

    async def leases(self) -> list[Lease]:
        """Every workspace's lease, held or expired."""

    async def acquire(
        self, workspace: str, replica: str, *, now: float, ttl: float
    ) -> Lease | None:
        """Take the workspace's lease until `now + ttl` if nobody holds it at `now` (never
        leased, expired or released) or `replica` does (a former life of it, restarted
        under its name): its epoch goes up by one either way, so nothing the former
        owner still has in flight can commit. None: another replica holds it."""

    async def renew(
        self, replica: str, epochs: Mapping[str, int], *, now: float, ttl: float
    ) -> set[str]:
        """Extend to `now + ttl` each lease (workspace -> epoch) that `replica` holds at
        that epoch, expired or not (nobody took it meanwhile); the workspaces renewed."""

    async def release(self, workspace: str, replica: str, epoch: int, *, now: float) -> None:
        """Give up a lease still held at `epoch`: it expires at `now` with no owner (""),
        free to take (unlike a lease whose owner died holding it, which it expired)."""

    async def retire(self, replica: str, *, now: float) -> None:
        """A replica leaving: release all its leases and forget its heartbeat."""


class Maintenance(Protocol):
    """Housekeeping, readiness and what the operator's commands read and change."""

    async def incidents(self, *, open_only: bool = False, limit: int = 1000) -> list[Incident]:
        """The latest incidents first."""

    async def get_event(self, event_id: str) -> Event | None: ...

    async def job_times(self, workspace: str | None = None) -> list[JobTimes]:
        """Every job's latest finish and success among the stored runs: of `workspace`
        only, or (None) of every workspace."""

    async def dead_letters(
        self, *, limit: int = 1000, newest_first: bool = False
    ) -> list[Delivery]:
        """Dead-lettered deliveries, oldest event first (newest first when asked)."""

    async def recent_events(self, *, limit: int) -> list[EventDeliveries]:
        """The latest `limit` events committed, newest first, each with its deliveries; an
        event whose stored payload cannot be read is left out."""

    async def requeue_dead(self, *, now: float, event_ids: Collection[str] | None = None) -> int:
        """Make dead deliveries (all, or those of `event_ids`) pending again; their count."""

    async def outbox_stats(self) -> OutboxStats: ...

    async def prune(
        self, *, now: float, run_retention_days: float, event_retention_days: float
    ) -> PruneResult:
        """Drop finished runs older than the run retention, settled events older than the
        event retention (undelivered and dead-lettered ones are kept) and what goes with
        them. Safe on several replicas at once."""

    async def ping(self) -> None:
        """Raise StoreError unless the store can take a write now (readiness)."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoredSilence:
    """A silence added at run time (`watcher silence add`, the HTTP API): kept in the
    store, so it survives restarts and every replica holds the same events back."""

    id: str
    silence: SilenceConfig
    created_by: str
    created_at: float
    expired_at: float | None = None
    """When it was expired by hand (None: it runs its course)."""

    @property
    def ends_at(self) -> float | None:
        """When it stops holding anything (None: a recurring window without end)."""
        ends = [self.silence.ends_at.timestamp()] if self.silence.ends_at else []
        if self.expired_at is not None:
            ends.append(self.expired_at)
        return min(ends) if ends else None

    def ended(self, now: float) -> bool:
        ends = self.ends_at
        return ends is not None and ends <= now

    def record(self) -> str:
        """What the store keeps besides the columns it selects on."""
        return json.dumps(
            {"created_by": self.created_by, "silence": self.silence.model_dump(mode="json")},
            separators=(",", ":"),
        )

    @classmethod
    def from_row(
        cls, silence_id: str, created_at: float, expired_at: float | None, record: str
    ) -> StoredSilence:
        data: dict[str, Any] = json.loads(record)
        return cls(
            id=silence_id,
            silence=SilenceConfig.model_validate(data["silence"]),
            created_by=str(data.get("created_by", "")),
            created_at=created_at,
            expired_at=expired_at,
        )


class SilenceStore(Protocol):
    """Silences added at run time, shared by every replica."""

    async def add_silence(self, silence: StoredSilence) -> None:
        """Store a new silence (its id is new: an id already stored raises StoreConflict)."""

    async def silences(self, *, now: float, ended: bool = False) -> list[StoredSilence]:
        """The silences not ended at `now` (with `ended`, the ended ones not yet pruned
        too), oldest first. A row that cannot be read is logged and left out: a silence
        unread holds nothing back, which pages rather than hides."""

    async def expire_silence(self, silence_id: str, *, now: float) -> StoredSilence | None:
        """End a silence at `now`; the silence as it is now, or None when there is none
        of that id not already ended."""


class Store(CycleStore, Outbox, ReminderStore, LeaseStore, SilenceStore, Maintenance, Protocol):
    """Every part: what a backend implements."""
