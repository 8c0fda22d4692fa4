"""The outbox dispatcher: delivers every pending (event, channel) pair at least once.

Each configured channel is a lane with its own token bucket and concurrency bound, and
each lane asks the store only for its own due deliveries, so a slow, throttled or dead
channel never holds back another. The store hands out at most one delivery per (channel,
recipient, workspace, job) at a time, so a job's alerts reach each target in order. All
retry state (attempts, next attempt time, dead letters) lives in the store: a restart
resumes where the last process stopped.

Deliveries a route groups (`group_by`) go out as digests. The store hands out one due
delivery per (channel, recipient, group key), the group's oldest pending member; the
attempt then takes the group's members due at that moment (`Store.take_group`: at most
`digest_limit`, the rest go in the next digest at once) and sends them as one `Digest`
through the channel's `send_digest`, or a lone member as its plain event. A digest gains
no member once taken (later ones wait for the next), nor for a retry that falls before
the group's next regular digest, and its id is derived from its sorted member event ids:
a digest re-sent after a crash or retried is the same digest, with the same idempotency
key. A group is never in flight twice, and a digest is one attempt: its outcome applies
to every member.

Policy is decided here, once, from the channels' results:

- `Sent` -> delivered;
- `Retry` -> again after Retry-After when the target gave one, else full-jitter exponential
  back-off (uniform in [0, min(retry_max_delay, retry_base_delay * 2^(attempt-1))]);
- `Failed` (a permanent error), the `max_attempts`-th failure, or a retry that would fall
  past `max_age` after the alert was queued -> dead letter (kept, counted, replayable).

A success after RECOVERY_FAILURES failed attempts in a row on a lane, or of a retry,
shows the channel answers again: the lane's deliveries waiting on back-off become due at
once (`Outbox.expedite`; not before the end of the channel's latest Retry-After), paced by
its token bucket, so a backlog left by an outage drains within a poll interval plus the
rate limit instead of over minutes of back-off. Each success releases at most
`concurrency` waiting slots (the released ones' successes release the next): a success
that was a fluke costs a dead receiver that many attempts, the others keep their
back-off, and each released one resumes its own (from its attempt count) at its next
failure. One alert the receiver refuses while it accepts the others is not an outage:
the others' first attempts succeeding between its failures release nothing.

For a digest the attempt number is its most tried member's, plus one, and `max_age`
counts from its oldest member: no member is tried more often or longer than configured.
A result's `reason` (a redirect, an implausible 2xx) is logged and passed to the observer.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from watcher.aio import Timeout, first_of, within
from watcher.clock import Clock
from watcher.incidents import derived_id
from watcher.notify.base import Channel, Digest, Failed, Result, Retry, Sent, Unconfirmed
from watcher.notify.ratelimit import TokenBucket
from watcher.notify.router import group_labels, serves
from watcher.store.base import RETRY_AFTER, Delivery, DeliveryKey, Outbox

log = structlog.get_logger(__name__)

Outcome = Literal["sent", "failed", "dead"]
ResultObserver = Callable[[str, Outcome, float, Unconfirmed | None], None]
"""Called after every attempt with the channel name, the outcome, the seconds it took and
why an answer that looked like success was not taken as one (or None). A digest is one
attempt: one call, whatever the number of its members."""

DIGEST_LIMIT = 500
"""Members of one digest at most. The rest are due already and go in the next digest at
once: a backlog drains at the channel's rate, not one digest per group_interval."""

UNKNOWN_CHANNEL_GRACE = 600.0
"""Seconds a delivery to a channel this replica does not know waits before it is
dead-lettered (a rolling update of the configuration is over by then)."""

CLAIM_MARGIN = 30.0
"""Seconds a claim outlives the attempt's timeout: a replica that dies mid-attempt holds
its deliveries this much longer than the attempt could have taken, then another replica
sends them."""

RECOVERY_FAILURES = 2
"""Failed attempts in a row on a lane after which a success counts as its recovery. A
new dispatcher starts there: its lanes' history (a former life's, another replica's) is
unknown, so their first success may release what a former failure left waiting."""

_Slot = tuple[str, str, DeliveryKey]
"""What a lane has in flight: ("event", event id, key) or ("group", group key, key)."""


def _slot(delivery: Delivery) -> _Slot:
    if delivery.group_key:
        return ("group", delivery.group_key, delivery.key)
    return ("event", delivery.event.id, delivery.key)


def digest_of(members: Sequence[Delivery]) -> Digest:
    """The digest of a group's members (oldest first); its id depends on the member event
    ids alone, so the same members always make the same digest."""
    ids = sorted(m.event.id for m in members)
    return Digest(
        id=derived_id("digest", *ids),
        events=[m.event for m in members],
        group=group_labels(members[0].group_key),
    )


