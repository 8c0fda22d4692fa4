"""What both backends write and read the same way: the rows of records going in, the
records coming out of rows, and the decisions made on what was read (when a new member of
a delivery group goes out). Pure: no I/O. A row is a sequence indexed like the columns
its SQL selects (a sqlite3.Row, an asyncpg.Record); booleans go in as `bool` (SQLite
stores them as 0 and 1)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import orjson
import structlog
from pydantic import ValidationError

from watcher.databricks.models import Run
from watcher.domain import Incident, JobRecord, RunRecord
from watcher.events import Event
from watcher.store.base import (
    Delivery,
    DeliveryKey,
    DeliveryPolicy,
    DueReminder,
    EventDeliveries,
    JobTimes,
    OutboxStats,
    StoredSilence,
)


class Row(Protocol):
    """A row read: its columns by position (a sqlite3.Row, an asyncpg.Record)."""

    def __getitem__(self, index: int, /) -> Any: ...


NO_POLICY = DeliveryPolicy()
"""A delivery without a route's policy: at once, alone, no reminder."""

DELIVERY_COLUMNS = (
    "e.payload, d.channel, d.recipient, d.status, d.attempts, d.created_at, "
    "d.next_attempt_at, d.last_error, d.event_id, d.group_key"
)
"""What `read_delivery` reads (deliveries `d` joined with their events `e`)."""

RUN_COLUMNS = (
    "run_id, job_id, life_cycle_state, result_state, start_time, end_time, "
    "attempt_number, terminal, backfill, emitted, snapshot, repair, repair_start, state_since"
)
"""What `read_run` reads."""

JOB_COLUMNS = (
    "job_id, name, tags, last_outcome, last_outcome_run_id, last_outcome_end_time, "
    "last_outcome_repair, consecutive_failures, last_success_ms, last_start_ms, "
    "last_active_ms, expect_sig, expect_since_ms"
)
"""What `read_job` reads."""

RECENT_EVENTS_COLUMNS = (
    "e.seq, e.payload, e.created_at, d.channel, d.recipient, d.status, "
    "d.attempts, d.created_at, d.next_attempt_at, d.last_error, d.group_key"
)
"""What `read_event_deliveries` reads (events `e` left-joined with their deliveries `d`)."""


def upsert_runs(placeholders: str) -> str:
    """The statement writing `run_row`s, its values in the backend's `placeholders`."""
    return (
        "INSERT INTO runs (workspace, run_id, job_id, life_cycle_state, result_state, "  # noqa: S608 - constants and placeholders only
        "start_time, end_time, attempt_number, terminal, backfill, emitted, snapshot, "
        f"updated_at, repair, repair_start, state_since) VALUES ({placeholders}) "
        "ON CONFLICT (workspace, run_id) DO UPDATE SET job_id=excluded.job_id, "
        "life_cycle_state=excluded.life_cycle_state, result_state=excluded.result_state, "
        "start_time=excluded.start_time, end_time=excluded.end_time, "
        "attempt_number=excluded.attempt_number, terminal=excluded.terminal, "
        "backfill=excluded.backfill, emitted=excluded.emitted, "
        "snapshot=excluded.snapshot, updated_at=excluded.updated_at, "
        "repair=excluded.repair, repair_start=excluded.repair_start, "
        "state_since=excluded.state_since"
    )


def upsert_jobs(placeholders: str) -> str:
    """The statement writing `job_row`s, its values in the backend's `placeholders`."""
    return (
        "INSERT INTO jobs (workspace, job_id, name, tags, last_outcome, "  # noqa: S608 - constants and placeholders only
        "last_outcome_run_id, last_outcome_end_time, updated_at, last_outcome_repair, "
        "consecutive_failures, last_success_ms, last_start_ms, last_active_ms, "
        f"expect_sig, expect_since_ms) VALUES ({placeholders}) "
        "ON CONFLICT (workspace, job_id) DO UPDATE SET name=excluded.name, "
        "tags=excluded.tags, last_outcome=excluded.last_outcome, "
        "last_outcome_run_id=excluded.last_outcome_run_id, "
        "last_outcome_end_time=excluded.last_outcome_end_time, "
        "updated_at=excluded.updated_at, last_outcome_repair=excluded.last_outcome_repair, "
        "consecutive_failures=excluded.consecutive_failures, "
        "last_success_ms=excluded.last_success_ms, "
        "last_start_ms=excluded.last_start_ms, last_active_ms=excluded.last_active_ms, "
        "expect_sig=excluded.expect_sig, expect_since_ms=excluded.expect_since_ms"
    )


