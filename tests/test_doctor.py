"""`watcher doctor`: the online checks, against the simulator and real receivers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import TOKEN
from tests.notify_fixtures import Receiver, free_port
from tests.pg import DSN, open_store, pg_schema
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.doctor import Check, _store, diagnose, render
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
    assert render(checks).endswith("9 checks, 0 failed")


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
        ("store", "sqlite"): True,
    }
    assert "403" in refused[-2].detail
    unreachable = await diagnose(
        config(dead, TOKEN, {"hook": {"type": "webhook", "url": f"{dead}/hook"}}), clock=clock
    )
    assert table(unreachable) == {
        ("workspace prod", "resolve"): True,
        ("workspace prod", "runs/list active"): False,
        ("channel hook", "reach"): False,
        ("store", "sqlite"): True,
    }
    assert all(c.detail for c in unreachable)
    assert "✗ channel hook" in render(unreachable)


async def test_the_store_check_opens_postgres_and_never_creates_a_sqlite_file(
    tmp_path: Path, clock: ManualClock
) -> None:
    """PostgreSQL is opened and written (a fresh schema is left to `watcher run` to
    migrate); an unreachable one fails without its password in the reason. A SQLite
    file that does not exist yet is not created by the doctor, only its directory
    checked."""
    workspaces = [
        {"name": "prod", "host": "http://127.0.0.1:1", "auth": {"type": "pat", "token": TOKEN}}
    ]
    async with pg_schema() as schema:
        good = Config.model_validate(
            {"workspaces": workspaces, "store": {"postgres": {"dsn": DSN, "schema": schema}}}
        )
        fresh = await _store(good)  # reachable, not migrated by the doctor
        assert fresh.ok
        assert fresh.detail.startswith("reachable; `watcher run` migrates it")
        migrated = await open_store(schema)  # migrated, as `watcher run` would
        await migrated.close()
        assert await _store(good) == Check("store", "postgres", True, "opens and takes a write")
    bad_dsn = f"postgresql://watcher:not-a-real-password@127.0.0.1:{free_port()}/x"
    bad = Config.model_validate(
        {"workspaces": workspaces, "store": {"postgres": {"dsn": bad_dsn, "connect_timeout": 2}}}
    )
    failed = await _store(bad)
    assert not failed.ok
    assert "not-a-real-password" not in failed.detail
    assert "127.0.0.1" in failed.detail
    db = tmp_path / "state" / "watcher.db"
    lite = Config.model_validate({"workspaces": workspaces, "store": {"path": str(db)}})
    assert (await _store(lite)).ok
    assert not db.parent.exists()
