"""What only the PostgreSQL store is asked for when its server misbehaves, and how it
is opened: a hung server fails each call within the command timeout; a server down, a
connection broken or a backend killed is a StoreError (never the driver's own
exception); a replica paused while migrating holds no other one up for ever; the
operator's commands never migrate; the configuration's timeouts reach the server.
Everything runs against the real server, through a TCP proxy (tests/pg.py) where the
server is to hang, break off or go away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from tests import pg
from tests.notify_fixtures import free_port
from tests.test_store_contract import DAY, NOW, OPS, WS, commit, failed, send
from watcher.config import StoreConfig
from watcher.config.daemon import PostgresConfig
from watcher.store import postgres
from watcher.store.base import (
    Store,
    StoreError,
    StoreNotMigrated,
    StoreUnavailable,
)
from watcher.store.opening import open_store
from watcher.store.postgres import _MIGRATE_LOCK, _PRUNE_LOCK, MIGRATIONS, PostgresStore

Call = Callable[[], Coroutine[Any, Any, object]]


def config(dsn: str, schema: str, **options: object) -> StoreConfig:
    """The store section naming PostgreSQL at `dsn`, in `schema`."""
    return StoreConfig.model_validate(
        {"postgres": {"dsn": dsn, "schema": schema, "connect_timeout": 2, **options}}
    )


def calls(store: Store) -> dict[str, Call]:
    """A store call of each kind: a cycle's commit (a transaction), the dispatcher's read
    and claim, housekeeping's stats and readiness."""
    return {
        "commit_cycle": lambda: store.commit_cycle(commit([failed(99)])),
        "due_deliveries": lambda: store.due_deliveries(now=NOW, limit=10),
        "claim": lambda: store.claim(failed(1).id, OPS, now=NOW, until=NOW + 30, owner="a"),
        "outbox_stats": store.outbox_stats,
        "ping": store.ping,
    }


async def fails_within(call: Awaitable[object], seconds: float) -> StoreError:
    """The StoreError `call` raises, within `seconds` (a call still waiting by then, or
    raising anything else, fails the test)."""
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        await asyncio.wait_for(call, seconds + 10)
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"{raised.value} after {elapsed:.1f} s"
    return raised.value


# -- a server that hangs, breaks off or is gone ------------------------------------------


async def test_a_hung_server_fails_each_call_within_the_command_timeout() -> None:
    """The server stops answering (connections open, nothing comes back): each call,
    whether it waits on a statement or for a pooled connection, fails with
    StoreUnavailable after the configured command timeout (a transaction's rollback may
    wait as long again), instead of hanging the store for ever. Once the server answers
    again, so does the store."""
    async with pg.pg_schema() as schema, pg.pg_proxy() as proxy:
        store = await open_store(config(proxy.dsn, schema, command_timeout=1, pool={"max_size": 2}))
        try:
            await send(store, [failed(1)])
            proxy.blackhole()
            for name, call in calls(store).items():
                error = await fails_within(call(), 3.0)
                assert isinstance(error, StoreUnavailable), name
                assert "no answer within 1 s" in str(error), name
            # Every pooled connection is in use or broken: getting one times out too.
            held = [asyncio.create_task(store.outbox_stats()) for _ in range(2)]
            error = await fails_within(store.outbox_stats(), 3.0)
            assert isinstance(error, StoreUnavailable)
            await asyncio.gather(*held, return_exceptions=True)
            proxy.resume()
            assert (await store.outbox_stats()).pending == 1
            await store.ping()
        finally:
            proxy.reset()
            await store.close()


