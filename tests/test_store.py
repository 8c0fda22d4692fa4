"""The SQLite store on a real file: migrations, one-transaction cycles, the outbox, pruning."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from watcher.databricks.models import Run
from watcher.domain import JobRecord, RunRecord
from watcher.events import Event, EventType, JobRef, event_id
from watcher.store import CycleCommit, StoreError, rows
from watcher.store.base import DeliveryKey
from watcher.store.rows import event_document, pack, unpack
from watcher.store.sqlite import MIGRATIONS, SQLiteStore

NOW = 1_700_000_000.0
OPS, MAIL = DeliveryKey("ops"), DeliveryKey("mail")


def record(
    run_id: int, *, terminal: bool = False, start: int = 1_000, job_id: int = 7
) -> RunRecord:
    life = "TERMINATED" if terminal else "RUNNING"
    snapshot = Run.model_validate(
        {
            "run_id": run_id,
            "job_id": job_id,
            "state": {"life_cycle_state": life},
            "start_time": start,
        }
    )
    return RunRecord(
        workspace="prod",
        run_id=run_id,
        job_id=job_id,
        life_cycle_state=life,
        result_state=None,
        start_time=start,
        end_time=start + 10 if terminal else None,
        terminal=terminal,
        emitted=frozenset({"run_started"}),
        snapshot=snapshot,
    )


def event(run_id: int, type_: EventType = EventType.RUN_FAILED, *, job_id: int = 7) -> Event:
    return Event(
        id=event_id("prod", run_id, type_),
        type=type_,
        workspace="prod",
        occurred_at=datetime.fromtimestamp(NOW, tz=UTC),
        job=JobRef(job_id=job_id, name="etl"),
        run=Run.model_validate({"run_id": run_id, "job_id": job_id}),
    )


def commit(*, watermark: int = 5_000, at: float = NOW, **kwargs: object) -> CycleCommit:
    return CycleCommit(workspace="prod", watermark_ms=watermark, committed_at=at, **kwargs)  # type: ignore[arg-type]


async def test_fresh_database_is_migrated_and_empty(sqlite_store: SQLiteStore) -> None:
    """A new file gets the latest schema; no watermark, no active runs."""
    assert await sqlite_store.schema_version() == len(MIGRATIONS)
    state = await sqlite_store.workspace_state("prod")
    assert (state.watermark_ms, state.active_run_ids) == (None, frozenset())
    conn = sqlite3.connect(sqlite_store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_cycle_commit_roundtrip_and_state(store: SQLiteStore) -> None:
    """Records, jobs, events and the watermark written by one commit read back; active
    runs are those whose record is not terminal; the watermark never goes back."""
    job = JobRecord(workspace="prod", job_id=7, name="etl", tags={"t": "1"}, last_outcome="failure")
    inserted = await store.commit_cycle(
        commit(runs=[record(1), record(2, terminal=True)], jobs=[job], events=[event(2)])
    )
    assert [e.id for e in inserted] == [event(2).id]
    state = await store.workspace_state("prod")
    assert (state.watermark_ms, state.active_run_ids) == (5_000, frozenset({1}))
    runs = await store.get_runs("prod", [1, 2, 3])
    assert runs == {1: record(1), 2: record(2, terminal=True)}
    assert await store.get_jobs("prod", [7]) == {7: job}
    await store.commit_cycle(commit(watermark=4_000))
    assert (await store.workspace_state("prod")).watermark_ms == 5_000
    assert (await store.workspace_state("staging")).watermark_ms is None


async def test_an_event_is_stored_once_whatever_is_retried(store: SQLiteStore) -> None:
    """Re-committing an event (a cycle redone after a crash) inserts nothing and creates
    no second delivery."""
    channels = {event(1).id: [OPS, OPS, MAIL]}
    first = await store.commit_cycle(commit(events=[event(1)], channels=channels))
    again = await store.commit_cycle(commit(events=[event(1), event(2)], channels=channels))
    assert [e.id for e in first] == [event(1).id]
    assert [e.id for e in again] == [event(2).id]
    assert await store.event_ids() == [event(1).id, event(2).id]
    assert (await store.outbox_stats()).pending == 2


async def test_a_failed_commit_leaves_nothing_behind(store: SQLiteStore) -> None:
    """If anything in a cycle's commit fails, none of it is written (records, events,
    deliveries, watermark)."""
    bad = RunRecord.model_construct(**{**record(9).__dict__, "snapshot": None})  # unserialisable
    with pytest.raises(AttributeError):
        await store.commit_cycle(
            commit(
                watermark=9_000,
                runs=[record(1), bad],
                events=[event(1)],
                channels={event(1).id: [OPS]},
            )
        )
    assert await store.get_runs("prod", [1, 9]) == {}
    assert await store.event_ids() == []
    assert (await store.workspace_state("prod")).watermark_ms is None
    await store.commit_cycle(commit(runs=[record(1)]))  # the store is usable afterwards
    assert set(await store.get_runs("prod", [1])) == {1}


async def test_outbox_keeps_order_per_job_and_channel(store: SQLiteStore) -> None:
    """Only the oldest pending delivery of a (channel, job) is due: a job's second alert
    waits for its first, while other jobs and channels go ahead."""
    events = [event(1, job_id=7), event(2, job_id=7), event(3, job_id=8)]
    await store.commit_cycle(commit(events=events, channels={e.id: [OPS, MAIL] for e in events}))
    due = await store.due_deliveries(now=NOW, limit=100)
    assert {(d.event.run.run_id, d.channel) for d in due} == {
        (1, "ops"),
        (1, "mail"),
        (3, "ops"),
        (3, "mail"),
    }
    await store.mark_failed(
        event(1).id, DeliveryKey("ops"), error="HTTP 500", next_attempt_at=NOW + 60
    )
    await store.mark_delivered(event(1).id, DeliveryKey("mail"), at=NOW)
    due = await store.due_deliveries(now=NOW + 1, limit=100, channels=["ops", "mail"])
    assert {(d.event.run.run_id, d.channel) for d in due} == {(2, "mail"), (3, "ops"), (3, "mail")}
    due = await store.due_deliveries(now=NOW + 61, limit=100, channels=["ops"])
    (retry,) = [d for d in due if d.event.run.run_id == 1]
    assert (retry.attempts, retry.last_error) == (1, "HTTP 500")


async def test_dead_letters_are_kept_listed_and_requeued(store: SQLiteStore) -> None:
    """A dead delivery leaves the queue (unblocking the job's next alert), is listed, and
    goes back to pending on request."""
    await store.commit_cycle(
        commit(events=[event(1), event(2)], channels={event(1).id: [OPS], event(2).id: [OPS]})
    )
    await store.mark_failed(
        event(1).id, DeliveryKey("ops"), error="HTTP 400 bad payload", next_attempt_at=None
    )
    assert [d.event.run.run_id for d in await store.due_deliveries(now=NOW, limit=10)] == [2]
    (dead,) = await store.dead_letters()
    assert (dead.event.id, dead.status, dead.last_error) == (
        event(1).id,
        "dead",
        "HTTP 400 bad payload",
    )
    assert (await store.outbox_stats()).dead == 1
    assert await store.requeue_dead(now=NOW + 5, event_ids=[event(1).id]) == 1
    assert await store.dead_letters() == []
    assert (await store.outbox_stats()).pending == 2


async def test_silenced_deliveries_are_recorded_not_sent(store: SQLiteStore) -> None:
    """Silenced channels are kept in the outbox as silenced and never come due."""
    await store.commit_cycle(
        commit(events=[event(1)], silenced={event(1).id: [DeliveryKey("pager")]})
    )
    assert await store.due_deliveries(now=NOW + 1e6, limit=10) == []
    assert (await store.outbox_stats()).silenced == 1


async def test_pruning_bounds_the_database(store: SQLiteStore) -> None:
    """Runs past retention go; delivered events past retention go; pending and dead
    events stay however old."""
    day_ms = 86_400_000
    now_ms = int(NOW * 1000)
    await store.commit_cycle(
        commit(
            runs=[
                record(1, terminal=True, start=now_ms - 61 * day_ms),
                record(2, start=now_ms - day_ms),
            ],
            events=[event(1), event(2), event(3)],
            channels={event(1).id: [OPS], event(2).id: [OPS], event(3).id: [MAIL]},
            at=NOW - 20 * 86_400,
        )
    )
    await store.mark_delivered(event(1).id, DeliveryKey("ops"), at=NOW)
    await store.mark_failed(event(3).id, DeliveryKey("mail"), error="x", next_attempt_at=None)
    result = await store.prune(now=NOW, run_retention_days=60, event_retention_days=14)
    assert (result.runs, result.events) == (1, 1)
    assert set(await store.get_runs("prod", [1, 2])) == {2}
    assert await store.event_ids() == [event(2).id, event(3).id]


async def test_pruning_keeps_runs_that_are_still_active(store: SQLiteStore) -> None:
    """A run active for longer than the retention keeps its record (else its start and
    breach would be alerted again)."""
    old_start = int(NOW * 1000) - 90 * 86_400_000
    await store.commit_cycle(commit(runs=[record(1, start=old_start)]))
    result = await store.prune(now=NOW, run_retention_days=60, event_retention_days=14)
    assert result.runs == 0
    assert (await store.workspace_state("prod")).active_run_ids == {1}


async def test_an_unreadable_payload_is_dead_lettered_not_blocking(
    sqlite_store: SQLiteStore,
) -> None:
    """A stored event that cannot be decoded is dead-lettered; every other alert still
    comes due. Fields a newer release added are simply ignored."""
    events = [event(1, job_id=7), event(2, job_id=8), event(3, job_id=9)]
    await sqlite_store.commit_cycle(commit(events=events, channels={e.id: [OPS] for e in events}))
    conn = sqlite3.connect(sqlite_store.path)
    conn.execute("UPDATE events SET payload = '{\"id\": 1}' WHERE id = ?", (event(1).id,))
    newer = event(3).model_dump() | {"added_by_a_newer_release": True}
    conn.execute(
        "UPDATE events SET payload = ? WHERE id = ?", (json.dumps(newer, default=str), event(3).id)
    )
    conn.commit()
    conn.close()
    due = await sqlite_store.due_deliveries(now=NOW, limit=10)
    assert sorted(d.event.run.run_id for d in due) == [2, 3]
    assert (await sqlite_store.outbox_stats()).dead == 1


async def test_reopening_keeps_everything(tmp_path: Path) -> None:
    """State survives closing and reopening the file; migrations are not re-applied."""
    path = tmp_path / "w.db"
    first = await SQLiteStore.open(path)
    await first.commit_cycle(
        commit(runs=[record(1)], events=[event(1)], channels={event(1).id: [OPS]})
    )
    await first.close()
    second = await SQLiteStore.open(path)
    try:
        assert (await second.workspace_state("prod")).active_run_ids == {1}
        assert (await second.outbox_stats()).pending == 1
    finally:
        await second.close()


async def test_corrupt_database_is_a_clear_error_naming_the_path(tmp_path: Path) -> None:
    """Garbage in the database file fails at open with the path in the message."""
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"broken\.db"):
        await SQLiteStore.open(path)


async def test_path_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    """A database path whose parent is a regular file fails at open, naming the path."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="not-a-dir"):
        await SQLiteStore.open(blocker / "w.db")


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer watcher is refused rather than misread."""
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SQLiteStore.open(path)


async def test_migrations_upgrade_an_older_database(tmp_path: Path) -> None:
    """Opening a database at version 0 (an empty file, accepted as a new state) applies
    every migration in order."""
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    store = await SQLiteStore.open(path, accept_new_state=True)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        tables = {
            r[0]
            for r in sqlite3.connect(path).execute(
                "SELECT name FROM sqlite_master WHERE type='table'"
            )
        }
        assert {"runs", "jobs", "watermarks", "events", "deliveries"} <= tables
    finally:
        await store.close()


async def test_a_version_1_database_keeps_its_state_and_gets_a_horizon_later(
    tmp_path: Path,
) -> None:
    """A database of the first schema (before repairs) is upgraded in place: its runs keep
    repair 0, and its news horizon stays unset (the poller then uses the watermark's
    cut-off, overlap included) until a commit sets it; after that it never moves back."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO watermarks VALUES ('prod', 1700000000000, 0)")
    conn.execute(
        "INSERT INTO runs (workspace, run_id, job_id, terminal, emitted, snapshot, updated_at, "
        "end_time) VALUES ('prod', 42, 7, 1, '[]', '{\"run_id\": 42}', 0, 1699999999000)"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = await SQLiteStore.open(path)
    try:
        state = await store.workspace_state("prod")
        assert (state.watermark_ms, state.news_since_ms) == (1700000000000, None)
        assert (await store.get_runs("prod", [42]))[42].repair == 0
        assert await store.terminal_ends("prod", [42, 43]) == {42: 1699999999000}
        for since in (1699999600000, 1600000000000):
            await store.commit_cycle(
                CycleCommit(
                    workspace="prod",
                    watermark_ms=1700000060000,
                    committed_at=1.0,
                    news_since_ms=since,
                )
            )
        assert (await store.workspace_state("prod")).news_since_ms == 1699999600000
    finally:
        await store.close()


def version_2_outbox(path: Path, orphan: bool = False) -> tuple[Event, Event]:
    """A database of the second schema with two events and deliveries keyed by one string
    (`channel` or `email channel:address`); with `orphan`, also a delivery of an event
    that is not there (only a hand edit with foreign keys off can make one)."""
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        conn.executescript(script)
    first, second = event(1), event(2)
    for seq, ev in enumerate((first, second), start=1):
        conn.execute(
            "INSERT INTO events (seq, id, workspace, job_id, type, payload, created_at) "
            "VALUES (?, ?, 'prod', 7, ?, ?, ?)",
            (seq, ev.id, ev.type.value, ev.model_dump_json(exclude_none=True), NOW),
        )
    rows = [
        (first.id, "ops", "pending", 2, None),
        (first.id, "mail:alice@example.com", "pending", 0, None),
        (first.id, "mail", "dead", 3, "SMTP 550: no"),
        (second.id, "mail:alice@example.com", "pending", 0, None),
        (second.id, "pager", "silenced", 0, None),
    ]
    if orphan:
        rows.append(("no-such-event", "mail:bob@example.com", "pending", 0, None))
    conn.executemany(
        "INSERT INTO deliveries (event_id, channel, status, attempts, created_at, "
        "next_attempt_at, last_error) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e, c, st, a, NOW, NOW, err) for e, c, st, a, err in rows],
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    return first, second


async def test_a_version_2_outbox_gets_its_keys_split_and_keeps_delivering(
    tmp_path: Path,
) -> None:
    """A database of the second schema, whose deliveries are keyed by one string
    (`channel` or `email channel:address`), is upgraded in place: each key becomes a
    channel and a recipient, pending deliveries stay due (in order, per recipient) and
    dead ones stay dead with their error."""
    path = tmp_path / "v2.db"
    first, second = version_2_outbox(path)
    store = await SQLiteStore.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        due = await store.due_deliveries(now=NOW, limit=10)
        assert {(d.event.id, d.key, d.attempts) for d in due} == {
            (first.id, DeliveryKey("ops"), 2),
            (first.id, DeliveryKey("mail", "alice@example.com"), 0),
        }
        (dead,) = await store.dead_letters()
        assert (dead.event.id, dead.key, dead.last_error) == (
            first.id,
            DeliveryKey("mail"),
            "SMTP 550: no",
        )
        stats = await store.outbox_stats()
        assert (stats.pending, stats.dead, stats.silenced) == (3, 1, 1)
        address = DeliveryKey("mail", "alice@example.com")
        await store.mark_delivered(first.id, address, at=NOW)
        due = await store.due_deliveries(now=NOW, limit=10, channels=["mail"])
        assert [(d.event.id, d.key) for d in due] == [(second.id, address)]
    finally:
        await store.close()


async def test_two_processes_opening_a_version_2_outbox_migrate_it_once(
    tmp_path: Path,
) -> None:
    """Two watchers (say the daemon and `alerts list`) open the same old database at once:
    the second sees, under the write lock, that the first has migrated it, and does not
    split the keys again (that would erase every recipient); a delivery of an event that
    is gone does not stop the upgrade."""
    path = tmp_path / "v2.db"
    first, second = version_2_outbox(path, orphan=True)
    stores = await asyncio.gather(SQLiteStore.open(path), SQLiteStore.open(path))
    try:
        conn = sqlite3.connect(path)
        rows = sorted(conn.execute("SELECT event_id, channel, recipient, status FROM deliveries"))
        conn.close()
        assert rows == sorted(
            [
                (first.id, "ops", "", "pending"),
                (first.id, "mail", "alice@example.com", "pending"),
                (first.id, "mail", "", "dead"),
                (second.id, "mail", "alice@example.com", "pending"),
                (second.id, "pager", "", "silenced"),
            ]
        )
    finally:
        for store in stores:
            await store.close()


async def test_a_migration_under_a_running_watcher_fails_its_ping(tmp_path: Path) -> None:
    """A newer watcher that migrates the database under a running one makes the running
    one's store ping fail (/readyz), naming why, instead of writing in the old shape."""
    path = tmp_path / "v2.db"
    version_2_outbox(path)
    running = await SQLiteStore.open(path)
    try:
        await running.ping()
        conn = sqlite3.connect(path)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        conn.commit()
        conn.close()
        with pytest.raises(StoreError, match="no downgrade"):
            await running.ping()
    finally:
        await running.close()


async def test_a_lost_state_is_loud(tmp_path: Path) -> None:
    """An empty database file (zero bytes) is a lost state, not a first start: refused
    unless accepted; a store path that must exist (the alerts commands) is not created;
    a database deleted or replaced while open fails the store's ping (/readyz)."""
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="--accept-new-state"):
        await SQLiteStore.open(empty)
    accepted = await SQLiteStore.open(empty, accept_new_state=True)
    assert await accepted.schema_version() == len(MIGRATIONS)
    await accepted.close()
    with pytest.raises(StoreError, match="no database at"):
        await SQLiteStore.open(tmp_path / "typo.db", create=False)
    assert not (tmp_path / "typo.db").exists()
    path = tmp_path / "live.db"
    store = await SQLiteStore.open(path)
    try:
        await store.ping()
        path.unlink()
        with pytest.raises(StoreError, match="deleted or replaced"):
            await store.ping()
        path.write_bytes(b"")
        with pytest.raises(StoreError, match="deleted or replaced"):
            await store.ping()
    finally:
        await store.close()


def test_delivery_keys_read_back_as_shown() -> None:
    """A key reads back from the text operators see (`channel` or `channel:address`); a
    ':' with no address is an error, not the channel's own target."""
    for key in (DeliveryKey("ops"), DeliveryKey("mail", "a@example.com")):
        assert DeliveryKey.parse(str(key)) == key
    with pytest.raises(ValueError, match="an address must follow"):
        DeliveryKey.parse("mail:")


RICH_RUN = {
    "run_id": 9,
    "job_id": 7,
    "run_name": "nightly",
    "number_in_job": 9,
    "attempt_number": 0,
    "state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": "x"},
    "status": {"state": "TERMINATED", "termination_details": {"code": "RUN_EXECUTION_ERROR"}},
    "start_time": 1_000,
    "end_time": 0,
    "setup_duration": 0,
    "cluster_instance": {"cluster_id": "c-1"},
    "overriding_parameters": {"notebook_params": {"day": "2024-01-01"}},
    "trigger": "PERIODIC",
    "run_page_url": "https://adb-1.2.azuredatabricks.net/?o=1#job/7/run/9",
    "tasks": [{"task_key": "a", "run_id": 91, "start_time": 1_100, "state": {}}],
    "repair_history": [{"type": "ORIGINAL", "start_time": 1_000}],
}