# SQLite stores documents (a run's snapshot, an event's payload) packed: a version byte,
# then the JSON as raw DEFLATE primed with a dictionary of what such documents are made
# of. Most of a document is its keys and the values every run repeats, which the
# dictionary shrinks to a few bytes each (an event of ~600 bytes packs to ~170; zlib
# alone, ~390). Rows written before, and PostgreSQL's, are JSON text, read as they are.
# The dictionary of a version can never change (tests/test_store.py pins its hash): a
# new one is a new version byte, and readers keep every old one.
_PACKED_V1 = 1
_ZDICT_V1 = (
    b'"tasks":[{"task_key":"","run_id":,"description":"","depends_on":[{"task_key":""}],'
    b'"cluster_instance":{"cluster_id":"","spark_context_id":""},"attempt_number":0,'
    b'"queue_duration":,"run_duration":,"repair_history":[{"type":"ORIGINAL","id":,'
    b'"task_run_ids":[],"status":{"state":"TERMINATED","termination_details":{"code":'
    b'"SUCCESS","type":"SUCCESS","message":""}},"queue_details":{"code":"","message":""},'
    b'"creator_user_name":"","number_in_job":,"original_attempt_run_id":,"run_type":'
    b'"JOB_RUN","overriding_parameters":{},"schedule":{"quartz_cron_expression":"",'
    b'"https://.cloud.databricks.com/#job//run/","https://.gcp.databricks.com/#job//run/",'
    b'"timezone_id":"UTC","pause_status":"UNPAUSED"},"state_message":"",'
    b'"user_cancelled_or_timedout":false,"queue_reason":"","WAITING_FOR_RETRY","BLOCKED",'
    b'"QUEUED","PENDING","TERMINATING","INTERNAL_ERROR","SKIPPED","CANCELED","TIMEDOUT",'
    b'"rule":{"name":"config:default","value":,"source":"config"},"observed_seconds":,'
    b'"expected_at":"","detail":"","run_duration_exceeded","run_stuck","job_recovered",'
    b'"incident_resolved","run_canceled","run_skipped","run_started","resolved_at":"",'
    b'"cause":"recovered","run_ended","duration","streak":{"consecutive_failures":0,'
    b'"last_success_at":"20","incident":{"id":"","key":"/job//failed","kind":"failure",'
    b'"state":"open","opened_at":"20","count":1},"repair":0,"raw_state":"FAILED",'
    b'"backfill":false,"test":false,"repeat":0}{"id":"","type":"run_succeeded",'
    b'"workspace":"","occurred_at":"20T:00Z","job":{"job_id":,"name":"","tags":{}},'
    b'"run":{"job_id":,"run_id":,"run_name":"","state":{"life_cycle_state":"TERMINATED",'
    b'"result_state":"SUCCESS"},"start_time":17,"end_time":17,"setup_duration":,'
    b'"execution_duration":,"cleanup_duration":,"trigger":"PERIODIC","run_page_url":'
    b'"https://adb-.azuredatabricks.net/?o=#job//run/","tasks":[]},"attempt_number":0,'
    b'"repair":0,"raw_state":"SUCCESS","backfill":false,"test":false,"repeat":0}'
)


_ZLIB = 15
"""The zlib format, not raw deflate: its header names the dictionary (a wrong one is an
error, not a different document) and its Adler-32 catches a damaged row."""
_MAX_DOCUMENT = 64 * 1024 * 1024
"""No stored document unpacks larger (a damaged row must not take the memory)."""


def pack(document: str | bytes) -> bytes:
    """A JSON document as stored (see `_ZDICT_V1`)."""
    data = document.encode() if isinstance(document, str) else document
    packer = zlib.compressobj(6, zlib.DEFLATED, _ZLIB, 9, zlib.Z_DEFAULT_STRATEGY, _ZDICT_V1)
    return bytes((_PACKED_V1,)) + packer.compress(data) + packer.flush()


def unpack(stored: str | bytes) -> str | bytes:
    """The JSON of a stored document: packed, or as rows of earlier versions hold it.
    ValueError if its packing is damaged. (Any other first byte is no JSON either: the
    reader's ValidationError says so.)"""
    if isinstance(stored, str) or not stored or stored[0] != _PACKED_V1:
        return stored
    try:
        unpacker = zlib.decompressobj(_ZLIB, _ZDICT_V1)
        document = unpacker.decompress(stored[1:], _MAX_DOCUMENT)
    except zlib.error as exc:
        raise ValueError(f"a stored document cannot be unpacked: {exc}") from None
    if not unpacker.eof or unpacker.unconsumed_tail:
        raise ValueError("a stored document is cut short, or unpacks too large")
    return document


def event_document(event: Event) -> str:
    """An event as stored, before packing. (Leaving defaults out too would save a byte
    or two once packed, and cost more than packing does.)"""
    return event.model_dump_json(exclude_none=True)


