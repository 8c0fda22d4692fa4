"""Per-workspace leases: which replica polls which workspace.

Each workspace is polled by at most one replica at a time, the one holding its lease in
the store. Every cycle renews its workspace's lease as it begins, so a lease runs out one
lease period after its owner's last cycle began. A keeper on every replica heartbeats
every third of a lease, renews the leases whose cycles are further apart than half a
lease, and balances: with N replicas alive and M workspaces each aims at ceil(M / N),
taking free leases (in an order of its own, so replicas starting together do not all
reach for the same workspace), releasing its surplus when a replica joins, and taking
the leases of a dead or stalled replica as soon as they expire, whatever its share.
A replica that cannot renew stops polling once its lease runs out by its own clock; one
that stalled past its lease and wakes up finds its commits fenced off, because every
cycle commit carries the epoch it polled under and the store refuses a stale one.

With SQLite there is one replica: it takes every lease at its first tick, and after a
restart under the same name at once (with a new epoch)."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import structlog

from watcher.aio import sleep_or_stop, within
from watcher.clock import Clock
from watcher.store.base import Lease, LeaseStore

log = structlog.get_logger(__name__)

RENEWALS_PER_LEASE = 3
"""Renewals per lease period: two can fail before the lease runs out."""


def replica_name(*, shared: bool = True) -> str:
    """This replica's name: $WATCHER_REPLICA, else the host name (a pod's name) when
    replicas share the store, else "local" (one replica on SQLite: a restart takes its
    leases back at once, also in a container recreated under another host name). Names
    must be unique among the replicas running at once; a replica restarted under its old
    name takes back its leases at once."""
    if name := os.environ.get("WATCHER_REPLICA"):
        return name
    return (socket.gethostname() or "watcher") if shared else "local"


@dataclass(frozen=True, slots=True)
class LeasePlan:
    take: Sequence[str]
    release: Sequence[str]


def plan_leases(
    *,
    me: str,
    workspaces: Collection[str],
    live: Collection[str],
    leases: Mapping[str, Lease],
    held: Collection[str],
    now: float,
    patience: float,
) -> LeasePlan:
    """What to take and release for an even share, ceil(M / N) each.

    Free leases (never taken, released, or this replica's own from a former life) are
    taken up to the share. Orphans are taken whatever the share: leases whose owner let
    them expire while holding them (it died or stalled: a stalled replica still counts
    as alive until its heartbeat runs out), and leases released more than `patience`
    ago that no replica below its share took (it stalled, or died): a release never
    leaves a workspace unwatched for long."""
    # An owner whose every lease ran out has stalled or died, whatever its heartbeat
    # says: counting it would have the others release the orphans they just took.
    stale = {lease.owner for lease in leases.values() if lease.owner} - {
        lease.owner for lease in leases.values() if lease.expires_at > now
    }
    alive = (set(live) - stale) | {me}
    share = math.ceil(len(workspaces) / len(alive))
    mine = [w for w in workspaces if w in held]
    orphans: list[str] = []
    free: list[str] = []
    for w in workspaces:
        lease = leases.get(w)
        if w in held:
            continue
        if lease is None or lease.owner == me:
            free.append(w)
        elif lease.owner == "":
            (orphans if lease.expires_at <= now - patience else free).append(w)
        elif lease.expires_at <= now:
            orphans.append(w)
    if not orphans and len(mine) > share:
        return LeasePlan(take=(), release=_by_preference(me, mine)[share:])
    room = max(0, share - len(mine) - len(orphans))
    return LeasePlan(take=_by_preference(me, orphans) + _by_preference(me, free)[:room], release=())


def _by_preference(me: str, workspaces: Collection[str]) -> list[str]:
    """Rendezvous order: each replica prefers workspaces in an order of its own, so
    replicas starting together do not all reach for the same ones."""
    return sorted(workspaces, key=lambda w: hashlib.sha256(f"{me}\0{w}".encode()).digest())


Gained = Callable[[Lease, bool], None]
"""(the lease, taken_over): taken over when another replica still held it as it ran out
(that replica died or stalled), rather than free (never held, released, or this
replica's own from a former life)."""
Lost = Callable[[str, str], None]
"""(workspace, why: released | taken | expired | fenced | died | stopped)."""


class LeaseKeeper:
    """Holds this replica's leases and tells the poll loops' supervisor when one is
    gained (start polling under its epoch) or lost (stop)."""

    def __init__(
        self,
        *,
        store: LeaseStore,
        replica: str,
        workspaces: Sequence[str],
        ttl: float,
        clock: Clock,
        on_gained: Gained,
        on_lost: Lost,
    ) -> None:
        self._store = store
        self.replica = replica
        self._workspaces = list(workspaces)
        self._ttl = ttl
        self._clock = clock
        self._on_gained = on_gained
        self._on_lost = on_lost
        self.held: dict[str, Lease] = {}
        self._renewed_at: dict[str, float] = {}  # workspace -> monotonic, last renewal
        self.last_tick_ok: float | None = None  # monotonic time of the last good tick

    @property
    def tick(self) -> float:
        return self._ttl / RENEWALS_PER_LEASE

    def ready(self) -> bool:
        """Whether this replica holds work or can take it: its last tick reached the store
        within a lease period."""
        last = self.last_tick_ok
        return last is not None and self._clock.monotonic() - last < self._ttl

    async def run(self, *, stop: asyncio.Event) -> None:
        """Keep leases until `stop`; then stop polling every workspace (`retire` gives the
        leases up)."""
        try:
            while not stop.is_set():
                delay = await self.tick_once()
                await sleep_or_stop(self._clock, delay, stop)
        finally:
            for lease in list(self.held.values()):
                self._drop(lease, "stopped")

    async def retire(self) -> None:
        """Give every lease up and leave (once no loop of this replica can commit): the
        other replicas take the workspaces at their next tick, not a lease period later."""
        try:
            await within(
                self._clock, self.tick, self._store.retire(self.replica, now=self._clock.time())
            )
        except Exception as exc:  # the leases expire by themselves
            log.warning("lease_retire_failed", replica=self.replica, error=str(exc))

    async def tick_once(self) -> float:
        """Heartbeat, renew, balance; the seconds until the next tick (sooner when another
        replica's lease runs out before it, so a dead replica's work moves at once)."""
        started = self._clock.monotonic()
        now = self._clock.time()
        try:
            # Bounded: a store that hangs (a failover that dropped packets) must not stop
            # this replica from noticing that its leases ran out.
            leases = await within(self._clock, self.tick, self._tick(started, now))
        except Exception as exc:  # Timeout included
            log.warning("lease_tick_failed", replica=self.replica, error=str(exc) or repr(exc))
            self._expire(self._clock.monotonic())
            return min(self.tick, 1.0)
        self.last_tick_ok = started
        self._expire(self._clock.monotonic())
        return self._next_tick(leases, now)

    async def _tick(self, started: float, now: float) -> dict[str, Lease]:
        live = await self._store.heartbeat(self.replica, now=now, ttl=self._ttl)
        # Leases whose loop renewed them lately (cycles do) are left alone: a lease then
        # runs out one lease period after its owner's last cycle began, and a takeover
        # comes at most a lease period plus an interval after the last poll. Half a lease
        # left is still two ticks' worth of renewals.
        epochs = {
            w: lease.epoch
            for w, lease in self.held.items()
            if started - self._renewed_at.get(w, float("-inf")) >= self._ttl / 2
        }
        renewed = await self._store.renew(self.replica, epochs, now=now, ttl=self._ttl)
        for workspace, epoch in epochs.items():
            lease = self.held.get(workspace)
            if lease is None or lease.epoch != epoch:
                continue  # dropped by its loop meanwhile
            if workspace in renewed:
                self._renewed(workspace, started)
            else:
                self._drop(lease, "taken")
        leases = {lease.workspace: lease for lease in await self._store.leases()}
        await self._balance(live, leases, now, started)
        return leases

    async def renew(self, lease: Lease) -> bool:
        """Renew a lease as its poll loop begins a cycle: whether the loop may go on (the
        lease is still this one, not a later one of the same workspace). A lease another
        replica took is lost; a store that cannot be reached leaves the lease to run out
        by this replica's clock (the cycle's commit fails meanwhile)."""
        workspace = lease.workspace
        if self.held.get(workspace) is not lease:
            return False
        started = self._clock.monotonic()
        if started - self._renewed_at.get(workspace, float("-inf")) < self.tick / 2:
            return True  # renewed a moment ago (taken, or the cycle before)
        try:
            renewed = await within(
                self._clock,
                self.tick,
                self._store.renew(
                    self.replica, {workspace: lease.epoch}, now=self._clock.time(), ttl=self._ttl
                ),
            )
        except Exception as exc:  # Timeout included
            log.warning("lease_renew_failed", workspace=workspace, error=str(exc) or repr(exc))
            self._expire(self._clock.monotonic())
            return self.held.get(workspace) is lease
        if self.held.get(workspace) is not lease:
            return False
        if workspace not in renewed:
            self._drop(lease, "taken")
            return False
        self._renewed(workspace, started)
        return True

    def _renewed(self, workspace: str, at: float) -> None:
        self._renewed_at[workspace] = at

    def lose(self, lease: Lease, why: str) -> None:
        """Stop polling under `lease` at once (its commit was fenced off, its loop died);
        a later lease of the same workspace is left alone."""
        self._drop(lease, why)

    async def _balance(
        self, live: Sequence[str], leases: Mapping[str, Lease], now: float, started: float
    ) -> None:
        plan = plan_leases(
            me=self.replica,
            workspaces=self._workspaces,
            live=live,
            leases=leases,
            held=self.held.keys(),
            now=now,
            patience=self.tick,
        )
        for workspace in plan.release:
            released = self.held[workspace]
            self._drop(released, "released")
            await self._store.release(workspace, self.replica, released.epoch, now=now)
        for workspace in plan.take:
            previous = leases.get(workspace)
            lease = await self._store.acquire(workspace, self.replica, now=now, ttl=self._ttl)
            if lease is None:
                continue  # another replica was quicker
            self.held[workspace] = lease
            self._renewed(workspace, started)
            log.info(
                "lease_acquired",
                workspace=workspace,
                replica=self.replica,
                epoch=lease.epoch,
                previous_owner=previous.owner if previous else None,
            )
            taken_over = previous is not None and previous.owner not in ("", self.replica)
            self._on_gained(lease, taken_over)

    def _expire(self, now_mono: float) -> None:
        """A lease this replica could not renew in time: another may hold it now."""
        for workspace, renewed in list(self._renewed_at.items()):
            if now_mono >= renewed + self._ttl and workspace in self.held:
                self._drop(self.held[workspace], "expired")

    def _next_tick(self, leases: Mapping[str, Lease], now: float) -> float:
        others = [
            lease.expires_at - now
            for lease in leases.values()
            if lease.owner != self.replica and lease.expires_at > now
        ]
        # Just past the expiry: the lease is free by then on the store's comparison too.
        soonest = min(others, default=self.tick) + 0.05
        return max(0.05, min(self.tick, soonest))

    def _drop(self, lease: Lease, why: str) -> None:
        # Only this very lease: a loop or tick acting on an older one of the same
        # workspace (it awaited the store meanwhile) must not drop a newer one.
        workspace = lease.workspace
        if self.held.get(workspace) is not lease:
            return
        del self.held[workspace]
        self._renewed_at.pop(workspace, None)
        log.info(
            "lease_lost" if why in ("taken", "expired", "fenced") else "lease_released",
            workspace=workspace,
            replica=self.replica,
            epoch=lease.epoch,
            reason=why,
        )
        self._on_lost(workspace, why)
