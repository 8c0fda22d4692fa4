"""Durable state: run and job records, the event outbox and per-workspace watermarks."""

from watcher.store.base import (
    CycleCommit,
    Delivery,
    JobRecord,
    JobTimes,
    OutboxStats,
    PruneResult,
    RunRecord,
    Store,
    StoreError,
    WorkspaceState,
)

__all__ = [
    "CycleCommit",
    "Delivery",
    "JobRecord",
    "JobTimes",
    "OutboxStats",
    "PruneResult",
    "RunRecord",
    "Store",
    "StoreError",
    "WorkspaceState",
]
