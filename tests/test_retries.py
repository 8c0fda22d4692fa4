"""Retries end to end through poller, tracker and store, in both retry models: a failed
attempt that will be retried pages only where the job says so, and never twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TOKEN
from tests.wiring import config_for, daemon
from watcher.app import run_once
from watcher.clock import ManualClock
from watcher.simulator import Simulator


@pytest.mark.parametrize(
    ("version", "in_run", "last_attempt_only", "expected"),
    [
        # 2.0: retries are new runs; alert_on_last_attempt holds back the retried failure.
        ("2.0", False, True, ["run_started", "run_started", "run_succeeded"]),
        (
            "2.0",
            False,
            False,
            ["run_started", "run_failed", "run_started", "run_succeeded", "job_recovered"],
        ),
        # 2.1+: task retries happen inside the job run, which ends once with the last result.
        ("2.1", True, True, ["run_started", "run_succeeded"]),
        ("2.2", True, False, ["run_started", "run_succeeded"]),
    ],
    ids=["2.0-last-attempt", "2.0-every-attempt", "2.1-in-run", "2.2-in-run"],
)
async def test_a_retried_failure_that_then_succeeds(
    clock: ManualClock,
    tmp_path: Path,
    version: str,
    in_run: bool,
    last_attempt_only: bool,
    expected: list[str],
) -> None:
    """A job with max_retries whose first attempt fails and whose retry succeeds."""
    async with Simulator(clock=clock, tokens={TOKEN}, in_run_retries=in_run) as sim:
        job = sim.workspace.create_job(
            "flaky",
            max_retries=1,
            min_retry_interval_ms=60_000,
            notification_settings={"alert_on_last_attempt": last_attempt_only},
        )
        config = config_for(sim, tmp_path / "r.db", api_version=version)
        events = []
        async with daemon(config, clock) as built:
            await run_once(built)  # first start: nothing yet
            sim.workspace.start_run(job, setup_s=5, execution_s=40, cleanup_s=5, result="FAILED")
            for _ in range(12):
                clock.advance(20)
                events += await run_once(built)
    assert [e.type.value for e in sorted(events, key=lambda e: e.occurred_at)] == expected
