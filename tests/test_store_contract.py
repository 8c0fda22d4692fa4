"""The store contract: every backend (the `store` fixture: SQLite, then PostgreSQL) keeps
the same promises, test by test. Cycle commits (records, events once, the watermark and
news horizon never moving back, incidents' version checks, the lease epoch's fence), the
leases, the outbox (head of line, claims, late settlements, digests, dead letters),
reminders, pruning, job times. At the end, what only PostgreSQL is asked for: replicas
claiming, taking leases and migrating at once, a replica frozen mid-commit holding up no
takeover, one pruning at a time, a schema newer than the code refused, and a DSN's
password kept out of every message (tests/test_store_postgres.py: a server that hangs,
breaks off or is gone, and how the store is opened)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from tests import pg
from tests.notify_fixtures import make_event
from watcher.databricks.models import Run
from watcher.domain import Incident, JobRecord, RunRecord
from watcher.events import Event, EventType, RuleRef
from watcher.incidents import IncidentBook
from watcher.notify.reminders import decide
from watcher.store.base import (
    CycleCommit,
    Delivery,
    DeliveryKey,
    DeliveryPolicy,
    Lease,
    PruneResult,
    Store,
    StoreConflict,
    StoreError,
    StoreFenced,
    StoreUnavailable,
)
from watcher.store.postgres import _PRUNE_LOCK, MIGRATIONS, PostgresStore, redacted
from watcher.store.sqlite import SQLiteStore

WS = "prod"
NOW = 1_700_000_000.0
DAY = 86_400.0
OPS = DeliveryKey("ops")
MAIL = DeliveryKey("mail", "oncall@example.org")
HOOK = DeliveryKey("hook")
GROUP = "route=0\x1fworkspace=prod"

Backend = SQLiteStore | PostgresStore
"""What the `store` fixture gives: a Store, and the checks both backends have
(`event_ids`, `schema_version`)."""


def run(
    run_id: int,
    *,
    job_id: int | None = 7,
    terminal: bool = False,
    start: int = 1_000,
    result: str | None = None,
) -> RunRecord:
    life = "TERMINATED" if terminal else "RUNNING"
    snapshot = {"run_id": run_id, "job_id": job_id, "state": {"life_cycle_state": life}}
    return RunRecord(
        workspace=WS,
        run_id=run_id,
        job_id=job_id,
        life_cycle_state=life,
        result_state=result,
        start_time=start,
        end_time=start + 10 if terminal else None,
        terminal=terminal,
        emitted=frozenset({"run_started", "run_failed"}),
        snapshot=Run.model_validate(snapshot | {"start_time": start}),
        repair=3,
        state_since=start,
    )


def failed(run_id: int, *, job_id: int = 7, at: float = NOW) -> Event:
    return make_event(EventType.RUN_FAILED, job_id=job_id, run_id=run_id, at=at)


def recovered(run_id: int, *, job_id: int = 7, at: float = NOW) -> Event:
    return make_event(EventType.JOB_RECOVERED, job_id=job_id, run_id=run_id, at=at)


def commit(
    events: Sequence[Event] = (),
    keys: Sequence[DeliveryKey] = (OPS,),
    *,
    at: float = NOW,
    watermark: int | None = 5_000,
    policy: DeliveryPolicy | None = None,
    **fields: object,
) -> CycleCommit:
    """A cycle committing `events` at `at`, each to be delivered to `keys` (by
    `policy`)."""
    policies = {e.id: dict.fromkeys(keys, policy) for e in events} if policy else {}
    return CycleCommit(
        workspace=WS,
        watermark_ms=watermark,
        committed_at=at,
        events=events,
        channels={e.id: list(keys) for e in events},
        policies=policies,
        **fields,  # type: ignore[arg-type]
    )


async def send(store: Store, events: Sequence[Event], **options: object) -> list[Event]:
    return await store.commit_cycle(commit(events, **options))  # type: ignore[arg-type]


def pairs(deliveries: Sequence[Delivery]) -> list[tuple[str, DeliveryKey]]:
    """(event id, key) of each delivery, sorted (the order within one event is free)."""
    return sorted((d.event.id, d.key) for d in deliveries)


def ids(deliveries: Sequence[Delivery]) -> list[str]:
    return [d.event.id for d in deliveries]


async def write_aside(store: Store, sql: str, *args: object) -> None:
    """Run `sql` (`?` placeholders) on the store's database behind its back."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        try:
            conn.execute(sql, args)
            conn.commit()
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    assert store.schema is not None
    numbers = iter(range(1, len(args) + 1))
    await pg.execute(store.schema, re.sub(r"\?", lambda _: f"${next(numbers)}", sql), *args)


# -- cycle commits ---------------------------------------------------------------------


async def test_a_commit_round_trips_runs_jobs_events_and_the_watermark(store: Backend) -> None:
    """Everything one cycle commits reads back as it was written; the watermark and the
    news horizon never move back; a commit without a watermark leaves both alone."""
    job = JobRecord(
        workspace=WS,
        job_id=7,
        name="etl",
        tags={"team": "data", "env": "prod"},
        last_outcome="failure",
        last_outcome_run_id=2,
        last_outcome_end_time=1_010,
        consecutive_failures=2,
        last_success_ms=500,
        expect_sig="cron:0 2 * * *",
        expect_since_ms=100,
    )
    events = [failed(1), failed(2, job_id=8)]
    runs = [run(1), run(2, terminal=True, job_id=8, result="FAILED"), run(3, job_id=None)]
    inserted = await store.commit_cycle(
        commit(events, runs=runs, jobs=[job], watermark=5_000, news_since_ms=4_000)
    )
    assert inserted == events
    assert await store.get_runs(WS, [1, 2, 3, 99]) == {r.run_id: r for r in runs}
    assert await store.get_runs("other", [1]) == {}
    assert await store.get_jobs(WS, [7, 8]) == {7: job}
    assert await store.terminal_ends(WS, [1, 2, 3]) == {2: 1_010}
    assert await store.known_events([events[0].id, "unknown"]) == {events[0].id}
    assert await store.get_event(events[1].id) == events[1]
    assert await store.get_event("unknown") is None
    state = await store.workspace_state(WS)
    assert (state.watermark_ms, state.active_run_ids, state.news_since_ms) == (
        5_000,
        frozenset({1, 3}),
        4_000,
    )
    # A later cycle: run 1 ends; an older watermark and horizon never move them back.
    await store.commit_cycle(
        commit(runs=[run(1, terminal=True)], watermark=4_000, news_since_ms=3_000, at=NOW + 1)
    )
    state = await store.workspace_state(WS)
    assert (state.watermark_ms, state.active_run_ids, state.news_since_ms) == (
        5_000,
        frozenset({3}),
        4_000,
    )
    await store.commit_cycle(commit(watermark=6_000, news_since_ms=None, at=NOW + 2))
    assert (await store.workspace_state(WS)).news_since_ms == 4_000
    await store.commit_cycle(commit(watermark=7_000, news_since_ms=6_500, at=NOW + 3))
    await store.commit_cycle(commit(watermark=None, news_since_ms=9_999, at=NOW + 4))
    state = await store.workspace_state(WS)
    assert (state.watermark_ms, state.news_since_ms) == (7_000, 6_500)
    empty = await store.workspace_state("other")
    assert (empty.watermark_ms, empty.active_run_ids, empty.news_since_ms) == (
        None,
        frozenset(),
        None,
    )


