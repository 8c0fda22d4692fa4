"""The daemon wired as `watcher run` wires it (app.build), in-process and in simulated time,
for tests that drive cycles themselves."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import TOKEN
from watcher.app import Daemon, build, close, run_once
from watcher.clock import Clock, ManualClock
from watcher.config import Config
from watcher.events import Event, EventType
from watcher.simulator import Simulator


def config_for(
    sim: Simulator,
    db: Path,
    *,
    name: str = "sim",
    top: dict[str, Any] | None = None,
    **workspace: Any,
) -> Config:
    """One workspace on `sim` (the client unthrottled: its throttle waits in real time),
    the store at `db`; `workspace` adds or replaces the workspace's keys, `top` adds
    top-level keys (channels, routes...)."""
    return Config.model_validate(
        {
            "workspaces": [
                {
                    "name": name,
                    "host": sim.url,
                    "auth": {"type": "pat", "token": TOKEN},
                    "requests_per_second": 1000,
                    **workspace,
                }
            ],
            "store": {"path": str(db)},
            "server": {"host": "127.0.0.1", "port": 0},
            **(top or {}),
        }
    )


@asynccontextmanager
async def daemon(config: Config, clock: Clock, **options: Any) -> AsyncIterator[Daemon]:
    """The built daemon, closed on the way out (nothing runs until the test says);
    `options` are build()'s other keywords (e.g. `console`)."""
    built = await build(config, clock=clock, **options)
    try:
        yield built
    finally:
        await close(built)


@dataclass
class Watched:
    """The daemon over the simulator, cycled by hand in manual time, with every event it
    committed."""

    sim: Simulator
    clock: ManualClock
    config: Config
    daemon: Daemon
    events: list[Event] = field(default_factory=list)

    async def cycle(self, seconds: float = 30) -> list[Event]:
        self.clock.advance(seconds)
        new = await run_once(self.daemon)
        self.events.extend(new)
        return new

    async def until(self, moment: datetime, step: float = 60) -> list[Event]:
        """Cycle every `step` seconds until `moment` (the last cycle at `moment`); the
        events of those cycles."""
        new: list[Event] = []
        while (left := moment.timestamp() - self.clock.time()) > 0:
            new += await self.cycle(min(step, left))
        return new

    async def restart(self) -> None:
        await close(self.daemon)
        self.daemon = await build(self.config, clock=self.clock, console=io.StringIO())

    def of_type(self, type_: EventType, job_id: int | None = None) -> list[Event]:
        return [
            e for e in self.events if e.type is type_ and (job_id is None or e.job.job_id == job_id)
        ]

    def resolved(self, kind: str) -> list[Event]:
        return [
            e
            for e in self.of_type(EventType.INCIDENT_RESOLVED)
            if e.incident is not None and e.incident.kind == kind
        ]

    def gauge(self, name: str, job_id: int) -> float | None:
        labels = {"workspace": "sim", "job_id": str(job_id)}
        return self.daemon.metrics.registry.get_sample_value(name, labels)


@asynccontextmanager
async def watching(sim: Simulator, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Watched]:
    """A `Watched` daemon over `sim` (a console channel, 30 s polls) after its first
    cycle (history), closed on the way out."""
    channels = {"out": {"type": "console"}}
    config = config_for(sim, tmp_path / "w.db", top={"channels": channels}, poll_interval=30)
    watch = Watched(sim, clock, config, await build(config, clock=clock, console=io.StringIO()))
    await watch.cycle()
    try:
        yield watch
    finally:
        await close(watch.daemon)
