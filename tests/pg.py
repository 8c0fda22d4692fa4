"""PostgreSQL for the tests: each test gets a schema of its own in the database at
`WATCHER_TEST_PG_DSN` (default: the local server's `test` database), dropped afterwards.
A server that cannot be reached fails the test, naming it: the PostgreSQL store is never
skipped silently."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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


async def fetch(schema: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """The rows of `sql` in `schema`, read aside on a connection of its own."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": f'"{schema}"'})
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