async def test_connections_broken_mid_call_are_store_errors() -> None:
    """The server's connections reset while calls wait on it: each call fails at once
    with StoreUnavailable, not the driver's error; the pool then connects anew."""
    async with pg.pg_schema() as schema, pg.pg_proxy() as proxy:
        store = await PostgresStore.open(proxy.dsn, schema=schema, max_size=6)
        try:
            await send(store, [failed(1)])
            proxy.blackhole()
            waiting = {name: asyncio.create_task(call()) for name, call in calls(store).items()}
            await asyncio.sleep(0.3)
            proxy.reset()
            proxy.resume()
            for name, task in waiting.items():
                error = await fails_within(task, 3.0)
                assert isinstance(error, StoreUnavailable), name
            await store.ping()
            assert await store.event_ids() == [failed(1).id]
        finally:
            await store.close()


async def test_a_backend_killed_mid_statement_is_a_store_error() -> None:
    """The server process of a connection killed (pg_terminate_backend, a restart) while
    its statement waits for a lock: StoreUnavailable."""
    async with pg.pg_schema() as schema, pg.pg_proxy() as proxy:
        store = await PostgresStore.open(proxy.dsn, schema=schema)
        try:
            assert await store.acquire(WS, "a", now=NOW, ttl=60)
            holder = await asyncpg.connect(pg.DSN, server_settings={"search_path": schema})
            try:
                async with holder.transaction():
                    await holder.execute("SELECT 1 FROM leases WHERE workspace = $1 FOR UPDATE", WS)
                    cycle = asyncio.create_task(store.commit_cycle(commit([failed(1)], epoch=1)))
                    await asyncio.sleep(0.3)  # waiting for the lease row
                    assert not cycle.done()
                    assert await proxy.terminate_backends() >= 1
                    error = await fails_within(cycle, 3.0)
                    assert isinstance(error, StoreUnavailable)
            finally:
                await holder.close()
            assert await store.event_ids() == []
        finally:
            await store.close()


async def test_a_server_gone_is_a_store_error_for_every_call() -> None:
    """The server down (its port refuses): every call fails at once with
    StoreUnavailable naming the database, never the driver's or the OS's exception."""
    async with pg.pg_schema() as schema, pg.pg_proxy() as proxy:
        store = await PostgresStore.open(proxy.dsn, schema=schema)
        try:
            await send(store, [failed(1)])
            proxy.down()
            for name, call in calls(store).items():
                error = await fails_within(call(), 3.0)
                assert isinstance(error, StoreUnavailable), name
                assert f"127.0.0.1:{proxy.port}" in str(error), name
        finally:
            await store.close()
    with pytest.raises(StoreUnavailable, match="cannot use the PostgreSQL database"):
        await PostgresStore.open(f"postgresql://u@127.0.0.1:{free_port()}/x", connect_timeout=2)


# -- migrating ---------------------------------------------------------------------------


async def hold(lock: int, schema: str) -> asyncpg.Connection:
    """A connection aside (in no schema of the watcher's) holding the session advisory
    lock `lock` of `schema`, keyed as the watcher keys it; close it to release."""
    conn = await asyncpg.connect(pg.DSN)
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", lock, schema)
    return conn


async def test_a_replica_migrating_for_too_long_fails_the_start_not_hangs_it() -> None:
    """Another replica holds the migration lock (paused mid-migration): this one waits
    for it at most the migration lock timeout, then fails naming why; once the lock is
    free, it migrates and starts."""
    async with pg.pg_schema() as schema:
        holder = await hold(_MIGRATE_LOCK, schema)
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match=r"another watcher has been migrating the schema"):
                await asyncio.wait_for(
                    PostgresStore.open(pg.DSN, schema=schema, migrate_lock_timeout=0.5), 10
                )
            assert 0.5 <= time.monotonic() - started < 3.0
            late = asyncio.create_task(
                PostgresStore.open(pg.DSN, schema=schema, migrate_lock_timeout=10)
            )
            await asyncio.sleep(0.3)
            assert not late.done()
        finally:
            await holder.close()
        store = await asyncio.wait_for(late, 10)
        try:
            assert await store.schema_version() == len(MIGRATIONS)
        finally:
            await store.close()


