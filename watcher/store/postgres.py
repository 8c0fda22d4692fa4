"""PostgreSQL store: the Store several replicas share. One pooled connection per call and
one transaction per cycle; row locks (`FOR UPDATE`, `SKIP LOCKED`) and advisory locks keep
replicas from stepping on each other where SQLite's single writer did it alone. The
semantics are SQLite's (watcher/store/sqlite.py): both pass the same contract suite."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import asyncpg
from pydantic import ValidationError

from watcher.domain import Incident, JobRecord, RunRecord
from watcher.events import Event
from watcher.store.base import (
    RETRY_AFTER,
    CycleCommit,
    Delivery,
    DeliveryKey,
    DeliveryPolicy,
    DeliveryStatus,
    DueReminder,
    EventDeliveries,
    JobTimes,
    Lease,
    OutboxStats,
    PruneResult,
    ReminderCommit,
    StoreConflict,
    StoredSilence,
    StoreError,
    StoreFenced,
    StoreNotMigrated,
    StoreUnavailable,
    WorkspaceState,
)
from watcher.store.rows import (
    DELIVERY_COLUMNS,
    JOB_COLUMNS,
    NO_POLICY,
    RECENT_EVENTS_COLUMNS,
    RUN_COLUMNS,
    group_due,
    incident_row,
    job_row,
    read_delivery,
    read_due_reminder,
    read_event,
    read_event_deliveries,
    read_incident,
    read_job,
    read_job_times,
    read_outbox_stats,
    read_run,
    read_silences,
    run_row,
    target_rows,
    upsert_jobs,
    upsert_runs,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    _Conn = PoolConnectionProxy[asyncpg.Record]

# Each entry migrates the schema from version N to N+1 (recorded in schema_migrations).
# The first one is SQLite's migrations 1 to 5 at once. Text columns that are sorted or
# compared are in the "C" collation: the byte order SQLite (and Python) sort in, whatever
# the database's locale. What SQLite reads out of an incident's JSON record (its kind, its
# latest and its opening event) are columns here, written with the record.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        workspace TEXT COLLATE "C" NOT NULL,
        run_id BIGINT NOT NULL,
        job_id BIGINT,
        life_cycle_state TEXT,
        result_state TEXT,
        start_time BIGINT,
        end_time BIGINT,
        attempt_number BIGINT NOT NULL DEFAULT 0,
        terminal BOOLEAN NOT NULL,
        backfill BOOLEAN NOT NULL DEFAULT FALSE,
        emitted TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        repair BIGINT NOT NULL DEFAULT 0,
        repair_start BIGINT,
        state_since BIGINT,
        PRIMARY KEY (workspace, run_id)
    );
    CREATE INDEX runs_active ON runs (workspace) WHERE NOT terminal;
    CREATE INDEX runs_start ON runs (start_time);
    CREATE TABLE jobs (
        workspace TEXT COLLATE "C" NOT NULL,
        job_id BIGINT NOT NULL,
        name TEXT,
        tags TEXT NOT NULL,
        last_outcome TEXT,
        last_outcome_run_id BIGINT,
        last_outcome_end_time BIGINT,
        updated_at DOUBLE PRECISION NOT NULL,
        last_outcome_repair BIGINT NOT NULL DEFAULT 0,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_success_ms BIGINT,
        last_start_ms BIGINT,
        last_active_ms BIGINT,
        expect_sig TEXT,
        expect_since_ms BIGINT,
        PRIMARY KEY (workspace, job_id)
    );
    CREATE TABLE watermarks (
        workspace TEXT COLLATE "C" PRIMARY KEY,
        watermark_ms BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        news_since_ms BIGINT
    );
    CREATE TABLE events (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT COLLATE "C" NOT NULL UNIQUE,
        workspace TEXT COLLATE "C" NOT NULL,
        job_id BIGINT,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        incident_id TEXT COLLATE "C"
    );
    CREATE INDEX events_job ON events (workspace, job_id, seq);
    CREATE INDEX events_incident ON events (incident_id) WHERE incident_id IS NOT NULL;
    CREATE INDEX events_created ON events (created_at);
    CREATE TABLE deliveries (
        event_id TEXT COLLATE "C" NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        channel TEXT COLLATE "C" NOT NULL,
        recipient TEXT COLLATE "C" NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        delivered_at DOUBLE PRECISION,
        group_key TEXT COLLATE "C" NOT NULL DEFAULT '',
        claimed_by TEXT,
        claimed_until DOUBLE PRECISION,
        PRIMARY KEY (event_id, channel, recipient)
    );
    CREATE INDEX deliveries_status ON deliveries (status, channel, recipient, next_attempt_at);
    CREATE TABLE incidents (
        id TEXT COLLATE "C" PRIMARY KEY,
        workspace TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        job_id BIGINT,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        record TEXT NOT NULL,
        kind TEXT NOT NULL,
        last_event_id TEXT COLLATE "C" NOT NULL,
        opened_by TEXT COLLATE "C" NOT NULL,
        opened_at DOUBLE PRECISION NOT NULL,
        resolved_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE UNIQUE INDEX incidents_open ON incidents (workspace, key) WHERE state = 'open';
    CREATE INDEX incidents_job ON incidents (workspace, job_id) WHERE state = 'open';
    CREATE INDEX incidents_opened_by ON incidents (opened_by);
    CREATE TABLE incident_targets (
        incident_id TEXT COLLATE "C" NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
        channel TEXT COLLATE "C" NOT NULL,
        recipient TEXT COLLATE "C" NOT NULL DEFAULT '',
        repeat_every DOUBLE PRECISION,
        next_repeat_at DOUBLE PRECISION,
        repeats INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (incident_id, channel, recipient)
    );
    CREATE INDEX incident_targets_due ON incident_targets (next_repeat_at)
        WHERE next_repeat_at IS NOT NULL;
    CREATE TABLE delivery_groups (
        channel TEXT COLLATE "C" NOT NULL,
        recipient TEXT COLLATE "C" NOT NULL,
        group_key TEXT COLLATE "C" NOT NULL,
        last_sent_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (channel, recipient, group_key)
    );
    CREATE TABLE leases (
        workspace TEXT COLLATE "C" PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        epoch BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE replicas (
        replica TEXT COLLATE "C" PRIMARY KEY,
        expires_at DOUBLE PRECISION NOT NULL
    );
    """,
    # SQLite's migration 6: silences added at run time.
    """
    CREATE TABLE silences (
        id TEXT COLLATE "C" PRIMARY KEY,
        created_at DOUBLE PRECISION NOT NULL,
        ends_at DOUBLE PRECISION,
        expired_at DOUBLE PRECISION,
        record TEXT NOT NULL
    );
    """,
    # SQLite's migration 7 (run snapshots and event payloads stay JSON text here: they are
    # packed in SQLite only).
    """
    DROP INDEX runs_start;
    """,
]

