"""Recovery benchmark: how fast the outbox drains once a channel answers again.

    .venv/bin/python bench/bench_recovery.py [--seeds 5] [--outage 120]

A real webhook receiver (aiohttp) answering 503, and a real SMTP server (aiosmtpd) that is
not listening, are down for `--outage` seconds while alerts arrive evenly (30 webhook
alerts of 10 jobs, 15 emails of 15 jobs); then they answer again. The dispatcher runs
over a SQLiteStore on a ManualClock, ticking every poll interval (1 s) as `run` does, so
minutes of back-off pass in simulated time. Printed per channel and dispatcher: alerts
still queued N seconds after the receiver recovered (at the first poll tick since), and
from the receiver's own records the time to its first accepted alert, to its last (all
drained) and between the two, the worst of `--seeds` seeds. "main at start" is the
dispatcher without the release of waiting deliveries after a success (the behaviour
before it). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from watcher.clock import ManualClock
from watcher.config.channels import EmailChannelConfig, WebhookChannelConfig
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, JobRef, event_id
from watcher.logs import configure_logging
from watcher.notify.base import Channel
from watcher.notify.dispatcher import Dispatcher
from watcher.notify.email import EmailChannel
from watcher.notify.webhook import WebhookChannel
from watcher.store.base import CycleCommit, DeliveryKey
from watcher.store.sqlite import SQLiteStore

INTERVAL = 1.0
AFTER = (10, 30, 60, 120, 240)
"""Seconds after recovery at which the queue is reported."""
MAIN_AT_START = (
    "main at start (measured before this change): 2-minute webhook outage -> 30 alerts "
    "still queued 120 s after recovery, next attempts up to 240 s away; email: 15 waiting"
)


class MainAtStart(Dispatcher):
    """The dispatcher as it was: a success releases nothing; each waits out its back-off."""

    async def _expedite(self, *args: object, **kwargs: object) -> None:
        return None


def alert(n: int, job: int, at: float) -> Event:
    run = Run(
        run_id=n,
        job_id=job,
        run_name=f"job-{job}",
        state=RunState(life_cycle_state="TERMINATED", result_state="FAILED"),
        start_time=int(at * 1000) - 60_000,
        end_time=int(at * 1000),
    )
    return Event(
        id=event_id("prod", n, str(EventType.RUN_FAILED), None),
        type=EventType.RUN_FAILED,
        workspace="prod",
        occurred_at=datetime.fromtimestamp(at, UTC),
        job=JobRef(job_id=job, name=f"job-{job}", tags={}),
        run=run,
        raw_state="FAILED",
    )


@dataclass
class Target:
    """A receiver that can be taken down and brought back; when it accepted each alert."""

    channel: Callable[[], Channel]
    down: Callable[[], Awaitable[None]]
    up: Callable[[], Awaitable[None]]
    stop: Callable[[], Awaitable[None]]
    accepted: list[float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def webhook_target(clock: ManualClock) -> Target:
    state = {"up": False}
    accepted: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if not state["up"]:
            return web.Response(status=503, text="down")
        accepted.append(clock.time())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"

    def channel() -> Channel:
        config = WebhookChannelConfig.model_validate({"type": "webhook", "url": url})
        return WebhookChannel("hook", config, clock=clock)

    async def down() -> None:
        state["up"] = False

    async def up() -> None:
        state["up"] = True

    return Target(channel, down, up, runner.cleanup, accepted)


@dataclass
class _Sink:
    clock: ManualClock
    accepted: list[float]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted.append(self.clock.time())
        return "250 OK"


async def smtp_target(clock: ManualClock) -> Target:
    port = free_port()
    servers: list[asyncio.Server] = []
    sink = _Sink(clock, [])

    def channel() -> Channel:
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
        return EmailChannel("hook", config, clock=clock)

    async def down() -> None:
        while servers:
            server = servers.pop()
            server.close()
            await server.wait_closed()

    async def up() -> None:
        loop = asyncio.get_running_loop()
        servers.append(await loop.create_server(lambda: SMTP(sink), "127.0.0.1", port))

    return Target(channel, down, up, down, sink.accepted)


@dataclass
class Outcome:
    queued: dict[int, int]
    first_success: float
    drained: float


async def pump(d: Dispatcher) -> None:
    """What `run` does until its next poll tick: start what is due, again as attempts end."""
    while await d.dispatch_due():
        await d.settle()


async def scenario(
    target: Target,
    clock: ManualClock,
    kind: type[Dispatcher],
    *,
    alerts: int,
    jobs: int,
    outage: float,
    seed: int,
) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        store = await SQLiteStore.open(Path(tmp) / "bench.db")
        channel = target.channel()
        d = kind(store=store, channels={"hook": channel}, clock=clock, rng=random.Random(seed))
        try:
            return await _play(store, clock, d, target, alerts=alerts, jobs=jobs, outage=outage)
        finally:
            await channel.close()
            await store.close()


async def _play(
    store: SQLiteStore,
    clock: ManualClock,
    d: Dispatcher,
    target: Target,
    *,
    alerts: int,
    jobs: int,
    outage: float,
) -> Outcome:
    await target.down()
    start, every = clock.time(), outage / alerts
    sent = 0
    while clock.time() < start + outage:
        while sent < alerts and sent * every <= clock.time() - start:
            event = alert(sent, sent % jobs, clock.time())
            await store.commit_cycle(
                CycleCommit(
                    workspace="prod",
                    watermark_ms=int(clock.time() * 1000),
                    committed_at=clock.time(),
                    events=[event],
                    channels={event.id: [DeliveryKey("hook")]},
                )
            )
            sent += 1
        await pump(d)
        clock.advance(INTERVAL)
    await target.up()
    recovered = clock.time()
    queued: dict[int, int] = {}
    while clock.time() - recovered < 86_400:
        await pump(d)
        pending = (await store.outbox_stats()).pending
        for n in AFTER:
            if n not in queued and clock.time() - recovered >= n:
                queued[n] = pending
        if pending == 0:
            break
        clock.advance(INTERVAL)
    done = [at - recovered for at in target.accepted]
    return Outcome({n: queued.get(n, 0) for n in AFTER}, min(done), max(done))


async def bench(args: argparse.Namespace) -> None:
    print(MAIN_AT_START)
    print(
        f"outage {args.outage:g} s, poll interval {INTERVAL:g} s, rate 5/s burst 10, "
        f"back-off 2 s doubling to 300 s; worst of {args.seeds} seeds (median drain)"
    )
    header = "  ".join(f"+{n}s" for n in AFTER)
    print(
        f"{'channel':<9}{'dispatcher':<15}queued at {header}   first ok   "
        "drained (median)   after first ok"
    )
    for name, make, alerts, jobs in (
        ("webhook", webhook_target, 30, 10),
        ("smtp", smtp_target, 15, 15),
    ):
        for label, kind in (("main at start", MainAtStart), ("current", Dispatcher)):
            outcomes = []
            for seed in range(args.seeds):
                clock = ManualClock()
                target = await make(clock)
                try:
                    outcomes.append(
                        await scenario(
                            target,
                            clock,
                            kind,
                            alerts=alerts,
                            jobs=jobs,
                            outage=args.outage,
                            seed=seed,
                        )
                    )
                finally:
                    await target.stop()
            queued = "  ".join(
                f"{max(o.queued[n] for o in outcomes):>{len(str(n)) + 2}}" for n in AFTER
            )
            first = max(o.first_success for o in outcomes)
            drained = [o.drained for o in outcomes]
            tail = max(o.drained - o.first_success for o in outcomes)
            print(
                f"{name:<9}{label:<15}          {queued}   {first:6.1f} s   "
                f"{max(drained):5.1f} s ({statistics.median(drained):5.1f} s) {tail:8.1f} s",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="back-off jitter seeds")
    parser.add_argument("--outage", type=float, default=120.0, help="seconds the receiver is down")
    configure_logging(level="ERROR", fmt="console", stream=sys.stderr)  # retries are the point
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