async def test_the_migration_and_prune_locks_are_keyed_alike_by_the_schema() -> None:
    """Both advisory locks are keyed by the schema the store was opened on, however the
    session asking for them is set: held aside under that schema's key, a replica
    neither migrates nor prunes; one on another schema is not held up."""
    async with pg.pg_store() as store, pg.pg_store() as elsewhere:
        assert store.schema is not None
        event = failed(1)
        for each in (store, elsewhere):
            await send(each, [event])
            await each.mark_delivered(event.id, OPS, at=NOW)
        later = {"now": NOW + 30 * DAY, "run_retention_days": 60, "event_retention_days": 14}
        migrating, pruning = (
            await hold(_MIGRATE_LOCK, store.schema),
            await hold(_PRUNE_LOCK, store.schema),
        )
        try:
            with pytest.raises(StoreError, match="another watcher has been migrating"):
                await PostgresStore.open(pg.DSN, schema=store.schema, migrate_lock_timeout=0.2)
            assert (await store.prune(**later)).events == 0
            assert (await elsewhere.prune(**later)).events == 1
        finally:
            await migrating.close()
            await pruning.close()
        assert (await store.prune(**later)).events == 1


async def test_the_operators_commands_use_the_schema_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`open_store(create=False)` (doctor, alerts, incidents, status) never migrates: no
    schema yet, or one older than the watcher's, is StoreNotMigrated pointing at
    `watcher run`, and nothing is created or changed; a current one opens; a newer one is
    refused as ever. `watcher run` (create) migrates."""
    async with pg.pg_schema() as schema:
        with pytest.raises(
            StoreNotMigrated,
            match=rf"the database schema is at version 0, this watcher needs {len(MIGRATIONS)}: "
            r"start `watcher run` \(it migrates\) first",
        ):
            await open_store(config(pg.DSN, schema), create=False)
        assert await pg.fetch(schema, "SELECT 1 FROM pg_namespace WHERE nspname = $1", schema) == []

        store = await open_store(config(pg.DSN, schema))  # migrates, as `watcher run`
        await store.close()
        store = await open_store(config(pg.DSN, schema), create=False)
        try:
            await store.ping()
        finally:
            await store.close()

        newer = [*MIGRATIONS, "CREATE TABLE added_later (x INTEGER)"]
        monkeypatch.setattr(postgres, "MIGRATIONS", newer)
        with pytest.raises(
            StoreNotMigrated,
            match=rf"at version {len(MIGRATIONS)}, this watcher needs {len(newer)}: start",
        ):
            await open_store(config(pg.DSN, schema), create=False)
        (added,) = await pg.fetch(schema, "SELECT to_regclass('added_later')")
        assert added[0] is None
        store = await open_store(config(pg.DSN, schema))
        await store.close()
        (applied,) = await pg.fetch(schema, "SELECT MAX(version) FROM schema_migrations")
        assert applied[0] == len(newer)

        monkeypatch.undo()
        with pytest.raises(StoreError, match="newer than this watcher"):
            await open_store(config(pg.DSN, schema), create=False)


# -- the configuration -------------------------------------------------------------------


async def test_the_configured_timeouts_reach_the_server() -> None:
    """`store.postgres.stall_timeout` is the sessions' idle-in-transaction timeout;
    `command_timeout` and `stall_timeout` have their defaults and bounds."""
    async with pg.pg_schema() as schema:
        store = await open_store(config(pg.DSN, schema, stall_timeout=0.75, command_timeout=7))
        try:
            assert isinstance(store, PostgresStore)
            (row,) = await store._fetch(
                "SELECT current_setting('idle_in_transaction_session_timeout')"
            )
            assert row[0] == "750ms"
        finally:
            await store.close()
    defaults = PostgresConfig.model_validate({"dsn": pg.DSN})
    assert (defaults.command_timeout, defaults.stall_timeout) == (30.0, 2.0)
    for wrong in ({"command_timeout": 0}, {"stall_timeout": 0.4}):
        with pytest.raises(ValidationError):
            PostgresConfig.model_validate({"dsn": pg.DSN, **wrong})