def version_6_state(path: Path) -> tuple[RunRecord, Event]:
    """A database as the release before packing left it: a run whose snapshot and an
    event whose payload are JSON text (as that release wrote them), the event pending."""
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:6]:
        conn.executescript(script)
    run = record(9, terminal=True).model_copy(
        update={"snapshot": Run.model_validate(RICH_RUN), "emitted": frozenset({"terminal"})}
    )
    old = event(9).model_copy(update={"run": run.snapshot})
    conn.execute(
        "INSERT INTO runs (workspace, run_id, job_id, life_cycle_state, result_state, "
        "start_time, end_time, attempt_number, terminal, backfill, emitted, snapshot, "
        "updated_at) VALUES ('prod', 9, 7, 'TERMINATED', NULL, 1000, 1010, 0, 1, 0, ?, ?, 0)",
        (json.dumps(sorted(run.emitted)), run.snapshot.model_dump_json(exclude_none=True)),
    )
    conn.execute(
        "INSERT INTO events (id, workspace, job_id, type, payload, created_at) "
        "VALUES (?, 'prod', 7, ?, ?, ?)",
        (old.id, old.type.value, old.model_dump_json(exclude_none=True), NOW),
    )
    conn.execute(
        "INSERT INTO deliveries (event_id, channel, status, created_at, next_attempt_at) "
        "VALUES (?, 'ops', 'pending', ?, ?)",
        (old.id, NOW, NOW),
    )
    conn.execute("PRAGMA user_version = 6")
    conn.commit()
    conn.close()
    return run, old


