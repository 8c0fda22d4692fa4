"""Alert latency benchmark: detection (a run ends -> its event is committed) and delivery
(committed -> the webhook receiver has it), p50 and p99, in real time.

    .venv/bin/python bench/bench_latency.py [--duration 60] [--poll-interval 5] [--jobs 20]

The daemon (`watcher.app.build` + `serve`, SQLite store, one webhook channel) watches the
Simulator over real HTTP on the system clock; a feeder starts short runs of `--jobs` jobs
(a few seconds each, one in five failing), `--runs` a second on average (Poisson), for
`--duration` seconds, then the outbox is left to drain. Detection is the event's commit
time in the store less the run's end_time; delivery is the receiver's arrival time less
the commit time, also split into the first `burst` alerts of each commit and the rest,
which the channel's token bucket paces. Goals: detection p99 <= poll interval + 1 s,
delivery p99 <= 1 s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from watcher.app import build, serve
from watcher.clock import SystemClock
from watcher.config import Config
from watcher.logs import configure_logging
from watcher.simulator import Simulator
from watcher.store.rows import read_event

TOKEN = "dapi-bench-latency-token"  # noqa: S105 - the simulator's own
ALERTING = ["run_failed", "run_succeeded"]
BURST = 10
"""The webhook channel's default burst."""


def config(
    *, url: str, hook: str, store: Path, poll_interval: float, limits: dict[str, float]
) -> Config:
    return Config.model_validate(
        {
            "workspaces": [
                {
                    "name": "bench",
                    "host": url,
                    "auth": {"type": "pat", "token": TOKEN},
                    "poll_interval": poll_interval,
                    "requests_per_second": 100,
                }
            ],
            "store": {"path": str(store)},
            "server": {"host": "127.0.0.1", "port": 0},
            "startup": {"lookback": 0},
            "channels": {"hook": {"type": "webhook", "url": hook, **limits}},
            "routes": [{"match": {"event_types": ALERTING}, "channels": ["hook"]}],
        }
    )


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"p50 {statistics.median(ordered):6.3f} s   p99 {p99:6.3f} s   "
        f"max {ordered[-1]:6.3f} s   n={len(ordered)}"
    )


async def feed(
    sim: Simulator, jobs: list[int], *, per_second: float, until: float, rng: random.Random
) -> int:
    """Start short runs, `per_second` on average, until `until` (monotonic); how many."""
    started = 0
    while time.monotonic() < until:
        sim.workspace.start_run(
            rng.choice(jobs),
            setup_s=0,
            execution_s=rng.uniform(1, 5),
            cleanup_s=0,
            result="FAILED" if rng.random() < 0.2 else "SUCCESS",
        )
        started += 1
        await asyncio.sleep(rng.expovariate(per_second))
    return started


def committed(db: Path) -> dict[str, tuple[float, float]]:
    """Event id -> (run end, commit time), epoch seconds, of the alerting events."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT id, type, payload, created_at FROM events").fetchall()
    finally:
        conn.close()
    found = {}
    for event_id, type_, payload, created_at in rows:
        event = read_event(payload)
        if type_ in ALERTING and event.run is not None and event.run.end_time:
            found[str(event_id)] = (event.run.end_time / 1000, float(created_at))
    return found


async def bench(args: argparse.Namespace) -> None:
    clock = SystemClock()
    arrivals: dict[str, float] = {}

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        arrivals.setdefault(request.headers["webhook-id"], time.time())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    hook = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    sim = Simulator(clock=clock, tokens={TOKEN})
    jobs = [sim.workspace.create_job(f"bench-{n}") for n in range(args.jobs)]
    url = await sim.start("127.0.0.1", 0)
    stop = asyncio.Event()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "latency.db"
            limits = {"rate_per_second": args.rate, "burst": args.burst}
            cfg = config(
                url=url,
                hook=hook,
                store=db,
                poll_interval=args.poll_interval,
                limits={k: v for k, v in limits.items() if v is not None},
            )
            daemon = await build(cfg, clock=clock)
            served = asyncio.create_task(serve(daemon, stop=stop, clock=clock))
            try:
                await asyncio.sleep(args.poll_interval + 1)  # past the first (backfill) cycle
                until = time.monotonic() + args.duration
                started = await feed(
                    sim, jobs, per_second=args.runs, until=until, rng=random.Random(args.seed)
                )
                deadline = time.monotonic() + 2 * args.poll_interval + 15
                while time.monotonic() < deadline:  # the last runs end, are seen, delivered
                    await asyncio.sleep(1)
                    events = committed(db)
                    if len(events) >= started and set(events) <= set(arrivals):
                        break
            finally:
                stop.set()
                await served
            events = committed(db)
    finally:
        stop.set()
        await sim.stop()
        await runner.cleanup()
    detection = [at - end for end, at in events.values()]
    delivery = [arrivals[i] - at for i, (_, at) in events.items() if i in arrivals]
    by_commit: dict[float, list[float]] = {}
    for i, (_, at) in events.items():
        if i in arrivals:
            by_commit.setdefault(at, []).append(arrivals[i] - at)
    burst = args.burst or BURST
    within = [d for ds in by_commit.values() for d in sorted(ds)[:burst]]
    paced = [d for ds in by_commit.values() for d in sorted(ds)[burst:]]
    shown = f"rate {args.rate or 'default'}/s, burst {args.burst or 'default'}"
    print(
        f"{started} runs started over {args.duration:g} s, {len(events)} alerting events "
        f"committed, {len(delivery)} delivered; poll interval {args.poll_interval:g} s; "
        f"webhook {shown}"
    )
    print(f"detection (run end -> committed)   {percentiles(detection)}")
    print(f"  goal p99 <= {args.poll_interval + 1:g} s (poll interval + 1 s)")
    print(f"delivery  (committed -> receiver)  {percentiles(delivery)}")
    print("  goal p99 <= 1 s")
    print(f"  first {burst} of a commit           {percentiles(within)}")
    print(f"  the rest (rate-limited)          {percentiles(paced)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="real seconds of runs")
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--runs", type=float, default=1.0, help="runs ending per second")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=None, help="the channel's rate_per_second")
    parser.add_argument("--burst", type=int, default=None, help="the channel's burst")
    configure_logging(level="WARNING", fmt="console", stream=sys.stderr)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