# Advisory lock keys (the first of the two-key form; the second is the schema's name
# hashed, `_SCHEMA_KEY` of `PostgresStore._lock_keys`), so that watchers in different
# schemas of one database never wait for each other: migrating (session lock, held across
# the scripts) and pruning (transaction lock, tried: one replica prunes, the others skip).
_MIGRATE_LOCK = 0x57A7C401
_PRUNE_LOCK = 0x57A7C402
_SCHEMA_KEY = "hashtext(COALESCE($2::text, current_schema(), ''))"

# Everything the driver raises when the server is down, hung, restarting or gone, a
# connection breaks, or the client's side of it fails.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
# What of it says the database could not be reached or used at all (rather than that a
# statement failed): StoreUnavailable.
_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    OSError,
    TimeoutError,
)
# Opening: also a DSN that cannot be parsed.
_DB_ERRORS = (*_DRIVER_ERRORS, ValueError)

# Settling an attempt: only a delivery still pending (another replica may have settled it
# after this one's claim expired), and its claim with it. A failure with an owner ($7):
# only while nobody else claims the delivery.
_MARK_DELIVERED = (
    "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, delivered_at = $1, "
    "last_error = NULL, claimed_by = NULL, claimed_until = NULL "
    "WHERE channel = $2 AND recipient = $3 AND event_id = ANY($4::text[]) "
    "AND status = 'pending'"
)
_MARK_FAILED = (
    "UPDATE deliveries SET status = $1, attempts = attempts + 1, last_error = $2, "
    "next_attempt_at = COALESCE($3, next_attempt_at), claimed_by = NULL, "
    "claimed_until = NULL WHERE channel = $4 AND recipient = $5 "
    "AND event_id = ANY($6::text[]) AND status = 'pending' "
    "AND ($7::text IS NULL OR claimed_by IS NULL OR claimed_by = $7::text)"
)


# A `password` parameter (of a URI's query, or a keyword/value DSN: `password=x`,
# `password='my secret'` with `\'` and `\\` escaped, or double quotes likewise), its value
# up to the end of the quotes (or of the DSN, were they never closed), else up to the next
# `&` or blank.
_PASSWORD_PARAM = re.compile(
    r"""(password\s*=\s*)('(?:[^'\\]|\\.)*(?:'|\\?$)|"(?:[^"\\]|\\.)*(?:"|\\?$)|[^&\s]*)""",
    re.IGNORECASE | re.DOTALL,
)


def redacted(dsn: str) -> str:
    """`dsn` with its password (of the user info, or a `password=` parameter, quoted or
    not) shown as `***`: what a message or a log may name."""
    span = _user_info(dsn)
    if span is not None:
        start, at = span
        user, colon, _ = dsn[start:at].partition(":")
        if colon:
            dsn = f"{dsn[:start]}{user}:***{dsn[at:]}"
    return _PASSWORD_PARAM.sub(r"\1***", dsn)


def _user_info(dsn: str) -> tuple[int, int] | None:
    """Where the user info of a URI `dsn` starts and ends (at its '@'), if it has one."""
    start = dsn.find("://")
    if start < 0:
        return None
    start += 3
    # The host part holds no '@': the last one before the query ends the user info (a
    # password may contain '@' or '/' unencoded).
    ends = (i for i in (dsn.find("?", start), dsn.find("#", start)) if i >= 0)
    at = dsn.rfind("@", start, min(ends, default=len(dsn)))
    return None if at < 0 else (start, at)


def _passwords(dsn: str) -> set[str]:
    """The passwords written in `dsn`: as written, unquoted and decoded."""
    found: set[str] = set()
    for match in _PASSWORD_PARAM.finditer(dsn):
        value = match.group(2)
        found.add(value)
        if value[:1] in ("'", '"'):
            inner = value[1:-1] if len(value) > 1 and value[-1] == value[0] else value[1:]
            found |= {inner, re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)}
    span = _user_info(dsn)
    if span is not None:
        _, colon, password = dsn[span[0] : span[1]].partition(":")
        if colon:
            found.add(password)
    found |= {unquote(p) for p in found}
    return {p for p in found if p}