async def test_rows_of_the_release_before_packing_stay_readable(tmp_path: Path) -> None:
    """A store written before snapshots and payloads were packed opens, migrates, and
    reads its JSON text rows as they were; what it writes from then on is packed (smaller
    than the JSON) and reads back equal; the unused start-time index is gone."""
    path = tmp_path / "v6.db"
    run, old = version_6_state(path)
    store = await SQLiteStore.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS) == 7
        assert (await store.get_runs("prod", [9]))[9] == run
        assert await store.get_event(old.id) == old
        assert [d.event for d in await store.due_deliveries(now=NOW, limit=10)] == [old]
        updated = run.model_copy(update={"emitted": frozenset({"terminal", "run_started"})})
        new = event(10).model_copy(update={"run": run.snapshot})
        await store.commit_cycle(commit(runs=[updated], events=[new], channels={new.id: [OPS]}))
        assert (await store.get_runs("prod", [9]))[9] == updated
        assert await store.get_event(new.id) == new
        assert [e.event.id for e in await store.recent_events(limit=5)] == [new.id, old.id]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    snapshot, payload = conn.execute(
        "SELECT snapshot, (SELECT payload FROM events WHERE id = ?) FROM runs", (new.id,)
    ).fetchone()
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert isinstance(snapshot, bytes)
    assert len(snapshot) < len(run.snapshot.model_dump_json(exclude_none=True)) / 2
    assert isinstance(payload, bytes)
    assert len(payload) < len(new.model_dump_json(exclude_none=True)) / 2
    assert "runs_start" not in indexes