async def test_an_event_already_stored_is_skipped_and_not_delivered_again(store: Backend) -> None:
    """A retried commit (or an event seen again) inserts nothing twice: the stored event
    gets no second delivery, even after its first was delivered; a copy within one
    commit counts once."""
    first, second = failed(1), failed(2, job_id=8)
    assert await send(store, [first, first]) == [first]
    await store.mark_delivered(first.id, OPS, at=NOW)
    assert await send(store, [first, second], keys=[OPS, MAIL]) == [second]
    assert await store.event_ids() == [first.id, second.id]
    due = await store.due_deliveries(now=NOW, limit=10)
    assert pairs(due) == sorted([(second.id, OPS), (second.id, MAIL)])
    assert (await store.outbox_stats()).pending == 2


async def test_incident_writes_are_checked_against_the_version_read(store: Backend) -> None:
    """An incident is inserted at version 0 and each write bumps it; a write from an older
    read, or a second open incident on the same key, is StoreConflict and the whole
    commit is left unwritten."""
    book = IncidentBook.of(WS, {})
    opening = book.record(failed(1))
    (incident,) = book.changed.values()
    await send(store, [opening], incidents=[incident])
    (stored,) = (await store.open_incidents(WS, [7])).values()
    assert stored == incident.model_copy(update={"version": 1})
    assert await store.incident_targets([incident.id]) == {incident.id: [OPS]}

    again = failed(2, at=NOW + 60)
    with pytest.raises(StoreConflict):  # the same incident opened again: a stale read
        await send(store, [again], incidents=[incident], watermark=9_000, at=NOW + 60)
    twin = incident.model_copy(update={"id": "another-id"})
    with pytest.raises(StoreConflict):  # one open incident per key
        await send(store, [again], incidents=[twin], watermark=9_000, at=NOW + 60)
    assert await store.known_events([again.id]) == set()
    assert (await store.workspace_state(WS)).watermark_ms == 5_000

    book = IncidentBook.of(WS, {stored.key: stored})
    counted = book.record(again)
    (updated,) = book.changed.values()
    await send(store, [counted], incidents=[updated], at=NOW + 60)
    with pytest.raises(StoreConflict):  # decided on version 1, which is gone
        await send(store, [failed(3)], incidents=[updated], watermark=9_000, at=NOW + 120)
    assert await store.known_events([failed(3).id]) == set()
    (current,) = await store.incidents(open_only=True)
    assert (current.version, current.count, current.last_event_id) == (2, 2, again.id)

    book = IncidentBook.of(WS, {current.key: current})
    resolving = book.record(recovered(4, at=NOW + 180))
    await send(store, [resolving], incidents=list(book.changed.values()), at=NOW + 180)
    assert await store.open_incidents(WS, [7]) == {}
    (resolved,) = await store.incidents()
    assert (resolved.is_open, resolved.version) == (False, 3)
    assert await store.incidents(open_only=True) == []


async def test_a_runless_incident_is_found_whatever_jobs_are_asked_for(store: Backend) -> None:
    """Open incidents of runs without a job come with those of any jobs asked for."""
    book = IncidentBook.of(WS, {})
    rule = RuleRef(name="job", value=60, source="default")
    breach = book.record(
        make_event(EventType.RUN_DURATION_EXCEEDED, job_id=None, run_id=5, rule=rule)
    )
    failure = book.record(failed(6, job_id=9))
    await send(store, [breach, failure], incidents=list(book.changed.values()))
    found = await store.open_incidents(WS, [7])
    assert [(i.kind, i.job_id) for i in found.values()] == [("duration", None)]
    assert {i.kind for i in (await store.open_incidents(WS, [9])).values()} == {
        "duration",
        "failure",
    }
    assert (await store.outbox_stats()).incidents_open == {"duration": 1, "failure": 1}


async def test_a_commit_under_a_lost_lease_is_fenced_and_writes_nothing(store: Backend) -> None:
    """A replica whose lease another one took (it stalled past its expiry) commits
    nothing of its cycle: no run, event, delivery, incident or watermark. The new
    owner's commit at the new epoch lands."""
    assert await store.acquire(WS, "a", now=NOW, ttl=30) == Lease(WS, "a", 1, NOW + 30)
    assert await store.acquire(WS, "b", now=NOW + 29, ttl=30) is None
    taken = await store.acquire(WS, "b", now=NOW + 30, ttl=30)
    assert taken == Lease(WS, "b", 2, NOW + 60)
    book = IncidentBook.of(WS, {})
    event = book.record(failed(1))
    stale = commit(
        [event],
        runs=[run(1)],
        incidents=list(book.changed.values()),
        watermark=9_000,
        news_since_ms=8_000,
        epoch=1,
    )
    with pytest.raises(StoreFenced):
        await store.commit_cycle(stale)
    state = await store.workspace_state(WS)
    assert (state.watermark_ms, state.active_run_ids, state.news_since_ms) == (
        None,
        frozenset(),
        None,
    )
    assert await store.event_ids() == []
    assert await store.get_runs(WS, [1]) == {}
    assert await store.incidents() == []
    assert (await store.outbox_stats()).pending == 0
    with pytest.raises(StoreFenced):  # a workspace never leased fences every epoch
        await store.commit_cycle(CycleCommit("unleased", 1, NOW, epoch=1))
    assert await store.commit_cycle(replace(stale, epoch=2)) == [event]
    assert (await store.workspace_state(WS)).watermark_ms == 9_000
    assert await store.commit_cycle(commit(watermark=9_500, epoch=None)) == []


# -- leases ----------------------------------------------------------------------------


async def test_a_lease_changes_hands_only_when_free_and_always_with_a_new_epoch(
    store: Backend,
) -> None:
    """Free (never leased, expired): taken at the next epoch. Held by another: None. Its
    own holder asking again (restarted under the same name): a new epoch at once."""
    assert await store.acquire("w1", "a", now=NOW, ttl=10) == Lease("w1", "a", 1, NOW + 10)
    assert await store.acquire("w1", "b", now=NOW + 9.9, ttl=10) is None
    assert await store.acquire("w1", "a", now=NOW + 5, ttl=10) == Lease("w1", "a", 2, NOW + 15)
    assert await store.acquire("w1", "b", now=NOW + 15, ttl=10) == Lease("w1", "b", 3, NOW + 25)
    assert await store.acquire("w2", "a", now=NOW, ttl=10) == Lease("w2", "a", 1, NOW + 10)
    assert await store.leases() == [Lease("w1", "b", 3, NOW + 25), Lease("w2", "a", 1, NOW + 10)]


