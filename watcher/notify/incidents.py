"""`watcher incidents list|resolve`: the incidents the store holds, and an operator's
resolve, which goes out like the watcher's own (an `incident_resolved` event, delivered to
every channel the incident was paged to, in one transaction with the incident's state)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from watcher.clock import Clock
from watcher.config import RoutingConfig
from watcher.domain import Incident
from watcher.events import Event
from watcher.incidents import resolution, resolve
from watcher.notify.router import router_for
from watcher.notify.text import ms_iso
from watcher.store.base import CycleCommit, Store

COLUMNS = ("id", "state", "kind", "count", "opened_at", "resolved_at", "cause", "key")


class IncidentNotFound(Exception):
    """No open incident has that id (or id prefix), or more than one does."""


def incident_rows(incidents: Sequence[Incident]) -> list[str]:
    """One tab-separated line per incident, under a header line."""
    lines = ["\t".join(COLUMNS)]
    for incident in incidents:
        cells = (
            incident.id,
            "open" if incident.is_open else "resolved",
            incident.kind,
            str(incident.count),
            ms_iso(incident.opened_at_ms, timespec="seconds") or "-",
            ms_iso(incident.resolved_at_ms, timespec="seconds") or "-",
            incident.cause or "-",
            # Keys hold workspace names and rule names (task keys): one line each, always.
            incident.key.replace("\t", " ").replace("\n", " "),
        )
        lines.append("\t".join(cells))
    return lines


async def find_open(store: Store, wanted: str) -> Incident:
    """The open incident whose id is `wanted` or starts with it (at least 8 characters)."""
    matches = [
        i
        for i in await store.incidents(open_only=True, limit=100_000)
        if i.id == wanted or (len(wanted) >= 8 and i.id.startswith(wanted))
    ]
    if len(matches) != 1:
        what = "no open incident" if not matches else f"{len(matches)} open incidents"
        raise IncidentNotFound(f"{what} with id {wanted!r} (see: watcher incidents list)")
    return matches[0]


async def resolve_manually(
    store: Store, config: RoutingConfig, wanted: str, *, clock: Clock
) -> Event:
    """Resolve the open incident `wanted` now: commit its `incident_resolved` event (cause
    `manual`) with the incident's new state, routed as the daemon routes, and to every
    channel the incident was delivered to. The running watcher's dispatcher sends it."""
    incident = await find_open(store, wanted)
    last = await store.get_event(incident.last_event_id)
    if last is None:
        raise IncidentNotFound(f"incident {incident.id}: its latest event is gone from the store")
    now = clock.time()
    event = resolution(incident, last, at=datetime.fromtimestamp(now, UTC), cause="manual")
    targets = await store.incident_targets([incident.id])
    routed = router_for(config, clock=clock)(event, None, targets.get(incident.id, []))
    await store.commit_cycle(
        CycleCommit(
            workspace=incident.workspace,
            watermark_ms=None,
            committed_at=now,
            events=[event],
            channels={event.id: routed.channels},
            silenced={event.id: routed.silenced},
            incidents=[resolve(incident, event, "manual")],
            policies={event.id: routed.policies},
        )
    )
    return event