async def test_a_damaged_packed_payload_is_dead_lettered_not_blocking(
    sqlite_store: SQLiteStore,
) -> None:
    """A packed payload that cannot be unpacked (cut short, or one bit flipped: the zlib
    check catches it) or unpacks to no event is as unreadable as a wrong one: its delivery
    is dead-lettered and the other alerts still come due."""
    events = [event(1, job_id=7), event(2, job_id=8), event(3, job_id=9), event(4, job_id=10)]
    await sqlite_store.commit_cycle(commit(events=events, channels={e.id: [OPS] for e in events}))
    good = pack(event_document(events[0]))
    flipped = good[:40] + bytes((good[40] ^ 0x10,)) + good[41:]
    conn = sqlite3.connect(sqlite_store.path)
    for damaged, e in zip([good[:-6], flipped, pack(b"{not json")], events, strict=False):
        conn.execute("UPDATE events SET payload = ? WHERE id = ?", (damaged, e.id))
    conn.commit()
    conn.close()
    due = await sqlite_store.due_deliveries(now=NOW, limit=10)
    assert [d.event for d in due] == [events[3]]
    assert (await sqlite_store.outbox_stats()).dead == 3
    assert await sqlite_store.get_event(events[3].id) == events[3]


DICTIONARY_V1 = "b7b156d7f31b14b9"
"""The first 16 hex digits of the SHA-256 of version 1's dictionary."""