async def test_a_lease_is_renewed_only_at_its_epoch_by_its_owner(store: Backend) -> None:
    """Renewal extends what the replica still holds at that epoch, expired or not (nobody
    took it), and nothing that changed hands."""
    await store.acquire("w1", "a", now=NOW, ttl=10)
    await store.acquire("w2", "a", now=NOW, ttl=10)
    await store.acquire("w3", "b", now=NOW, ttl=10)
    renewed = await store.renew("a", {"w1": 1, "w2": 7, "w3": 1}, now=NOW + 20, ttl=10)
    assert renewed == {"w1"}  # w2 at another epoch, w3 is b's
    assert await store.renew("a", {}, now=NOW, ttl=10) == set()
    await store.acquire("w2", "b", now=NOW + 20, ttl=10)  # expired: b takes it (epoch 2)
    assert await store.renew("a", {"w2": 1}, now=NOW + 21, ttl=10) == set()
    assert await store.leases() == [
        Lease("w1", "a", 1, NOW + 30),
        Lease("w2", "b", 2, NOW + 30),
        Lease("w3", "b", 1, NOW + 10),
    ]


async def test_a_released_lease_is_free_at_once_and_a_retiring_replica_frees_all(
    store: Backend,
) -> None:
    """Release at the held epoch frees the lease at once, ownerless, never to be renewed
    (a stale release does nothing); retiring releases every lease of the replica and
    forgets its heartbeat."""
    await store.acquire("w1", "a", now=NOW, ttl=60)
    await store.release("w1", "a", 7, now=NOW + 1)  # not the epoch held
    await store.release("w1", "b", 1, now=NOW + 1)  # not the owner
    assert await store.acquire("w1", "b", now=NOW + 2, ttl=60) is None
    await store.release("w1", "a", 1, now=NOW + 3)
    assert await store.leases() == [Lease("w1", "", 1, NOW + 3)]
    assert await store.renew("a", {"w1": 1}, now=NOW + 3, ttl=60) == set()
    assert await store.acquire("w1", "b", now=NOW + 3, ttl=60) == Lease("w1", "b", 2, NOW + 63)

    await store.acquire("w2", "b", now=NOW, ttl=60)
    await store.heartbeat("b", now=NOW, ttl=60)
    await store.heartbeat("c", now=NOW, ttl=60)
    await store.retire("b", now=NOW + 10)
    assert await store.leases() == [Lease("w1", "", 2, NOW + 10), Lease("w2", "", 1, NOW + 10)]
    assert await store.heartbeat("c", now=NOW + 11, ttl=60) == ["c"]
    assert await store.acquire("w2", "c", now=NOW + 10, ttl=60) == Lease("w2", "c", 2, NOW + 70)


async def test_heartbeats_list_the_replicas_alive(store: Backend) -> None:
    """Each replica is alive until its last heartbeat's ttl runs out."""
    assert await store.heartbeat("b", now=NOW, ttl=10) == ["b"]
    assert await store.heartbeat("a", now=NOW + 5, ttl=10) == ["a", "b"]
    assert await store.heartbeat("a", now=NOW + 10, ttl=10) == ["a"]  # b expired at 10
    assert await store.heartbeat("b", now=NOW + 12, ttl=10) == ["a", "b"]
    assert await store.heartbeat("c", now=NOW + 21, ttl=10) == ["b", "c"]


# -- the outbox ------------------------------------------------------------------------


async def test_the_outbox_hands_out_the_head_of_each_job_per_key(store: Backend) -> None:
    """A job's later alert to a key waits for its earlier one (delivered or dead); other
    jobs and other keys go on; `channels` and `limit` narrow what is due."""
    a1, a2, b1 = failed(1), failed(2), failed(3, job_id=8)
    await send(store, [a1, a2, b1], keys=[OPS, MAIL])
    due = await store.due_deliveries(now=NOW, limit=10)
    assert pairs(due) == sorted([(a1.id, OPS), (a1.id, MAIL), (b1.id, OPS), (b1.id, MAIL)])
    assert ids(due)[:2] == [a1.id, a1.id]  # oldest event first
    assert await store.due_deliveries(now=NOW - 1, limit=10) == []
    mail = await store.due_deliveries(now=NOW, limit=10, channels=["mail"])
    assert [(d.event.id, d.key) for d in mail] == [(a1.id, MAIL), (b1.id, MAIL)]
    assert len(await store.due_deliveries(now=NOW, limit=3)) == 3

    await store.mark_delivered(a1.id, OPS, at=NOW)
    await store.mark_failed(a1.id, MAIL, error="down", next_attempt_at=NOW + 60)
    due = await store.due_deliveries(now=NOW, limit=10)
    assert pairs(due) == sorted([(a2.id, OPS), (b1.id, OPS), (b1.id, MAIL)])
    retry, waiting = await store.due_deliveries(now=NOW + 60, limit=10, channels=["mail"])
    assert (retry.event.id, retry.attempts, retry.last_error) == (a1.id, 1, "down")
    assert (retry.next_attempt_at, waiting.event.id) == (NOW + 60, b1.id)
    await store.mark_failed(a1.id, MAIL, error="gone", next_attempt_at=None)
    mail = await store.due_deliveries(now=NOW + 60, limit=10, channels=["mail"])
    assert [(d.event.id, d.key) for d in mail] == [(a2.id, MAIL), (b1.id, MAIL)]


async def test_silenced_deliveries_are_recorded_not_sent(store: Backend) -> None:
    event = failed(1)
    await store.commit_cycle(commit([event], keys=[OPS], silenced={event.id: [MAIL, OPS]}))
    assert pairs(await store.due_deliveries(now=NOW, limit=10)) == [(event.id, OPS)]
    stats = await store.outbox_stats()
    assert (stats.pending, stats.silenced, stats.dead) == (1, 1, 0)


async def test_dead_letters_are_listed_and_requeued(store: Backend) -> None:
    """Dead deliveries are listed oldest first (or newest first, as many as asked) and
    replayed afresh: all, or those of the events named."""
    first, second = failed(1), failed(2, job_id=8)
    await send(store, [first, second])
    for event in (first, second):
        await store.mark_failed(event.id, OPS, error="HTTP 400", next_attempt_at=None)
    dead = await store.dead_letters()
    assert [(d.event.id, d.status, d.attempts, d.last_error) for d in dead] == [
        (first.id, "dead", 1, "HTTP 400"),
        (second.id, "dead", 1, "HTTP 400"),
    ]
    (latest,) = await store.dead_letters(limit=1, newest_first=True)  # the status page's
    assert latest.event.id == second.id
    assert await store.requeue_dead(now=NOW + 100, event_ids=[second.id, "unknown"]) == 1
    (again,) = await store.due_deliveries(now=NOW + 100, limit=10)
    assert (again.event.id, again.attempts, again.created_at, again.next_attempt_at) == (
        second.id,
        0,
        NOW + 100,
        NOW + 100,
    )
    assert await store.requeue_dead(now=NOW + 200) == 1
    assert await store.requeue_dead(now=NOW + 200) == 0
    assert await store.dead_letters() == []


