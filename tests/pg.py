"""PostgreSQL for the tests: each test gets a schema of its own in the database at
`WATCHER_TEST_PG_DSN` (default: the local server's `test` database), dropped afterwards.
A server that cannot be reached fails the test, naming it: the PostgreSQL store is never
skipped silently. `pg_proxy` stands between a store and the server, to hang it, break its
connections or take it down."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from watcher.store.base import StoreError
from watcher.store.postgres import PostgresStore

DSN = os.environ.get("WATCHER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def new_schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex}"


async def open_store(schema: str, *, max_size: int = 10) -> PostgresStore:
    """A PostgresStore in `schema` (created, migrated), failing the test with a clear
    message if the server cannot be used."""
    try:
        return await PostgresStore.open(DSN, schema=schema, max_size=max_size)
    except StoreError as exc:
        pytest.fail(
            f"PostgreSQL is needed by the store tests and cannot be used: {exc}. Start it, "
            "or point WATCHER_TEST_PG_DSN at a database the tests may create schemas in",
            pytrace=False,
        )


async def drop_schema(schema: str) -> None:
    try:
        conn = await asyncpg.connect(DSN)
    except OSError:
        return  # unreachable: nothing was created, and the test has said why it failed
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema name, its schema dropped at the end whatever was created in it."""
    schema = new_schema()
    try:
        yield schema
    finally:
        await drop_schema(schema)


@asynccontextmanager
async def pg_store() -> AsyncIterator[PostgresStore]:
    """A PostgresStore in a fresh schema; closed, and its schema dropped, at the end."""
    async with pg_schema() as schema:
        store = await open_store(schema)
        try:
            yield store
        finally:
            await store.close()


async def execute(schema: str, sql: str, *args: object) -> str:
    """Run `sql` in `schema` on a connection of its own: a change made aside, behind the
    store's back (a corrupted row)."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": f'"{schema}"'})
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


async def read_aside(store: object, sql: str) -> list[Any]:
    """The rows of `sql` in `store`'s database (SQLite or PostgreSQL), read on a
    connection of its own, beside the store's."""
    if isinstance(store, PostgresStore):
        assert store.schema is not None
        return list(await fetch(store.schema, sql))
    from watcher.store.sqlite import SQLiteStore

    assert isinstance(store, SQLiteStore)
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def fetch(schema: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """The rows of `sql` in `schema`, read aside on a connection of its own."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": f'"{schema}"'})
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


class PgProxy:
    """A TCP proxy in front of the test server, for a store to be opened on (`dsn`): what
    it sees of a server that hangs (`blackhole`: connections stay open, nothing goes
    through, new ones are accepted and never answered), that drops its connections
    (`reset`), whose backends are killed (`terminate_backends`) or that is down
    (`down`: the port refuses). `resume` forwards again."""

    def __init__(self) -> None:
        parts = urlsplit(DSN)
        if parts.hostname is None:
            pytest.fail(f"the proxy needs a host and port in WATCHER_TEST_PG_DSN: {DSN}")
        self._upstream = (parts.hostname, parts.port or 5432)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._client_ports: set[int] = set()
        self.forwarding = True
        self.port = 0

    @property
    def dsn(self) -> str:
        """DSN, to the proxy."""
        parts = urlsplit(DSN)
        user, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{self.port}"))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        """Stop forwarding, both ways: what is sent is swallowed, nothing is answered."""
        self.forwarding = False

    def resume(self) -> None:
        self.forwarding = True

    def reset(self) -> None:
        """Break every connection through the proxy, both sides (a reset)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def down(self) -> None:
        """The server gone: every connection broken, and the port refuses new ones."""
        if self._server is not None:
            self._server.close()
        self.reset()

    async def terminate_backends(self) -> int:
        """Kill the server processes of the connections through the proxy (an operator's
        pg_terminate_backend, a server restart); how many."""
        conn = await asyncpg.connect(DSN)
        try:
            killed = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE client_port = ANY($1::int[])",
                sorted(self._client_ports),
            )
        finally:
            await conn.close()
        return sum(1 for row in killed if row[0])

    async def close(self) -> None:
        self.down()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if not self.forwarding:  # hung: accepts, and never answers
            self._spawn(self._pipe(reader, None))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        self._client_ports.add(up_writer.get_extra_info("sockname")[1])
        self._spawn(self._pipe(reader, up_writer))
        self._spawn(self._pipe(up_reader, writer))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if self.forwarding and writer is not None:
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            if writer is not None:
                writer.transport.abort()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@asynccontextmanager
async def pg_proxy() -> AsyncIterator[PgProxy]:
    """A started PgProxy, closed at the end."""
    proxy = PgProxy()
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