def read_event(stored: str | bytes) -> Event:
    """An event from its stored payload; ValidationError if it cannot be read (damaged
    too: a damaged payload is as unreadable as a wrong one)."""
    try:
        document = unpack(stored)
    except ValueError:
        document = b"\xff"  # not JSON: the ValidationError every reader handles
    return Event.model_validate_json(document)


def run_row(record: RunRecord, now: float, *, packed: bool) -> tuple[Any, ...]:
    """The values of `upsert_runs`; the snapshot `packed`, or JSON text."""
    snapshot = record.snapshot.model_dump_json(exclude_none=True)
    return (
        record.workspace,
        record.run_id,
        record.job_id,
        record.life_cycle_state,
        record.result_state,
        record.start_time,
        record.end_time,
        record.attempt_number,
        record.terminal,
        record.backfill,
        orjson.dumps(sorted(record.emitted)).decode(),
        pack(snapshot) if packed else snapshot,
        now,
        record.repair,
        record.repair_start,
        record.state_since,
    )


def job_row(job: JobRecord, now: float) -> tuple[Any, ...]:
    """The values of `upsert_jobs`."""
    return (
        job.workspace,
        job.job_id,
        job.name,
        orjson.dumps(job.tags, option=orjson.OPT_SORT_KEYS).decode(),
        job.last_outcome,
        job.last_outcome_run_id,
        job.last_outcome_end_time,
        now,
        job.last_outcome_repair,
        job.consecutive_failures,
        job.last_success_ms,
        job.last_start_ms,
        job.last_active_ms,
        job.expect_sig,
        job.expect_since_ms,
    )


def read_run(workspace: str, row: Row) -> RunRecord:
    """A run of `workspace` from its `RUN_COLUMNS`."""
    return RunRecord(
        workspace=workspace,
        run_id=int(row[0]),
        job_id=row[1],
        life_cycle_state=row[2],
        result_state=row[3],
        start_time=row[4],
        end_time=row[5],
        attempt_number=row[6],
        terminal=bool(row[7]),
        backfill=bool(row[8]),
        emitted=frozenset(orjson.loads(row[9])),
        snapshot=Run.model_validate_json(unpack(row[10])),
        repair=row[11],
        repair_start=row[12],
        state_since=row[13],
    )


def read_job(workspace: str, row: Row) -> JobRecord:
    """A job of `workspace` from its `JOB_COLUMNS`."""
    return JobRecord(
        workspace=workspace,
        job_id=int(row[0]),
        name=row[1],
        tags=orjson.loads(row[2]),
        last_outcome=row[3],
        last_outcome_run_id=row[4],
        last_outcome_end_time=row[5],
        last_outcome_repair=row[6],
        consecutive_failures=row[7],
        last_success_ms=row[8],
        last_start_ms=row[9],
        last_active_ms=row[10],
        expect_sig=row[11],
        expect_since_ms=row[12],
    )


def read_job_times(row: Row) -> JobTimes:
    """(workspace, job id, name, tags, latest finish, latest success)."""
    return JobTimes(
        workspace=row[0],
        job_id=int(row[1]),
        name=row[2],
        tags=orjson.loads(row[3]) if row[3] else {},
        last_finish_ms=row[4],
        last_success_ms=row[5],
    )


def incident_row(incident: Incident, now: float) -> tuple[str, int, str, float | None, float]:
    """(state, version, record, resolved at, updated at) of an incident written: its
    stored record one version on from the one it was read at."""
    state = "open" if incident.is_open else "resolved"
    resolved = None if incident.resolved_at_ms is None else incident.resolved_at_ms / 1000
    record = incident.model_copy(update={"version": incident.version + 1})
    return (state, record.version, record.model_dump_json(), resolved, now)


def target_rows(
    incident_id: str,
    keys: Iterable[DeliveryKey],
    policies: Mapping[DeliveryKey, DeliveryPolicy],
    now: float,
) -> list[tuple[str, str, str, float | None, float | None]]:
    """Where an open incident's events go: its resolve follows them there, and a reminder
    is due `repeat_every` after this event (a new event restarts the wait)."""
    rows = []
    for key in dict.fromkeys(keys):
        every = policies.get(key, NO_POLICY).repeat_every
        rows.append(
            (incident_id, key.channel, key.recipient, every, None if every is None else now + every)
        )
    return rows