async def test_recent_events_come_newest_first_with_every_delivery(store: Backend) -> None:
    """The latest events, newest first, each with its deliveries by key in every status
    (pending, delivered, dead, silenced) and their attempts; an event without deliveries
    is listed too, an unreadable one left out, and `limit` counts events, not deliveries."""
    first, second, quiet, broken = failed(1), failed(2, job_id=8), failed(3, job_id=9), failed(4)
    await send(store, [first], keys=[OPS, MAIL])
    await send(store, [second], keys=[HOOK], at=NOW + 10, silenced={second.id: [MAIL]})
    await send(store, [quiet], keys=[], at=NOW + 20)
    await send(store, [broken], at=NOW + 30)
    await write_aside(store, "UPDATE events SET payload = ? WHERE id = ?", "{not json", broken.id)
    await store.mark_delivered(first.id, OPS, at=NOW + 1)
    await store.mark_failed(first.id, MAIL, error="550 no such user", next_attempt_at=None)
    recent = await store.recent_events(limit=10)
    assert [(r.event.id, r.committed_at) for r in recent] == [
        (quiet.id, NOW + 20),
        (second.id, NOW + 10),
        (first.id, NOW),
    ]
    shown = [
        [(d.event.id, d.key, d.status, d.attempts, d.last_error) for d in r.deliveries]
        for r in recent
    ]
    assert shown == [
        [],
        [(second.id, HOOK, "pending", 0, None), (second.id, MAIL, "silenced", 0, None)],
        [
            (first.id, MAIL, "dead", 1, "550 no such user"),
            (first.id, OPS, "delivered", 1, None),
        ],
    ]
    assert [r.event.id for r in await store.recent_events(limit=3)] == [quiet.id, second.id]
    assert await store.recent_events(limit=0) == []


async def test_an_unreadable_event_is_dead_lettered_not_blocking(store: Backend) -> None:
    """A stored event that cannot be read is dead-lettered when it comes due (alone or in
    a digest); every other alert still goes out. Fields a newer release added are
    ignored."""
    events = [failed(1), failed(2, job_id=8), failed(3, job_id=9)]
    await send(store, events)
    await write_aside(
        store, "UPDATE events SET payload = ? WHERE id = ?", '{"id": 1}', events[0].id
    )
    newer = json.loads(events[2].model_dump_json()) | {"added_by_a_newer_release": True}
    await write_aside(
        store, "UPDATE events SET payload = ? WHERE id = ?", json.dumps(newer), events[2].id
    )
    assert ids(await store.due_deliveries(now=NOW, limit=10)) == [events[1].id, events[2].id]
    assert (await store.outbox_stats()).dead == 1
    assert await store.dead_letters() == []  # unreadable: nothing to show or replay

    grouped = [failed(4, job_id=10), failed(5, job_id=11)]
    policy = DeliveryPolicy(group_key=GROUP)
    await send(store, grouped, keys=[HOOK], policy=policy, at=NOW + 1)
    await write_aside(
        store, "UPDATE events SET payload = ? WHERE id = ?", "{not json", grouped[0].id
    )
    members = await store.take_group(HOOK, GROUP, now=NOW + 1, limit=10)
    assert ids(members) == [grouped[1].id]
    assert (await store.outbox_stats()).dead == 2


# -- claims ----------------------------------------------------------------------------


async def test_a_claim_holds_a_delivery_until_it_expires(store: Backend) -> None:
    """One claim at a time: while it holds, no other claim succeeds (nor the same
    owner's again) and the delivery is not due; once expired, it is due and claimable."""
    event = failed(1)
    await send(store, [event])
    assert await store.claim(event.id, OPS, now=NOW, until=NOW + 30, owner="a") is True
    assert await store.claim(event.id, OPS, now=NOW + 10, until=NOW + 40, owner="b") is False
    assert await store.claim(event.id, OPS, now=NOW + 10, until=NOW + 40, owner="a") is False
    assert await store.due_deliveries(now=NOW + 29.9, limit=10) == []
    assert ids(await store.due_deliveries(now=NOW + 30, limit=10)) == [event.id]
    assert await store.claim(event.id, OPS, now=NOW + 30, until=NOW + 60, owner="b") is True
    assert await store.claim("unknown", OPS, now=NOW, until=NOW + 30, owner="a") is False
    assert await store.claim(event.id, MAIL, now=NOW, until=NOW + 30, owner="a") is False
    # Settled, the claim goes with it: a failed attempt is due again at its next attempt.
    await store.mark_failed(event.id, OPS, error="timeout", next_attempt_at=NOW + 31)
    (retry,) = await store.due_deliveries(now=NOW + 31, limit=10)
    assert (retry.event.id, retry.attempts) == (event.id, 1)
    assert await store.claim(event.id, OPS, now=NOW + 31, until=NOW + 60, owner="c") is True
    await store.mark_delivered(event.id, OPS, at=NOW + 32)
    assert await store.claim(event.id, OPS, now=NOW + 90, until=NOW + 99, owner="c") is False


async def test_a_claimed_head_holds_back_its_job(store: Backend) -> None:
    """A job's next alert to a key is not due while its head is claimed (being sent
    elsewhere): order is kept across replicas. Other jobs are not held."""
    head, after, other = failed(1), failed(2), failed(3, job_id=8)
    await send(store, [head, after, other])
    assert await store.claim(head.id, OPS, now=NOW, until=NOW + 30, owner="a")
    assert ids(await store.due_deliveries(now=NOW, limit=10)) == [other.id]
    await store.mark_delivered(head.id, OPS, at=NOW + 1)
    assert ids(await store.due_deliveries(now=NOW + 1, limit=10)) == [after.id, other.id]


async def test_a_replica_releases_its_claims_at_once(store: Backend) -> None:
    """Its attempts cancelled (or a former life's), a replica drops its claims: those
    deliveries are due again at once; other owners' claims hold."""
    mine, also_mine, theirs = failed(1), failed(2, job_id=8), failed(3, job_id=9)
    await send(store, [mine, also_mine, theirs])
    for event, owner in ((mine, "a"), (also_mine, "a"), (theirs, "b")):
        assert await store.claim(event.id, OPS, now=NOW, until=NOW + 30, owner=owner)
    assert await store.due_deliveries(now=NOW, limit=10) == []
    assert await store.release_claims("a") == 2
    assert await store.release_claims("a") == 0
    assert ids(await store.due_deliveries(now=NOW, limit=10)) == [mine.id, also_mine.id]
    assert await store.claim(mine.id, OPS, now=NOW, until=NOW + 30, owner="c")