@dataclass(frozen=True, slots=True)
class _Batch:
    """What one attempt sends to one key: a delivery, or the due members of a group (a
    digest when there are several)."""

    key: DeliveryKey
    group_key: str
    members: Sequence[Delivery]
    digest: Digest | None = None

    @property
    def event_ids(self) -> list[str]:
        return [m.event.id for m in self.members]

    @property
    def attempt(self) -> int:
        return max(m.attempts for m in self.members) + 1

    @property
    def created_at(self) -> float:
        return min(m.created_at for m in self.members)

    def fields(self) -> dict[str, Any]:
        """What its log lines say it is."""
        if self.digest is not None:
            return {
                "channel": str(self.key),
                "digest_id": self.digest.id,
                "events": len(self.members),
                "group": dict(self.digest.group),
            }
        event = self.members[0].event
        return {"channel": str(self.key), "event_id": event.id, "type": str(event.type)}


@dataclass(eq=False)
class _Lane:
    channel: Channel
    bucket: TokenBucket
    inflight: dict[_Slot, asyncio.Task[None]] = field(default_factory=dict)
    failures: int = RECOVERY_FAILURES
    """Failed attempts since the lane's latest success."""
    not_before: float = 0.0
    """The end of the channel's latest Retry-After: nothing is expedited before it."""


