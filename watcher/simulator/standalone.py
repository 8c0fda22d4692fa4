"""The simulated workspace on its own (`watcher simulate`, `python -m watcher.simulator`):
a random workload in accelerated time, served until SIGINT/SIGTERM or `duration` real
seconds. Knows nothing of the watcher: the CLI calls in, never the other way round."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TextIO

from watcher.clock import AcceleratedClock
from watcher.simulator.server import Simulator
from watcher.simulator.workload import RandomWorkload, WorkloadSpec

TOKEN = "dapi-simulator-token"  # noqa: S105 - the simulator's own, accepted by it alone


async def simulate(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    jobs: int = 12,
    speed: float = 60.0,
    failure_rate: float = 0.2,
    seed: int = 7,
    token: str = TOKEN,
    duration: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Serve the simulated workspace until a signal or `duration`; the exit code (0)."""
    out = out or sys.stdout
    clock = AcceleratedClock(speed=speed)
    sim = Simulator(clock=clock, tokens={token})
    spec = WorkloadSpec(jobs=jobs, failure_rate=failure_rate, seed=seed)
    RandomWorkload(sim.workspace, spec)
    url = await sim.start(host, port)
    print(f"simulated Databricks workspace at {url} (token: {token}, x{speed:g} time)", file=out)
    print(f"  try: curl -H 'Authorization: Bearer {token}' {url}/api/2.1/jobs/runs/list", file=out)
    print(f"  scenario control: {url}/sim/state", file=out)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=duration)
    await sim.stop()
    return 0
