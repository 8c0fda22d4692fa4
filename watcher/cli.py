"""Command line: the only place that reads argv and the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from watcher import __version__
from watcher.config import Config, ConfigError, load_config
from watcher.logs import configure_logging
from watcher.store.base import StoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watcher",
        description="Watch Databricks job runs, alert on failures and duration breaches, "
        "and export run metrics to Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c",
            "--config",
            type=Path,
            default=os.environ.get("WATCHER_CONFIG"),
            required="WATCHER_CONFIG" not in os.environ,
            help="configuration file (default: $WATCHER_CONFIG)",
        )
        return sub

    with_config("run", "run the daemon until SIGTERM/SIGINT")
    with_config("check-config", "validate a configuration file (exit 0 valid, 2 invalid)")
    once = with_config("once", "poll every workspace once and print the events as JSON lines")
    once.add_argument("--dry-run", action="store_true", help="decide events but commit nothing")
    test_alert = with_config("test-alert", "send a clearly marked test alert through a channel")
    test_alert.add_argument("--channel", required=True, help="channel name from the config")
    alerts = with_config("alerts", "inspect or replay dead-lettered alerts")
    alerts.add_argument("action", choices=["list", "retry"], help="list dead letters or retry them")
    alerts.add_argument("--event", action="append", help="only this event id (repeatable)")

    demo = commands.add_parser(
        "demo",
        help="the whole system on a simulated workspace: no account, no config needed",
        description="Start a simulated Databricks workspace with a lively workload in "
        "accelerated time, the watcher against it, alerts printed to the console, and "
        "the metrics server.",
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after N real seconds")
    demo.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    demo.add_argument("--port", type=int, default=9108, help="metrics port (0 = any)")
    demo.add_argument("--jobs", type=int, default=12, help="jobs in the workload")
    demo.add_argument("--seed", type=int, default=7, help="workload seed")

    sim = commands.add_parser(
        "simulate", help="serve a simulated Databricks workspace (Jobs API) with a random workload"
    )
    sim.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    sim.add_argument("--port", type=int, default=8765, help="port, 0 for any")
    sim.add_argument("--jobs", type=int, default=12, help="jobs in the workload")
    sim.add_argument("--speed", type=float, default=60.0, help="simulated seconds per second")
    sim.add_argument("--failure-rate", type=float, default=0.2, help="share of failing runs")
    sim.add_argument("--seed", type=int, default=7, help="workload seed")
    sim.add_argument("--token", default="dapi-simulator-token", help="accepted bearer token")
    sim.add_argument("--duration", type=float, default=None, help="stop after N real seconds")
    return parser


def _load(path: Path, out: TextIO) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: invalid configuration", file=out)
        for line in exc.errors:
            print(f"  {line}", file=out)
        return None


def _stop_on_signals(stop: asyncio.Event) -> None:
    # Handlers only set the event; shutdown itself happens in the serving task.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def _run(config: Config) -> int:
    from watcher.app import build, serve

    stop = asyncio.Event()
    _stop_on_signals(stop)  # before build: a SIGTERM during start-up still stops cleanly
    daemon = await build(config)
    return await serve(daemon, stop=stop)


async def _once(config: Config, dry_run: bool) -> int:
    from watcher.app import build, close, run_once

    daemon = await build(config, dry_run=dry_run)
    try:
        for event in await run_once(daemon):
            print(event.model_dump_json(exclude_none=True), flush=True)
    finally:
        await close(daemon)
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    from watcher.clock import AcceleratedClock
    from watcher.simulator import RandomWorkload, Simulator, WorkloadSpec

    clock = AcceleratedClock(speed=args.speed)
    sim = Simulator(clock=clock, tokens={args.token})
    spec = WorkloadSpec(jobs=args.jobs, failure_rate=args.failure_rate, seed=args.seed)
    RandomWorkload(sim.workspace, spec)
    url = await sim.start(args.host, args.port)
    print(f"simulated Databricks workspace at {url} (token: {args.token}, x{args.speed:g} time)")
    print(f"  try: curl -H 'Authorization: Bearer {args.token}' {url}/api/2.1/jobs/runs/list")
    print(f"  scenario control: {url}/sim/state")
    stop = asyncio.Event()
    _stop_on_signals(stop)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.duration)
    await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: str = args.command
    if command == "simulate":
        return asyncio.run(_simulate(args))
    if command == "demo":
        from watcher.demo import run_demo

        configure_logging(level="WARNING", fmt="console")
        return asyncio.run(
            run_demo(
                duration=args.duration,
                speed=args.speed,
                port=args.port,
                jobs=args.jobs,
                seed=args.seed,
                out=sys.stdout,
            )
        )
    config = _load(args.config, sys.stderr)
    if config is None:
        return 2
    if command == "check-config":
        print(
            f"{args.config}: OK ({len(config.workspaces)} workspaces, "
            f"{len(config.channels)} channels, {len(config.routes)} routes)"
        )
        return 0
    configure_logging(level=config.logging.level, fmt=config.logging.format)
    try:
        if command == "run":
            return asyncio.run(_run(config))
        if command == "once":
            return asyncio.run(_once(config, args.dry_run))
        if command == "test-alert":
            from watcher.notify.cli import test_alert

            return asyncio.run(test_alert(config, args.channel, sys.stdout))
        from watcher.notify.cli import dead_letters

        return asyncio.run(dead_letters(config, args.action, args.event, sys.stdout))
    except StoreError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
