"""Recovery of a lane after an outage, in simulated time over real receivers: a success
makes what waits on back-off due at once (paced by the rate limit and Retry-After), a
fluke success releases little, claims and digests stay whole (`Outbox.expedite`)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiohttp import web

from tests import pg
from tests.notify_fixtures import Receiver, free_port, make_event, serve, start_smtp
from tests.test_digest_dispatch import GROUP, HOOK, commit, messages
from tests.test_notify_dispatcher import dispatcher, enqueue, ids, webhook
from watcher.clock import ManualClock
from watcher.config.channels import EmailChannelConfig, WebhookChannelConfig
from watcher.events import Event
from watcher.notify.dispatcher import Dispatcher
from watcher.notify.email import EmailChannel
from watcher.notify.webhook import WebhookChannel
from watcher.store.base import DeliveryKey, Store
from watcher.store.sqlite import SQLiteStore

DOWN: tuple[int, dict[str, str], str] = (503, {}, "down")
INTERVAL = 1.0
"""The dispatcher's poll interval (its default)."""


async def pump(d: Dispatcher) -> None:
    """What `run` does until its next poll tick: start what is due, and again each time
    attempts end, until nothing more is due (time moves only in the token buckets)."""
    while await d.dispatch_due():
        await d.settle()


async def schedule(store: Store) -> dict[str, tuple[int, float]]:
    """event id -> (attempts, next attempt) of the pending deliveries, read aside."""
    sql = "SELECT event_id, attempts, next_attempt_at FROM deliveries WHERE status = 'pending'"
    rows = await pg.read_aside(store, sql)
    return {str(e): (int(a), float(n)) for e, a, n in rows}


async def outage(
    store: SQLiteStore, clock: ManualClock, d: Dispatcher, events: Sequence[Event], channel: str
) -> None:
    """Two minutes of poll ticks with `events` arriving evenly over them."""
    start, every = clock.time(), 120.0 / len(events)
    arrivals = list(events)
    while clock.time() < start + 120:
        due = [e for e in arrivals if (events.index(e)) * every <= clock.time() - start]
        if due:
            await enqueue(store, clock, due, [channel])
            arrivals = [e for e in arrivals if e not in due]
        await pump(d)
        clock.advance(INTERVAL)


async def until_drained(store: SQLiteStore, clock: ManualClock, d: Dispatcher) -> float:
    """Poll ticks until nothing is pending (a day at most): the time it happened."""
    for _ in range(86_400):
        await pump(d)
        if (await store.outbox_stats()).pending == 0:
            return clock.time()
        clock.advance(INTERVAL)
    raise AssertionError("still pending after a day")


async def test_a_webhook_backlog_drains_within_an_interval_of_the_first_success(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """30 alerts of 10 jobs queue up during a 2-minute outage, their retries spread over
    minutes of back-off. Once the receiver answers, all are delivered within one poll
    interval plus the rate limit (30 at 5/s, burst 10) of its first success, each once,
    each job's in order."""
    receiver.default = DOWN
    events = [make_event(job_id=n % 10, run_id=n) for n in range(30)]
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await outage(store, clock, d, events, "hook")
    recovered = clock.time()
    waiting = await schedule(store)
    assert len(waiting) == 30
    assert max(at for _, at in waiting.values()) - recovered > 60  # back-off is long by now
    receiver.default = (200, {}, "ok")

    drained = await until_drained(store, clock, d)

    after = [r for r in receiver.requests if r.at >= recovered]
    first_success = after[0].at
    assert drained - first_success <= INTERVAL + (30 - 10) / 5.0
    sent = [r.headers["webhook-id"] for r in after]
    assert sorted(sent) == sorted(e.id for e in events)  # each once, nothing lost
    for job in range(10):
        assert [i for i in sent if i in {e.id for e in events if e.job.job_id == job}] == [
            e.id for e in events if e.job.job_id == job
        ]


async def test_an_smtp_backlog_drains_within_an_interval_of_the_first_success(
    store: SQLiteStore, clock: ManualClock
) -> None:
    """15 emails queue up while the SMTP server is down for 2 minutes; once it is back,
    all are delivered within one poll interval of its first accepted message."""
    port = free_port()
    config = EmailChannelConfig.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "sender": "watcher@example.com",
            "recipients": ["oncall@example.com"],
        }
    )
    mail = EmailChannel("mail", config, clock=clock)
    events = [make_event(job_id=n, run_id=n) for n in range(15)]
    d = dispatcher(store, clock, [mail])
    await outage(store, clock, d, events, "mail")
    recovered = clock.time()
    times = [at for _, at in (await schedule(store)).values()]
    assert len(times) == 15
    assert max(times) - recovered > 60
    server = await start_smtp(port=port)
    try:
        drained = await until_drained(store, clock, d)
    finally:
        await server.stop()
    assert [e.rcpt_tos for e in server.mailbox.envelopes] == [["oncall@example.com"]] * 15
    # The earliest retry succeeds, at the first tick once it is due; from there one
    # interval, and the rate limit: 15 at 5/s with a burst of 10.
    first_due = max(min(times), recovered)
    assert drained - first_due <= INTERVAL + (15 - 10) / 5.0