async def test_settling_touches_only_a_pending_delivery(store: Backend) -> None:
    """A replica whose claim expired while it sent settles late: a delivery another
    replica delivered (or dead-lettered) meanwhile stays as that one left it."""
    first, second = failed(1), failed(2, job_id=8)
    await send(store, [first, second])
    assert await store.claim(first.id, OPS, now=NOW, until=NOW + 30, owner="a")
    assert await store.claim(first.id, OPS, now=NOW + 30, until=NOW + 60, owner="b")
    await store.mark_delivered(first.id, OPS, at=NOW + 31)  # b
    await store.mark_failed(first.id, OPS, error="late", next_attempt_at=None)  # a, late
    await store.mark_failed(first.id, OPS, error="late", next_attempt_at=NOW + 99)
    await store.mark_failed(second.id, OPS, error="HTTP 400", next_attempt_at=None)
    await store.mark_delivered(second.id, OPS, at=NOW + 32)  # too late: it is dead
    stats = await store.outbox_stats()
    assert (stats.pending, stats.dead) == (0, 1)
    (dead,) = await store.dead_letters()
    assert (dead.event.id, dead.attempts, dead.last_error) == (second.id, 1, "HTTP 400")
    await store.mark_group_failed(OPS, [first.id], error="late", next_attempt_at=None)
    await store.mark_group_delivered(OPS, GROUP, [second.id], at=NOW + 33)
    assert ids(await store.dead_letters()) == [second.id]
    assert (await store.outbox_stats()).pending == 0


async def test_a_late_failure_leaves_another_replicas_claim_alone(store: Backend) -> None:
    """A replica whose claim expired and was taken by another one settles its failure
    late, with its name: it neither resets nor dead-letters what the other one is now
    sending (alone or in a digest). The claimant's own failure counts, as does one of a
    claim that expired untaken; without an owner, a failure counts whoever claims."""
    first, second = failed(1), failed(2, job_id=8)
    await send(store, [first, second])
    assert await store.claim(first.id, OPS, now=NOW, until=NOW + 30, owner="a")
    assert await store.claim(first.id, OPS, now=NOW + 30, until=NOW + 60, owner="b")
    await store.mark_failed(first.id, OPS, error="late", next_attempt_at=None, owner="a")
    await store.mark_failed(first.id, OPS, error="late", next_attempt_at=NOW + 31, owner="a")
    assert (await store.outbox_stats()).dead == 0
    assert ids(await store.due_deliveries(now=NOW + 59, limit=10)) == [second.id]  # b's
    await store.mark_failed(first.id, OPS, error="HTTP 500", next_attempt_at=NOW + 90, owner="b")
    (retry,) = await store.due_deliveries(now=NOW + 90, limit=1)
    assert (retry.event.id, retry.attempts, retry.last_error) == (first.id, 1, "HTTP 500")
    # Its own claim, expired and taken by nobody: the failure counts.
    assert await store.claim(second.id, OPS, now=NOW, until=NOW + 30, owner="c")
    await store.mark_failed(second.id, OPS, error="HTTP 400", next_attempt_at=None, owner="c")
    assert ids(await store.dead_letters()) == [second.id]
    # No owner: as before, whoever claims it.
    assert await store.claim(first.id, OPS, now=NOW + 90, until=NOW + 120, owner="b")
    await store.mark_failed(first.id, OPS, error="gone", next_attempt_at=None)
    assert ids(await store.dead_letters()) == [first.id, second.id]

    members = [failed(i, job_id=i) for i in (10, 11)]
    await send(store, members, keys=[HOOK], policy=DeliveryPolicy(group_key=GROUP))
    taken = await store.take_group(HOOK, GROUP, now=NOW, limit=10, claim_until=NOW + 30, owner="a")
    member_ids = [m.id for m in members]
    assert ids(taken) == member_ids
    # a's claims expire; b takes the first member, the second stays a's (expired, untaken).
    assert await store.claim(members[0].id, HOOK, now=NOW + 30, until=NOW + 60, owner="b")
    await store.mark_group_failed(HOOK, member_ids, error="late", next_attempt_at=None, owner="a")
    assert ids(await store.dead_letters()) == [first.id, second.id, members[1].id]
    await store.mark_group_failed(
        HOOK, [members[0].id], error="HTTP 400", next_attempt_at=None, owner="b"
    )
    dead = await store.dead_letters()
    assert [(d.event.id, d.last_error) for d in dead[2:]] == [
        (members[0].id, "HTTP 400"),
        (members[1].id, "late"),
    ]


async def test_a_digest_skips_and_claims_members(store: Backend) -> None:
    """A digest takes its group's members that no claim holds, and claims them for its
    owner: a second dispatcher finds none left; a member claimed elsewhere goes in a
    later digest once that claim has expired."""
    members = [failed(i, job_id=i) for i in (1, 2, 3)]
    await send(store, members, keys=[HOOK], policy=DeliveryPolicy(group_key=GROUP))
    assert await store.claim(members[1].id, HOOK, now=NOW, until=NOW + 30, owner="b")
    taken = await store.take_group(HOOK, GROUP, now=NOW, limit=10, claim_until=NOW + 30, owner="a")
    assert ids(taken) == [members[0].id, members[2].id]
    assert await store.take_group(HOOK, GROUP, now=NOW, limit=10, claim_until=NOW + 30) == []
    assert await store.take_group(HOOK, GROUP, now=NOW + 1, limit=10) == []
    assert await store.due_deliveries(now=NOW + 1, limit=10) == []
    await store.mark_group_delivered(HOOK, GROUP, ids(taken), at=NOW + 2)
    later = await store.take_group(HOOK, GROUP, now=NOW + 30, limit=10, owner="c")
    assert ids(later) == [members[1].id]
    # Taken without a claim, it stays claimable and due.
    assert ids(await store.due_deliveries(now=NOW + 30, limit=10)) == [members[1].id]


# -- digests ---------------------------------------------------------------------------


