"""Digests: deliveries a route groups go out together, over the real SQLite store and a
real webhook receiver, in simulated time: group_wait, group_interval, retries of a whole
digest, a group of one, and ungrouped deliveries beside them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from tests import pg
from tests.notify_fixtures import Receiver, make_event
from tests.test_notify_dispatcher import Outcomes, dispatcher, ids, webhook
from watcher.clock import ManualClock
from watcher.events import Event
from watcher.incidents import derived_id
from watcher.notify.dispatcher import Dispatcher
from watcher.store.base import CycleCommit, DeliveryKey, DeliveryPolicy, Store
from watcher.store.sqlite import SQLiteStore

GROUP = "route=0\x1fworkspace=prod"
"""The key a route `group_by: [workspace]` gives events of workspace `prod`."""
WAIT = 30.0
INTERVAL = 300.0
HOOK = DeliveryKey("hook")


async def commit(
    store: SQLiteStore, clock: ManualClock, events: Sequence[Event], *, grouped: bool = True
) -> None:
    """Commit `events` now, each with a delivery to `hook`, grouped by workspace or not."""
    policy = DeliveryPolicy(group_key=GROUP, group_wait=WAIT, group_interval=INTERVAL)
    await store.commit_cycle(
        CycleCommit(
            workspace="prod",
            watermark_ms=int(clock.time() * 1000),
            committed_at=clock.time(),
            events=events,
            channels={e.id: [HOOK] for e in events},
            policies={e.id: {HOOK: policy} for e in events} if grouped else {},
        )
    )


def messages(receiver: Receiver) -> list[tuple[str, list[str]]]:
    """(webhook-id, event ids) of each request: a digest's members, or the one event."""
    found = []
    for request in receiver.requests:
        body = request.json()
        members = [e["id"] for e in body["events"]] if body["type"] == "digest" else [body["id"]]
        found.append((request.headers["webhook-id"], members))
    return found


async def outbox(store: Store) -> list[tuple[int, str, float]]:
    """(attempts, last error, next attempt) of the pending deliveries, read aside."""
    sql = (
        "SELECT attempts, last_error, next_attempt_at FROM deliveries "
        "WHERE status = 'pending' ORDER BY event_id"
    )
    rows = await pg.read_aside(store, sql)
    return [(int(a), str(e), float(n)) for a, e, n in rows]


def digest_id(events: Sequence[Event]) -> str:
    return derived_id("digest", *sorted(e.id for e in events))


async def send_due(d: Dispatcher) -> None:
    """One dispatch pass at the clock's time, waiting for what it started."""
    await d.dispatch_due()
    await d.settle()


