"""`watcher doctor`: the online checks, against the simulator and real receivers."""

from __future__ import annotations

from typing import Any

from tests.conftest import TOKEN
from tests.notify_fixtures import Receiver, free_port
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.doctor import Check, diagnose, render
from watcher.simulator import Simulator


def config(host: str, token: str, channels: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "workspaces": [{"name": "prod", "host": host, "auth": {"type": "pat", "token": token}}],
            "channels": channels,
        }
    )


def table(checks: list[Check]) -> dict[tuple[str, str], bool]:
    return {(c.target, c.check): c.ok for c in checks}


async def test_a_healthy_setup_passes_every_check(
    sim: Simulator, receiver: Receiver, clock: ManualClock
) -> None:
    """Good token, a workspace with a finished run, a live webhook: every check passes,
    one per endpoint the poller uses, and the table says so."""
    job = sim.workspace.create_job("etl")
    sim.workspace.start_run(job, setup_s=0, execution_s=5, cleanup_s=0)
    clock.advance(10)
    checks = await diagnose(
        config(sim.url, TOKEN, {"hook": {"type": "webhook", "url": receiver.url}}), clock=clock
    )
    assert [c.check for c in checks if c.target == "workspace prod"] == [
        "resolve",
        "runs/list active",
        "runs/list completed",
        "runs/get",
        "jobs/list",
        "jobs/get",
        "clock",
    ]
    assert all(c.ok for c in checks), render(checks)
    assert render(checks).endswith("8 checks, 0 failed")


async def test_a_bad_token_an_unreachable_host_and_a_dead_webhook_each_fail(
    sim: Simulator, clock: ManualClock
) -> None:
    """A refused token fails at the first call and stops there; a host nobody listens on
    fails to connect; a webhook whose server is gone cannot be reached. Each with a reason."""
    dead = f"http://127.0.0.1:{free_port()}"
    refused = await diagnose(config(sim.url, "dapi-wrong", {}), clock=clock)
    assert table(refused) == {
        ("workspace prod", "resolve"): True,
        ("workspace prod", "runs/list active"): False,
    }
    assert "403" in refused[-1].detail
    unreachable = await diagnose(
        config(dead, TOKEN, {"hook": {"type": "webhook", "url": f"{dead}/hook"}}), clock=clock
    )
    assert table(unreachable) == {
        ("workspace prod", "resolve"): True,
        ("workspace prod", "runs/list active"): False,
        ("channel hook", "reach"): False,
    }
    assert all(c.detail for c in unreachable)
    assert "✗ channel hook" in render(unreachable)
