"""`watcher demo`: the whole system in one command, on a simulated workspace in
accelerated time, with alerts printed to the console. No account, no config file."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
from pathlib import Path
from typing import TextIO

from watcher.app import Daemon, build, serve
from watcher.clock import AcceleratedClock
from watcher.config import Config
from watcher.simulator import RandomWorkload, Simulator, Troubles, WorkloadSpec

TOKEN = "dapi-demo-simulator-token"  # noqa: S105 - the simulator's own, accepts nothing else
ALERTING = [
    "run_succeeded",
    "run_failed",
    "run_canceled",
    "run_skipped",
    "run_duration_exceeded",
    "job_recovered",
    # What Databricks never reports: the simulator's `Troubles` cause one of each within
    # the first simulated hour (stuck at 10 min, missed at 15-20, not running at 35, stale
    # at 60: about a minute of the demo at its default speed), each resolved by 105 min.
    "run_stuck",
    "run_missed",
    "job_not_running",
    "job_stale",
    "incident_resolved",
]


def demo_config(*, url: str, store: Path, port: int) -> Config:
    return Config.model_validate(
        {
            "workspaces": [
                {
                    "name": "demo",
                    "host": url,
                    "auth": {"type": "pat", "token": TOKEN},
                    "poll_interval": 15,
                    "job_settings_ttl": 300,
                }
            ],
            "store": {"path": str(store)},
            "server": {"host": "127.0.0.1", "port": port},
            "startup": {"lookback": 0},
            # Sized for the Troubles: a run queued 10 minutes is stuck, a trigger 5 minutes
            # late is missed, every job's settings are read each simulated minute.
            "stuck": {"seconds": 600},
            "expectations": {"grace": 300, "jobs_every": 60},
            "channels": {"console": {"type": "console"}},
            "routes": [{"match": {"event_types": ALERTING}, "channels": ["console"]}],
        }
    )


def summary(daemon: Daemon, simulated: float) -> str:
    """What the demo saw, from its metrics (the store is closed by then)."""
    registry = daemon.metrics.registry

    def total(name: str, label: str | None = None) -> dict[str, float]:
        sums: dict[str, float] = {}
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    key = sample.labels.get(label, "") if label else ""
                    sums[key] = sums.get(key, 0.0) + sample.value
        return sums

    finished = total("databricks_runs_finished_total", "result_state")
    results = ", ".join(f"{int(n)} {state}" for state, n in sorted(finished.items()) if n)
    alerts = int(sum(total("watcher_alerts_sent_total").values()))
    incidents = int(sum(total("watcher_incidents_opened_total").values()))
    return (
        f"watcher demo: done after {simulated / 60:.0f} simulated minutes: "
        f"{int(sum(finished.values()))} runs finished ({results or 'none'}), "
        f"{alerts} alerts sent, {incidents} incidents opened"
    )


async def run_demo(
    *,
    duration: float | None,
    speed: float,
    port: int,
    jobs: int,
    seed: int,
    out: TextIO,
) -> int:
    clock = AcceleratedClock(speed=speed)
    sim = Simulator(clock=clock, tokens={TOKEN}, in_run_retries=True)  # as 2.1+ retry tasks
    RandomWorkload(sim.workspace, WorkloadSpec(jobs=jobs, seed=seed))
    Troubles(sim.workspace)
    url = await sim.start("127.0.0.1", 0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def banner(daemon: Daemon) -> None:
        assert daemon.server is not None
        print(f"watcher demo: {jobs} simulated jobs and 4 in trouble, time x{speed:g}", file=out)
        print(
            f"  the clock is simulated: each real second is {speed:g} simulated seconds, "
            "and alert times are simulated times",
            file=out,
        )
        print(f"  simulated Databricks workspace  {url}  (token {TOKEN})", file=out)
        print(f"  Prometheus metrics              {daemon.server.url}/metrics", file=out)
        print(f"  status and readiness            {daemon.server.url}/status  /readyz", file=out)
        stop_hint = f"for {duration:g} s" if duration else "until Ctrl-C"
        print(f"  alerts follow, {stop_hint}:", file=out, flush=True)

    async def stop_later() -> None:
        if duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration)
            stop.set()

    timer = asyncio.create_task(stop_later())
    try:
        with tempfile.TemporaryDirectory(prefix="watcher-demo-") as tmp:
            config = demo_config(url=url, store=Path(tmp) / "demo.db", port=port)
            daemon = await build(config, clock=clock, console=out)
            began = clock.time()
            code = await serve(daemon, stop=stop, clock=clock, on_ready=banner, shutdown_grace=2)
            print(summary(daemon, clock.time() - began), file=out, flush=True)
            return code
    finally:
        timer.cancel()
        await sim.stop()