class Dispatcher:
    def __init__(
        self,
        *,
        store: Outbox,
        channels: Mapping[str, Channel],
        clock: Clock,
        rng: random.Random | None = None,
        poll_interval: float = 1.0,
        discovery_limit: int = 500,
        max_consecutive_errors: int = 30,
        on_result: ResultObserver | None = None,
        digest_limit: int = DIGEST_LIMIT,
        owner: str = "watcher",
    ) -> None:
        self._store = store
        self._owner = owner  # the replica: whose claims these are
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._poll_interval = poll_interval
        self._discovery_limit = discovery_limit
        self._max_errors = max_consecutive_errors
        self._on_result = on_result
        self._digest_limit = digest_limit
        self._lanes = {
            name: _Lane(
                channel=channel,
                bucket=TokenBucket(
                    rate=channel.config.rate_per_second, burst=channel.config.burst, clock=clock
                ),
            )
            for name, channel in channels.items()
        }
        self._configs = {name: channel.config for name, channel in channels.items()}
        self._wake = asyncio.Event()
        self._discovered_at = -math.inf

    # -- control ---------------------------------------------------------------------

    def wake(self) -> None:
        """Look for due deliveries now (call after committing new events)."""
        self._wake.set()

    async def run(self, *, stop: asyncio.Event, grace: float = 5.0) -> None:
        """Deliver until `stop` is set; then start nothing new, give attempts in flight
        `grace` seconds and cancel the rest (they stay pending for the next start).

        Store errors are logged and retried on the next tick; `max_consecutive_errors` of
        them in a row end the loop with the last one, so a dispatcher that cannot work
        fails the process instead of silently idling. Cancelling `run` cancels attempts
        in flight at once."""
        errors = 0
        await self._release_claims()  # a former life's, killed mid-attempt
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.dispatch_due()
                    errors = 0
                except Exception:
                    errors += 1
                    log.exception("dispatch_failed", consecutive=errors)
                    if errors >= self._max_errors:
                        raise
                await self._idle(stop)
            pending = self._tasks()
            if pending:
                await asyncio.wait(pending, timeout=grace)
        finally:
            await self._cancel_inflight()
            await self._release_claims()  # what was cancelled is due again, here or elsewhere

    async def drain(self, *, max_wait: float = 7 * 86_400.0) -> None:
        """Deliver until no delivery is pending (each delivered or dead), waiting on the
        clock between attempts: with a ManualClock days of back-off pass instantly. For
        tests and one-shot runs; raises TimeoutError when `max_wait` clock seconds pass."""
        deadline = self._clock.time() + max_wait
        try:
            while True:
                started = await self.dispatch_due()
                tasks = self._tasks()
                if tasks:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if started:
                    continue
                stats = await self._store.outbox_stats()
                if stats.pending == 0:
                    return
                if self._clock.time() >= deadline:
                    raise TimeoutError(f"{stats.pending} deliveries still pending")
                await self._clock.sleep(self._poll_interval)
        finally:
            await self._cancel_inflight()

    async def settle(self) -> None:
        """Wait until the attempts in flight have finished (starting no new ones)."""
        while tasks := self._tasks():
            await asyncio.wait(tasks)

    async def dispatch_due(self) -> int:
        """One pass: start every due delivery a lane has room for; returns how many."""
        now = self._clock.time()
        if self._clock.monotonic() - self._discovered_at >= self._poll_interval:
            # Once per tick, not on every pass: a pass follows every attempt's end, and
            # reading all that is due each time slows a burst's delivery down.
            self._discovered_at = self._clock.monotonic()
            await self._discover(now)
        started = 0
        for name, lane in self._lanes.items():
            room = lane.channel.config.concurrency - len(lane.inflight)
            if room <= 0:
                continue
            due = await self._store.due_deliveries(
                now=now, limit=room + len(lane.inflight), channels=[name]
            )
            for delivery in due:
                slot = _slot(delivery)
                if slot in lane.inflight or not serves(delivery.key, self._configs):
                    continue  # in flight (its group too), or for `_discover` to dead-letter
                if room == 0:
                    break
                lane.inflight[slot] = asyncio.create_task(
                    self._attempt(lane, delivery), name=f"deliver {delivery.key}"
                )
                room -= 1
                started += 1
        return started

    # -- internals -------------------------------------------------------------------

    async def _discover(self, now: float) -> None:
        """Dead-letter deliveries no configured channel serves (the channel was removed
        from the configuration): visible in `alerts list`, replayable. Not before they
        are UNKNOWN_CHANNEL_GRACE old: during a rolling update, a replica still on the
        old configuration sees the deliveries of a channel the new one added."""
        for delivery in await self._store.due_deliveries(now=now, limit=self._discovery_limit):
            if serves(delivery.key, self._configs):
                continue
            if now - delivery.created_at < UNKNOWN_CHANNEL_GRACE:
                continue
            shown = str(delivery.key)
            error = f"channel {shown!r} is not configured"
            await self._store.mark_failed(
                delivery.event.id, delivery.key, error=error, next_attempt_at=None
            )
            log.error("alert_dead", channel=shown, event_id=delivery.event.id, error=error)
            self._observe(delivery.channel, "dead", 0.0, None)

    async def _release_claims(self) -> None:
        try:
            await self._store.release_claims(self._owner)
        except Exception as exc:  # they expire by themselves
            log.warning("claims_not_released", owner=self._owner, error=str(exc))

    def _tasks(self) -> set[asyncio.Task[None]]:
        return {task for lane in self._lanes.values() for task in lane.inflight.values()}

    async def _idle(self, stop: asyncio.Event) -> None:
        await first_of(
            stop.wait(),
            self._wake.wait(),
            self._clock.sleep(self._poll_interval),
            among=self._tasks(),
        )

    async def _cancel_inflight(self) -> None:
        tasks = self._tasks()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(self, lane: _Lane, head: Delivery) -> None:
        """Send what `head` stands for (itself, or its group's next digest) and record
        the outcome."""
        name = head.channel
        try:
            await lane.bucket.acquire()
            claim_until = self._clock.time() + lane.channel.config.timeout + CLAIM_MARGIN
            batch = await self._batch(head, claim_until)
            if batch is None:
                return  # settled meanwhile, or another replica's dispatcher sends it
            if claim_until - self._clock.time() < lane.channel.config.timeout:
                # This process stalled (SIGSTOP, a long GC pause) since it claimed: the
                # claim would run out before the attempt could, and another replica
                # could then send it too. It is left to run out.
                log.warning("claim_too_short_to_send", **batch.fields())
                return
            started = self._clock.monotonic()
            result = await self._send(lane, batch)
            await self._settle(name, lane, batch, result, self._clock.monotonic() - started)
        except Exception:
            # The store could not record the outcome: the delivery stays pending and is
            # attempted again (at-least-once).
            log.exception("delivery_not_recorded", channel=name, event_id=head.event.id)
        finally:
            lane.inflight.pop(_slot(head), None)

    async def _batch(self, head: Delivery, claim_until: float) -> _Batch | None:
        """`head` alone, or its group's members due now (taken after the token, so that
        the digest carries what arrived while it waited), claimed until `claim_until`;
        None if none is left or another dispatcher holds them."""
        now = self._clock.time()
        if not head.group_key:
            claimed = await self._store.claim(
                head.event.id, head.key, now=now, until=claim_until, owner=self._owner
            )
            return _Batch(head.key, "", [head]) if claimed else None
        members = await self._store.take_group(
            head.key,
            head.group_key,
            now=now,
            limit=self._digest_limit,
            claim_until=claim_until,
            owner=self._owner,
        )
        if not members:
            return None
        digest = digest_of(members) if len(members) > 1 else None
        return _Batch(head.key, head.group_key, members, digest)

    async def _send(self, lane: _Lane, batch: _Batch) -> Result:
        config = lane.channel.config
        try:
            target = lane.channel.target(batch.key)
            if target is None:
                return Failed(f"channel {batch.key.channel!r} has no recipients")
            if batch.digest is None:
                work = target.send(batch.members[0].event)
            else:
                work = target.send_digest(batch.digest)
            # A digest is one attempt, within one timeout.
            return await within(self._clock, config.timeout, work)
        except (Timeout, TimeoutError):
            return Retry(f"timed out after {config.timeout:g}s")
        except Exception as exc:
            # A bug in a channel, not a delivery problem. No traceback: its frames' locals
            # hold URLs and keys that are secrets.
            error = f"unexpected {type(exc).__name__} in the channel"
            log.error("channel_error", error=error, **batch.fields())
            return Retry(error)

    def _backoff(self, lane: _Lane, attempt: int) -> float:
        config = lane.channel.config
        cap = min(config.retry_max_delay, config.retry_base_delay * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    async def _settle(
        self, name: str, lane: _Lane, batch: _Batch, result: Result, seconds: float
    ) -> None:
        """Record the outcome for every member, log it and observe one attempt (a digest
        counts once: the delivery metrics count messages, not the alerts in them)."""
        now = self._clock.time()
        fields = batch.fields()
        if isinstance(result, Sent):
            await self._mark_delivered(batch, now)
            log.info("alert_sent", attempt=batch.attempt, detail=result.detail or None, **fields)
            self._observe(name, "sent", seconds, None)
            recovered = lane.failures >= RECOVERY_FAILURES or batch.attempt > 1
            lane.failures = 0
            if recovered:
                await self._expedite(name, lane, now)
            return
        if result.reason is not None:
            fields["reason"] = result.reason
        error, next_at = self._after_failure(lane, batch, result, now)
        await self._mark_failed(batch, error, next_at)
        if isinstance(result, Retry) and next_at is not None:
            lane.failures += 1
            if result.after is not None:
                lane.not_before = max(lane.not_before, now + result.after)
        if next_at is None:
            log.error("alert_dead", attempt=batch.attempt, error=error, **fields)
            self._observe(name, "dead", seconds, result.reason)
        else:
            log.warning(
                "alert_retry",
                attempt=batch.attempt,
                error=error,
                retry_in=round(next_at - now, 3),
                **fields,
            )
            self._observe(name, "failed", seconds, result.reason)

    async def _expedite(self, name: str, lane: _Lane, now: float) -> None:
        """Release up to `concurrency` of the lane's slots waiting on back-off (see the
        module docstring)."""
        limit = lane.channel.config.concurrency
        try:
            count = await self._store.expedite(
                name, now=now, at=max(now, lane.not_before), limit=limit
            )
        except Exception as exc:  # they keep their back-off: late, not lost
            log.warning("expedite_failed", channel=name, error=str(exc))
            return
        if count:
            log.info("deliveries_expedited", channel=name, deliveries=count)

    def _after_failure(
        self, lane: _Lane, batch: _Batch, result: Retry | Failed, now: float
    ) -> tuple[str, float | None]:
        """The error to record and the next attempt (None: dead-letter)."""
        config = lane.channel.config
        attempt = batch.attempt
        if isinstance(result, Failed):
            return f"permanent: {result.error}", None
        if config.max_attempts is not None and attempt >= config.max_attempts:
            return f"{result.error} (gave up after {attempt} attempts)", None
        delay = result.after if result.after is not None else self._backoff(lane, attempt)
        if now + delay - batch.created_at > config.max_age:
            return f"{result.error} (undelivered for longer than max_age {config.max_age:g}s)", None
        if result.after is not None:
            # Marked in the store: no recovery here or on another replica releases it.
            return f"{RETRY_AFTER}{result.after:g}s: {result.error}", now + delay
        return result.error, now + delay

    async def _mark_delivered(self, batch: _Batch, at: float) -> None:
        if batch.group_key:
            # Also for a lone member: the group's next member waits group_interval.
            await self._store.mark_group_delivered(
                batch.key, batch.group_key, batch.event_ids, at=at
            )
        else:
            await self._store.mark_delivered(batch.members[0].event.id, batch.key, at=at)

    async def _mark_failed(self, batch: _Batch, error: str, next_at: float | None) -> None:
        # Under this replica's claim only: one that ran out and went to another replica
        # is that replica's to settle.
        if batch.group_key:
            await self._store.mark_group_failed(
                batch.key, batch.event_ids, error=error, next_attempt_at=next_at, owner=self._owner
            )
        else:
            await self._store.mark_failed(
                batch.members[0].event.id,
                batch.key,
                error=error,
                next_attempt_at=next_at,
                owner=self._owner,
            )

    def _observe(
        self, channel: str, outcome: Outcome, seconds: float, reason: Unconfirmed | None
    ) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(channel, outcome, seconds, reason)
        except Exception:
            log.exception("observer_failed", channel=channel)