async def test_a_fluke_success_releases_at_most_concurrency_slots(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """One success on a dead receiver makes only `concurrency` (2) of the 10 waiting
    alerts due at once; when they fail, each goes back to its normal back-off, and the
    other 8 keep the times they had: three requests, not eleven."""
    receiver.default = DOWN
    events = [make_event(job_id=n, run_id=n) for n in range(10)]
    d = dispatcher(store, clock, [webhook(receiver, clock, concurrency=2)])
    await outage(store, clock, d, events, "hook")
    before = await schedule(store)
    (fluke, (_, first)), (_, (_, second)) = sorted(before.items(), key=lambda i: i[1][1])[:2]
    clock.advance(max(0.0, first - clock.time()))
    assert second > clock.time()  # the fluke's delivery alone is due
    receiver.script = [(200, {}, "ok")]
    sent_before = len(receiver.requests)

    await pump(d)

    assert len(receiver.requests) - sent_before == 3
    assert ids(receiver)[sent_before] == fluke
    released = set(ids(receiver)[sent_before + 1 :])
    after = await schedule(store)
    assert fluke not in after
    for event_id in released:
        attempts, next_at = after[event_id]
        assert attempts == before[event_id][0] + 1
        assert next_at > clock.time()  # back-off again, not due at once
    for event_id in set(before) - released - {fluke}:
        assert after[event_id] == before[event_id]


async def test_retry_after_holds_the_release(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """After a 429 with Retry-After: 60, a success on the lane releases what waits on
    back-off only as far as the end of that minute: the throttled alert is not sent
    earlier, and one backing off for longer is brought forward to it, not to now."""
    receiver.script = [(429, {"Retry-After": "60"}, "slow down"), (500, {}, "oops")]
    throttled, slow = make_event(job_id=1, run_id=1), make_event(job_id=2, run_id=2)
    other = make_event(job_id=3, run_id=3)
    d = dispatcher(store, clock, [webhook(receiver, clock, retry_base_delay=1000)])
    start = clock.time()
    await enqueue(store, clock, [throttled, slow], ["hook"])
    await pump(d)
    assert (await schedule(store))[slow.id][1] > start + 65
    clock.advance(5)
    await enqueue(store, clock, [other], ["hook"])
    await pump(d)
    assert ids(receiver) == [throttled.id, slow.id, other.id]
    waiting = await schedule(store)
    assert (waiting[throttled.id], waiting[slow.id]) == ((1, start + 60), (1, start + 60))
    await until_drained(store, clock, d)
    assert sorted(ids(receiver)[3:]) == sorted([throttled.id, slow.id])
    assert receiver.requests[3].at == receiver.requests[4].at == start + 60


@pytest.mark.parametrize("owner", ["local", "another replica"])
async def test_a_retry_after_holds_across_a_restart_and_on_another_replica(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver, owner: str
) -> None:
    """The Retry-After of a 429 is kept with the delivery: a dispatcher that never saw it
    (the process restarted, or another replica) recovers on its first success and does
    not release the throttled alert before its 10 minutes."""
    receiver.script = [(429, {"Retry-After": "600"}, "slow down")]
    throttled, fresh = make_event(job_id=1, run_id=1), make_event(job_id=2, run_id=2)
    start = clock.time()
    await enqueue(store, clock, [throttled], ["hook"])
    await pump(dispatcher(store, clock, [webhook(receiver, clock)], owner="local"))
    clock.advance(5)
    await enqueue(store, clock, [fresh], ["hook"])
    await pump(dispatcher(store, clock, [webhook(receiver, clock)], owner=owner))
    assert ids(receiver) == [throttled.id, fresh.id]
    assert (await schedule(store))[throttled.id] == (1, start + 600)


async def test_a_failed_digest_is_released_whole_and_stays_the_same_digest(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A digest that failed waits on back-off; an ungrouped alert's success on the lane
    makes all its members due at once, and the retry is the same digest (same id)."""
    receiver.script = [(500, {}, "oops")]
    grouped = [make_event(job_id=n, run_id=n) for n in range(3)]
    alone = make_event(job_id=9, run_id=9)
    hook = webhook(receiver, clock, retry_base_delay=200)
    d = dispatcher(store, clock, [hook])
    await commit(store, clock, grouped)
    clock.advance(30)  # the group's wait
    await pump(d)
    waiting = await schedule(store)
    assert {attempts for attempts, _ in waiting.values()} == {1}
    assert min(at for _, at in waiting.values()) > clock.time() + 10
    await commit(store, clock, [alone], grouped=False)
    await pump(d)
    digest = messages(receiver)[0]
    assert messages(receiver) == [digest, (alone.id, [alone.id]), digest]
    assert sorted(digest[1]) == sorted(e.id for e in grouped)
    assert receiver.requests[2].at == receiver.requests[1].at


async def test_expedite_counts_slots_and_leaves_claims_alone(
    store: SQLiteStore, clock: ManualClock
) -> None:
    """`Outbox.expedite` moves the waiting deliveries of its `limit` oldest slots (a
    group's members are one slot) to `at`; one another replica holds a claim on, one not
    yet attempted, and another channel's stay as they were."""
    now = clock.time()
    g1, g2 = make_event(job_id=1, run_id=1), make_event(job_id=2, run_id=2)
    u1, u2 = make_event(job_id=3, run_id=3), make_event(job_id=4, run_id=4)
    fresh, other = make_event(job_id=5, run_id=5), make_event(job_id=6, run_id=6)
    await commit(store, clock, [g1, g2])
    await commit(store, clock, [u1, u2], grouped=False)
    await enqueue(store, clock, [other], ["elsewhere"])
    clock.advance(30)
    now = clock.time()
    assert await store.take_group(HOOK, GROUP, now=now, limit=10)
    await store.mark_group_failed(HOOK, [g1.id, g2.id], error="x", next_attempt_at=now + 100)
    for event, key in ((u1, HOOK), (u2, HOOK), (other, DeliveryKey("elsewhere"))):
        await store.mark_failed(event.id, key, error="x", next_attempt_at=now + 100)
    assert await store.claim(u2.id, HOOK, now=now, until=now + 50, owner="other")
    await commit(store, clock, [fresh])  # waits for the group's next digest, unattempted
    scheduled = (await schedule(store))[fresh.id]
    assert scheduled[0] == 0
    assert scheduled[1] > now

    assert await store.expedite("hook", now=now, at=now, limit=1) == 2
    moved = await schedule(store)
    assert (moved[g1.id][1], moved[g2.id][1], moved[u1.id][1]) == (now, now, now + 100)
    assert await store.expedite("hook", now=now, at=now + 5, limit=10) == 1
    after = await schedule(store)
    assert after[u1.id][1] == now + 5
    assert (after[u2.id][1], after[other.id][1]) == (now + 100, now + 100)
    assert (after[g1.id][1], after[g2.id][1]) == (now, now)  # not moved back to `at`
    assert await store.expedite("hook", now=now, at=now, limit=10) == 1  # u1 only: u2 claimed
    assert (await schedule(store))[fresh.id] == scheduled


async def test_an_alert_the_receiver_refuses_is_not_released_by_the_others(
    store: SQLiteStore, clock: ManualClock
) -> None:
    """A receiver refusing one alert (500) while it accepts the others is not an outage:
    the others' successes between its attempts release nothing, it keeps its back-off.
    After an outage (failures in a row) the same success does release it."""
    refused = make_event(job_id=1, run_id=1)
    others = [make_event(job_id=n, run_id=n) for n in range(2, 10)]
    down = {"all": False}

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.Response(status=500 if down["all"] or body["id"] == refused.id else 200)

    app = web.Application()
    app.router.add_post("/hook", answer)
    runner, url = await serve(app)
    try:
        settings = {"type": "webhook", "url": f"{url}/hook", "retry_base_delay": 600}
        hook = WebhookChannel("hook", WebhookChannelConfig.model_validate(settings), clock=clock)
        d = dispatcher(store, clock, [hook])
        for event in [others[0], refused, *others[1:5]]:
            await enqueue(store, clock, [event], ["hook"])
            await pump(d)
            clock.advance(1)
        waiting = await schedule(store)
        assert list(waiting) == [refused.id]
        assert waiting[refused.id][0] == 1  # one attempt: never released
        assert waiting[refused.id][1] > clock.time()

        down["all"] = True  # an outage: two alerts fail, then the receiver is back
        for event in others[5:7]:
            await enqueue(store, clock, [event], ["hook"])
            await pump(d)
        down["all"] = False
        await enqueue(store, clock, [others[7]], ["hook"])
        await pump(d)
    finally:
        await runner.cleanup()
    after = await schedule(store)
    assert list(after) == [refused.id]  # the outage's two delivered at once
    # Released by the recovery (and maybe by the released ones' successes), refused again.
    assert after[refused.id][0] >= 2
