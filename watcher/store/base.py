"""The Store protocol and the records it keeps. SQLite is the embedded default; any other
backend (PostgreSQL, for several replicas) implements the same protocol, so nothing outside
`watcher/store/` knows which one runs."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from watcher.databricks.models import Run
from watcher.events import Event

Outcome = Literal["success", "failure"]
DeliveryStatus = Literal["pending", "delivered", "dead", "silenced"]


class StoreError(Exception):
    """The store cannot be opened or written; the message names the database."""


class RunRecord(BaseModel):
    """What the tracker remembers of one run between cycles."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: str
    run_id: int
    job_id: int | None
    life_cycle_state: str | None
    result_state: str | None
    start_time: int | None
    end_time: int | None
    attempt_number: int = 0
    terminal: bool
    backfill: bool = False
    emitted: frozenset[str] = Field(default_factory=frozenset)
    """Keys of the events already emitted for this run (an event type, or
    `run_duration_exceeded:<rule>`): each is emitted at most once."""
    snapshot: Run


class JobRecord(BaseModel):
    """Per job: the last outcome (for recovery detection) and the latest name and tags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workspace: str
    job_id: int
    name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    last_outcome: Outcome | None = None
    last_outcome_run_id: int | None = None
    last_outcome_end_time: int | None = None
    """end_time (ms) of the run that set last_outcome: an older run's outcome never
    overrides a newer one."""


@dataclass(frozen=True, slots=True)
class WorkspaceState:
    """What the poller needs to know before a cycle."""

    watermark_ms: int | None
    """Server time (epoch ms) up to which completed runs have been committed; None before
    the first cycle ever."""
    active_run_ids: frozenset[int]
    """Runs whose last committed record is not terminal."""


@dataclass(frozen=True, slots=True)
class CycleCommit:
    """Everything one workspace cycle decided, committed in one transaction."""

    workspace: str
    watermark_ms: int
    committed_at: float
    """Local wall-clock time of the commit (epoch seconds): delivery timestamps start here."""
    runs: Sequence[RunRecord] = ()
    jobs: Sequence[JobRecord] = ()
    events: Sequence[Event] = ()
    channels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """event id -> channels to deliver it to (from routing)."""
    silenced: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """event id -> channels it would have gone to, held back by a silence."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One (event, channel) pair in the outbox."""

    event: Event
    channel: str
    status: DeliveryStatus
    attempts: int
    created_at: float
    next_attempt_at: float
    last_error: str | None = None


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


@dataclass(frozen=True, slots=True)
class PruneResult:
    runs: int
    events: int


class Store(Protocol):
    async def workspace_state(self, workspace: str) -> WorkspaceState: ...

    async def get_runs(self, workspace: str, run_ids: Collection[int]) -> dict[int, RunRecord]: ...

    async def get_jobs(self, workspace: str, job_ids: Collection[int]) -> dict[int, JobRecord]: ...

    async def job_times(self) -> list[JobTimes]: ...

    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        """Write records, events, deliveries and the watermark atomically. Events whose id
        is already stored are skipped; the events actually inserted are returned."""

    async def due_deliveries(
        self, *, now: float, limit: int, channels: Collection[str] | None = None
    ) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest event first, at most one
        per (channel, workspace, job) so that a job's alerts reach a channel in order."""

    async def mark_delivered(self, event_id: str, channel: str, *, at: float) -> None: ...

    async def mark_failed(
        self, event_id: str, channel: str, *, error: str, next_attempt_at: float | None
    ) -> None:
        """Count a failed attempt; `next_attempt_at=None` dead-letters the delivery."""

    async def dead_letters(self, *, limit: int = 1000) -> list[Delivery]: ...

    async def requeue_dead(self, *, now: float, event_ids: Collection[str] | None = None) -> int:
        """Make dead deliveries (all, or those of `event_ids`) pending again; their count."""

    async def outbox_stats(self) -> OutboxStats: ...

    async def prune(
        self, *, now: float, run_retention_days: float, event_retention_days: float
    ) -> PruneResult: ...

    async def ping(self) -> None:
        """Raise StoreError unless the store can take a write now (readiness)."""

    async def close(self) -> None: ...
