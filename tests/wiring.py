"""The daemon wired as `watcher run` wires it (app.build), in-process and in simulated time,
for tests that drive cycles themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.conftest import TOKEN
from watcher.app import Daemon, build, close
from watcher.clock import Clock
from watcher.config import Config
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