async def test_a_group_waits_collects_and_retries_as_one_digest(store: Backend) -> None:
    """group_wait for company; a digest carries the members due when taken; a member
    arriving meanwhile waits group_interval from that digest; a retried digest gains no
    member before the group's next regular digest; a dead digest dead-letters all."""
    policy = DeliveryPolicy(group_key=GROUP, group_wait=30, group_interval=300)
    e1, e2, e3, e4 = (failed(i, job_id=i) for i in (1, 2, 3, 4))
    await send(store, [e1], keys=[HOOK], policy=policy, at=NOW)
    await send(store, [e2], keys=[HOOK], policy=policy, at=NOW + 10)
    assert await store.due_deliveries(now=NOW + 29, limit=10) == []
    assert ids(await store.due_deliveries(now=NOW + 30, limit=10)) == [e1.id]  # the group's head
    assert await store.take_group(HOOK, GROUP, now=NOW + 29, limit=10) == []
    assert ids(await store.take_group(HOOK, GROUP, now=NOW + 30, limit=1)) == [e1.id]
    assert ids(await store.take_group(HOOK, GROUP, now=NOW + 30, limit=10)) == [e1.id, e2.id]
    await send(store, [e3], keys=[HOOK], policy=policy, at=NOW + 40)  # its digest in flight
    await store.mark_group_delivered(HOOK, GROUP, [e1.id, e2.id], at=NOW + 31)
    assert await store.take_group(HOOK, GROUP, now=NOW + 329, limit=10) == []
    assert ids(await store.take_group(HOOK, GROUP, now=NOW + 330, limit=10)) == [e3.id]
    await store.mark_group_failed(HOOK, [e3.id], error="HTTP 500", next_attempt_at=NOW + 400)
    await send(store, [e4], keys=[HOOK], policy=policy, at=NOW + 350)
    (retry,) = await store.take_group(HOOK, GROUP, now=NOW + 400, limit=10)
    assert (retry.event.id, retry.attempts, retry.last_error, retry.group_key) == (
        e3.id,
        1,
        "HTTP 500",
        GROUP,
    )
    await store.mark_group_failed(HOOK, [e3.id], error="HTTP 400", next_attempt_at=None)
    assert await store.take_group(HOOK, GROUP, now=NOW + 629, limit=10) == []
    assert ids(await store.take_group(HOOK, GROUP, now=NOW + 630, limit=10)) == [e4.id]
    assert ids(await store.dead_letters()) == [e3.id]


# -- reminders -------------------------------------------------------------------------


async def open_failure(store: Store, *, job: int = 7, every: float | None = 600.0) -> Incident:
    """A failure incident of `job` committed at NOW, its event delivered to MAIL."""
    book = IncidentBook.of(WS, {})
    event = book.record(failed(job * 100, job_id=job))
    policy = DeliveryPolicy(repeat_every=every)
    await send(store, [event], keys=[MAIL], policy=policy, incidents=list(book.changed.values()))
    await store.mark_delivered(event.id, MAIL, at=NOW)
    (incident,) = (await store.open_incidents(WS, [job])).values()
    return incident


async def test_reminders_fall_due_and_commit_once(store: Backend) -> None:
    """A target is due `repeat_every` after its incident's event, with the incident and
    its latest event; a decided reminder is committed once (its delivery queued), a
    replay or a stale read is refused, and a resolved incident is reminded of no more."""
    incident = await open_failure(store)
    await open_failure(store, job=8, every=None)
    assert await store.next_reminder_at() == NOW + 600
    assert await store.due_reminders(now=NOW + 599, limit=10) == []
    (target,) = await store.due_reminders(now=NOW + 600, limit=10)
    latest = await store.get_event(incident.last_event_id)
    assert (target.incident_id, target.incident, target.latest, target.key) == (
        incident.id,
        incident,
        latest,
        MAIL,
    )
    assert (target.repeat_every, target.next_repeat_at, target.repeats, target.pending) == (
        600.0,
        NOW + 600,
        0,
        False,
    )
    decision = decide(
        target, now=NOW + 600, delivers=lambda key, event: True, silenced=lambda event: False
    )
    reminder = decision.commit.event
    assert reminder is not None
    assert await store.commit_reminder(decision.commit) is True
    assert await store.commit_reminder(decision.commit) is False
    (queued,) = await store.due_deliveries(now=NOW + 600, limit=10)
    assert (queued.event, queued.key) == (reminder, MAIL)
    (after,) = await store.due_reminders(now=NOW + 1200, limit=10)
    assert (after.next_repeat_at, after.repeats, after.pending) == (NOW + 1200, 1, True)

    book = IncidentBook.of(WS, {incident.key: incident})
    resolving = book.record(recovered(9, at=NOW + 700))
    await send(store, [resolving], keys=[], incidents=list(book.changed.values()), at=NOW + 700)
    assert await store.due_reminders(now=NOW + 1e6, limit=10) == []
    assert await store.next_reminder_at() is None
    later = decide(
        after, now=NOW + 1200, delivers=lambda key, event: True, silenced=lambda event: False
    )
    assert await store.commit_reminder(later.commit) is False


async def test_a_reminder_of_an_unreadable_incident_is_handed_out_without_it(
    store: Backend,
) -> None:
    """An open incident whose record cannot be read: its due target is still handed out,
    the incident None (the loop holds it and moves it on), its latest event with it."""
    incident = await open_failure(store)
    broken = json.loads(incident.model_dump_json()) | {"kind": 42}
    await write_aside(
        store, "UPDATE incidents SET record = ? WHERE id = ?", json.dumps(broken), incident.id
    )
    (target,) = await store.due_reminders(now=NOW + 600, limit=10)
    assert (target.incident_id, target.incident, target.key) == (incident.id, None, MAIL)
    assert target.latest == await store.get_event(incident.last_event_id)


# -- housekeeping ----------------------------------------------------------------------


async def test_pruning_keeps_what_is_still_needed(store: Backend) -> None:
    """Old finished runs and settled events go; active runs, undelivered and dead
    events stay, and so do an open incident's latest event and every incident's opening
    event while the incident is kept. Old resolved incidents go."""
    old_start = int(NOW * 1000) - int(90 * DAY * 1000)
    recent = int(NOW * 1000)
    runs = [
        run(1, terminal=True, start=old_start),
        run(2, start=old_start),
        run(3, terminal=True, start=recent),
    ]
    delivered, pending, dead, silenced = (failed(i, job_id=i) for i in (1, 2, 3, 4))
    await store.commit_cycle(commit([delivered, pending, dead], runs=runs))
    await store.commit_cycle(commit([silenced], keys=[], silenced={silenced.id: [OPS]}))
    await store.mark_delivered(delivered.id, OPS, at=NOW)
    await store.mark_failed(dead.id, OPS, error="HTTP 400", next_attempt_at=None)

    book = IncidentBook.of(WS, {})
    opened = book.record(failed(10, job_id=10))
    updated = book.record(failed(11, job_id=10))
    gone_open = book.record(failed(20, job_id=20))
    gone_end = book.record(recovered(21, job_id=20))
    incidents = list(book.changed.values())
    story = [opened, updated, gone_open, gone_end]
    await store.commit_cycle(commit(story, incidents=incidents))
    for event in story:
        await store.mark_delivered(event.id, OPS, at=NOW)

    later = NOW + 30 * DAY
    result = await store.prune(now=later, run_retention_days=60, event_retention_days=14)
    assert result == PruneResult(runs=1, events=3)
    assert set(await store.get_runs(WS, [1, 2, 3])) == {2, 3}
    assert await store.event_ids() == [pending.id, dead.id, opened.id, updated.id, gone_open.id]
    assert [i.key for i in await store.incidents()] == [incidents[0].key]
    # The resolved incident gone, its opening event goes next time.
    second = await store.prune(now=later, run_retention_days=60, event_retention_days=14)
    assert second == PruneResult(runs=0, events=1)
    assert await store.event_ids() == [pending.id, dead.id, opened.id, updated.id]
    stats = await store.outbox_stats()
    assert (stats.pending, stats.dead, stats.silenced) == (1, 1, 0)


