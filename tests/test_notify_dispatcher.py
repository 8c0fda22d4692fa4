"""The outbox dispatcher over the real SQLite store, in simulated time: retries,
back-off, dead letters, ordering, isolation between channels, restarts."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.notify_fixtures import Receiver, free_port, make_event, start_smtp
from watcher.clock import ManualClock
from watcher.config.channels import EmailChannelConfig, WebhookChannelConfig
from watcher.events import Event
from watcher.notify.base import Channel, Digest, Sent, Unconfirmed
from watcher.notify.deadletters import list_dead_letters, retry_dead_letters
from watcher.notify.dispatcher import CLAIM_MARGIN, UNKNOWN_CHANNEL_GRACE, Dispatcher, Outcome
from watcher.notify.email import EmailChannel
from watcher.notify.ratelimit import TokenBucket
from watcher.notify.webhook import WebhookChannel
from watcher.store.base import CycleCommit, DeliveryKey, StoreError
from watcher.store.sqlite import SQLiteStore


async def enqueue(
    store: SQLiteStore, clock: ManualClock, events: Sequence[Event], channels: Sequence[str]
) -> None:
    """Commit `events`, each with a delivery per key in `channels` (as text: `channel` or
    `channel:address`)."""
    await store.commit_cycle(
        CycleCommit(
            workspace="prod",
            watermark_ms=int(clock.time() * 1000),
            committed_at=clock.time(),
            events=events,
            channels={e.id: [DeliveryKey.parse(c) for c in channels] for e in events},
        )
    )


def webhook(receiver: Receiver, clock: ManualClock, name: str = "hook", **options: Any) -> Channel:
    settings = {"type": "webhook", "url": f"{receiver.url}/{name}", "timeout": 5, **options}
    return WebhookChannel(name, WebhookChannelConfig.model_validate(settings), clock=clock)


class Outcomes:
    """The dispatcher's observer hook, recording (channel, outcome) and the reasons given."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome]] = []
        self.reasons: list[Unconfirmed | None] = []

    def __call__(
        self, channel: str, outcome: Outcome, seconds: float, reason: Unconfirmed | None
    ) -> None:
        self.seen.append((channel, outcome))
        self.reasons.append(reason)


def dispatcher(
    store: SQLiteStore, clock: ManualClock, channels: Sequence[Channel], **options: Any
) -> Dispatcher:
    return Dispatcher(
        store=store,
        channels={c.name: c for c in channels},
        clock=clock,
        rng=random.Random(7),
        **options,
    )


def ids(receiver: Receiver) -> list[str]:
    return [r.headers["webhook-id"] for r in receiver.requests]


