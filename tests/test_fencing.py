"""Fencing, through the whole cycle: two replicas of the daemon on one PostgreSQL schema
and one simulated workspace, in manual time. Replica A polls under its lease and is
paused in the middle of committing (between deciding its cycle and writing it); its
lease runs out, replica B takes the workspace and commits the same transitions. When A
resumes, its commit is refused and writes nothing: every event is committed once."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from tests.pg import open_store, pg_schema
from tests.wiring import config_for
from watcher.app import Daemon, build, close
from watcher.clock import ManualClock
from watcher.events import EventType
from watcher.leases import LeaseKeeper
from watcher.simulator import Simulator
from watcher.store.base import CycleCommit, Lease, Store, StoreFenced
from watcher.store.postgres import PostgresStore

TTL = 30.0


class PausedCommits:
    """The store, but `commit_cycle` waits for `resume` once `pause` is set: a replica
    frozen (SIGSTOP, a GC pause) with its cycle decided and not yet written."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.pause = False
        self.paused = asyncio.Event()
        self.resume = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit_cycle(self, commit: CycleCommit) -> list[Any]:
        if self.pause:
            self.paused.set()
            await self.resume.wait()
        return await self._store.commit_cycle(commit)


def keeper(store: Store, name: str, clock: ManualClock) -> LeaseKeeper:
    return LeaseKeeper(
        store=store,
        replica=name,
        workspaces=["sim"],
        ttl=TTL,
        clock=clock,
        on_gained=lambda lease, taken_over: None,
        on_lost=lambda workspace, why: None,
    )


async def test_a_replica_paused_mid_commit_past_its_lease_is_refused_and_doubles_nothing(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    config = config_for(sim, tmp_path / "unused.db", poll_interval=10)
    async with pg_schema() as schema:
        stores = [await open_store(schema), await open_store(schema)]
        paused = PausedCommits(stores[0])
        a = await build(config, clock=clock, store=paused, console=io.StringIO())
        b = await build(config, clock=clock, store=stores[1], console=io.StringIO())
        try:
            await run_scenario(sim, clock, a, b, paused, stores[1])
        finally:
            await close(a)
            await close(b)


async def run_scenario(
    sim: Simulator,
    clock: ManualClock,
    a: Daemon,
    b: Daemon,
    paused: PausedCommits,
    shared: PostgresStore,
) -> None:
    keeper_a, keeper_b = keeper(paused, "a", clock), keeper(shared, "b", clock)
    await keeper_a.tick_once()
    lease_a: Lease = keeper_a.held["sim"]
    await a.pipeline.handle(await a.pollers[0].poll(), epoch=lease_a.epoch)  # first cycle

    job = sim.workspace.create_job("nightly")
    sim.workspace.start_run(job, setup_s=0, execution_s=20, cleanup_s=0, result="FAILED")
    clock.advance(60)
    decided = await a.pollers[0].poll()
    paused.pause = True
    commit = asyncio.create_task(a.pipeline.handle(decided, epoch=lease_a.epoch))
    await asyncio.wait_for(paused.paused.wait(), 10)

    clock.advance(TTL + 1)  # A stays frozen past its lease
    await keeper_b.tick_once()
    lease_b = keeper_b.held["sim"]
    assert lease_b.epoch == lease_a.epoch + 1
    committed_by_b = await b.pipeline.handle(await b.pollers[0].poll(), epoch=lease_b.epoch)
    assert [e.type for e in committed_by_b if e.job.job_id == job] == [EventType.RUN_FAILED]

    paused.resume.set()  # A wakes up mid-commit
    with pytest.raises(StoreFenced):
        await commit
    stored = await shared.event_ids()
    assert sorted(stored) == sorted(set(stored))
    assert {e.id for e in committed_by_b} <= set(stored)
    # A's decided cycle held the same transitions: none of them was committed twice, and
    # A's records did not overwrite B's.
    runs = await shared.get_runs("sim", [r.run_id for r in decided.runs])
    assert all(r.terminal for r in runs.values())
    await keeper_a.tick_once()  # back: its renewal is refused, the workspace is B's
    assert keeper_a.held == {}
