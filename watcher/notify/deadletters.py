"""`watcher alerts list|retry`: dead letters, shown and replayed over any Store."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from watcher.notify.text import one_line, truncate
from watcher.store.base import Delivery, Store

_ROW = "{:<36}  {:<20}  {:<22}  {:>8}  {:<19}  {}"
HEADER = _ROW.format("EVENT ID", "CHANNEL", "TYPE", "ATTEMPTS", "QUEUED (UTC)", "JOB: LAST ERROR")


def describe(delivery: Delivery) -> str:
    """One line per dead letter: what, where, how often, and why it died."""
    event = delivery.event
    queued = datetime.fromtimestamp(delivery.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    job = truncate(one_line(f"{event.workspace}/{event.job.name or event.job.job_id}"), 60)
    error = truncate(one_line(delivery.last_error or "-"), 300)
    channel = truncate(str(delivery.key), 20)
    return _ROW.format(event.id, channel, event.type, delivery.attempts, queued, f"{job}: {error}")


async def list_dead_letters(
    store: Store, *, event_ids: Collection[str] | None = None, limit: int = 1000
) -> list[str]:
    """The dead letters (all, or those of `event_ids`) as printable lines (header first),
    oldest first."""
    deliveries = await store.dead_letters(limit=limit)
    if event_ids is not None:
        deliveries = [d for d in deliveries if d.event.id in event_ids]
    return [HEADER, *(describe(d) for d in deliveries)] if deliveries else []


async def retry_dead_letters(
    store: Store, *, now: float, event_ids: Collection[str] | None = None
) -> int:
    """Make dead letters (all, or those of `event_ids`) pending again with a fresh attempt
    count; the running dispatcher delivers them. Returns how many."""
    return await store.requeue_dead(now=now, event_ids=event_ids)
