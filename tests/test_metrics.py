"""Run metrics come from committed transitions: each finished run is observed exactly
once, job names live in one info series, deleted jobs' series go away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.wiring import config_for, daemon
from watcher.app import Daemon, run_once
from watcher.clock import ManualClock
from watcher.config import Config, JobFilter
from watcher.simulator import Simulator


@pytest.fixture
def config(sim: Simulator, tmp_path: Path) -> Config:
    """Workspace `prod` on the simulator; job settings are fetched again every cycle."""
    return config_for(sim, tmp_path / "m.db", name="prod", job_settings_ttl=0)


@pytest.fixture
async def started(config: Config, clock: ManualClock) -> AsyncIterator[Daemon]:
    """The daemon as `watcher run` builds it, after its first cycle (a first start:
    nothing to backfill)."""
    async with daemon(config, clock) as built:
        await run_once(built)
        yield built


def value(built: Daemon, name: str, **labels: str) -> float:
    found = built.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_finished_runs_are_observed_once_with_their_phases(
    started: Daemon, sim: Simulator, clock: ManualClock
) -> None:
    """Queue, setup, execution, cleanup and total durations land in the histograms in
    seconds, once per run however many cycles see it finished."""
    ws = sim.workspace
    job = ws.create_job("etl")
    ws.start_run(job, queue_s=5, setup_s=20, execution_s=100, cleanup_s=10)
    ws.start_run(job, setup_s=1, execution_s=30, cleanup_s=1, result="FAILED")
    await run_once(started)
    assert (
        value(started, "databricks_runs_active", workspace="prod", life_cycle_state="QUEUED") == 1
    )
    assert (
        value(started, "databricks_runs_active", workspace="prod", life_cycle_state="PENDING") == 1
    )
    clock.advance(600)
    for _ in range(3):
        await run_once(started)
    labels = {"workspace": "prod", "job_id": str(job), "result_state": "SUCCESS"}
    assert value(started, "databricks_run_duration_seconds_count", **labels) == 1
    assert value(started, "databricks_run_duration_seconds_sum", **labels) == 130
    assert value(started, "databricks_run_queue_duration_seconds_sum", **labels) == 5
    assert value(started, "databricks_run_setup_duration_seconds_sum", **labels) == 20
    assert value(started, "databricks_run_execution_duration_seconds_sum", **labels) == 100
    assert value(started, "databricks_run_cleanup_duration_seconds_sum", **labels) == 10
    assert value(started, "databricks_runs_finished_total", **labels) == 1
    assert (
        value(started, "databricks_runs_finished_total", **{**labels, "result_state": "FAILED"})
        == 1
    )
    assert value(started, "databricks_runs_started_total", workspace="prod", job_id=str(job)) == 2
    assert (
        value(started, "databricks_runs_active", workspace="prod", life_cycle_state="QUEUED") == 0
    )
    end = ws.runs[min(ws.runs)].end_ms
    assert end is not None
    assert (
        value(
            started,
            "databricks_job_last_success_timestamp_seconds",
            workspace="prod",
            job_id=str(job),
        )
        == end / 1000
    )
    assert (
        value(started, "databricks_job_info", workspace="prod", job_id=str(job), job_name="etl")
        == 1
    )


async def test_a_restart_does_not_observe_old_runs_again(
    config: Config, sim: Simulator, clock: ManualClock
) -> None:
    """A new process (fresh metrics, same store) counts only what changes after it starts."""
    ws = sim.workspace
    async with daemon(config, clock) as first:
        await run_once(first)  # first start: nothing to backfill
        job = ws.create_job("etl")
        ws.start_run(job, execution_s=10)
        clock.advance(100)
        await run_once(first)
    async with daemon(config, clock) as again:
        await run_once(again)
    labels = {"workspace": "prod", "job_id": str(job), "result_state": "SUCCESS"}
    assert value(first, "databricks_runs_finished_total", **labels) == 1
    assert value(again, "databricks_runs_finished_total", **labels) == 0


async def test_a_restart_restores_job_timestamps_and_names(
    config: Config, sim: Simulator, clock: ManualClock
) -> None:
    """Last success / last finish and the job's name come back from the store at start
    (app.build restores them), so "no success for N hours" alerts keep working across
    restarts."""
    ws = sim.workspace
    async with daemon(config, clock) as first:
        await run_once(first)  # first start: nothing to backfill
        job = ws.create_job("etl")
        ok = ws.start_run(job, execution_s=10)
        clock.advance(100)
        ws.start_run(job, execution_s=10, result="FAILED")
        clock.advance(100)
        await run_once(first)
    async with daemon(config, clock) as again:
        pass  # started: no cycle yet
    labels = {"workspace": "prod", "job_id": str(job)}
    success_end = ws.runs[ok].end_ms
    assert success_end is not None
    assert (
        value(again, "databricks_job_last_success_timestamp_seconds", **labels)
        == success_end / 1000
    )
    assert value(again, "databricks_job_last_finish_timestamp_seconds", **labels) == value(
        first, "databricks_job_last_finish_timestamp_seconds", **labels
    )
    assert value(again, "databricks_job_info", **labels, job_name="etl") == 1


async def test_renames_keep_one_series_and_deleted_jobs_vanish(
    started: Daemon, sim: Simulator, clock: ManualClock
) -> None:
    """A renamed job keeps its job_id series with one info series under the new name; a
    job deleted from the workspace loses its per-job series."""
    ws = sim.workspace
    job = ws.create_job("old-name", duration_threshold_s=20)
    ws.start_run(job, execution_s=30)
    clock.advance(100)
    await run_once(started)
    ws.jobs[job].settings["name"] = "new-name"
    ws.start_run(job, execution_s=1)
    clock.advance(100)
    await run_once(started)
    text = started.metrics.registry.get_sample_value
    assert (
        text(
            "databricks_job_info", {"workspace": "prod", "job_id": str(job), "job_name": "old-name"}
        )
        is None
    )
    assert (
        value(
            started, "databricks_job_info", workspace="prod", job_id=str(job), job_name="new-name"
        )
        == 1
    )
    assert (
        value(
            started,
            "databricks_run_duration_rule_breaches_total",
            workspace="prod",
            job_id=str(job),
            rule="job",
        )
        == 1
    )
    ws.delete_job(job)
    ws.start_run(ws.create_job("other"), execution_s=1)
    other_run = max(ws.runs)
    ws.runs[other_run].job_id = job  # a run of the deleted job, still listed
    clock.advance(100)
    await run_once(started)
    names = {
        s.name
        for m in started.metrics.registry.collect()
        for s in m.samples
        if s.labels.get("job_id") == str(job)
    }
    assert names == set()


async def test_job_filter_limits_per_job_series(
    config: Config, sim: Simulator, clock: ManualClock
) -> None:
    """Jobs outside the metrics job filter get no per-job series (cardinality guard)."""
    noisy = JobFilter.model_validate({"exclude": {"names": ["noisy-*"]}})
    filtered = config.model_copy(
        update={"metrics": config.metrics.model_copy(update={"jobs": noisy})}
    )
    async with daemon(filtered, clock) as built:
        await run_once(built)
        keep = sim.workspace.create_job("etl")
        drop = sim.workspace.create_job("noisy-adhoc")
        sim.workspace.start_run(keep, execution_s=1)
        sim.workspace.start_run(drop, execution_s=1)
        clock.advance(100)
        await run_once(built)
    labels = {m.labels.get("job_id") for f in built.metrics.registry.collect() for m in f.samples}
    assert str(keep) in labels
    assert str(drop) not in labels
