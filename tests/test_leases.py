"""Per-workspace leases: the balancing plan (pure), and keepers of several replicas on one
real store in manual time: an even share, rebalancing when a replica joins or leaves,
a stalled replica's work taken over and its commits fenced off."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import pytest

from watcher.clock import ManualClock
from watcher.leases import LeaseKeeper, LeasePlan, plan_leases
from watcher.store.base import CycleCommit, Lease, Store, StoreFenced

WORKSPACES = [f"ws{i}" for i in range(10)]
TTL = 30.0


def plan(
    me: str, live: Sequence[str], leases: dict[str, Lease], held: Sequence[str], now: float = 0
) -> LeasePlan:
    return plan_leases(
        me=me, workspaces=WORKSPACES, live=live, leases=leases, held=held, now=now, patience=1.0
    )


def leased(owner: str, workspaces: Sequence[str], expires: float = 100.0) -> dict[str, Lease]:
    return {w: Lease(w, owner, 1, expires) for w in workspaces}


def test_a_lone_replica_plans_to_take_every_free_workspace() -> None:
    chosen = plan("a", ["a"], {}, ())
    assert sorted(chosen.take) == WORKSPACES
    assert list(chosen.release) == []


def test_the_share_is_the_ceiling_of_workspaces_per_live_replica() -> None:
    """With 3 replicas alive each aims at 4 of 10: one holding 6 releases 2 (the others
    have room for them), one holding 1 takes free ones, never one held by a live lease."""
    mine = WORKSPACES[:6]
    chosen = plan("a", ["a", "b", "c"], leased("a", mine), mine)
    assert len(chosen.release) == 2
    assert set(chosen.release) <= set(mine)
    by_b = leased("b", WORKSPACES[6:])
    chosen = plan("c", ["a", "b", "c"], by_b, ["ws0"])
    assert len(chosen.take) == 3
    assert not set(chosen.take) & set(by_b)


def test_orphans_are_taken_whatever_the_share() -> None:
    """Expired leases of another owner (it died or stalled), and released ones nobody
    took for longer than the patience, are taken beyond the share; this replica's own
    leases of a former life and fresh releases are free, taken within the share."""
    leases = (
        {
            "ws0": Lease("ws0", "b", 3, 10.0),  # b's, expired at now=20
            "ws1": Lease("ws1", "a", 2, 100.0),  # a's own, from before a restart
            "ws2": Lease("ws2", "b", 1, 100.0),  # b's, live
            "ws3": Lease("ws3", "", 4, 19.5),  # released just now
            "ws4": Lease("ws4", "", 4, 15.0),  # released long ago, untaken: an orphan
        }
        | leased("b", WORKSPACES[5:])
    )
    chosen = plan("a", ["a", "b"], leases, [], now=20)
    assert sorted(chosen.take) == ["ws0", "ws1", "ws3", "ws4"]
    # At its share already (5 of 10 with 2 replicas): the orphans only.
    mine = [f"m{i}" for i in range(5)]
    chosen = plan_leases(
        me="a",
        workspaces=[*WORKSPACES[:5], *mine],
        live=["a", "b"],
        leases=leases,
        held=mine,
        now=20,
        patience=1.0,
    )
    assert sorted(chosen.take) == ["ws0", "ws4"]


class Unreachable:
    """The store, or (when `down`) a database that refuses every connection."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.down = False

    def __getattr__(self, name: str) -> Any:
        if self.down:
            raise OSError("connection refused")
        return getattr(self._store, name)


class Replica:
    """One replica's keeper on the shared store, recording what it was told."""

    def __init__(self, store: Store, name: str, clock: ManualClock) -> None:
        self.gained: list[Lease] = []
        self.lost: list[tuple[str, str]] = []
        self.keeper = LeaseKeeper(
            store=store,
            replica=name,
            workspaces=WORKSPACES,
            ttl=TTL,
            clock=clock,
            on_gained=lambda lease, taken_over: self.gained.append(lease),
            on_lost=lambda ws, why: self.lost.append((ws, why)),
        )

    @property
    def held(self) -> set[str]:
        return set(self.keeper.held)


async def settle(replicas: Sequence[Replica], clock: ManualClock, ticks: int = 3) -> None:
    """Every replica ticks `ticks` times, a tick period apart."""
    for _ in range(ticks):
        for r in replicas:
            await r.keeper.tick_once()
        clock.advance(TTL / 3)


def assert_partition(replicas: Sequence[Replica]) -> None:
    """Every workspace held by exactly one replica."""
    counts = Counter(w for r in replicas for w in r.held)
    assert sorted(counts) == WORKSPACES
    assert set(counts.values()) == {1}


