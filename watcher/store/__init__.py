"""Durable state: run and job records, the event outbox and per-workspace watermarks."""

from watcher.store.base import (
    CycleCommit,
    Delivery,
    JobTimes,
    OutboxStats,
    PruneResult,
    Store,
    StoreError,
    WorkspaceState,
)

__all__ = [
    "CycleCommit",
    "Delivery",
    "JobTimes",
    "OutboxStats",
    "PruneResult",
    "Store",
    "StoreError",
    "WorkspaceState",
]
