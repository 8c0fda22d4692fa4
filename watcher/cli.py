"""Command line: the only place that reads argv and the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from watcher import __version__
from watcher.clock import AcceleratedClock
from watcher.simulator import RandomWorkload, Simulator, WorkloadSpec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="watcher", description="Watch Databricks job runs, alert, and export metrics."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    sim = commands.add_parser(
        "simulate", help="serve a simulated Databricks workspace (Jobs API) with a random workload"
    )
    sim.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    sim.add_argument(
        "--port", type=int, default=8765, help="port, 0 for any (default: %(default)s)"
    )
    sim.add_argument(
        "--jobs", type=int, default=12, help="jobs in the workload (default: %(default)s)"
    )
    sim.add_argument(
        "--speed",
        type=float,
        default=60.0,
        help="simulated seconds per real second (default: %(default)s)",
    )
    sim.add_argument(
        "--failure-rate",
        type=float,
        default=0.2,
        help="share of failing runs (default: %(default)s)",
    )
    sim.add_argument("--seed", type=int, default=7, help="workload seed (default: %(default)s)")
    sim.add_argument(
        "--token",
        default="dapi-simulator-token",
        help="accepted bearer token (default: %(default)s)",
    )
    sim.add_argument(
        "--duration", type=float, default=None, help="stop after this many real seconds"
    )
    return parser


async def _simulate(args: argparse.Namespace) -> int:
    clock = AcceleratedClock(speed=args.speed)
    sim = Simulator(clock=clock, tokens={args.token})
    RandomWorkload(
        sim.workspace, WorkloadSpec(jobs=args.jobs, failure_rate=args.failure_rate, seed=args.seed)
    )
    url = await sim.start(args.host, args.port)
    print(f"simulated Databricks workspace at {url} (token: {args.token}, x{args.speed:g} time)")
    print(f"  try: curl -H 'Authorization: Bearer {args.token}' {url}/api/2.1/jobs/runs/list")
    print(f"  scenario control: {url}/sim/state")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.duration)
    await sim.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        return asyncio.run(_simulate(args))
    return 2  # unreachable: argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