async def test_replicas_share_evenly_and_rebalance_on_join_and_leave(
    store: Store, clock: ManualClock
) -> None:
    a, b, c = (Replica(store, n, clock) for n in "abc")
    await settle([a], clock, ticks=1)
    assert a.held == set(WORKSPACES)  # alone: everything, at its first tick
    await settle([a, b, c], clock)
    assert_partition([a, b, c])
    assert sorted(len(r.held) for r in (a, b, c)) == [2, 4, 4]
    d = Replica(store, "d", clock)
    await settle([a, b, c, d], clock)
    assert_partition([a, b, c, d])
    assert max(len(r.held) for r in (a, b, c, d)) == 3
    # A replica leaving gives its leases up: the others take them at their next tick.
    leaving = max((a, b, c, d), key=lambda r: len(r.held))
    await leaving.keeper.retire()
    for lease in list(leaving.keeper.held.values()):
        leaving.keeper.lose(lease, "stopped")
    rest = [r for r in (a, b, c, d) if r is not leaving]
    await settle(rest, clock, ticks=1)  # released: taken at once, within the share
    assert_partition(rest)


async def test_a_stalled_replica_is_replaced_after_its_lease_and_fenced_on_return(
    store: Store, clock: ManualClock
) -> None:
    """A replica that stops ticking (SIGSTOP, a partition) keeps its leases for one lease
    period; then the other takes them with a new epoch. When the stalled one comes
    back, its renewal fails (it stops polling them) and a commit under its old epoch is
    refused and writes nothing."""
    a, b = Replica(store, "a", clock), Replica(store, "b", clock)
    await settle([a], clock, ticks=1)
    old = dict(a.keeper.held)
    await settle([b], clock, ticks=1)
    assert b.held == set()  # a's leases are live
    clock.advance(TTL)  # a stalls for a whole lease
    await settle([b], clock, ticks=1)
    assert b.held == set(WORKSPACES)
    assert all(b.keeper.held[w].epoch == old[w].epoch + 1 for w in WORKSPACES)

    with pytest.raises(StoreFenced):
        await store.commit_cycle(
            CycleCommit(workspace="ws0", watermark_ms=5_000, committed_at=clock.time(), epoch=1)
        )
    assert (await store.workspace_state("ws0")).watermark_ms is None
    await a.keeper.tick_once()  # back: renewal refused, balancing finds nothing free
    assert a.held == set()
    assert sorted(a.lost) == sorted((w, "taken") for w in WORKSPACES)
    await store.commit_cycle(
        CycleCommit(workspace="ws0", watermark_ms=5_000, committed_at=clock.time(), epoch=2)
    )
    assert (await store.workspace_state("ws0")).watermark_ms == 5_000


async def test_a_replica_that_cannot_reach_the_store_stops_polling_when_its_lease_ends(
    store: Store, clock: ManualClock
) -> None:
    """Renewals failing (the database unreachable): the leases are dropped once a lease
    period has passed since the last renewal, by the replica's own clock, and readiness
    says so."""
    flaky = Unreachable(store)
    a = Replica(cast(Store, flaky), "a", clock)
    await a.keeper.tick_once()
    assert a.keeper.ready()
    flaky.down = True
    clock.advance(TTL / 3)
    await a.keeper.tick_once()
    assert a.held == set(WORKSPACES)  # still within the lease
    clock.advance(TTL)
    await a.keeper.tick_once()
    assert a.held == set()
    assert {why for _, why in a.lost} == {"expired"}
    assert not a.keeper.ready()


async def test_a_replica_restarted_under_its_name_takes_its_leases_back_at_once(
    store: Store, clock: ManualClock
) -> None:
    """After a SIGKILL the leases are still live; the replica restarted under the same
    name (a pod restarted in place) takes them at its first tick, with new epochs."""
    first = Replica(store, "a", clock)
    await first.keeper.tick_once()
    again = Replica(store, "a", clock)
    await again.keeper.tick_once()
    assert again.held == set(WORKSPACES)
    assert {lease.epoch for lease in again.keeper.held.values()} == {2}


async def test_a_stale_loop_never_drops_the_newer_lease_of_its_workspace(
    store: Store, clock: ManualClock
) -> None:
    """A loop still running under an old lease (stuck in a commit while the keeper lost
    and re-took the workspace) is refused and cannot drop the new lease: neither its
    refused commit (`lose`) nor its next renewal acts on the lease that replaced it."""
    flaky = Unreachable(store)
    a = Replica(cast(Store, flaky), "a", clock)
    await a.keeper.tick_once()
    old = a.keeper.held["ws0"]
    flaky.down = True
    clock.advance(TTL)
    await a.keeper.tick_once()  # its leases ran out by its own clock
    assert a.held == set()
    flaky.down = False
    await a.keeper.tick_once()  # taken again, with new epochs
    new = a.keeper.held["ws0"]
    assert new.epoch == old.epoch + 1
    a.keeper.lose(old, "fenced")
    assert await a.keeper.renew(old) is False
    assert a.keeper.held["ws0"] is new
    assert await a.keeper.renew(new) is True