async def test_job_times_are_the_latest_finish_and_success(store: Backend) -> None:
    """Per job, the latest finish and the latest success of the stored finished runs, with
    the job's name and tags (none for a job never committed)."""
    job = JobRecord(workspace=WS, job_id=7, name="etl", tags={"team": "data"})
    success = run(1, terminal=True, start=1_000, result="SUCCESS")
    failure = run(2, terminal=True, start=5_000, result="FAILED")
    partial = run(3, terminal=True, start=2_000, job_id=8, result="SUCCESS_WITH_FAILURES")
    running = run(4, start=9_000)
    orphan = run(5, terminal=True, start=3_000, job_id=None, result="SUCCESS")
    await store.commit_cycle(commit(runs=[success, failure, partial, running, orphan], jobs=[job]))
    times = sorted(await store.job_times(), key=lambda t: t.job_id)
    assert [(t.workspace, t.job_id, t.name, t.tags) for t in times] == [
        (WS, 7, "etl", {"team": "data"}),
        (WS, 8, None, {}),
    ]
    assert [(t.last_finish_ms, t.last_success_ms) for t in times] == [
        (5_010, 1_010),
        (2_010, 2_010),
    ]


async def test_job_times_of_one_workspace(store: Backend) -> None:
    """`workspace` narrows the job times to that workspace's jobs (a replica restoring
    the metrics of the workspace it takes over); None gives every workspace's."""
    mine = run(1, terminal=True, start=1_000, result="SUCCESS")
    theirs = run(2, terminal=True, start=2_000, result="FAILED").model_copy(
        update={"workspace": "other"}
    )
    job = JobRecord(workspace="other", job_id=7, name="their etl", tags={})
    await store.commit_cycle(commit(runs=[mine, theirs], jobs=[job]))
    every = sorted(await store.job_times(), key=lambda t: t.workspace)
    assert [(t.workspace, t.job_id, t.name, t.last_finish_ms) for t in every] == [
        ("other", 7, "their etl", 2_010),
        (WS, 7, None, 1_010),
    ]
    (only,) = await store.job_times(workspace="other")
    assert (only.workspace, only.name, only.last_finish_ms, only.last_success_ms) == (
        "other",
        "their etl",
        2_010,
        None,
    )
    assert [t.workspace for t in await store.job_times(WS)] == [WS]
    assert await store.job_times(workspace="nowhere") == []


async def test_the_store_is_ready(store: Backend) -> None:
    await store.ping()


# -- PostgreSQL only -----------------------------------------------------------------------


async def test_replicas_claiming_at_once_never_both_win() -> None:
    """Two stores (two pools, as two replicas) claim the same 200 deliveries at once:
    each delivery is won exactly once, and nobody waits on a lock another holds."""
    events = [failed(i, job_id=i) for i in range(200)]
    async with pg.pg_store() as first:
        assert first.schema is not None
        second = await pg.open_store(first.schema)
        try:
            await send(first, events)

            async def claim(store: PostgresStore, owner: str, event: Event) -> tuple[str, str]:
                won = await store.claim(event.id, OPS, now=NOW, until=NOW + 30, owner=owner)
                return (event.id, owner) if won else ("", "")

            results = await asyncio.gather(
                *(
                    claim(store, owner, event)
                    for event in events
                    for store, owner in ((first, "a"), (second, "b"))
                )
            )
            winners = [r for r in results if r[0]]
            assert sorted(e for e, _ in winners) == sorted(e.id for e in events)
            assert await first.due_deliveries(now=NOW + 29, limit=500) == []

            grouped = [failed(1000 + i, job_id=1000 + i) for i in range(60)]
            await send(first, grouped, keys=[HOOK], policy=DeliveryPolicy(group_key=GROUP))
            digests = await asyncio.gather(
                *(
                    store.take_group(
                        HOOK, GROUP, now=NOW, limit=7, claim_until=NOW + 30, owner=owner
                    )
                    for _ in range(6)
                    for store, owner in ((first, "a"), (second, "b"))
                )
            )
            taken = [event_id for digest in digests for event_id in ids(digest)]
            assert len(taken) == len(set(taken))  # no member in two digests
            assert set(taken) <= {e.id for e in grouped}
        finally:
            await second.close()


async def test_replicas_acquiring_a_new_lease_at_once_get_one_owner() -> None:
    async with pg.pg_store() as first:
        assert first.schema is not None
        second = await pg.open_store(first.schema)
        try:
            leases = await asyncio.gather(
                *(
                    store.acquire(f"w{n}", owner, now=NOW, ttl=30)
                    for n in range(20)
                    for store, owner in ((first, "a"), (second, "b"))
                )
            )
            held = [lease for lease in leases if lease is not None]
            assert sorted(lease.workspace for lease in held) == sorted(f"w{n}" for n in range(20))
            assert {lease.epoch for lease in held} == {1}
            assert await first.leases() == sorted(held, key=lambda lease: lease.workspace)
        finally:
            await second.close()


