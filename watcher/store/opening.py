"""The store the configuration names: SQLite (the default) or PostgreSQL."""

from __future__ import annotations

from watcher.config import StoreConfig
from watcher.store.base import Store


async def open_store(
    config: StoreConfig, *, create: bool = True, accept_new_state: bool = False
) -> Store:
    """Open the configured store; StoreError (naming the database, never a password)
    when it cannot be used.

    `create=False` (the operator's commands: doctor, alerts, incidents, status) uses what
    is there: no SQLite file is created, and a PostgreSQL schema is not migrated (one
    older than this watcher's, or none yet, is StoreNotMigrated: `watcher run` migrates
    it). `accept_new_state` is SQLite's: a PostgreSQL database's state is never a file
    that can go missing."""
    if config.postgres is not None:
        # Imported here: asyncpg loads only where PostgreSQL is configured.
        from watcher.store.postgres import PostgresStore

        pg = config.postgres
        return await PostgresStore.open(
            pg.dsn.get_secret_value(),
            schema=pg.schema_,
            min_size=pg.pool.min_size,
            max_size=pg.pool.max_size,
            connect_timeout=pg.connect_timeout,
            command_timeout=pg.command_timeout,
            stall_timeout=pg.stall_timeout,
            migrate=create,
        )
    from watcher.store.sqlite import SQLiteStore

    return await SQLiteStore.open(
        config.sqlite_path, create=create, accept_new_state=accept_new_state
    )