async def test_group_wait_collects_every_member_into_one_digest(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """The first member waits group_wait; members of other jobs arriving meanwhile join
    it; at group_wait one digest carries them all, oldest first, its id derived from the
    member ids, its group the route's values; one attempt is observed."""
    first = make_event(job_id=1, run_id=1)
    later = [make_event(job_id=j, run_id=10 + j) for j in (2, 3, 4)]
    outcomes = Outcomes()
    d = dispatcher(store, clock, [webhook(receiver, clock)], on_result=outcomes)
    start = clock.time()
    await commit(store, clock, [first])
    await send_due(d)
    clock.advance(10)
    await commit(store, clock, later)
    clock.advance(WAIT - 10 - 0.1)
    await send_due(d)
    assert receiver.requests == []
    clock.advance(0.1)
    await send_due(d)
    members = [first, *later]
    assert messages(receiver) == [(digest_id(members), [e.id for e in members])]
    body = receiver.requests[0].json()
    assert (body["group"], body["count"]) == ({"workspace": "prod"}, 4)
    assert receiver.requests[0].at == start + WAIT
    assert outcomes.seen == [("hook", "sent")]
    assert (await store.outbox_stats()).pending == 0


async def test_a_later_member_waits_for_group_interval(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """Members arriving after a digest wait group_interval from it and go together in
    the next digest; the first digest's members are not sent again."""
    a, b = make_event(job_id=1, run_id=1), make_event(job_id=2, run_id=2)
    c, e = make_event(job_id=1, run_id=3), make_event(job_id=3, run_id=4)
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await commit(store, clock, [a, b])
    clock.advance(WAIT)
    await send_due(d)
    sent_at = clock.time()
    clock.advance(5)
    await commit(store, clock, [c])
    clock.advance(100)
    await commit(store, clock, [e])
    clock.advance(INTERVAL - 105 - 0.1)
    await send_due(d)
    assert len(receiver.requests) == 1
    clock.advance(0.1)
    await send_due(d)
    assert messages(receiver) == [
        (digest_id([a, b]), [a.id, b.id]),
        (digest_id([c, e]), [c.id, e.id]),
    ]
    assert receiver.requests[1].at == sent_at + INTERVAL


async def test_a_member_arriving_while_its_digest_is_in_flight_goes_in_the_next(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """While a group's digest is in flight the group is not started again, and a member
    arriving then is not added to it (a digest re-sent after a crash must be the same
    one): it waits group_interval."""
    receiver.hold = asyncio.Event()
    a, b, late = (make_event(job_id=j, run_id=j) for j in (1, 2, 3))
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await commit(store, clock, [a, b])
    clock.advance(WAIT)
    await d.dispatch_due()
    async with asyncio.timeout(10):
        await receiver.wait_for(lambda requests: len(requests) == 1)
    await commit(store, clock, [late])
    assert await d.dispatch_due() == 0  # the group is in flight
    receiver.hold.set()
    await d.settle()
    sent_at = clock.time()
    await send_due(d)
    assert len(receiver.requests) == 1
    await d.drain()
    assert messages(receiver) == [(digest_id([a, b]), [a.id, b.id]), (late.id, [late.id])]
    assert receiver.requests[1].at == sent_at + INTERVAL
    assert receiver.max_in_flight == 1


async def test_a_failed_digest_is_retried_whole(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A 500 fails every member once, with one next attempt; the retry is the same
    digest (same members, same webhook-id). A 400 dead-letters every member."""
    receiver.script = [(500, {}, "oops")]
    members = [make_event(job_id=j, run_id=j) for j in (1, 2, 3)]
    outcomes = Outcomes()
    d = dispatcher(store, clock, [webhook(receiver, clock)], on_result=outcomes)
    await commit(store, clock, members)
    clock.advance(WAIT)
    await send_due(d)
    pending = await outbox(store)
    assert [(attempts, error) for attempts, error, _ in pending] == [(1, "HTTP 500: oops")] * 3
    assert len({next_at for _, _, next_at in pending}) == 1
    await d.drain()
    expected = (digest_id(members), [e.id for e in members])
    assert messages(receiver) == [expected, expected]
    assert outcomes.seen == [("hook", "failed"), ("hook", "sent")]

    receiver.script = [(400, {}, "no")]
    doomed = [make_event(job_id=j, run_id=10 + j) for j in (1, 2)]
    await commit(store, clock, doomed)
    await d.drain()
    dead = await store.dead_letters()
    assert sorted(x.event.id for x in dead) == sorted(e.id for e in doomed)
    assert {x.last_error for x in dead} == {"permanent: HTTP 400: no"}
    assert outcomes.seen[-1] == ("hook", "dead")


async def test_a_retried_digest_gains_no_member_before_the_next_regular_digest(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A digest whose attempt failed (a timeout the receiver may have taken after all) is
    retried with the same members, so with the same webhook-id: members committed while
    it waits for its retry, once the retry is due but not yet taken, or after the retry
    failed too, wait for the group's next regular digest, group_interval after the first
    failed attempt, and go out together."""
    busy = (503, {"Retry-After": "10"}, "busy")
    receiver.script = [busy, busy]
    a, b, late, later, last = (make_event(job_id=j, run_id=j) for j in range(1, 6))
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await commit(store, clock, [a, b])
    clock.advance(WAIT)
    await send_due(d)  # fails: retried 10 s later
    failed_at = clock.time()
    clock.advance(1)
    await commit(store, clock, [late])
    clock.advance(20)
    await commit(store, clock, [later])  # the retry is due, not yet taken
    await send_due(d)  # the retry fails too
    clock.advance(1)
    await commit(store, clock, [last])
    await d.drain()
    first = (digest_id([a, b]), [a.id, b.id])
    rest = [late, later, last]
    assert messages(receiver) == [first, first, first, (digest_id(rest), [e.id for e in rest])]
    assert receiver.requests[3].at == failed_at + INTERVAL


async def test_a_retry_after_the_next_regular_digest_takes_in_the_members_due_by_then(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A retry that falls after the group's next regular digest (a Retry-After longer
    than group_interval) is that digest: members committed meanwhile join it, and it is
    a new digest (a new webhook-id)."""
    receiver.script = [(503, {"Retry-After": f"{INTERVAL + 100:.0f}"}, "busy")]
    a, b, late = (make_event(job_id=j, run_id=j) for j in (1, 2, 3))
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await commit(store, clock, [a, b])
    clock.advance(WAIT)
    await send_due(d)
    failed_at = clock.time()
    clock.advance(1)
    await commit(store, clock, [late])
    await d.drain()
    assert messages(receiver) == [
        (digest_id([a, b]), [a.id, b.id]),
        (digest_id([a, b, late]), [a.id, b.id, late.id]),
    ]
    assert receiver.requests[1].at == failed_at + INTERVAL + 100


async def test_a_group_of_one_is_sent_as_its_event(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A lone member is sent as the plain event (webhook-id = its event id) at
    group_wait, and still counts as the group's digest: the next member waits
    group_interval."""
    alone, next_ = make_event(run_id=1), make_event(run_id=2)
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await commit(store, clock, [alone])
    clock.advance(WAIT)
    await send_due(d)
    assert messages(receiver) == [(alone.id, [alone.id])]
    assert receiver.requests[0].json()["type"] == "run_failed"
    await commit(store, clock, [next_])
    clock.advance(INTERVAL - 0.1)
    await send_due(d)
    assert len(receiver.requests) == 1
    clock.advance(0.1)
    await send_due(d)
    assert ids(receiver) == [alone.id, next_.id]


async def test_ungrouped_deliveries_are_unaffected(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """Ungrouped deliveries go at once while a group waits, each alone; one of a job
    whose earlier alert waits in a group waits for that digest (a job's alerts stay in
    order)."""
    grouped = [make_event(job_id=1, run_id=1), make_event(job_id=2, run_id=2)]
    other = [make_event(job_id=3, run_id=3), make_event(job_id=4, run_id=4)]
    behind = make_event(job_id=1, run_id=5)
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await commit(store, clock, grouped)
    await commit(store, clock, [*other, behind], grouped=False)
    await send_due(d)
    assert ids(receiver) == [other[0].id, other[1].id]
    clock.advance(WAIT)
    await send_due(d)
    await send_due(d)
    assert messages(receiver)[2:] == [
        (digest_id(grouped), [e.id for e in grouped]),
        (behind.id, [behind.id]),
    ]


async def test_a_digest_holds_at_most_digest_limit_members(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """Beyond `digest_limit` the oldest members go first and the rest follow at once
    in the next digest (a backlog is not spread over group intervals)."""
    members = [make_event(job_id=j, run_id=j) for j in range(1, 6)]
    d = dispatcher(store, clock, [webhook(receiver, clock)], digest_limit=2)
    await commit(store, clock, members)
    clock.advance(WAIT)
    for _ in range(3):
        await send_due(d)
    assert messages(receiver) == [
        (digest_id(members[:2]), [e.id for e in members[:2]]),
        (digest_id(members[2:4]), [e.id for e in members[2:4]]),
        (members[4].id, [members[4].id]),
    ]
    assert {r.at for r in receiver.requests} == {clock.time()}