async def test_a_replica_stalled_mid_commit_holds_up_no_takeover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica frozen in the middle of a cycle commit (holding its lease row): the
    server aborts its transaction after the stall timeout, so the replica taking the
    workspace over waits that long, not until the frozen one wakes. Nothing of the
    frozen commit is written."""
    async with pg.pg_schema() as schema:
        frozen = await PostgresStore.open(pg.DSN, schema=schema, stall_timeout=0.3)
        other = await pg.open_store(schema)
        try:
            assert await frozen.acquire(WS, "a", now=NOW, ttl=10)
            write_incidents = frozen._write_incidents

            async def stalled(*args: Any) -> None:
                await asyncio.sleep(1.5)  # SIGSTOP, as the server sees it
                await write_incidents(*args)

            monkeypatch.setattr(frozen, "_write_incidents", stalled)
            cycle = asyncio.create_task(
                frozen.commit_cycle(commit([failed(1)], runs=[run(1)], epoch=1))
            )
            await asyncio.sleep(0.1)  # it holds the lease row now
            started = time.monotonic()
            taken = await other.acquire(WS, "b", now=NOW + 10, ttl=10)
            assert taken == Lease(WS, "b", 2, NOW + 20)
            assert time.monotonic() - started < 1.2
            with pytest.raises(StoreUnavailable):  # a StoreError, never the driver's own
                await cycle
            assert await other.event_ids() == []
            assert await other.get_runs(WS, [1]) == {}
            monkeypatch.undo()
            with pytest.raises(StoreFenced):
                await frozen.commit_cycle(commit([failed(1)], epoch=1))
        finally:
            await frozen.close()
            await other.close()


async def test_replicas_starting_at_once_migrate_once() -> None:
    """Two replicas opening a fresh schema together: both start, the schema is migrated
    once and is at the latest version."""
    async with pg.pg_schema() as schema:
        stores = await asyncio.gather(pg.open_store(schema), pg.open_store(schema))
        try:
            for store in stores:
                assert await store.schema_version() == len(MIGRATIONS)
                await store.ping()
            applied = await pg.fetch(schema, "SELECT version FROM schema_migrations ORDER BY 1")
            assert [r[0] for r in applied] == list(range(1, len(MIGRATIONS) + 1))
            await stores[0].commit_cycle(commit([failed(1)]))
            assert await stores[1].event_ids() == [failed(1).id]
        finally:
            for store in stores:
                await store.close()
        again = await pg.open_store(schema)  # reopening migrates nothing
        try:
            assert await again.event_ids() == [failed(1).id]
        finally:
            await again.close()


async def test_a_schema_newer_than_the_watcher_is_refused() -> None:
    """A database a newer watcher migrated: this one refuses to start on it, and a
    running one stops being ready."""
    async with pg.pg_store() as store:
        assert store.schema is not None
        await pg.execute(
            store.schema, "INSERT INTO schema_migrations (version) VALUES ($1)", len(MIGRATIONS) + 1
        )
        with pytest.raises(StoreError, match="newer than this watcher"):
            await PostgresStore.open(pg.DSN, schema=store.schema)
        with pytest.raises(StoreError, match="migrated to schema version"):
            await store.ping()


async def test_one_replica_prunes_at_a_time() -> None:
    """While another replica prunes (holding the prune lock), a prune does nothing;
    afterwards it prunes."""
    async with pg.pg_store() as store:
        assert store.schema is not None
        event = failed(1)
        await send(store, [event])
        await store.mark_delivered(event.id, OPS, at=NOW)
        conn = await asyncpg.connect(pg.DSN, server_settings={"search_path": store.schema})
        try:
            async with conn.transaction():
                assert await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, hashtext(current_schema()))",
                    _PRUNE_LOCK,
                )
                pruned = await store.prune(
                    now=NOW + 30 * DAY, run_retention_days=60, event_retention_days=14
                )
                assert pruned == PruneResult(runs=0, events=0)
        finally:
            await conn.close()
        pruned = await store.prune(
            now=NOW + 30 * DAY, run_retention_days=60, event_retention_days=14
        )
        assert pruned == PruneResult(runs=0, events=1)


async def test_a_dsn_password_never_shows_in_an_error() -> None:
    """Nothing listens there: the StoreError names the server and database, never the
    password."""
    dsn = "postgresql://u:s3cr3t-not-real@127.0.0.1:1/x"
    with pytest.raises(StoreError) as raised:
        await PostgresStore.open(dsn, connect_timeout=2.0)
    text = str(raised.value)
    assert "s3cr3t-not-real" not in text
    assert "postgresql://u:***@127.0.0.1:1/x" in text
    quoted = r"host=127.0.0.1 port=1 user=u password='my s3cr3t \'not real\'' dbname=x"
    with pytest.raises(StoreError) as raised:
        await PostgresStore.open(quoted, connect_timeout=2.0)
    text = str(raised.value)
    assert "s3cr3t" not in text
    assert "not real" not in text
    assert "host=127.0.0.1 port=1 user=u password=*** dbname=x" in text


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:s3cr3t@db:5432/w", "postgresql://u:***@db:5432/w"),
        ("postgresql://u@db/w", "postgresql://u@db/w"),
        ("postgresql://db/w", "postgresql://db/w"),
        ("postgres://u:p@ss/w@rd@db/w?sslmode=require", "postgres://u:***@db/w?sslmode=require"),
        (
            "postgresql://u@db/w?password=s3cr3t&sslmode=require",
            "postgresql://u@db/w?password=***&sslmode=require",
        ),
        ("host=db password=s3cr3t dbname=w", "host=db password=*** dbname=w"),
        ("host=h password='my secret' dbname=x", "host=h password=*** dbname=x"),
        ('host=h password="my secret" dbname=x', "host=h password=*** dbname=x"),
        (r"host=h password='it\'s a \\ secret' dbname=x", "host=h password=*** dbname=x"),
        ("host=h PASSWORD = 'a b' user=u", "host=h PASSWORD = *** user=u"),
        ("host=h password='never closed dbname=x", "host=h password=***"),
    ],
    ids=[
        "user info",
        "no password",
        "no user",
        "unencoded",
        "parameter",
        "keywords",
        "single-quoted",
        "double-quoted",
        "escaped quotes",
        "spaced",
        "unterminated",
    ],
)
def test_redacted_hides_the_password(dsn: str, shown: str) -> None:
    assert redacted(dsn) == shown


# -- stored documents --------------------------------------------------------------------


async def test_records_and_events_read_back_equal_with_their_defaults_and_values(
    store: Backend,
) -> None:
    """A run record and an event read back equal to what was written, however rich the
    snapshot (tasks, repair history, the newer status object, raw parameters, text
    beyond ASCII) and whatever holds a default value (0, False, an empty list, an empty
    state); a record and an event committed in one cycle with many others come back
    each as its own."""
    snapshot = Run.model_validate(
        {
            "run_id": 5,
            "job_id": 7,
            "attempt_number": 0,
            "state": {"life_cycle_state": "RUNNING", "user_cancelled_or_timedout": False},
            "status": {"state": "RUNNING", "queue_details": {"code": "X", "message": "é\u2603"}},
            "start_time": 1_000,
            "end_time": 0,
            "setup_duration": 0,
            "overriding_parameters": {"notebook_params": {"k": "v"}, "n": [1, None]},
            "tasks": [{"task_key": "a", "state": {}, "depends_on": []}],
            "repair_history": [{"type": "ORIGINAL", "task_run_ids": []}],
        }
    )
    rich = run(5).model_copy(update={"snapshot": snapshot, "emitted": frozenset()})
    plain = [run(i) for i in range(100, 150)]
    event = failed(5).model_copy(update={"run": snapshot, "observed_seconds": 0.0})
    others = [failed(i) for i in range(100, 150)]
    await store.commit_cycle(commit([event, *others], runs=[rich, *plain]))
    stored = await store.get_runs(WS, [5, *range(100, 150)])
    assert stored == {r.run_id: r for r in [rich, *plain]}
    assert stored[5].snapshot.end_time == 0
    assert await store.get_event(event.id) == event
    assert [d.event for d in await store.due_deliveries(now=NOW, limit=1)] == [event]
