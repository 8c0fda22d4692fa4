"""SQLite store: one WAL-mode file, one connection, one transaction per workspace cycle."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite
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
    WorkspaceState,
)
from watcher.store.rows import (
    DELIVERY_COLUMNS,
    JOB_COLUMNS,
    NO_POLICY,
    RECENT_EVENTS_COLUMNS,
    RUN_COLUMNS,
    event_document,
    group_due,
    incident_row,
    job_row,
    pack,
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

# Each entry migrates the schema from version N to N+1 (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE runs (
        workspace TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        job_id INTEGER,
        life_cycle_state TEXT,
        result_state TEXT,
        start_time INTEGER,
        end_time INTEGER,
        attempt_number INTEGER NOT NULL DEFAULT 0,
        terminal INTEGER NOT NULL,
        backfill INTEGER NOT NULL DEFAULT 0,
        emitted TEXT NOT NULL,
        snapshot TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (workspace, run_id)
    );
    CREATE INDEX runs_active ON runs (workspace) WHERE terminal = 0;
    CREATE INDEX runs_start ON runs (start_time);
    CREATE TABLE jobs (
        workspace TEXT NOT NULL,
        job_id INTEGER NOT NULL,
        name TEXT,
        tags TEXT NOT NULL,
        last_outcome TEXT,
        last_outcome_run_id INTEGER,
        last_outcome_end_time INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (workspace, job_id)
    );
    CREATE TABLE watermarks (
        workspace TEXT PRIMARY KEY,
        watermark_ms INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        workspace TEXT NOT NULL,
        job_id INTEGER,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX events_job ON events (workspace, job_id, seq);
    CREATE TABLE deliveries (
        event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        delivered_at REAL,
        PRIMARY KEY (event_id, channel)
    );
    CREATE INDEX deliveries_status ON deliveries (status, channel, next_attempt_at);
    """,
    # Repairs re-run a run under its run_id; the news horizon separates history from news
    # (NULL for existing state: the poller then takes its watermark's cut-off).
    """
    ALTER TABLE runs ADD COLUMN repair INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN repair_start INTEGER;
    ALTER TABLE jobs ADD COLUMN last_outcome_repair INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE watermarks ADD COLUMN news_since_ms INTEGER;
    """,
    # A delivery's key in two columns: the channel, and the address of a job's own email
    # notification ('' for the channel's own target), split from the `channel:address`
    # strings that held both (channel names cannot contain ':').
    """
    CREATE TABLE deliveries_keyed (
        event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        delivered_at REAL,
        PRIMARY KEY (event_id, channel, recipient)
    );
    INSERT INTO deliveries_keyed (event_id, channel, recipient, status, attempts, created_at,
        next_attempt_at, last_error, delivered_at)
    SELECT event_id,
        CASE WHEN instr(channel, ':') > 0 THEN substr(channel, 1, instr(channel, ':') - 1)
            ELSE channel END,
        CASE WHEN instr(channel, ':') > 0 THEN substr(channel, instr(channel, ':') + 1)
            ELSE '' END,
        status, attempts, created_at, next_attempt_at, last_error, delivered_at
    FROM deliveries WHERE event_id IN (SELECT id FROM events);
    DROP TABLE deliveries;
    ALTER TABLE deliveries_keyed RENAME TO deliveries;
    CREATE INDEX deliveries_status ON deliveries (status, channel, recipient, next_attempt_at);
    """,
    # Incidents (opened, updated and resolved with the events of a cycle), where their
    # events went (resolves follow them; reminders repeat to them), failing streaks, and
    # delivery groups (deliveries sent together as one digest).
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        workspace TEXT NOT NULL,
        key TEXT NOT NULL,
        job_id INTEGER,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        record TEXT NOT NULL,
        opened_at REAL NOT NULL,
        resolved_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX incidents_open ON incidents (workspace, key) WHERE state = 'open';
    CREATE INDEX incidents_job ON incidents (workspace, job_id) WHERE state = 'open';
    CREATE TABLE incident_targets (
        incident_id TEXT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL DEFAULT '',
        repeat_every REAL,
        next_repeat_at REAL,
        repeats INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (incident_id, channel, recipient)
    );
    CREATE INDEX incident_targets_due ON incident_targets (next_repeat_at)
        WHERE next_repeat_at IS NOT NULL;
    ALTER TABLE runs ADD COLUMN state_since INTEGER;
    ALTER TABLE jobs ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN last_success_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN last_start_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN last_active_ms INTEGER;
    ALTER TABLE jobs ADD COLUMN expect_sig TEXT;
    ALTER TABLE jobs ADD COLUMN expect_since_ms INTEGER;
    UPDATE jobs SET consecutive_failures = 1 WHERE last_outcome = 'failure';
    ALTER TABLE deliveries ADD COLUMN group_key TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN incident_id TEXT;
    CREATE INDEX events_incident ON events (incident_id) WHERE incident_id IS NOT NULL;
    CREATE INDEX events_created ON events (created_at);
    CREATE TABLE delivery_groups (
        channel TEXT NOT NULL,
        recipient TEXT NOT NULL,
        group_key TEXT NOT NULL,
        last_sent_at REAL NOT NULL,
        PRIMARY KEY (channel, recipient, group_key)
    );
    """,
    # Replicas share workspaces by leases (the epoch fences a stalled owner's commits) and
    # the outbox by claims (one dispatcher sends a delivery at a time).
    """
    CREATE TABLE leases (
        workspace TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE replicas (
        replica TEXT PRIMARY KEY,
        expires_at REAL NOT NULL
    );
    ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
    ALTER TABLE deliveries ADD COLUMN claimed_until REAL;
    """,
    # Silences added at run time (`watcher silence add`): ends_at NULL is a recurring
    # window without end; the rest of the silence is the record.
    """
    CREATE TABLE silences (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        ends_at REAL,
        expired_at REAL,
        record TEXT NOT NULL
    );
    """,
    # Run snapshots and event payloads are packed from now on (`rows.pack`); rows written
    # before stay JSON text, read as they are. Nothing reads runs by start time.
    """
    DROP INDEX runs_start;
    """,
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _locked(
    method: Callable[Concatenate[SQLiteStore, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SQLiteStore, _P], Coroutine[Any, Any, _T]]:
    @functools.wraps(method)
    async def wrapper(self: SQLiteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async with self._lock:
            return await method(self, *args, **kwargs)

    return wrapper


# Settling an attempt: only a delivery still pending (another replica may have settled it
# after this one's claim expired), and its claim with it. A failure with an owner (the
# last two values): only while nobody else claims the delivery.
_MARK_DELIVERED = (
    "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, delivered_at = ?, "
    "last_error = NULL, claimed_by = NULL, claimed_until = NULL "
    "WHERE event_id = ? AND channel = ? AND recipient = ? AND status = 'pending'"
)
_MARK_FAILED = (
    "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_error = ?, "
    "next_attempt_at = COALESCE(?, next_attempt_at), claimed_by = NULL, claimed_until = NULL "
    "WHERE event_id = ? AND channel = ? AND recipient = ? AND status = 'pending' "
    "AND (? IS NULL OR claimed_by IS NULL OR claimed_by = ?)"
)
_UNCLAIMED = "(d.claimed_until IS NULL OR d.claimed_until <= ?)"
_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (id, workspace, job_id, type, payload, created_at, "
    "incident_id) VALUES (?,?,?,?,?,?,?)"
)
_INSERT_DELIVERY = (
    "INSERT OR IGNORE INTO deliveries (event_id, channel, recipient, status, "
    "created_at, next_attempt_at, group_key) VALUES (?,?,?,?,?,?,?)"
)
# The deliveries of a channel waiting on back-off, by slot (a delivery, or a group's
# members to one recipient): see Outbox.expedite. Values: at, channel, at, now, channel,
# at, now, limit.
_WAITING = (
    "status = 'pending' AND attempts > 0 AND next_attempt_at > ? "
    "AND (claimed_until IS NULL OR claimed_until <= ?) "
    f"AND COALESCE(last_error, '') NOT LIKE '{RETRY_AFTER}%'"
)
_SLOT = "CASE WHEN group_key = '' THEN 'e' || event_id ELSE 'g' || group_key END"
_EXPEDITE = (
    f"UPDATE deliveries SET next_attempt_at = ? WHERE channel = ? AND {_WAITING} "  # noqa: S608 - constants and ? placeholders only
    f"AND (recipient, {_SLOT}) IN (SELECT recipient, {_SLOT} FROM deliveries "
    f"JOIN events e ON e.id = event_id WHERE channel = ? AND {_WAITING} "
    "GROUP BY 1, 2 ORDER BY MIN(e.seq) LIMIT ?)"
)


class SQLiteStore:
    """The embedded default Store. Open with `await SQLiteStore.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        # The file this connection writes: if the path stops naming it (deleted, replaced),
        # every write goes to a file nobody will open again.
        self._identity = _identity(path)
        self._schema = 0  # the schema version this process migrated to (or found)
        # One connection is shared by the poll loops and the dispatcher: without this
        # lock one task's statements could land inside another task's transaction.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, path: Path, *, create: bool = True, accept_new_state: bool = False
    ) -> SQLiteStore:
        """Open (creating if needed and `create`) and migrate. A database that cannot be
        created, written or read is a StoreError naming the path, raised before anything
        starts. So is an empty file (zero bytes: a state that was lost, not a first start)
        unless `accept_new_state`."""
        _check_state_file(path, create=create, accept_new_state=accept_new_state)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of {path}: {exc.strerror}") from None
        db: aiosqlite.Connection | None = None
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=2000")
            # The WAL keeps the size of its largest transaction (a day's pruning) unless
            # told to shrink back after a checkpoint: the disk would hold it for ever.
            await db.execute("PRAGMA journal_size_limit=8388608")
            async with db.execute("PRAGMA quick_check") as cursor:
                check = await cursor.fetchone()
            if check is None or check[0] != "ok":
                raise StoreError(f"{path} failed its integrity check: {check}")
            store = cls(db, path)
            await store._migrate()
            # Prove the file is writable now rather than on the first cycle.
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("ROLLBACK")
            return store
        except sqlite3.Error as exc:
            if db is not None:
                await db.close()
            raise StoreError(f"cannot use the database {path}: {exc}") from None
        except StoreError:
            if db is not None:
                await db.close()
            raise

    async def _migrate(self) -> None:
        version = await self._version()
        for target, script in enumerate(MIGRATIONS[version:], start=version + 1):
            statements = [s for s in script.split(";") if s.strip()]
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process opening the same file
                # may have migrated it meanwhile, and a migration must never run twice
                # (splitting keys again would erase every email recipient).
                if await self._version() >= target:
                    await self._db.execute("ROLLBACK")
                    continue
                for statement in statements:
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {target}")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        self._schema = await self._version()

    async def _version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this watcher "
                f"understands ({len(MIGRATIONS)}): a newer watcher has used it, and there "
                "is no downgrade"
            )
        return version

    @_locked
    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    @_locked
    async def ping(self) -> None:
        if _identity(self.path) != self._identity:
            raise StoreError(
                f"the database file {self.path} was deleted or replaced while the watcher "
                "ran: its state is no longer where the next start will look"
            )
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            await self._db.execute("ROLLBACK")
            changed = await self._version() != self._schema
        except sqlite3.Error as exc:
            raise StoreError(f"the database {self.path} cannot be written: {exc}") from None
        if changed:
            raise StoreError(
                f"the database {self.path} was migrated by another watcher while this one "
                "ran: stop every watcher before upgrading"
            )

    @_locked
    async def close(self) -> None:
        await self._db.close()

    # -- cycle state -------------------------------------------------------------------

    @_locked
    async def workspace_state(self, workspace: str) -> WorkspaceState:
        async with self._db.execute(
            "SELECT watermark_ms, news_since_ms FROM watermarks WHERE workspace = ?", (workspace,)
        ) as cursor:
            row = await cursor.fetchone()
        async with self._db.execute(
            "SELECT run_id FROM runs WHERE workspace = ? AND terminal = 0", (workspace,)
        ) as cursor:
            active = frozenset(int(r[0]) for r in await cursor.fetchall())
        return WorkspaceState(
            watermark_ms=int(row[0]) if row else None,
            active_run_ids=active,
            news_since_ms=row[1] if row else None,
        )

    @_locked
    async def terminal_ends(self, workspace: str, run_ids: Collection[int]) -> dict[int, int]:
        rows = await self._select_in(
            "SELECT run_id, COALESCE(end_time, 0) FROM runs "
            "WHERE workspace = ? AND terminal = 1 AND run_id IN ({})",
            run_ids,
            workspace,
        )
        return {int(r[0]): int(r[1]) for r in rows}

    @_locked
    async def get_runs(self, workspace: str, run_ids: Collection[int]) -> dict[int, RunRecord]:
        rows = await self._select_in(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE workspace = ? AND run_id IN ({{}})",  # noqa: S608 - constants and ? placeholders only
            run_ids,
            workspace,
        )
        return {int(r[0]): read_run(workspace, r) for r in rows}

    @_locked
    async def get_jobs(self, workspace: str, job_ids: Collection[int]) -> dict[int, JobRecord]:
        rows = await self._select_in(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = ? AND job_id IN ({{}})",  # noqa: S608 - constants and ? placeholders only
            job_ids,
            workspace,
        )
        return {int(r[0]): read_job(workspace, r) for r in rows}

    @_locked
    async def open_incidents(self, workspace: str, job_ids: Collection[int]) -> dict[str, Incident]:
        rows = await self._select_in(
            "SELECT record, version FROM incidents WHERE workspace = ? AND state = 'open' "
            "AND job_id IN ({})",
            job_ids,
            workspace,
        )
        async with self._db.execute(
            "SELECT record, version FROM incidents "
            "WHERE workspace = ? AND state = 'open' AND job_id IS NULL",
            (workspace,),
        ) as cursor:
            rows.extend(await cursor.fetchall())
        found = (read_incident(r) for r in rows)
        return {i.key: i for i in found}

    @_locked
    async def incident_targets(self, incident_ids: Collection[str]) -> dict[str, list[DeliveryKey]]:
        targets: dict[str, list[DeliveryKey]] = {}
        rows = await self._select_in(
            "SELECT incident_id, channel, recipient FROM incident_targets "
            "WHERE incident_id IN ({}) ORDER BY channel, recipient",
            incident_ids,
        )
        for row in rows:
            targets.setdefault(row[0], []).append(DeliveryKey(row[1], row[2]))
        return targets

    @_locked
    async def incidents(self, *, open_only: bool = False, limit: int = 1000) -> list[Incident]:
        where = "WHERE state = 'open' " if open_only else ""
        async with self._db.execute(
            f"SELECT record, version FROM incidents {where}"  # noqa: S608 - constants only
            "ORDER BY opened_at DESC, id LIMIT ?",
            (limit,),
        ) as cursor:
            return [read_incident(r) for r in await cursor.fetchall()]

    @_locked
    async def get_event(self, event_id: str) -> Event | None:
        async with self._db.execute(
            "SELECT payload FROM events WHERE id = ?", (event_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else read_event(row[0])

    @_locked
    async def known_events(self, event_ids: Collection[str]) -> set[str]:
        """Those of `event_ids` already stored."""
        rows = await self._select_in("SELECT id FROM events WHERE id IN ({})", event_ids)
        return {str(r[0]) for r in rows}

    async def _select_in(self, sql: str, ids: Collection[Any], *params: Any) -> list[sqlite3.Row]:
        """`sql` (its `{}` the placeholders of an IN list) over `ids` in chunks, `params`
        bound before them: every chunk in one hop to the connection's thread."""
        return await self._in_thread(functools.partial(_select_in, sql=sql, ids=ids, params=params))

    async def _in_thread(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` on the connection, in aiosqlite's thread: a whole transaction or read in
        one hop instead of one (or three) per statement, the hops being most of a cycle's
        cost. aiosqlite has no public call for it: `_execute` is what its own methods use."""
        execute: Callable[..., Coroutine[Any, Any, _T]] = self._db._execute
        running = asyncio.ensure_future(execute(work, self._db._conn))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # The thread finishes `work` whatever happens to this caller (a commit may
            # commit): hold the store's lock until it has, then pass the cancel on.
            await asyncio.gather(running, return_exceptions=True)
            raise

    @_locked
    async def job_times(self, workspace: str | None = None) -> list[JobTimes]:
        async with self._db.execute(
            "SELECT r.workspace, r.job_id, j.name, j.tags, MAX(r.end_time), "
            "MAX(CASE WHEN r.result_state IN ('SUCCESS', 'SUCCESS_WITH_FAILURES') "
            "THEN r.end_time END) FROM runs r LEFT JOIN jobs j "
            "ON j.workspace = r.workspace AND j.job_id = r.job_id "
            "WHERE r.terminal = 1 AND r.end_time IS NOT NULL AND r.job_id IS NOT NULL "
            "AND (? IS NULL OR r.workspace = ?) "
            "GROUP BY r.workspace, r.job_id",
            (workspace, workspace),
        ) as cursor:
            rows = await cursor.fetchall()
        return [read_job_times(r) for r in rows]

    @_locked
    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        return await self._in_thread(functools.partial(_commit_cycle, commit=commit))

    async def _insert_event(self, event: Event, now: float) -> aiosqlite.Cursor:
        """Insert an event unless its id is stored (rowcount 0 then)."""
        return await self._db.execute(_INSERT_EVENT, _event_row(event, now))

    async def _rollback(self) -> None:
        # After a failed COMMIT (disk full, I/O error) the transaction may still be
        # open; if it is already gone, ROLLBACK fails harmlessly.
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")

    async def _add_deliveries(
        self,
        event_id: str,
        keys: Iterable[DeliveryKey],
        status: DeliveryStatus,
        now: float,
        policies: Mapping[DeliveryKey, DeliveryPolicy],
    ) -> None:
        await self._in_thread(
            lambda db: _add_deliveries(db, [(event_id, keys, status, policies)], now)
        )

    # -- outbox ------------------------------------------------------------------------

    @_locked
    async def due_deliveries(
        self, *, now: float, limit: int, channels: Collection[str] | None = None
    ) -> list[Delivery]:
        # Head of line per (key, workspace, job): a job's later alert waits for its earlier
        # one to the same channel and recipient (delivered or dead), so order is kept; an
        # earlier grouped one too (a recovery never overtakes the failure's digest). A
        # group's head is its oldest pending member, whatever its job has pending: the
        # digest carries the group's members in order, and waiting per job could hold a
        # whole group behind one job's retries.
        channel_filter = ""
        params: list[Any] = []
        if channels is not None:
            channel_filter = f"AND d.channel IN ({','.join('?' * len(channels))})"
            params.extend(channels)
        sql = (
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id "  # noqa: S608 - constants and ? placeholders only
            f"WHERE d.status = 'pending' {channel_filter} AND d.next_attempt_at <= ? "
            "AND (d.claimed_until IS NULL OR d.claimed_until <= ?) AND ("
            "  (d.group_key = '' AND e.seq = ("
            "    SELECT MIN(e2.seq) FROM deliveries d2 JOIN events e2 ON e2.id = d2.event_id"
            "    WHERE d2.channel = d.channel AND d2.recipient = d.recipient"
            "    AND d2.status = 'pending'"
            "    AND e2.workspace = e.workspace AND e2.job_id IS e.job_id))"
            "  OR (d.group_key != '' AND e.seq = ("
            "    SELECT MIN(e2.seq) FROM deliveries d2 JOIN events e2 ON e2.id = d2.event_id"
            "    WHERE d2.channel = d.channel AND d2.recipient = d.recipient"
            "    AND d2.group_key = d.group_key AND d2.group_key != ''"
            "    AND d2.status = 'pending'))"
            ") ORDER BY e.seq LIMIT ?"
        )
        params.extend([now, now, limit])
        async with self._db.execute(sql, params) as cursor:
            rows = await cursor.fetchall()
        return await self._readable(rows)

    async def _readable(self, rows: Iterable[sqlite3.Row]) -> list[Delivery]:
        """The deliveries of `rows`; one whose stored event cannot be read is
        dead-lettered instead, so that it does not stop every other alert."""
        readable: list[Delivery] = []
        for row in rows:
            try:
                readable.append(read_delivery(row))
            except ValidationError as exc:
                await self._db.execute(
                    "UPDATE deliveries SET status = 'dead', last_error = ? "
                    "WHERE event_id = ? AND channel = ? AND recipient = ?",
                    (
                        f"stored event cannot be read: {exc.error_count()} errors",
                        row[8],
                        row[1],
                        row[2],
                    ),
                )
        return readable

    @_locked
    async def mark_delivered(self, event_id: str, key: DeliveryKey, *, at: float) -> None:
        await self._db.execute(
            _MARK_DELIVERED,
            (at, event_id, key.channel, key.recipient),
        )

    @_locked
    async def mark_failed(
        self,
        event_id: str,
        key: DeliveryKey,
        *,
        error: str,
        next_attempt_at: float | None,
        owner: str | None = None,
    ) -> None:
        await self._db.executemany(
            _MARK_FAILED, _failed_rows(key, [event_id], error, next_attempt_at, owner)
        )

    @_locked
    async def claim(
        self, event_id: str, key: DeliveryKey, *, now: float, until: float, owner: str
    ) -> bool:
        cursor = await self._db.execute(
            "UPDATE deliveries SET claimed_by = ?, claimed_until = ? "
            "WHERE event_id = ? AND channel = ? AND recipient = ? AND status = 'pending' "
            "AND (claimed_until IS NULL OR claimed_until <= ?)",
            (owner, until, event_id, key.channel, key.recipient, now),
        )
        return cursor.rowcount == 1

    @_locked
    async def release_claims(self, owner: str) -> int:
        cursor = await self._db.execute(
            "UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL "
            "WHERE claimed_by = ? AND status = 'pending'",
            (owner,),
        )
        return cursor.rowcount

    @_locked
    async def expedite(self, channel: str, *, now: float, at: float, limit: int) -> int:
        cursor = await self._db.execute(_EXPEDITE, (at, channel, at, now, channel, at, now, limit))
        return cursor.rowcount

    # -- digests (watcher.notify.dispatcher) -------------------------------------------

    @_locked
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
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            async with self._db.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d "  # noqa: S608 - constants and ? placeholders only
                "JOIN events e ON e.id = d.event_id WHERE d.channel = ? AND d.recipient = ? "
                "AND d.group_key = ? AND d.group_key != '' AND d.status = 'pending' "
                f"AND d.next_attempt_at <= ? AND {_UNCLAIMED} ORDER BY e.seq LIMIT ?",
                (key.channel, key.recipient, group_key, now, now, limit),
            ) as cursor:
                rows = await cursor.fetchall()
            members = await self._readable(rows)
            if members:
                await self._group_sent(key, group_key, now)
            if members and claim_until is not None:
                await self._db.executemany(
                    "UPDATE deliveries SET claimed_by = ?, claimed_until = ? "
                    "WHERE event_id = ? AND channel = ? AND recipient = ?",
                    [(owner, claim_until, m.event.id, key.channel, key.recipient) for m in members],
                )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        return members

    async def _group_sent(self, key: DeliveryKey, group_key: str, at: float) -> None:
        """Record `at` as when the group's latest digest went out (never moving back)."""
        await self._db.execute(
            "INSERT INTO delivery_groups (channel, recipient, group_key, last_sent_at) "
            "VALUES (?,?,?,?) ON CONFLICT (channel, recipient, group_key) "
            "DO UPDATE SET last_sent_at = MAX(last_sent_at, excluded.last_sent_at)",
            (key.channel, key.recipient, group_key, at),
        )

    @_locked
    async def mark_group_delivered(
        self, key: DeliveryKey, group_key: str, event_ids: Collection[str], *, at: float
    ) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany(
                _MARK_DELIVERED,
                [(at, event_id, key.channel, key.recipient) for event_id in event_ids],
            )
            await self._group_sent(key, group_key, at)
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise

    @_locked
    async def mark_group_failed(
        self,
        key: DeliveryKey,
        event_ids: Collection[str],
        *,
        error: str,
        next_attempt_at: float | None,
        owner: str | None = None,
    ) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany(
                _MARK_FAILED, _failed_rows(key, event_ids, error, next_attempt_at, owner)
            )
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise

    @_locked
    async def dead_letters(
        self, *, limit: int = 1000, newest_first: bool = False
    ) -> list[Delivery]:
        order = "DESC" if newest_first else "ASC"
        async with self._db.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id "  # noqa: S608 - constants only
            f"WHERE d.status = 'dead' ORDER BY e.seq {order} LIMIT ?",
            (limit,),
        ) as cursor:
            rows = await cursor.fetchall()
        deliveries = []
        for row in rows:
            with contextlib.suppress(ValidationError):  # unreadable: nothing to show or replay
                deliveries.append(read_delivery(row))
        return deliveries

    @_locked
    async def recent_events(self, *, limit: int) -> list[EventDeliveries]:
        async with self._db.execute(
            f"SELECT {RECENT_EVENTS_COLUMNS} "  # noqa: S608 - constants and ? placeholders only
            "FROM (SELECT seq, id, payload, created_at FROM events ORDER BY seq DESC LIMIT ?) e "
            "LEFT JOIN deliveries d ON d.event_id = e.id "
            "ORDER BY e.seq DESC, d.channel, d.recipient",
            (limit,),
        ) as cursor:
            return read_event_deliveries(await cursor.fetchall())

    @_locked
    async def requeue_dead(self, *, now: float, event_ids: Collection[str] | None = None) -> int:
        # A replayed alert starts afresh: full attempts and a full max_age window.
        sql = "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, "
        sql += "created_at = ? "
        sql += "WHERE status = 'dead'"
        params: list[Any] = [now, now]
        if event_ids is not None:
            sql += f" AND event_id IN ({','.join('?' * len(event_ids))})"
            params.extend(event_ids)
        cursor = await self._db.execute(sql, params)
        return cursor.rowcount

    @_locked
    async def outbox_stats(self) -> OutboxStats:
        async with self._db.execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE status IN "
            "('pending', 'dead', 'silenced') GROUP BY status"
        ) as cursor:
            statuses = await cursor.fetchall()
        async with self._db.execute(
            "SELECT json_extract(record, '$.kind'), COUNT(*) FROM incidents "
            "WHERE state = 'open' GROUP BY 1"
        ) as cursor:
            kinds = await cursor.fetchall()
        return read_outbox_stats(statuses, kinds)

    @_locked
    async def prune(
        self, *, now: float, run_retention_days: float, event_retention_days: float
    ) -> PruneResult:
        """Drop runs older than the retention (Databricks deletes them after 60 days
        anyway) and events whose every delivery is settled and older than their retention.
        Undelivered and dead-lettered events are kept."""
        run_cutoff_ms = int((now - run_retention_days * 86_400) * 1000)
        event_cutoff = now - event_retention_days * 86_400
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            runs = await self._db.execute(
                # Only finished runs: a run active for months must keep its record, or
                # its start and breach would be alerted again.
                "DELETE FROM runs WHERE terminal = 1 AND COALESCE(end_time, start_time) < ?",
                (run_cutoff_ms,),
            )
            events = await self._db.execute(
                "DELETE FROM events WHERE created_at < ? AND NOT EXISTS ("
                "SELECT 1 FROM deliveries d WHERE d.event_id = events.id "
                "AND d.status IN ('pending', 'dead')) "
                # An open incident's latest event is what its reminders and an
                # operator's resolve are made from: kept while the incident is open. The
                # event that opened an incident is kept as long as the incident: an item
                # reported again under the same event id (an unreadable run) must find it
                # known, not open a second incident with the first one's id.
                "AND id NOT IN (SELECT json_extract(record, '$.last_event_id') "
                "FROM incidents WHERE state = 'open') "
                "AND id NOT IN (SELECT json_extract(record, '$.opened_by') FROM incidents)",
                (event_cutoff,),
            )
            # Resolved incidents go with their events (their targets with them).
            await self._db.execute(
                "DELETE FROM incidents WHERE state = 'resolved' AND resolved_at < ?",
                (event_cutoff,),
            )
            # A group idle for as long is a new group again (group_wait applies anyway).
            await self._db.execute(
                "DELETE FROM delivery_groups WHERE last_sent_at < ? AND NOT EXISTS ("
                "SELECT 1 FROM deliveries d WHERE d.channel = delivery_groups.channel "
                "AND d.recipient = delivery_groups.recipient "
                "AND d.group_key = delivery_groups.group_key AND d.status = 'pending')",
                (event_cutoff,),
            )
            await self._db.execute("DELETE FROM silences WHERE ends_at < ?", (event_cutoff,))
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        # The pruning went through the WAL (all of it, at once): give that back to the
        # disk now rather than after the next cycle. Without waiting: another process
        # reading (the CLI, a backup) would stall every store call for the busy timeout;
        # then the WAL shrinks at a later checkpoint (journal_size_limit).
        await self._db.execute("PRAGMA busy_timeout=0")
        try:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self._db.execute("PRAGMA busy_timeout=2000")
        return PruneResult(runs=runs.rowcount, events=events.rowcount)

    # -- silences (watcher.silences) ----------------------------------------------------

    @_locked
    async def add_silence(self, silence: StoredSilence) -> None:
        try:
            await self._db.execute(
                "INSERT INTO silences (id, created_at, ends_at, expired_at, record) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    silence.id,
                    silence.created_at,
                    silence.ends_at,
                    silence.expired_at,
                    silence.record(),
                ),
            )
            await self._db.commit()
        except sqlite3.IntegrityError:
            await self._db.rollback()
            raise StoreConflict(f"silence {silence.id} exists already") from None

    @_locked
    async def silences(self, *, now: float, ended: bool = False) -> list[StoredSilence]:
        # Expiring a silence sets its ends_at too: this is all a live one needs.
        async with self._db.execute(
            "SELECT id, created_at, expired_at, record FROM silences "
            "WHERE ?1 OR ends_at IS NULL OR ends_at > ?2 ORDER BY created_at, id",
            (ended, now),
        ) as cursor:
            return read_silences(await cursor.fetchall())

    @_locked
    async def expire_silence(self, silence_id: str, *, now: float) -> StoredSilence | None:
        cursor = await self._db.execute(
            "UPDATE silences SET expired_at = ?1, ends_at = ?1 "
            "WHERE id = ?2 AND (ends_at IS NULL OR ends_at > ?1)",
            (now, silence_id),
        )
        await self._db.commit()
        if cursor.rowcount == 0:
            return None
        async with self._db.execute(
            "SELECT id, created_at, expired_at, record FROM silences WHERE id = ?", (silence_id,)
        ) as cursor:
            found = read_silences(await cursor.fetchall())
        return found[0] if found else None

    # -- leases (watcher.leases) ----------------------------------------------------------

    @_locked
    async def heartbeat(self, replica: str, *, now: float, ttl: float) -> list[str]:
        await self._db.execute(
            "INSERT INTO replicas (replica, expires_at) VALUES (?, ?) "
            "ON CONFLICT (replica) DO UPDATE SET expires_at = excluded.expires_at",
            (replica, now + ttl),
        )
        async with self._db.execute(
            "SELECT replica FROM replicas WHERE expires_at > ? ORDER BY replica", (now,)
        ) as cursor:
            return [str(r[0]) for r in await cursor.fetchall()]

    @_locked
    async def leases(self) -> list[Lease]:
        async with self._db.execute(
            "SELECT workspace, owner, epoch, expires_at FROM leases ORDER BY workspace"
        ) as cursor:
            return [Lease(r[0], r[1], int(r[2]), float(r[3])) for r in await cursor.fetchall()]

    @_locked
    async def acquire(
        self, workspace: str, replica: str, *, now: float, ttl: float
    ) -> Lease | None:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(
                "INSERT INTO leases (workspace, owner, epoch, expires_at) VALUES (?, ?, 0, ?) "
                "ON CONFLICT (workspace) DO NOTHING",
                (workspace, replica, now),
            )
            # A replica restarted under its old name takes its old lease at once, but
            # with a new epoch: its former life's cycle must not commit.
            await self._db.execute(
                "UPDATE leases SET owner = ?, epoch = epoch + 1, expires_at = ? "
                "WHERE workspace = ? AND (expires_at <= ? OR owner = ?)",
                (replica, now + ttl, workspace, now, replica),
            )
            async with self._db.execute(
                "SELECT owner, epoch, expires_at FROM leases WHERE workspace = ?", (workspace,)
            ) as cursor:
                row = await cursor.fetchone()
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        if row is None or row[0] != replica:
            return None
        return Lease(workspace, replica, int(row[1]), float(row[2]))

    @_locked
    async def renew(
        self, replica: str, epochs: Mapping[str, int], *, now: float, ttl: float
    ) -> set[str]:
        renewed: set[str] = set()
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            for workspace, epoch in epochs.items():
                cursor = await self._db.execute(
                    "UPDATE leases SET expires_at = ? "
                    "WHERE workspace = ? AND owner = ? AND epoch = ?",
                    (now + ttl, workspace, replica, epoch),
                )
                if cursor.rowcount == 1:
                    renewed.add(workspace)
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        return renewed

    @_locked
    async def release(self, workspace: str, replica: str, epoch: int, *, now: float) -> None:
        await self._db.execute(
            "UPDATE leases SET owner = '', expires_at = MIN(expires_at, ?) "
            "WHERE workspace = ? AND owner = ? AND epoch = ?",
            (now, workspace, replica, epoch),
        )

    @_locked
    async def retire(self, replica: str, *, now: float) -> None:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute(
                "UPDATE leases SET owner = '', expires_at = MIN(expires_at, ?) WHERE owner = ?",
                (now, replica),
            )
            await self._db.execute("DELETE FROM replicas WHERE replica = ?", (replica,))
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise

    # -- reminders (watcher.notify.reminders) -------------------------------------------

    @_locked
    async def due_reminders(self, *, now: float, limit: int) -> list[DueReminder]:
        # The join on state = 'open' decides: a resolved incident is never reminded of.
        # Every due target is handed out, also one whose incident or event cannot be read
        # (not even as JSON): the loop holds it and moves it on, else it would stay due,
        # waking the loop at once forever and filling the batches of the others.
        async with self._db.execute(
            "SELECT i.record, i.version, t.channel, t.recipient, t.repeat_every, "
            "t.next_repeat_at, t.repeats, e.payload, EXISTS (SELECT 1 FROM events p "
            "JOIN deliveries d ON d.event_id = p.id WHERE p.incident_id = t.incident_id "
            "AND d.status = 'pending' AND d.channel = t.channel "
            "AND d.recipient = t.recipient), t.incident_id "
            "FROM incident_targets t JOIN incidents i ON i.id = t.incident_id "
            "LEFT JOIN events e ON e.id = CASE WHEN json_valid(i.record) "
            "THEN json_extract(i.record, '$.last_event_id') END "
            "WHERE t.next_repeat_at IS NOT NULL AND t.next_repeat_at <= ? "
            "AND t.repeat_every > 0 AND i.state = 'open' "
            "ORDER BY t.next_repeat_at, t.incident_id, t.channel, t.recipient LIMIT ?",
            (now, limit),
        ) as cursor:
            rows = await cursor.fetchall()
        return [read_due_reminder(row) for row in rows]

    @_locked
    async def next_reminder_at(self) -> float | None:
        async with self._db.execute(
            "SELECT MIN(t.next_repeat_at) FROM incident_targets t "
            "JOIN incidents i ON i.id = t.incident_id "
            "WHERE t.next_repeat_at IS NOT NULL AND t.repeat_every > 0 AND i.state = 'open'"
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @_locked
    async def commit_reminder(self, commit: ReminderCommit) -> bool:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            if not await self._advance_target(commit):
                await self._db.execute("ROLLBACK")
                return False
            queued = commit.event is not None and await self._add_reminder(commit, commit.event)
            await self._db.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise
        return queued

    async def _advance_target(self, commit: ReminderCommit) -> bool:
        """Move the target's next reminder on, only while its incident is open and the
        target is as it was read (a new event of the incident restarts the wait)."""
        cursor = await self._db.execute(
            "UPDATE incident_targets SET next_repeat_at = ?, repeats = ? "
            "WHERE incident_id = ? AND channel = ? AND recipient = ? "
            "AND next_repeat_at = ? AND repeats = ? AND EXISTS (SELECT 1 FROM incidents "
            "WHERE incidents.id = incident_targets.incident_id AND incidents.state = 'open')",
            (
                commit.next_repeat_at,
                commit.repeats,
                commit.incident_id,
                commit.key.channel,
                commit.key.recipient,
                commit.read_next_repeat_at,
                commit.read_repeats,
            ),
        )
        return cursor.rowcount == 1

    async def _add_reminder(self, commit: ReminderCommit, event: Event) -> bool:
        """The reminder event and its one delivery, unless that event is stored already
        (its id is derived from the incident, target and number: never twice)."""
        cursor = await self._insert_event(event, commit.committed_at)
        if cursor.rowcount != 1:
            return False
        await self._add_deliveries(event.id, [commit.key], "pending", commit.committed_at, {})
        return True

    @_locked
    async def event_ids(self) -> list[str]:
        """Every stored event id in commit order (for checks and the crash test)."""
        async with self._db.execute("SELECT id FROM events ORDER BY seq") as cursor:
            return [str(r[0]) for r in await cursor.fetchall()]


def _check_state_file(path: Path, *, create: bool, accept_new_state: bool) -> None:
    if not create and not path.exists():
        raise StoreError(f"there is no database at {path} (check store.path)")
    if path.exists() and path.stat().st_size == 0 and not accept_new_state:
        raise StoreError(
            f"{path} is empty: the watcher's state (pending alerts, watermarks) was lost. "
            "Start with --accept-new-state to begin anew"
        )


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _failed_rows(
    key: DeliveryKey,
    event_ids: Iterable[str],
    error: str,
    next_attempt_at: float | None,
    owner: str | None,
) -> list[tuple[Any, ...]]:
    """The values of `_MARK_FAILED`, one row per event."""
    status = "dead" if next_attempt_at is None else "pending"
    return [
        (status, error[:1000], next_attempt_at, event_id, key.channel, key.recipient, owner, owner)
        for event_id in event_ids
    ]


# -- one cycle's commit, in the connection's thread (`SQLiteStore._in_thread`) ----------


def _select_in(
    db: sqlite3.Connection, *, sql: str, ids: Collection[Any], params: Iterable[Any]
) -> list[sqlite3.Row]:
    rows: list[Any] = []
    ids = list(ids)
    for start in range(0, len(ids), 500):  # stay under SQLite's bound-variable limit
        chunk = ids[start : start + 500]
        rows.extend(db.execute(sql.format(",".join("?" * len(chunk))), (*params, *chunk)))
    return rows


def _commit_cycle(db: sqlite3.Connection, *, commit: CycleCommit) -> list[Event]:
    """The whole commit (`Store.commit_cycle`): one statement per table for the runs,
    jobs, events, deliveries and targets of the cycle, whatever their number. Statements
    per item are only for incidents (each checked against its version) and grouped
    deliveries (each one's due time depends on the group's members before it)."""
    now = commit.committed_at
    db.execute("BEGIN IMMEDIATE")
    try:
        if commit.epoch is not None:
            _check_epoch(db, commit.workspace, commit.epoch)
        _write_incidents(db, commit.incidents, now)
        db.executemany(
            upsert_runs(",".join("?" * 16)), [run_row(r, now, packed=True) for r in commit.runs]
        )
        db.executemany(upsert_jobs(",".join("?" * 15)), [job_row(j, now) for j in commit.jobs])
        inserted = _insert_events(db, commit.events, now)
        deliveries: list[tuple[str, Iterable[DeliveryKey], DeliveryStatus, Policies]] = []
        targets: list[tuple[str, str, str, float | None, float | None]] = []
        for event in inserted:
            policies = commit.policies.get(event.id, {})
            keys = commit.channels.get(event.id, ())
            deliveries.append((event.id, keys, "pending", policies))
            deliveries.append((event.id, commit.silenced.get(event.id, ()), "silenced", {}))
            if event.incident is not None and event.incident.state == "open":
                targets.extend(target_rows(event.incident.id, keys, policies, now))
        _add_deliveries(db, deliveries, now)
        # In event order: a later event of the incident sets its targets' wait.
        db.executemany(
            "INSERT INTO incident_targets (incident_id, channel, recipient, repeat_every, "
            "next_repeat_at) VALUES (?,?,?,?,?) ON CONFLICT (incident_id, channel, recipient) "
            "DO UPDATE SET repeat_every=excluded.repeat_every, "
            "next_repeat_at=excluded.next_repeat_at",
            targets,
        )
        if commit.watermark_ms is not None:
            db.execute(
                "INSERT INTO watermarks (workspace, watermark_ms, updated_at, news_since_ms) "
                "VALUES (?,?,?,?) ON CONFLICT (workspace) DO UPDATE SET "
                "watermark_ms=MAX(watermark_ms, excluded.watermark_ms), "
                "updated_at=excluded.updated_at, news_since_ms="
                "MAX(COALESCE(news_since_ms, excluded.news_since_ms), "
                "COALESCE(excluded.news_since_ms, news_since_ms))",
                (commit.workspace, commit.watermark_ms, now, commit.news_since_ms),
            )
        db.execute("COMMIT")
    except BaseException:
        # After a failed COMMIT (disk full, I/O error) the transaction may still be
        # open; if it is already gone, ROLLBACK fails harmlessly.
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    return inserted


Policies = Mapping[DeliveryKey, DeliveryPolicy]


def _check_epoch(db: sqlite3.Connection, workspace: str, epoch: int) -> None:
    """StoreFenced unless the workspace's lease is still at `epoch` (BEGIN IMMEDIATE
    holds the write lock: no takeover lands between this check and the commit)."""
    row = db.execute("SELECT epoch FROM leases WHERE workspace = ?", (workspace,)).fetchone()
    if row is None or int(row[0]) != epoch:
        held = "no lease" if row is None else f"epoch {row[0]}"
        raise StoreFenced(
            f"workspace {workspace}: the cycle ran under lease epoch {epoch}, the lease "
            f"is now at {held}: another replica owns it"
        )


def _event_row(event: Event, now: float) -> tuple[Any, ...]:
    """The values of `_INSERT_EVENT`."""
    return (
        event.id,
        event.workspace,
        event.job.job_id,
        event.type.value,
        pack(event_document(event)),
        now,
        event.incident.id if event.incident else None,
    )


def _insert_events(db: sqlite3.Connection, events: Iterable[Event], now: float) -> list[Event]:
    """Insert the events whose id is not stored yet, in order (their `seq`); those
    inserted, each once (a second copy in the same commit is skipped)."""
    fresh: dict[str, Event] = {}
    for event in events:
        fresh.setdefault(event.id, event)
    # Read under the write lock (BEGIN IMMEDIATE): nobody stores one meanwhile.
    stored = _select_in(db, sql="SELECT id FROM events WHERE id IN ({})", ids=fresh, params=())
    for row in stored:
        del fresh[row[0]]
    db.executemany(_INSERT_EVENT, [_event_row(e, now) for e in fresh.values()])
    return list(fresh.values())


def _write_incidents(db: sqlite3.Connection, incidents: Iterable[Incident], now: float) -> None:
    """Insert new incidents (version 0) and update the others only where the stored
    version is still the one they were read at: else StoreConflict."""
    for incident in incidents:
        values = incident_row(incident, now)
        if incident.version == 0:
            try:
                db.execute(
                    "INSERT INTO incidents (state, version, record, resolved_at, updated_at, "
                    "id, workspace, key, job_id, opened_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        *values,
                        incident.id,
                        incident.workspace,
                        incident.key,
                        incident.job_id,
                        incident.opened_at_ms / 1000,
                    ),
                )
            except sqlite3.IntegrityError:
                raise StoreConflict(
                    f"incident {incident.key} was opened by another writer"
                ) from None
            continue
        cursor = db.execute(
            "UPDATE incidents SET state = ?, version = ?, record = ?, resolved_at = ?, "
            "updated_at = ? WHERE id = ? AND version = ?",
            (*values, incident.id, incident.version),
        )
        if cursor.rowcount != 1:
            raise StoreConflict(f"incident {incident.key} was changed by another writer")
        if not incident.is_open:
            # No reminder is due for it any more: keep the due-reminder scans short.
            db.execute(
                "UPDATE incident_targets SET next_repeat_at = NULL WHERE incident_id = ?",
                (incident.id,),
            )