def _failure(passwords: Collection[str], exc: BaseException) -> str:
    """What went wrong, without a password even should the driver quote the DSN."""
    text = str(exc) or type(exc).__name__
    for password in sorted(passwords, key=len, reverse=True):
        text = text.replace(password, "***")
    return text


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _count(status: str) -> int:
    """The row count of a command's status (`UPDATE 3`, `INSERT 0 1`)."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    """The Store for several replicas. Open with `await PostgresStore.open(dsn)`.

    Whatever the driver raises (a server down, hung or restarting, a connection reset, a
    backend terminated) comes out of every method as StoreError: StoreUnavailable where
    the database could not be used at all. No call waits for the server forever: getting
    a pooled connection and each statement time out after `command_timeout`."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        dsn: str,
        *,
        schema: str | None = None,
        timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        self._pool = pool
        self.schema = schema  # None: the search_path of the DSN's user
        # The DSN is never kept where a message could show it; its passwords only to be
        # blotted out of the driver's messages.
        self._name = redacted(dsn)
        self._passwords = _passwords(dsn)
        self._timeout = timeout
        self._command_timeout = command_timeout
        self._migrated = 0  # the schema version this process migrated to (or found)

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
        stall_timeout: float = 2.0,
        migrate: bool = True,
        migrate_lock_timeout: float = 60.0,
    ) -> PostgresStore:
        """Connect a pool to `dsn` (in `schema`, created if missing, when given) and
        migrate. A database that cannot be reached, logged into or migrated is a
        StoreError naming the database (never its password), raised before anything
        starts.

        `command_timeout`: seconds getting a pooled connection, and each statement, may
        take before the call fails with StoreUnavailable (a server hung, or gone without
        a word): a call gives up after about twice that at the most.

        `stall_timeout`: seconds a transaction may wait on this process between its
        statements before the server aborts it. A replica stalled mid-commit (SIGSTOP, a
        frozen VM) holds its workspace's lease row and records locked, and the replica
        taking the workspace over would wait for it to wake: keep it well under the
        lease. Nothing of an aborted transaction is written.

        `migrate=False` (the operator's commands) uses the schema as it is, never
        changing it: one older than this watcher's, or none, is StoreNotMigrated.
        Migrating, a replica waits for another one migrating the same schema at most
        `migrate_lock_timeout` seconds (it may be paused holding the lock)."""
        if command_timeout <= 0:
            raise ValueError(f"command_timeout must be positive, not {command_timeout}")
        settings = {
            "application_name": "databricks-run-watcher",
            "idle_in_transaction_session_timeout": str(max(1, round(stall_timeout * 1000))),
        }
        if schema is not None:
            settings["search_path"] = _quoted(schema)
        pool: asyncpg.Pool[asyncpg.Record] | None = None
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=command_timeout,
                server_settings=settings,
            )
            store = cls(
                pool, dsn, schema=schema, timeout=connect_timeout, command_timeout=command_timeout
            )
            if migrate:
                await store._migrate(lock_timeout=migrate_lock_timeout)
            else:
                await store._check_schema()
            return store
        except StoreError:
            if pool is not None:
                pool.terminate()
            raise
        except _DB_ERRORS as exc:
            if pool is not None:
                pool.terminate()
            raise StoreUnavailable(
                f"cannot use the PostgreSQL database {redacted(dsn)}: "
                f"{_failure(_passwords(dsn), exc)}"
            ) from None

    # -- connections -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[_Conn]:
        """A pooled connection, waited for at most `command_timeout`; what the driver
        raises meanwhile (also in the caller's block) comes out as StoreError."""
        try:
            conn = await self._pool.acquire(timeout=self._command_timeout)
        except _DRIVER_ERRORS as exc:
            raise self._error(exc) from None
        try:
            yield conn
        except _DRIVER_ERRORS as exc:
            raise self._error(exc) from None
        finally:
            # Given back within the timeout of its acquiring, else terminated by the pool;
            # either way, what the block did (committed, or failed) is the answer.
            with contextlib.suppress(*_DRIVER_ERRORS):
                await self._pool.release(conn)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[_Conn]:
        """`_connection` in a transaction: committed at the end of the block, rolled back
        if it raises."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    def _error(self, exc: BaseException, doing: str = "cannot be used") -> StoreError:
        """The StoreError standing for what the driver raised, without a password."""
        if isinstance(exc, TimeoutError):
            detail = (
                f"no answer within {self._command_timeout:g} s (store.postgres.command_timeout)"
            )
        else:
            detail = _failure(self._passwords, exc)
        kind = StoreUnavailable if isinstance(exc, _UNAVAILABLE) else StoreError
        return kind(f"the PostgreSQL database {self._name} {doing}: {detail}")

    def _lock_keys(self, lock: int) -> tuple[int, str | None]:
        """The arguments ($1, $2) of `_SCHEMA_KEY`'s two-key form of one of this
        watcher's advisory locks: the lock, and the schema it was opened on (None: the
        session's current one). Migrating and pruning derive theirs alike."""
        return lock, self.schema

    # -- the schema ----------------------------------------------------------------------

    async def _migrate(self, *, lock_timeout: float) -> None:
        schema = self.schema
        async with self._connection() as conn:
            # Replicas starting together: one migrates, the others wait and find it done.
            await self._lock_migrations(conn, lock_timeout)
            try:
                # Looked up before anything is created: a role that may only use an
                # existing, migrated schema (not create in the database) opens it too.
                if schema is not None and not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema
                ):
                    await conn.execute(f"CREATE SCHEMA {_quoted(schema)}")
                if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
                    await conn.execute(
                        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                    )
                version = await self._version(conn)
                for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
                    async with conn.transaction():
                        await conn.execute(script)
                        await conn.execute(
                            "INSERT INTO schema_migrations (version) VALUES ($1)", target
                        )
                self._migrated = await self._version(conn)
            finally:
                # Also released when the pool resets the connection; an unlock that fails
                # (the connection broke) must not hide why the migration failed.
                with contextlib.suppress(*_DRIVER_ERRORS):
                    await conn.execute(
                        f"SELECT pg_advisory_unlock($1, {_SCHEMA_KEY})",
                        *self._lock_keys(_MIGRATE_LOCK),
                    )

    async def _lock_migrations(self, conn: _Conn, patience: float) -> None:
        """Take the migration lock of the schema, waiting `patience` seconds at the most
        for another watcher migrating it (tried again and again, never queued behind it:
        a replica paused holding it must not keep this one from starting forever)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        pause = 0.05
        while not await conn.fetchval(
            f"SELECT pg_try_advisory_lock($1, {_SCHEMA_KEY})", *self._lock_keys(_MIGRATE_LOCK)
        ):
            left = deadline - loop.time()
            if left <= 0:
                schema = "" if self.schema is None else f" (schema {self.schema})"
                raise StoreError(
                    f"another watcher has been migrating the schema of the PostgreSQL "
                    f"database {self._name}{schema} for {patience:g} s (it holds the "
                    "migration lock): if it is paused or stuck, stop it, then start again"
                )
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)

    async def _check_schema(self) -> None:
        """Use the schema as it is: StoreNotMigrated unless it is at this watcher's
        version (a newer one is refused as when migrating)."""
        async with self._connection() as conn:
            found = await conn.fetchval("SELECT to_regclass('schema_migrations')") is not None
            version = await self._version(conn) if found else 0
        if version < len(MIGRATIONS):
            schema = "" if self.schema is None else f", schema {self.schema}"
            none = "" if found else "; no watcher tables yet"
            raise StoreNotMigrated(
                f"the database schema is at version {version}, this watcher needs "
                f"{len(MIGRATIONS)}: start `watcher run` (it migrates) first "
                f"(PostgreSQL database {self._name}{schema}{none})"
            )
        self._migrated = version

    async def _version(self, conn: _Conn) -> int:
        version = int(
            await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        )
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self._name} has schema version {version}, newer than this watcher "
                f"understands ({len(MIGRATIONS)}): a newer watcher has used it, and there "
                "is no downgrade"
            )
        return version

    async def schema_version(self) -> int:
        """The schema version the database is at."""
        async with self._connection() as conn:
            return int(
                await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            )

    async def ping(self) -> None:
        """Raise StoreError unless a pooled connection can open a read-write transaction
        now, on the schema this watcher migrated to. Whatever the driver raises is a
        StoreError."""
        try:
            async with (
                self._pool.acquire(timeout=self._command_timeout) as conn,
                conn.transaction(),
            ):
                row = await conn.fetchrow(
                    "SELECT current_setting('transaction_read_only'), "
                    "(SELECT COALESCE(MAX(version), 0) FROM schema_migrations)"
                )
        except Exception as exc:  # a probe: whatever failed is the answer
            raise self._error(exc, "cannot be written") from None
        assert row is not None
        if row[0] == "on":
            raise StoreError(f"the PostgreSQL database {self._name} is read-only (a standby?)")
        if int(row[1]) != self._migrated:
            raise StoreError(
                f"the PostgreSQL database {self._name} was migrated to schema version "
                f"{row[1]} by another watcher while this one (version {self._migrated}) ran: "
                "replace this watcher by the new release"
            )

    async def close(self) -> None:
        """Close the pool: at once if a connection is not given back in time (a query
        hanging on a dead server must not hold the shutdown)."""
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout)
        except _DRIVER_ERRORS:
            self._pool.terminate()

    # -- cycle state -------------------------------------------------------------------

    async def workspace_state(self, workspace: str) -> WorkspaceState:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT watermark_ms, news_since_ms FROM watermarks WHERE workspace = $1",
                workspace,
            )
            active = await conn.fetch(
                "SELECT run_id FROM runs WHERE workspace = $1 AND NOT terminal", workspace
            )
        return WorkspaceState(
            watermark_ms=int(row[0]) if row else None,
            active_run_ids=frozenset(int(r[0]) for r in active),
            news_since_ms=row[1] if row else None,
        )

    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]:
        rows = await self._fetch(
            "SELECT run_id, COALESCE(end_time, 0) FROM runs "
            "WHERE workspace = $1 AND terminal AND run_id = ANY($2::bigint[])",
            workspace,
            list(run_ids),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def get_runs(self, workspace: str, run_ids: Collection[int]) -> dict[int, RunRecord]:
        if not run_ids:
            return {}
        rows = await self._fetch(
            f"SELECT {RUN_COLUMNS} FROM runs "  # noqa: S608 - constants and $n placeholders only
            "WHERE workspace = $1 AND run_id = ANY($2::bigint[])",
            workspace,
            list(run_ids),
        )
        return {int(r[0]): read_run(workspace, r) for r in rows}

    async def get_jobs(self, workspace: str, job_ids: Collection[int]) -> dict[int, JobRecord]:
        if not job_ids:
            return {}
        rows = await self._fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs "  # noqa: S608 - constants and $n placeholders only
            "WHERE workspace = $1 AND job_id = ANY($2::bigint[])",
            workspace,
            list(job_ids),
        )
        return {int(r[0]): read_job(workspace, r) for r in rows}

    async def open_incidents(self, workspace: str, job_ids: Collection[int]) -> dict[str, Incident]:
        rows = await self._fetch(
            "SELECT record, version FROM incidents WHERE workspace = $1 AND state = 'open' "
            "AND (job_id = ANY($2::bigint[]) OR job_id IS NULL)",
            workspace,
            list(job_ids),
        )
        found = (read_incident(r) for r in rows)
        return {i.key: i for i in found}

    async def incident_targets(self, incident_ids: Collection[str]) -> dict[str, list[DeliveryKey]]:
        targets: dict[str, list[DeliveryKey]] = {}
        rows = await self._fetch(
            "SELECT incident_id, channel, recipient FROM incident_targets "
            "WHERE incident_id = ANY($1::text[]) ORDER BY channel, recipient",
            list(incident_ids),
        )
        for row in rows:
            targets.setdefault(row[0], []).append(DeliveryKey(row[1], row[2]))
        return targets

    async def incidents(self, *, open_only: bool = False, limit: int = 1000) -> list[Incident]:
        where = "WHERE state = 'open' " if open_only else ""
        rows = await self._fetch(
            f"SELECT record, version FROM incidents {where}"  # noqa: S608 - constants only
            "ORDER BY opened_at DESC, id LIMIT $1",
            limit,
        )
        return [read_incident(r) for r in rows]

    async def get_event(self, event_id: str) -> Event | None:
        async with self._connection() as conn:
            payload = await conn.fetchval("SELECT payload FROM events WHERE id = $1", event_id)
        return None if payload is None else read_event(payload)

    async def known_events(self, event_ids: Collection[str]) -> set[str]:
        """Those of `event_ids` already stored."""
        if not event_ids:
            return set()
        rows = await self._fetch(
            "SELECT id FROM events WHERE id = ANY($1::text[])", list(event_ids)
        )
        return {str(r[0]) for r in rows}

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return await conn.fetch(sql, *args)

    async def job_times(self, workspace: str | None = None) -> list[JobTimes]:
        rows = await self._fetch(
            "SELECT r.workspace, r.job_id, j.name, j.tags, MAX(r.end_time), "
            "MAX(CASE WHEN r.result_state IN ('SUCCESS', 'SUCCESS_WITH_FAILURES') "
            "THEN r.end_time END) FROM runs r LEFT JOIN jobs j "
            "ON j.workspace = r.workspace AND j.job_id = r.job_id "
            "WHERE r.terminal AND r.end_time IS NOT NULL AND r.job_id IS NOT NULL "
            "AND ($1::text IS NULL OR r.workspace = $1::text) "
            "GROUP BY r.workspace, r.job_id, j.name, j.tags",
            workspace,
        )
        return [read_job_times(r) for r in rows]

    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        now = commit.committed_at
        async with self._transaction() as conn:
            if commit.epoch is not None:
                await self._check_epoch(conn, commit.workspace, commit.epoch)
            await self._write_incidents(conn, commit.incidents, now)
            await conn.executemany(
                upsert_runs(_placeholders(16)),
                [run_row(r, now, packed=False) for r in commit.runs],
            )
            await conn.executemany(
                upsert_jobs(_placeholders(15)), [job_row(j, now) for j in commit.jobs]
            )
            inserted = await self._insert_events(conn, commit.events, now)
            deliveries: list[tuple[str, DeliveryKey, DeliveryStatus, str]] = []
            targets: list[tuple[str, str, str, float | None, float | None]] = []
            for event in inserted:
                policies = commit.policies.get(event.id, {})
                keys = commit.channels.get(event.id, ())
                for key in dict.fromkeys(keys):
                    group_key = policies.get(key, NO_POLICY).group_key
                    if group_key:
                        # Its due time depends on the group's members inserted before it
                        # (also in this commit): written one by one, in order.
                        await self._add_grouped(conn, event.id, key, policies[key], now)
                    else:
                        deliveries.append((event.id, key, "pending", ""))
                for key in dict.fromkeys(commit.silenced.get(event.id, ())):
                    deliveries.append((event.id, key, "silenced", ""))
                if event.incident is not None and event.incident.state == "open":
                    targets.extend(target_rows(event.incident.id, keys, policies, now))
            await self._add_deliveries(conn, deliveries, now)
            # In event order: a later event of the incident sets its targets' wait.
            await conn.executemany(
                "INSERT INTO incident_targets (incident_id, channel, recipient, repeat_every, "
                "next_repeat_at) VALUES ($1,$2,$3,$4,$5) "
                "ON CONFLICT (incident_id, channel, recipient) "
                "DO UPDATE SET repeat_every=excluded.repeat_every, "
                "next_repeat_at=excluded.next_repeat_at",
                targets,
            )
            if commit.watermark_ms is not None:
                await conn.execute(
                    "INSERT INTO watermarks (workspace, watermark_ms, updated_at, news_since_ms) "
                    "VALUES ($1,$2,$3,$4) ON CONFLICT (workspace) DO UPDATE SET "
                    "watermark_ms=GREATEST(watermarks.watermark_ms, excluded.watermark_ms), "
                    "updated_at=excluded.updated_at, news_since_ms="
                    "GREATEST(watermarks.news_since_ms, excluded.news_since_ms)",
                    commit.workspace,
                    commit.watermark_ms,
                    commit.committed_at,
                    commit.news_since_ms,
                )
        return inserted

    async def _check_epoch(self, conn: _Conn, workspace: str, epoch: int) -> None:
        """StoreFenced unless the workspace's lease is still at `epoch`. The row stays
        locked until the commit: a takeover (`acquire`) waits for this cycle to commit,
        and a cycle for a takeover to land."""
        held = await conn.fetchrow(
            "SELECT epoch FROM leases WHERE workspace = $1 FOR UPDATE", workspace
        )
        if held is None or int(held[0]) != epoch:
            at = "no lease" if held is None else f"epoch {held[0]}"
            raise StoreFenced(
                f"workspace {workspace}: the cycle ran under lease epoch {epoch}, the lease "
                f"is now at {at}: another replica owns it"
            )

    async def _insert_events(self, conn: _Conn, events: Sequence[Event], now: float) -> list[Event]:
        """Insert the events whose id is not stored yet, in order (their `seq`); those
        inserted, each once."""
        if not events:
            return []
        rows = await conn.fetch(
            "INSERT INTO events (id, workspace, job_id, type, payload, created_at, incident_id) "
            "SELECT u.id, u.workspace, u.job_id, u.type, u.payload, $7, u.incident_id "
            "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], "
            "$6::text[]) WITH ORDINALITY AS u (id, workspace, job_id, type, payload, "
            "incident_id, ord) ORDER BY u.ord ON CONFLICT (id) DO NOTHING RETURNING id",
            [e.id for e in events],
            [e.workspace for e in events],
            [e.job.job_id for e in events],
            [e.type.value for e in events],
            [e.model_dump_json(exclude_none=True) for e in events],
            [e.incident.id if e.incident else None for e in events],
            now,
        )
        fresh = {str(r[0]) for r in rows}
        inserted = []
        for event in events:
            if event.id in fresh:
                fresh.discard(event.id)  # a second copy in the same commit was skipped
                inserted.append(event)
        return inserted

    async def _write_incidents(
        self, conn: _Conn, incidents: Iterable[Incident], now: float
    ) -> None:
        """Insert new incidents (version 0) and update the others only where the stored
        version is still the one they were read at: else StoreConflict."""
        for incident in incidents:
            values = (*incident_row(incident, now), incident.kind, incident.last_event_id)
            if incident.version == 0:
                try:
                    await conn.execute(
                        "INSERT INTO incidents (state, version, record, resolved_at, "
                        "updated_at, kind, last_event_id, id, workspace, key, job_id, "
                        "opened_at, opened_by) "
                        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
                        *values,
                        incident.id,
                        incident.workspace,
                        incident.key,
                        incident.job_id,
                        incident.opened_at_ms / 1000,
                        incident.opened_by,
                    )
                except asyncpg.UniqueViolationError:
                    # The cycle's transaction is rolled back as StoreConflict leaves it.
                    raise StoreConflict(
                        f"incident {incident.key} was opened by another writer"
                    ) from None
                continue
            status = await conn.execute(
                "UPDATE incidents SET state = $1, version = $2, record = $3, resolved_at = $4, "
                "updated_at = $5, kind = $6, last_event_id = $7 WHERE id = $8 AND version = $9",
                *values,
                incident.id,
                incident.version,
            )
            if _count(status) != 1:
                raise StoreConflict(f"incident {incident.key} was changed by another writer")
            if not incident.is_open:
                # No reminder is due for it any more: keep the due-reminder scans short.
                await conn.execute(
                    "UPDATE incident_targets SET next_repeat_at = NULL WHERE incident_id = $1",
                    incident.id,
                )

    async def _add_deliveries(
        self,
        conn: _Conn,
        rows: Sequence[tuple[str, DeliveryKey, DeliveryStatus, str]],
        now: float,
    ) -> None:
        """Insert (event id, key, status, group key) deliveries due at `now`; the first of
        two for one event and key wins (a key both routed and silenced is sent)."""
        if not rows:
            return
        await conn.execute(
            "INSERT INTO deliveries (event_id, channel, recipient, status, created_at, "
            "next_attempt_at, group_key) "
            "SELECT u.event_id, u.channel, u.recipient, u.status, $5, $5, u.group_key "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $6::text[]) "
            "WITH ORDINALITY AS u (event_id, channel, recipient, status, group_key, ord) "
            "ORDER BY u.ord ON CONFLICT DO NOTHING",
            [r[0] for r in rows],
            [r[1].channel for r in rows],
            [r[1].recipient for r in rows],
            [r[2] for r in rows],
            now,
            [r[3] for r in rows],
        )

    async def _add_grouped(
        self, conn: _Conn, event_id: str, key: DeliveryKey, policy: DeliveryPolicy, now: float
    ) -> None:
        """A pending member of a delivery group, due when `_group_due` says."""
        due = await self._group_due(conn, key, policy, now)
        await conn.execute(
            "INSERT INTO deliveries (event_id, channel, recipient, status, created_at, "
            "next_attempt_at, group_key) VALUES ($1, $2, $3, 'pending', $4, $5, $6) "
            "ON CONFLICT DO NOTHING",
            event_id,
            key.channel,
            key.recipient,
            now,
            due,
            policy.group_key,
        )

    async def _group_due(
        self, conn: _Conn, key: DeliveryKey, policy: DeliveryPolicy, now: float
    ) -> float:
        """When a new member of a delivery group goes out (`rows.group_due`), from its
        group's last digest and pending members, read in one statement."""
        row = await conn.fetchrow(
            "WITH g AS (SELECT last_sent_at FROM delivery_groups WHERE channel = $1 "
            "AND recipient = $2 AND group_key = $3) "
            "SELECT (SELECT last_sent_at FROM g), MIN(next_attempt_at), "
            "MIN(CASE WHEN attempts > 0 AND next_attempt_at > (SELECT last_sent_at FROM g) "
            "THEN next_attempt_at END), "
            "MIN(CASE WHEN attempts = 0 AND next_attempt_at > (SELECT last_sent_at FROM g) "
            "THEN next_attempt_at END) "
            "FROM deliveries WHERE channel = $1 AND recipient = $2 AND group_key = $3 "
            "AND status = 'pending'",
            key.channel,
            key.recipient,
            policy.group_key,
        )
        assert row is not None  # an aggregate: always one row
        last, waiting, retry, scheduled = (None if v is None else float(v) for v in row)
        return group_due(policy, now, last=last, waiting=waiting, retry=retry, scheduled=scheduled)

    # -- outbox ------------------------------------------------------------------------

    async def due_deliveries(
        self, *, now: float, limit: int, channels: Collection[str] | None = None
    ) -> list[Delivery]:
        # Head of line as in SQLite: a job's later alert waits for its earlier one to the
        # same key, claimed or not (a claimed head is being sent elsewhere); a group's
        # head is its oldest pending member. Claimed deliveries are not handed out.
        channel_filter = "" if channels is None else "AND d.channel = ANY($3::text[])"
        args: list[Any] = [now, limit]
        if channels is not None:
            args.append(list(channels))
        sql = (
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id "  # noqa: S608 - constants and $n placeholders only
            f"WHERE d.status = 'pending' {channel_filter} AND d.next_attempt_at <= $1 "
            "AND (d.claimed_until IS NULL OR d.claimed_until <= $1) AND ("
            "  (d.group_key = '' AND e.seq = ("
            "    SELECT MIN(e2.seq) FROM deliveries d2 JOIN events e2 ON e2.id = d2.event_id"
            "    WHERE d2.channel = d.channel AND d2.recipient = d.recipient"
            "    AND d2.status = 'pending'"
            "    AND e2.workspace = e.workspace AND e2.job_id IS NOT DISTINCT FROM e.job_id))"
            "  OR (d.group_key != '' AND e.seq = ("
            "    SELECT MIN(e2.seq) FROM deliveries d2 JOIN events e2 ON e2.id = d2.event_id"
            "    WHERE d2.channel = d.channel AND d2.recipient = d.recipient"
            "    AND d2.group_key = d.group_key AND d2.group_key != ''"
            "    AND d2.status = 'pending'))"
            ") ORDER BY e.seq LIMIT $2"
        )
        async with self._connection() as conn:
            rows = await conn.fetch(sql, *args)
            return await self._readable(conn, rows)

    async def _readable(self, conn: _Conn, rows: Iterable[asyncpg.Record]) -> list[Delivery]:
        """The deliveries of `rows`; one whose stored event cannot be read is
        dead-lettered instead, so that it does not stop every other alert."""
        readable: list[Delivery] = []
        for row in rows:
            try:
                readable.append(read_delivery(row))
            except ValidationError as exc:
                await conn.execute(
                    "UPDATE deliveries SET status = 'dead', last_error = $1 "
                    "WHERE event_id = $2 AND channel = $3 AND recipient = $4",
                    f"stored event cannot be read: {exc.error_count()} errors",
                    row[8],
                    row[1],
                    row[2],
                )
        return readable

    async def claim(
        self, event_id: str, key: DeliveryKey, *, now: float, until: float, owner: str
    ) -> bool:
        """Claim a pending delivery for one attempt unless a claim holds it at `now`. Two
        replicas claiming at once: one locks the row, the other skips it (no waiting),
        and either way only one update lands."""
        async with self._connection() as conn:
            status = await conn.execute(
                "WITH c AS (SELECT event_id, channel, recipient FROM deliveries "
                "WHERE event_id = $1 AND channel = $2 AND recipient = $3 "
                "AND status = 'pending' AND (claimed_until IS NULL OR claimed_until <= $4) "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE deliveries d SET claimed_by = $5, claimed_until = $6 FROM c "
                "WHERE d.event_id = c.event_id AND d.channel = c.channel "
                "AND d.recipient = c.recipient",
                event_id,
                key.channel,
                key.recipient,
                now,
                owner,
                until,
            )
        return _count(status) == 1

    async def release_claims(self, owner: str) -> int:
        async with self._connection() as conn:
            status = await conn.execute(
                "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL "
                "WHERE claimed_by = $1 AND status = 'pending'",
                owner,
            )
        return _count(status)

    async def expedite(self, channel: str, *, now: float, at: float, limit: int) -> int:
        # A slot: a delivery, or a group's waiting members to one recipient.
        waiting = (
            "status = 'pending' AND attempts > 0 AND next_attempt_at > $1 "
            "AND (claimed_until IS NULL OR claimed_until <= $3) "
            f"AND COALESCE(last_error, '') NOT LIKE '{RETRY_AFTER}%'"
        )
        slot = "CASE WHEN group_key = '' THEN 'e' || event_id ELSE 'g' || group_key END"
        async with self._connection() as conn:
            status = await conn.execute(
                f"UPDATE deliveries SET next_attempt_at = $1 WHERE channel = $2 AND {waiting} "  # noqa: S608 - constants and $n placeholders only
                f"AND (recipient, {slot}) IN (SELECT recipient, {slot} FROM deliveries "
                f"JOIN events e ON e.id = event_id WHERE channel = $2 AND {waiting} "
                "GROUP BY 1, 2 ORDER BY MIN(e.seq) LIMIT $4)",
                at,
                channel,
                now,
                limit,
            )
        return _count(status)

    async def mark_delivered(self, event_id: str, key: DeliveryKey, *, at: float) -> None:
        async with self._connection() as conn:
            await conn.execute(_MARK_DELIVERED, at, key.channel, key.recipient, [event_id])

    async def mark_failed(
        self,
        event_id: str,
        key: DeliveryKey,
        *,
        error: str,
        next_attempt_at: float | None,
        owner: str | None = None,
    ) -> None:
        await self._mark_failed(key, [event_id], error, next_attempt_at, owner)

    async def _mark_failed(
        self,
        key: DeliveryKey,
        event_ids: list[str],
        error: str,
        next_attempt_at: float | None,
        owner: str | None,
    ) -> None:
        status = "dead" if next_attempt_at is None else "pending"
        async with self._connection() as conn:
            await conn.execute(
                _MARK_FAILED,
                status,
                error[:1000],
                next_attempt_at,
                key.channel,
                key.recipient,
                event_ids,
                owner,
            )

    # -- digests (watcher.notify.dispatcher) -------------------------------------------

    async def take_group(
        self,
        key: DeliveryKey,
        group_key: str,
        *,
        now: float,
        limit: int,
        claim_until: float | None = None,
        owner: str = "",
    ) -> list[Delivery]:
        # Only the members due: those arriving once the digest is taken wait for the
        # next (see _group_due), so a digest re-sent after a crash is the same digest.
        # Members another replica has locked (claiming or taking them) are skipped, not
        # waited for, like those it has claimed.
        async with self._transaction() as conn:
            rows = await conn.fetch(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d "  # noqa: S608 - constants and $n placeholders only
                "JOIN events e ON e.id = d.event_id WHERE d.channel = $1 AND d.recipient = $2 "
                "AND d.group_key = $3 AND d.group_key != '' AND d.status = 'pending' "
                "AND d.next_attempt_at <= $4 "
                "AND (d.claimed_until IS NULL OR d.claimed_until <= $4) "
                "ORDER BY e.seq LIMIT $5 FOR UPDATE OF d SKIP LOCKED",
                key.channel,
                key.recipient,
                group_key,
                now,
                limit,
            )
            members = await self._readable(conn, rows)
            if members:
                await self._group_sent(conn, key, group_key, now)
            if members and claim_until is not None:
                await conn.execute(
                    "UPDATE deliveries SET claimed_by = $1, claimed_until = $2 "
                    "WHERE channel = $3 AND recipient = $4 AND event_id = ANY($5::text[])",
                    owner,
                    claim_until,
                    key.channel,
                    key.recipient,
                    [m.event.id for m in members],
                )
        return members

    async def _group_sent(self, conn: _Conn, key: DeliveryKey, group_key: str, at: float) -> None:
        """Record `at` as when the group's latest digest went out (never moving back)."""
        await conn.execute(
            "INSERT INTO delivery_groups (channel, recipient, group_key, last_sent_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (channel, recipient, group_key) "
            "DO UPDATE SET last_sent_at = "
            "GREATEST(delivery_groups.last_sent_at, excluded.last_sent_at)",
            key.channel,
            key.recipient,
            group_key,
            at,
        )

    async def mark_group_delivered(
        self, key: DeliveryKey, group_key: str, event_ids: Collection[str], *, at: float
    ) -> None:
        async with self._transaction() as conn:
            await conn.execute(_MARK_DELIVERED, at, key.channel, key.recipient, list(event_ids))
            await self._group_sent(conn, key, group_key, at)

    async def mark_group_failed(
        self,
        key: DeliveryKey,
        event_ids: Collection[str],
        *,
        error: str,
        next_attempt_at: float | None,
        owner: str | None = None,
    ) -> None:
        # One statement: one transaction.
        await self._mark_failed(key, list(event_ids), error, next_attempt_at, owner)

    async def dead_letters(
        self, *, limit: int = 1000, newest_first: bool = False
    ) -> list[Delivery]:
        order = "DESC" if newest_first else "ASC"
        rows = await self._fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id "  # noqa: S608 - constants only
            f"WHERE d.status = 'dead' ORDER BY e.seq {order} LIMIT $1",
            limit,
        )
        deliveries = []
        for row in rows:
            with contextlib.suppress(ValidationError):  # unreadable: nothing to show or replay
                deliveries.append(read_delivery(row))
        return deliveries

    async def recent_events(self, *, limit: int) -> list[EventDeliveries]:
        rows = await self._fetch(
            f"SELECT {RECENT_EVENTS_COLUMNS} "  # noqa: S608 - constants and $n placeholders only
            "FROM (SELECT seq, id, payload, created_at FROM events ORDER BY seq DESC LIMIT $1) e "
            "LEFT JOIN deliveries d ON d.event_id = e.id "
            "ORDER BY e.seq DESC, d.channel, d.recipient",
            limit,
        )
        return read_event_deliveries(rows)

    async def requeue_dead(self, *, now: float, event_ids: Collection[str] | None = None) -> int:
        # A replayed alert starts afresh: full attempts and a full max_age window.
        sql = (
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, "
            "created_at = $1 WHERE status = 'dead'"
        )
        args: list[Any] = [now]
        if event_ids is not None:
            sql += " AND event_id = ANY($2::text[])"
            args.append(list(event_ids))
        async with self._connection() as conn:
            return _count(await conn.execute(sql, *args))

    async def outbox_stats(self) -> OutboxStats:
        async with self._connection() as conn:
            statuses = await conn.fetch(
                "SELECT status, COUNT(*) FROM deliveries WHERE status IN "
                "('pending', 'dead', 'silenced') GROUP BY status"
            )
            kinds = await conn.fetch(
                "SELECT kind, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY kind"
            )
        return read_outbox_stats(statuses, kinds)

    async def prune(
        self, *, now: float, run_retention_days: float, event_retention_days: float
    ) -> PruneResult:
        """Drop runs older than the retention (Databricks deletes them after 60 days
        anyway) and events whose every delivery is settled and older than their retention.
        Undelivered and dead-lettered events are kept. One replica prunes at a time: one
        that finds another at it prunes nothing (the next prune comes soon enough)."""
        run_cutoff_ms = int((now - run_retention_days * 86_400) * 1000)
        event_cutoff = now - event_retention_days * 86_400
        async with self._transaction() as conn:
            if not await conn.fetchval(
                f"SELECT pg_try_advisory_xact_lock($1, {_SCHEMA_KEY})",
                *self._lock_keys(_PRUNE_LOCK),
            ):
                return PruneResult(runs=0, events=0)
            runs = await conn.execute(
                # Only finished runs: a run active for months must keep its record, or
                # its start and breach would be alerted again.
                "DELETE FROM runs WHERE terminal AND COALESCE(end_time, start_time) < $1",
                run_cutoff_ms,
            )
            events = await conn.execute(
                "DELETE FROM events WHERE created_at < $1 AND NOT EXISTS ("
                "SELECT 1 FROM deliveries d WHERE d.event_id = events.id "
                "AND d.status IN ('pending', 'dead')) "
                # An open incident's latest event is what its reminders and an operator's
                # resolve are made from: kept while the incident is open. The event that
                # opened an incident is kept as long as the incident (an item reported
                # again under the same event id must find it known).
                "AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.state = 'open' "
                "AND i.last_event_id = events.id) "
                "AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.opened_by = events.id)",
                event_cutoff,
            )
            # Resolved incidents go with their events (their targets with them).
            await conn.execute(
                "DELETE FROM incidents WHERE state = 'resolved' AND resolved_at < $1",
                event_cutoff,
            )
            # A group idle for as long is a new group again (group_wait applies anyway).
            await conn.execute(
                "DELETE FROM delivery_groups WHERE last_sent_at < $1 AND NOT EXISTS ("
                "SELECT 1 FROM deliveries d WHERE d.channel = delivery_groups.channel "
                "AND d.recipient = delivery_groups.recipient "
                "AND d.group_key = delivery_groups.group_key AND d.status = 'pending')",
                event_cutoff,
            )
            await conn.execute("DELETE FROM silences WHERE ends_at < $1", event_cutoff)
        return PruneResult(runs=_count(runs), events=_count(events))

    # -- silences (watcher.silences) ----------------------------------------------------

    async def add_silence(self, silence: StoredSilence) -> None:
        async with self._connection() as conn:
            try:
                await conn.execute(
                    "INSERT INTO silences (id, created_at, ends_at, expired_at, record) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    silence.id,
                    silence.created_at,
                    silence.ends_at,
                    silence.expired_at,
                    silence.record(),
                )
            except asyncpg.UniqueViolationError:
                raise StoreConflict(f"silence {silence.id} exists already") from None

    async def silences(self, *, now: float, ended: bool = False) -> list[StoredSilence]:
        # Expiring a silence sets its ends_at too: this is all a live one needs.
        return read_silences(
            await self._fetch(
                "SELECT id, created_at, expired_at, record FROM silences "
                "WHERE $1 OR ends_at IS NULL OR ends_at > $2 ORDER BY created_at, id",
                ended,
                now,
            )
        )

    async def expire_silence(self, silence_id: str, *, now: float) -> StoredSilence | None:
        found = read_silences(
            await self._fetch(
                "UPDATE silences SET expired_at = $1, ends_at = $1 "
                "WHERE id = $2 AND (ends_at IS NULL OR ends_at > $1) "
                "RETURNING id, created_at, expired_at, record",
                now,
                silence_id,
            )
        )
        return found[0] if found else None

    # -- leases (watcher.leases) ----------------------------------------------------------

    async def heartbeat(self, replica: str, *, now: float, ttl: float) -> list[str]:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO replicas (replica, expires_at) VALUES ($1, $2) "
                "ON CONFLICT (replica) DO UPDATE SET expires_at = excluded.expires_at",
                replica,
                now + ttl,
            )
            rows = await conn.fetch(
                "SELECT replica FROM replicas WHERE expires_at > $1 ORDER BY replica", now
            )
        return [str(r[0]) for r in rows]

    async def leases(self) -> list[Lease]:
        rows = await self._fetch(
            "SELECT workspace, owner, epoch, expires_at FROM leases ORDER BY workspace"
        )
        return [Lease(r[0], r[1], int(r[2]), float(r[3])) for r in rows]

    async def acquire(
        self, workspace: str, replica: str, *, now: float, ttl: float
    ) -> Lease | None:
        async with self._transaction() as conn:
            # A workspace never leased gets a row free to take (epoch 0, expired now); two
            # replicas inserting it at once: the second waits for the first and keeps it.
            await conn.execute(
                "INSERT INTO leases (workspace, owner, epoch, expires_at) VALUES ($1, $2, 0, $3) "
                "ON CONFLICT (workspace) DO NOTHING",
                workspace,
                replica,
                now,
            )
            # The row lock decides between replicas taking it at once (the second one
            # re-reads it held); a replica restarted under its old name takes its old
            # lease at once, but with a new epoch: its former life's cycle must not commit.
            row = await conn.fetchrow(
                "UPDATE leases SET owner = $2, epoch = epoch + 1, expires_at = $3 "
                "WHERE workspace = $1 AND (expires_at <= $4 OR owner = $2) "
                "RETURNING epoch, expires_at",
                workspace,
                replica,
                now + ttl,
                now,
            )
        return None if row is None else Lease(workspace, replica, int(row[0]), float(row[1]))

    async def renew(
        self, replica: str, epochs: Mapping[str, int], *, now: float, ttl: float
    ) -> set[str]:
        if not epochs:
            return set()
        rows = await self._fetch(
            "UPDATE leases SET expires_at = $1 FROM unnest($3::text[], $4::bigint[]) "
            "AS u (workspace, epoch) WHERE leases.workspace = u.workspace "
            "AND leases.epoch = u.epoch AND leases.owner = $2 RETURNING leases.workspace",
            now + ttl,
            replica,
            list(epochs),
            list(epochs.values()),
        )
        return {str(r[0]) for r in rows}

    async def release(self, workspace: str, replica: str, epoch: int, *, now: float) -> None:
        # No owner any more: the former one can no longer renew it.
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE leases SET owner = '', expires_at = LEAST(expires_at, $1) "
                "WHERE workspace = $2 AND owner = $3 AND epoch = $4",
                now,
                workspace,
                replica,
                epoch,
            )

    async def retire(self, replica: str, *, now: float) -> None:
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE leases SET owner = '', expires_at = LEAST(expires_at, $1) WHERE owner = $2",
                now,
                replica,
            )
            await conn.execute("DELETE FROM replicas WHERE replica = $1", replica)

    # -- reminders (watcher.notify.reminders) -------------------------------------------

    async def due_reminders(self, *, now: float, limit: int) -> list[DueReminder]:
        # The join on state = 'open' decides: a resolved incident is never reminded of.
        # Every due target is handed out, also one whose incident or event cannot be read:
        # the loop holds it and moves it on, else it would stay due, waking the loop at
        # once forever and filling the batches of the others.
        rows = await self._fetch(
            "SELECT i.record, i.version, t.channel, t.recipient, t.repeat_every, "
            "t.next_repeat_at, t.repeats, e.payload, EXISTS (SELECT 1 FROM events p "
            "JOIN deliveries d ON d.event_id = p.id WHERE p.incident_id = t.incident_id "
            "AND d.status = 'pending' AND d.channel = t.channel "
            "AND d.recipient = t.recipient), t.incident_id "
            "FROM incident_targets t JOIN incidents i ON i.id = t.incident_id "
            "LEFT JOIN events e ON e.id = i.last_event_id "
            "WHERE t.next_repeat_at IS NOT NULL AND t.next_repeat_at <= $1 "
            "AND t.repeat_every > 0 AND i.state = 'open' "
            "ORDER BY t.next_repeat_at, t.incident_id, t.channel, t.recipient LIMIT $2",
            now,
            limit,
        )
        return [read_due_reminder(row) for row in rows]

    async def next_reminder_at(self) -> float | None:
        async with self._connection() as conn:
            at = await conn.fetchval(
                "SELECT MIN(t.next_repeat_at) FROM incident_targets t "
                "JOIN incidents i ON i.id = t.incident_id "
                "WHERE t.next_repeat_at IS NOT NULL AND t.repeat_every > 0 AND i.state = 'open'"
            )
        return None if at is None else float(at)

    async def commit_reminder(self, commit: ReminderCommit) -> bool:
        async with self._transaction() as conn:
            # Move the target's next reminder on, only while its incident is open and the
            # target is as it was read (a new event of the incident restarts the wait).
            status = await conn.execute(
                "UPDATE incident_targets SET next_repeat_at = $1, repeats = $2 "
                "WHERE incident_id = $3 AND channel = $4 AND recipient = $5 "
                "AND next_repeat_at = $6 AND repeats = $7 AND EXISTS (SELECT 1 FROM incidents "
                "WHERE incidents.id = incident_targets.incident_id "
                "AND incidents.state = 'open')",
                commit.next_repeat_at,
                commit.repeats,
                commit.incident_id,
                commit.key.channel,
                commit.key.recipient,
                commit.read_next_repeat_at,
                commit.read_repeats,
            )
            if _count(status) != 1 or commit.event is None:
                return False
            # The reminder event and its one delivery, unless that event is stored
            # already (its id is derived from the incident, target and number).
            if not await self._insert_events(conn, [commit.event], commit.committed_at):
                return False
            await self._add_deliveries(
                conn, [(commit.event.id, commit.key, "pending", "")], commit.committed_at
            )
        return True

    async def event_ids(self) -> list[str]:
        """Every stored event id in commit order (for checks and the crash test)."""
        rows = await self._fetch("SELECT id FROM events ORDER BY seq")
        return [str(r[0]) for r in rows]


def _placeholders(count: int) -> str:
    """`$1,$2,…` up to `count`."""
    return ",".join(f"${n}" for n in range(1, count + 1))