def test_the_packing_dictionary_of_version_1_never_changes() -> None:
    """Rows packed with it are read with it for ever: a new dictionary is a new version."""
    assert hashlib.sha256(rows._ZDICT_V1).hexdigest()[:16] == DICTIONARY_V1
    document = b'{"id":"e1","type":"run_failed","workspace":"w"}'
    assert unpack(pack(document)) == document
    other = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, b"another")
    with pytest.raises(ValueError, match="cannot be unpacked"):
        unpack(b"\x01" + other.compress(document) + other.flush())


async def test_a_cancelled_commit_returns_only_once_the_database_is_done_with_it(
    sqlite_store: SQLiteStore,
) -> None:
    """The database's thread finishes a commit whatever happens to its caller: a cancel
    (shutdown) surfaces after it, so nothing reads or writes the store meanwhile."""
    events = [event(run_id) for run_id in range(1, 5001)]
    task = asyncio.create_task(sqlite_store.commit_cycle(commit(events=events)))
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    conn = sqlite3.connect(sqlite_store.path)
    stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    conn.close()
    assert stored == 5000


async def test_a_cycle_commit_is_one_hop_with_no_statement_per_item(
    sqlite_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many runs and events a cycle commits, it takes one hop to the database's
    thread, and besides one row per item written it reads only which events are stored
    already (one query): no statement per run or event."""
    db = sqlite_store._db
    hops: list[object] = []
    execute: Callable[..., Awaitable[object]] = db._execute  # every hop aiosqlite makes

    async def counted(fn: object, *args: object) -> object:
        hops.append(fn)
        return await execute(fn, *args)

    statements: list[str] = []
    await db.set_trace_callback(statements.append)
    monkeypatch.setattr(db, "_execute", counted)
    for count in (10, 100):
        hops.clear()
        statements.clear()
        ids = range(count, 2 * count)  # new runs and events each time
        events = [event(i) for i in ids]
        keys = {e.id: [OPS, MAIL] for e in events}
        await sqlite_store.commit_cycle(
            commit(runs=[record(i) for i in ids], events=events, channels=keys)
        )
        assert len(hops) == 1
        other = [s.split()[:2] for s in statements if not s.startswith("INSERT")]
        assert other == [["BEGIN", "IMMEDIATE"], ["SELECT", "id"], ["COMMIT"]]
        inserts = [s.split(" (", 1)[0] for s in statements if s.startswith("INSERT")]
        assert sorted(set(inserts)) == [
            "INSERT INTO runs",
            "INSERT INTO watermarks",
            "INSERT OR IGNORE INTO deliveries",
            "INSERT OR IGNORE INTO events",
        ]
        assert len(inserts) == count * 4 + 1  # a run, an event, two deliveries each


async def test_pruning_gives_the_wal_back_to_the_disk(sqlite_store: SQLiteStore) -> None:
    """What a prune deletes goes through the WAL at once; the WAL is emptied after it,
    so the files on disk are the database's live pages, not its largest transaction."""
    day_ms = 86_400_000
    old = int(NOW * 1000) - 90 * day_ms
    runs = [record(i, terminal=True, start=old) for i in range(2_000)]
    events = [event(i) for i in range(2_000)]
    await sqlite_store.commit_cycle(commit(runs=runs, events=events, at=NOW - 90 * 86_400))
    wal = sqlite_store.path.with_name(sqlite_store.path.name + "-wal")
    assert wal.stat().st_size > 500_000
    result = await sqlite_store.prune(now=NOW, run_retention_days=60, event_retention_days=14)
    assert (result.runs, result.events) == (2_000, 2_000)
    assert wal.stat().st_size == 0
    assert await sqlite_store.get_runs("prod", [0, 1_999]) == {}
