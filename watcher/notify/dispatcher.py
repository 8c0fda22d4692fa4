"""The outbox dispatcher: delivers every pending (event, channel) pair at least once.

Each configured channel is a lane with its own token bucket and concurrency bound, and
each lane asks the store only for its own due deliveries, so a slow, throttled or dead
channel never holds back another. The store hands out at most one delivery per (channel,
recipient, workspace, job) at a time, so a job's alerts reach each target in order. All retry state
(attempts, next attempt time, dead letters) lives in the store: a restart resumes where
the last process stopped. Policy is decided here, once, from the channels' results:

- `Sent` -> delivered;
- `Retry` -> again after Retry-After when the target gave one, else full-jitter exponential
  back-off (uniform in [0, min(retry_max_delay, retry_base_delay * 2^(attempt-1))]);
- `Failed` (a permanent error), the `max_attempts`-th failure, or a retry that would fall
  past `max_age` after the alert was queued -> dead letter (kept, counted, replayable).

A result's `reason` (a redirect, an implausible 2xx) is logged and passed to the observer.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import structlog

from watcher.aio import Timeout, first_of, within
from watcher.clock import Clock
from watcher.notify.base import Channel, Failed, Result, Retry, Sent, Unconfirmed
from watcher.notify.ratelimit import TokenBucket
from watcher.notify.router import serves
from watcher.store.base import Delivery, DeliveryKey, Store

log = structlog.get_logger(__name__)

Outcome = Literal["sent", "failed", "dead"]
ResultObserver = Callable[[str, Outcome, float, Unconfirmed | None], None]
"""Called after every attempt with the channel name, the outcome, the seconds it took and
why an answer that looked like success was not taken as one (or None)."""


@dataclass(eq=False)
class _Lane:
    channel: Channel
    bucket: TokenBucket
    inflight: dict[tuple[str, DeliveryKey], asyncio.Task[None]] = field(default_factory=dict)


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        channels: Mapping[str, Channel],
        clock: Clock,
        rng: random.Random | None = None,
        poll_interval: float = 1.0,
        discovery_limit: int = 500,
        max_consecutive_errors: int = 30,
        on_result: ResultObserver | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._poll_interval = poll_interval
        self._discovery_limit = discovery_limit
        self._max_errors = max_consecutive_errors
        self._on_result = on_result
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
                key = (delivery.event.id, delivery.key)
                if key in lane.inflight or not serves(delivery.key, self._configs):
                    continue  # in flight, or for `_discover` to dead-letter
                if room == 0:
                    break
                lane.inflight[key] = asyncio.create_task(
                    self._attempt(lane, delivery), name=f"deliver {delivery.key}"
                )
                room -= 1
                started += 1
        return started

    # -- internals -------------------------------------------------------------------

    async def _discover(self, now: float) -> None:
        """Dead-letter deliveries no configured channel serves (the channel was removed
        from the configuration): visible in `alerts list`, replayable."""
        for delivery in await self._store.due_deliveries(now=now, limit=self._discovery_limit):
            if serves(delivery.key, self._configs):
                continue
            shown = str(delivery.key)
            error = f"channel {shown!r} is not configured"
            await self._store.mark_failed(
                delivery.event.id, delivery.key, error=error, next_attempt_at=None
            )
            log.error("alert_dead", channel=shown, event_id=delivery.event.id, error=error)
            self._observe(delivery.channel, "dead", 0.0, None)

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

    async def _attempt(self, lane: _Lane, delivery: Delivery) -> None:
        name = delivery.channel
        try:
            await lane.bucket.acquire()
            started = self._clock.monotonic()
            result = await self._send(lane, delivery)
            await self._settle(name, lane, delivery, result, self._clock.monotonic() - started)
        except Exception:
            # The store could not record the outcome: the delivery stays pending and is
            # attempted again (at-least-once).
            log.exception("delivery_not_recorded", channel=name, event_id=delivery.event.id)
        finally:
            lane.inflight.pop((delivery.event.id, delivery.key), None)

    async def _send(self, lane: _Lane, delivery: Delivery) -> Result:
        config = lane.channel.config
        try:
            target = lane.channel.target(delivery.key)
            if target is None:
                return Failed(f"channel {delivery.channel!r} has no recipients")
            return await within(self._clock, config.timeout, target.send(delivery.event))
        except (Timeout, TimeoutError):
            return Retry(f"timed out after {config.timeout:g}s")
        except Exception as exc:
            # A bug in a channel, not a delivery problem. No traceback: its frames' locals
            # hold URLs and keys that are secrets.
            error = f"unexpected {type(exc).__name__} in the channel"
            log.error(
                "channel_error", channel=str(delivery.key), event_id=delivery.event.id, error=error
            )
            return Retry(error)

    def _backoff(self, lane: _Lane, attempt: int) -> float:
        config = lane.channel.config
        cap = min(config.retry_max_delay, config.retry_base_delay * 2 ** (attempt - 1))
        return self._rng.uniform(0, cap)

    async def _settle(
        self, name: str, lane: _Lane, delivery: Delivery, result: Result, seconds: float
    ) -> None:
        event = delivery.event
        now = self._clock.time()
        attempt = delivery.attempts + 1
        fields = {"channel": str(delivery.key), "event_id": event.id, "type": str(event.type)}
        if isinstance(result, Sent):
            await self._store.mark_delivered(event.id, delivery.key, at=now)
            log.info("alert_sent", attempt=attempt, detail=result.detail or None, **fields)
            self._observe(name, "sent", seconds, None)
            return
        config = lane.channel.config
        error = result.error
        if result.reason is not None:
            fields["reason"] = result.reason
        next_at: float | None = None
        if isinstance(result, Failed):
            error = f"permanent: {error}"
        elif config.max_attempts is not None and attempt >= config.max_attempts:
            error = f"{error} (gave up after {attempt} attempts)"
        else:
            delay = result.after if result.after is not None else self._backoff(lane, attempt)
            if now + delay - delivery.created_at > config.max_age:
                error = f"{error} (undelivered for longer than max_age {config.max_age:g}s)"
            else:
                next_at = now + delay
        await self._store.mark_failed(event.id, delivery.key, error=error, next_attempt_at=next_at)
        if next_at is None:
            log.error("alert_dead", attempt=attempt, error=error, **fields)
            self._observe(name, "dead", seconds, result.reason)
        else:
            log.warning(
                "alert_retry",
                attempt=attempt,
                error=error,
                retry_in=round(next_at - now, 3),
                **fields,
            )
            self._observe(name, "failed", seconds, result.reason)

    def _observe(
        self, channel: str, outcome: Outcome, seconds: float, reason: Unconfirmed | None
    ) -> None:
        if self._on_result is None:
            return
        try:
            self._on_result(channel, outcome, seconds, reason)
        except Exception:
            log.exception("observer_failed", channel=channel)