async def test_retry_after_is_honoured(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A 429 with Retry-After: 30 schedules the next attempt exactly 30 s later; the
    retry is not sent earlier, and then the delivery is marked delivered."""
    receiver.script = [(429, {"Retry-After": "30"}, "slow down")]
    event = make_event()
    await enqueue(store, clock, [event], ["hook"])
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    first = clock.time()
    await d.dispatch_due()
    await d.settle()
    assert len(receiver.requests) == 1
    assert await store.due_deliveries(now=first + 29.9, limit=10) == []
    (due,) = await store.due_deliveries(now=first + 30, limit=10)
    assert (due.attempts, due.last_error) == (1, "Retry-After 30s: HTTP 429: slow down")
    await d.drain()
    assert len(receiver.requests) == 2
    assert receiver.requests[1].at - receiver.requests[0].at >= 30
    assert (await store.outbox_stats()).pending == 0


async def test_server_errors_are_retried_with_jittered_backoff(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """Three 500s then success: four attempts of the same webhook-id, gaps within the
    full-jitter caps (2, 4, 8 s), the observer sees failed x3 then sent, logs say why."""
    receiver.script = [(500, {}, "oops")] * 3
    event = make_event()
    await enqueue(store, clock, [event], ["hook"])
    outcomes = Outcomes()
    d = dispatcher(store, clock, [webhook(receiver, clock)], on_result=outcomes)
    with structlog.testing.capture_logs() as logs:
        await d.drain()
    assert ids(receiver) == [event.id] * 4
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        assert gap <= 2 * 2 ** (n - 1) + 1  # cap + one poll tick
    assert outcomes.seen == [("hook", "failed")] * 3 + [("hook", "sent")]
    assert [e["event"] for e in logs if e["event"].startswith("alert_")] == [
        "alert_retry",
        "alert_retry",
        "alert_retry",
        "alert_sent",
    ]
    assert (await store.outbox_stats()).pending == 0


async def test_permanent_error_is_dead_lettered_and_replayable(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A 400 is not retried: one attempt, then a dead letter listed with its reason;
    `alerts retry` makes it pending again and it is delivered."""
    receiver.script = [(400, {}, "bad payload")]
    event = make_event()
    await enqueue(store, clock, [event], ["hook"])
    outcomes = Outcomes()
    d = dispatcher(store, clock, [webhook(receiver, clock)], on_result=outcomes)
    await d.drain()
    assert len(receiver.requests) == 1
    assert outcomes.seen == [("hook", "dead")]
    (dead,) = await store.dead_letters()
    assert dead.last_error == "permanent: HTTP 400: bad payload"
    lines = await list_dead_letters(store)
    assert len(lines) == 2
    assert lines[0].startswith("EVENT ID")
    assert event.id in lines[1]
    assert "permanent: HTTP 400" in lines[1]

    assert await retry_dead_letters(store, now=clock.time()) == 1
    await d.drain()
    assert ids(receiver) == [event.id] * 2
    assert (await store.outbox_stats()).dead == 0


async def test_gives_up_after_max_attempts(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A target failing forever is dead-lettered after max_attempts attempts."""
    receiver.default = (502, {}, "bad gateway")
    await enqueue(store, clock, [make_event()], ["hook"])
    d = dispatcher(store, clock, [webhook(receiver, clock, max_attempts=3)])
    await d.drain()
    assert len(receiver.requests) == 3
    (dead,) = await store.dead_letters()
    assert dead.attempts == 3
    assert dead.last_error == "HTTP 502: bad gateway (gave up after 3 attempts)"


async def test_dead_when_the_next_try_would_pass_max_age(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A Retry-After beyond max_age dead-letters at once instead of waiting past it."""
    receiver.default = (503, {"Retry-After": "7200"}, "maintenance")
    await enqueue(store, clock, [make_event()], ["hook"])
    d = dispatcher(store, clock, [webhook(receiver, clock, max_age=3600)])
    await d.drain()
    assert len(receiver.requests) == 1
    (dead,) = await store.dead_letters()
    assert "max_age" in (dead.last_error or "")


async def test_a_jobs_alerts_arrive_in_order_and_other_jobs_do_not_wait(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """While a job's first alert is retried, its later alerts on that channel wait for it
    (order is kept), but another job's alert goes out meanwhile."""
    receiver.script = [(500, {}, "oops")]
    a1, a2, a3 = (make_event(run_id=i) for i in (1, 2, 3))
    b1 = make_event(job_id=99, run_id=4)
    await enqueue(store, clock, [a1, a2, a3, b1], ["hook"])
    await dispatcher(store, clock, [webhook(receiver, clock)]).drain()
    sent = ids(receiver)
    assert sent[:2] == [a1.id, b1.id]
    assert [i for i in sent if i != b1.id] == [a1.id, a1.id, a2.id, a3.id]


async def test_a_stuck_channel_does_not_delay_another(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """With one channel hanging on its first request, every alert of the other channel is
    delivered; on stop the stuck delivery is cancelled and stays pending."""
    stuck = Receiver(clock=clock, hold=asyncio.Event())
    await stuck.start()
    events = [make_event(run_id=i) for i in range(5)]
    await enqueue(store, clock, events, ["stuck", "hook"])
    d = dispatcher(store, clock, [webhook(stuck, clock, "stuck"), webhook(receiver, clock)])
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop=stop, grace=0.01))
    try:
        async with asyncio.timeout(10):
            await receiver.wait_for(lambda requests: len(requests) == 5)
        assert ids(receiver) == [e.id for e in events]
        assert len(stuck.requests) == 1
    finally:
        stop.set()
        await task
        await stuck.stop()
    assert (await store.outbox_stats()).pending == 5
    (head,) = await store.due_deliveries(now=clock.time(), limit=10, channels=["stuck"])
    assert (head.event.id, head.attempts) == (events[0].id, 0)


async def test_timeouts_are_retried(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """An attempt exceeding the channel timeout, on the dispatcher's clock, counts as a
    transient failure: not before the limit has passed, at once when it has."""
    receiver.hold = asyncio.Event()
    await enqueue(store, clock, [make_event()], ["hook"])
    d = dispatcher(store, clock, [webhook(receiver, clock, timeout=0.2)])
    await d.dispatch_due()
    async with asyncio.timeout(10):
        await receiver.wait_for(lambda requests: len(requests) == 1)
    clock.advance(0.1)
    await asyncio.sleep(0.5)  # real time passes the limit, simulated time does not
    assert (await store.outbox_stats()).pending == 1
    # Claimed by the attempt in flight: due to nobody else until the claim runs out.
    assert await store.due_deliveries(now=clock.time(), limit=10) == []
    (due,) = await store.due_deliveries(now=clock.time() + 0.2 + CLAIM_MARGIN, limit=10)
    assert due.attempts == 0
    clock.advance(0.15)
    await d.settle()
    (due,) = await store.due_deliveries(now=clock.time() + 60, limit=10)
    assert due.last_error == "timed out after 0.2s"
    receiver.hold.set()
    await d.drain()
    assert len(receiver.requests) == 2


async def test_concurrency_and_rate_limits(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """At most `concurrency` requests are in flight per channel, and the token bucket
    spaces sends: 6 alerts at 1/s with a burst of 2 wait 4 s of clock time."""
    release = asyncio.Event()
    receiver.hold = release
    events = [make_event(job_id=i, run_id=i) for i in range(6)]
    await enqueue(store, clock, events, ["hook"])
    channel = webhook(receiver, clock, concurrency=2, rate_per_second=1, burst=2)
    d = dispatcher(store, clock, [channel])
    drained = asyncio.create_task(d.drain())
    async with asyncio.timeout(10):
        await receiver.wait_for(lambda requests: len(requests) == 2)
    for _ in range(20):  # let the dispatcher try to start more
        await asyncio.sleep(0)
    assert len(receiver.requests) == 2  # the other four wait for a free slot
    release.set()
    await drained
    assert len(receiver.requests) == 6
    assert receiver.max_in_flight == 2
    assert sum(clock.slept) == pytest.approx(4.0)


async def test_token_bucket_in_simulated_time(clock: ManualClock) -> None:
    """Burst first, then one token per 1/rate seconds, waiting on the injected clock."""
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    waits = [await bucket.acquire() for _ in range(5)]
    assert waits == [0.0, 0.0, 0.0, pytest.approx(0.5), pytest.approx(0.5)]
    clock.advance(10)
    assert [await bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]


async def test_unconfigured_channel_is_dead_lettered(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A delivery for a channel removed from the configuration becomes a dead letter that
    says so (and can be replayed once the channel is back)."""
    await enqueue(store, clock, [make_event()], ["gone"])
    await dispatcher(store, clock, [webhook(receiver, clock)]).drain()
    (dead,) = await store.dead_letters()
    assert dead.last_error == "channel 'gone' is not configured"


async def test_restart_resumes_pending_deliveries(
    tmp_path: Path, clock: ManualClock, receiver: Receiver
) -> None:
    """Deliveries failing when the process stops (one mid-request) are delivered by the
    next process from the same database; the interrupted one may arrive twice, with the
    same webhook-id (the documented duplicate window)."""
    path = tmp_path / "restart.db"
    store = await SQLiteStore.open(path)
    failing, hanging = make_event(run_id=1), make_event(job_id=2, run_id=2)
    receiver.script = [(503, {"Retry-After": "300"}, "down")]
    await enqueue(store, clock, [failing], ["hook"])
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await d.dispatch_due()
    await d.settle()
    receiver.hold = asyncio.Event()
    await enqueue(store, clock, [hanging], ["hook"])
    crash = asyncio.create_task(d.drain())
    async with asyncio.timeout(10):
        await receiver.wait_for(lambda requests: len(requests) == 2)
    crash.cancel()  # the process dies while the request is in flight
    with pytest.raises(asyncio.CancelledError):
        await crash
    await store.close()

    receiver.hold.set()
    store = await SQLiteStore.open(path)
    try:
        assert (await store.outbox_stats()).pending == 2
        clock.advance(600)
        await dispatcher(store, clock, [webhook(receiver, clock)]).drain()
        assert (await store.outbox_stats()).pending == 0
    finally:
        await store.close()
    assert ids(receiver).count(failing.id) == 2  # 503, then delivered after the restart
    assert ids(receiver).count(hanging.id) == 2  # cut off mid-request, then delivered again


async def test_smtp_down_for_a_while_then_delivered(store: SQLiteStore, clock: ManualClock) -> None:
    """While the SMTP server is down the alert is retried (pending, not dead); once the
    server is up the next attempt delivers it, once."""
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
    await enqueue(store, clock, [make_event()], ["mail"])
    d = dispatcher(store, clock, [mail])
    with pytest.raises(TimeoutError):
        await d.drain(max_wait=120)
    (pending,) = await store.due_deliveries(now=clock.time() + 86_400, limit=10)
    assert pending.attempts >= 3
    assert f"cannot connect to 127.0.0.1:{port}" in (pending.last_error or "")
    server = await start_smtp(port=port)
    try:
        await d.drain()
    finally:
        await server.stop()
    assert len(server.mailbox.envelopes) == 1
    assert (await store.outbox_stats()).pending == 0


async def test_job_addresses_get_their_own_deliveries(
    store: SQLiteStore, clock: ManualClock
) -> None:
    """`<email channel>:<address>` keys are found in the outbox and delivered to that
    address only, next to the channel's own recipients."""
    server = await start_smtp()
    config = EmailChannelConfig.model_validate(
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": server.port,
            "security": "none",
            "sender": "watcher@example.com",
            "recipients": ["team@example.com"],
        }
    )
    mail = EmailChannel("mail", config, clock=clock)
    await enqueue(store, clock, [make_event()], ["mail", "mail:owner@example.com"])
    outcomes = Outcomes()
    try:
        await dispatcher(store, clock, [mail], on_result=outcomes).drain()
    finally:
        await server.stop()
    recipients = sorted(tuple(e.rcpt_tos) for e in server.mailbox.envelopes)
    assert recipients == [("owner@example.com",), ("team@example.com",)]
    assert outcomes.seen == [("mail", "sent"), ("mail", "sent")]


class Exploding:
    """A channel with a bug: its first send raises instead of returning a result."""

    def __init__(self) -> None:
        self.calls = 0
        self._config = WebhookChannelConfig.model_validate(
            {"type": "webhook", "url": "https://unused.invalid/fake-secret"}
        )

    @property
    def name(self) -> str:
        return "buggy"

    @property
    def config(self) -> WebhookChannelConfig:
        return self._config

    def target(self, key: DeliveryKey) -> Exploding:
        return self

    async def send(self, event: Event) -> Sent:
        self.calls += 1
        if self.calls == 1:
            raise KeyError("https://unused.invalid/fake-secret")
        return Sent()

    async def send_digest(self, digest: Digest) -> Sent:
        return Sent()

    async def close(self) -> None:
        return None


async def test_a_channel_bug_is_retried_not_lost(store: SQLiteStore, clock: ManualClock) -> None:
    """An exception escaping a channel counts as a transient failure (the alert is tried
    again) and its message, which may hold a secret, is not logged."""
    buggy = Exploding()
    await enqueue(store, clock, [make_event()], ["buggy"])
    with structlog.testing.capture_logs() as logs:
        await dispatcher(store, clock, [buggy]).drain()
    assert buggy.calls == 2
    assert (await store.outbox_stats()).pending == 0
    errors = [e for e in logs if e["event"] == "channel_error"]
    assert errors[0]["error"] == "unexpected KeyError in the channel"
    assert "fake-secret" not in repr(logs)


class BrokenStore:
    """A store whose outbox cannot be read (a failing disk, say)."""

    async def due_deliveries(self, **_: object) -> list[object]:
        raise StoreError("the database /data/watcher.db cannot be read")

    async def release_claims(self, owner: str) -> int:
        return 0  # writes still work: only reading the outbox fails


async def test_a_dispatcher_that_cannot_read_the_outbox_fails_loudly(
    clock: ManualClock, receiver: Receiver
) -> None:
    """Store errors are retried tick after tick, but a run of them ends `run` with the
    error (the process exits and is restarted) instead of idling without delivering."""
    d = Dispatcher(
        store=BrokenStore(),  # type: ignore[arg-type]
        channels={"hook": webhook(receiver, clock)},
        clock=clock,
        max_consecutive_errors=3,
    )
    with structlog.testing.capture_logs() as logs, pytest.raises(StoreError):
        await d.run(stop=asyncio.Event())
    assert [e["event"] for e in logs] == ["dispatch_failed"] * 3


class StallsAfterClaiming:
    """The store, but the process freezes for `stall` clock seconds right after each
    claim (SIGSTOP, a long GC pause), as seen by the dispatcher's clock."""

    def __init__(self, store: SQLiteStore, clock: ManualClock, stall: float) -> None:
        self._store = store
        self._clock = clock
        self._stall = stall

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def claim(self, *args: Any, **kwargs: Any) -> bool:
        claimed: bool = await self._store.claim(*args, **kwargs)
        self._clock.advance(self._stall)
        return claimed


async def test_a_claim_too_short_for_the_attempt_is_not_used(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """A dispatcher frozen after claiming, so that less than one timeout of its claim is
    left, does not send: the claim could run out mid-send and another replica send the
    same alert too. Once the claim has run out, the delivery goes out (once)."""
    await enqueue(store, clock, [make_event()], ["hook"])
    frozen = StallsAfterClaiming(store, clock, stall=CLAIM_MARGIN + 1)
    d = dispatcher(frozen, clock, [webhook(receiver, clock)])  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        await d.dispatch_due()
        await d.settle()
    assert receiver.requests == []
    assert "claim_too_short_to_send" in [e["event"] for e in logs]
    clock.advance(5)  # the rest of the claim (timeout 5 + margin, less the stall)
    await dispatcher(store, clock, [webhook(receiver, clock)]).drain()
    assert len(receiver.requests) == 1


async def test_a_channel_this_replica_does_not_know_waits_before_dead_lettering(
    store: SQLiteStore, clock: ManualClock, receiver: Receiver
) -> None:
    """During a rolling update a replica on the old configuration meets deliveries of a
    channel the new one added: they stay pending for UNKNOWN_CHANNEL_GRACE (a replica
    that knows the channel sends them), and only then become dead letters."""
    await enqueue(store, clock, [make_event()], ["oncall"])
    d = dispatcher(store, clock, [webhook(receiver, clock)])
    await d.dispatch_due()
    clock.advance(UNKNOWN_CHANNEL_GRACE - 1)
    await d.dispatch_due()
    assert (await store.outbox_stats()).pending == 1
    clock.advance(1)
    await d.dispatch_due()
    (dead,) = await store.dead_letters()
    assert dead.last_error == "channel 'oncall' is not configured"


@pytest.mark.parametrize("rate", [0.3, 10.0, 50.0, 1000.0])
async def test_the_token_bucket_keeps_its_rate_on_an_epoch_sized_clock(rate: float) -> None:
    """On a clock counting seconds since 1970, a refill can come out a float step short
    of a token: it still counts (no endless wait for a step too small to move the clock),
    and 50 tokens one at a time take 49 intervals, no fewer."""
    clock = ManualClock(start=1_800_000_000.0)
    bucket = TokenBucket(rate=rate, burst=1, clock=clock)
    for _ in range(50):
        await asyncio.wait_for(bucket.acquire(), 5)
    # Within float steps of the clock (2.4e-7 s at this value), far below one interval.
    assert clock.time() - 1_800_000_000.0 == pytest.approx(49 / rate, abs=1e-4)