def _add_deliveries(
    db: sqlite3.Connection,
    wanted: Iterable[tuple[str, Iterable[DeliveryKey], DeliveryStatus, Policies]],
    now: float,
) -> None:
    """(event id, keys, status, policies) each, in order: a grouped pending delivery is
    written at once (the members before it decide when it is due; it precedes the
    event's other rows, as it did when every row was written in order), the others in
    one statement."""
    rows = []
    for event_id, keys, status, policies in wanted:
        for key in dict.fromkeys(keys):
            policy = policies.get(key, NO_POLICY)
            row = (event_id, key.channel, key.recipient, status, now, now, policy.group_key)
            if policy.group_key and status == "pending":
                due = _group_due(db, key, policy, now)
                db.execute(_INSERT_DELIVERY, (*row[:5], due, policy.group_key))
            else:
                rows.append(row)
    db.executemany(_INSERT_DELIVERY, rows)


def _group_due(
    db: sqlite3.Connection, key: DeliveryKey, policy: DeliveryPolicy, now: float
) -> float:
    """When a new member of a delivery group goes out (`rows.group_due` says why, rule by
    rule), from its group's last digest and pending members."""
    row = db.execute(
        "SELECT last_sent_at FROM delivery_groups WHERE channel = ? AND recipient = ? "
        "AND group_key = ?",
        (key.channel, key.recipient, policy.group_key),
    ).fetchone()
    last = None if row is None else float(row[0])
    row = db.execute(
        "SELECT MIN(next_attempt_at), "
        "MIN(CASE WHEN attempts > 0 AND next_attempt_at > ? THEN next_attempt_at END), "
        "MIN(CASE WHEN attempts = 0 AND next_attempt_at > ? THEN next_attempt_at END) "
        "FROM deliveries WHERE channel = ? AND recipient = ? AND group_key = ? "
        "AND status = 'pending'",
        (last, last, key.channel, key.recipient, policy.group_key),
    ).fetchone()
    waiting, retry, scheduled = (None if v is None else float(v) for v in row or (None,) * 3)
    return group_due(policy, now, last=last, waiting=waiting, retry=retry, scheduled=scheduled)