def group_due(
    policy: DeliveryPolicy,
    now: float,
    *,
    last: float | None,
    waiting: float | None,
    retry: float | None,
    scheduled: float | None,
) -> float:
    """When a new member of a delivery group goes out, from what was read of its group:
    `last`, its last digest; of its pending members, `waiting` the earliest next attempt,
    `retry` the earliest of those attempted and due after the last digest, `scheduled`
    the earliest of those never attempted and due after it.

    With the members already pending, unless their digest went out since they fell due
    (it is in flight, or they are the rest beyond its limit); then, or with none pending,
    `group_interval` after the group's last digest while that is still ahead; else after
    `group_wait`, for company (Alertmanager's semantics). A digest never gains a member
    once taken (`take_group`): one re-sent after a crash is the same digest. Nor does its
    retry before the group's next regular digest: while members wait for a retry
    (attempted, due after the last digest), a new one waits for the later of that retry
    and the next regular digest (the members already waiting for it, else
    `group_interval` after the last digest), so a receiver that took the failed attempt
    (a timeout) gets the retry with the same id."""
    if last is not None and retry is not None:
        regular = last + policy.group_interval if scheduled is None else scheduled
        return max(retry, regular)
    if waiting is not None and (last is None or last < waiting):
        return waiting
    if last is not None and (waiting is not None or last + policy.group_interval > now):
        return last + policy.group_interval
    return now + policy.group_wait


def read_delivery(row: Row) -> Delivery:
    """A delivery from its `DELIVERY_COLUMNS`; ValidationError if its event is unreadable."""
    return Delivery(
        event=read_event(row[0]),
        key=DeliveryKey(row[1], row[2]),
        status=row[3],
        attempts=row[4],
        created_at=row[5],
        next_attempt_at=row[6],
        last_error=row[7],
        group_key=row[9],
    )


def read_event_deliveries(rows: Iterable[Row]) -> list[EventDeliveries]:
    """The events of `rows` (`RECENT_EVENTS_COLUMNS`: seq, payload, committed at, then a
    delivery's columns, NULL for an event without one) in their order, each with its
    deliveries; unreadable events left out."""
    found: dict[int, tuple[Event, float, list[Delivery]]] = {}
    unreadable: set[int] = set()
    for row in rows:
        seq = int(row[0])
        if seq in unreadable:
            continue
        if seq not in found:
            try:
                found[seq] = (read_event(row[1]), float(row[2]), [])
            except ValidationError:
                unreadable.add(seq)
                continue
        event, _, deliveries = found[seq]
        if row[3] is not None:
            deliveries.append(
                Delivery(
                    event=event,
                    key=DeliveryKey(row[3], row[4]),
                    status=row[5],
                    attempts=row[6],
                    created_at=row[7],
                    next_attempt_at=row[8],
                    last_error=row[9],
                    group_key=row[10],
                )
            )
    return [EventDeliveries(e, at, tuple(d)) for e, at, d in found.values()]


def read_incident(row: Row) -> Incident:
    """An incident from (record, version)."""
    return Incident.model_validate_json(row[0]).model_copy(update={"version": int(row[1])})


def read_due_reminder(row: Row) -> DueReminder:
    """A due target from (incident record, version, channel, recipient, repeat every,
    next repeat at, repeats, latest event's payload, pending, incident id)."""
    # Unreadable (None): the reminder is held, not the loop.
    found: Incident | None
    try:
        found = read_incident(row)
    except ValidationError:
        found = None
    try:
        latest = None if row[7] is None else read_event(row[7])
    except ValidationError:
        latest = None
    return DueReminder(
        incident_id=str(row[9]),
        incident=found,
        key=DeliveryKey(row[2], row[3]),
        repeat_every=float(row[4]),
        next_repeat_at=float(row[5]),
        repeats=int(row[6]),
        latest=latest,
        pending=bool(row[8]),
    )


def read_outbox_stats(statuses: Iterable[Row], kinds: Iterable[Row]) -> OutboxStats:
    """From (status, count) of the deliveries and (kind, count) of the open incidents."""
    counts = {str(r[0]): int(r[1]) for r in statuses}
    return OutboxStats(
        pending=counts.get("pending", 0),
        dead=counts.get("dead", 0),
        silenced=counts.get("silenced", 0),
        incidents_open={str(r[0]): int(r[1]) for r in kinds},
    )


def read_silences(rows: Iterable[Row]) -> list[StoredSilence]:
    """From (id, created_at, expired_at, record) rows; one that cannot be read is logged
    and left out (a silence unread holds nothing back: a page rather than a hidden one)."""
    found: list[StoredSilence] = []
    for row in rows:
        try:
            expired = None if row[2] is None else float(row[2])
            found.append(StoredSilence.from_row(str(row[0]), float(row[1]), expired, str(row[3])))
        except (ValueError, TypeError, KeyError, ValidationError) as exc:
            structlog.get_logger(__name__).error(
                "silence_unreadable", silence=str(row[0]), error=str(exc)[:300]
            )
    return found
