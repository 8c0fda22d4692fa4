"""Run metrics come from committed transitions: each finished run is observed exactly
once, job names live in one info series, deleted jobs' series go away."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.conftest import TOKEN
from watcher.clock import ManualClock
from watcher.config import HealthRulesConfig, JobFilter, StartupConfig, WorkspaceConfig
from watcher.databricks import JobsClient, StaticToken
from watcher.metrics import Metrics
from watcher.pipeline import Pipeline
from watcher.poller import Poller
from watcher.simulator import Simulator
from watcher.store.sqlite import SQLiteStore


@dataclass
class Rig:
    sim: Simulator
    clock: ManualClock
    store: SQLiteStore
    metrics: Metrics
    poller: Poller
    pipeline: Pipeline
    client: JobsClient

    async def cycle(self) -> None:
        await self.pipeline.handle(await self.poller.poll())

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


async def _rig(
    sim: Simulator, clock: ManualClock, store: SQLiteStore, jobs: JobFilter | None = None
) -> Rig:
    metrics = Metrics(registry=CollectorRegistry(), jobs=jobs)
    config = WorkspaceConfig.model_validate(
        {
            "name": "prod",
            "host": sim.url,
            "auth": {"type": "pat", "token": TOKEN},
            "job_settings_ttl": 0,
        }
    )
    client = JobsClient(host=sim.url, auth=StaticToken(SecretStr(TOKEN)), clock=clock)
    poller = Poller(config=config, startup=StartupConfig(), client=client, state=store, clock=clock)
    pipeline = Pipeline(
        store=store,
        health_rules=HealthRulesConfig(),
        startup=StartupConfig(),
        clock=clock,
        on_commit=metrics.observe_commit,
    )
    return Rig(sim, clock, store, metrics, poller, pipeline, client)


@pytest.fixture
async def rig(sim: Simulator, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Rig]:
    store = await SQLiteStore.open(tmp_path / "m.db")
    built = await _rig(sim, clock, store)
    await built.cycle()  # first start: nothing to backfill
    yield built
    await built.client.close()
    await store.close()


async def test_finished_runs_are_observed_once_with_their_phases(rig: Rig) -> None:
    """Queue, setup, execution, cleanup and total durations land in the histograms in
    seconds, once per run however many cycles see it finished."""
    ws = rig.sim.workspace
    job = ws.create_job("etl")
    ws.start_run(job, queue_s=5, setup_s=20, execution_s=100, cleanup_s=10)
    ws.start_run(job, setup_s=1, execution_s=30, cleanup_s=1, result="FAILED")
    await rig.cycle()
    assert rig.value("databricks_runs_active", workspace="prod", life_cycle_state="QUEUED") == 1
    assert rig.value("databricks_runs_active", workspace="prod", life_cycle_state="PENDING") == 1
    rig.clock.advance(600)
    for _ in range(3):
        await rig.cycle()
    labels = {"workspace": "prod", "job_id": str(job), "result_state": "SUCCESS"}
    assert rig.value("databricks_run_duration_seconds_count", **labels) == 1
    assert rig.value("databricks_run_duration_seconds_sum", **labels) == 130
    assert rig.value("databricks_run_queue_duration_seconds_sum", **labels) == 5
    assert rig.value("databricks_run_setup_duration_seconds_sum", **labels) == 20
    assert rig.value("databricks_run_execution_duration_seconds_sum", **labels) == 100
    assert rig.value("databricks_run_cleanup_duration_seconds_sum", **labels) == 10
    assert rig.value("databricks_runs_finished_total", **labels) == 1
    assert rig.value("databricks_runs_finished_total", **{**labels, "result_state": "FAILED"}) == 1
    assert rig.value("databricks_runs_started_total", workspace="prod", job_id=str(job)) == 2
    assert rig.value("databricks_runs_active", workspace="prod", life_cycle_state="QUEUED") == 0
    end = rig.sim.workspace.runs[min(rig.sim.workspace.runs)].end_ms
    assert end is not None
    assert (
        rig.value(
            "databricks_job_last_success_timestamp_seconds", workspace="prod", job_id=str(job)
        )
        == end / 1000
    )
    assert rig.value("databricks_job_info", workspace="prod", job_id=str(job), job_name="etl") == 1


async def test_a_restart_does_not_observe_old_runs_again(rig: Rig) -> None:
    """A new process (fresh metrics, same store) counts only what changes after it starts."""
    ws = rig.sim.workspace
    job = ws.create_job("etl")
    ws.start_run(job, execution_s=10)
    rig.clock.advance(100)
    await rig.cycle()
    again = await _rig(rig.sim, rig.clock, rig.store)
    await again.cycle()
    await again.client.close()
    labels = {"workspace": "prod", "job_id": str(job), "result_state": "SUCCESS"}
    assert rig.value("databricks_runs_finished_total", **labels) == 1
    assert again.value("databricks_runs_finished_total", **labels) == 0


async def test_a_restart_restores_job_timestamps_and_names(rig: Rig) -> None:
    """Last success / last finish and the job's name come back from the store at start,
    so "no success for N hours" alerts keep working across restarts."""
    ws = rig.sim.workspace
    job = ws.create_job("etl")
    ok = ws.start_run(job, execution_s=10)
    rig.clock.advance(100)
    ws.start_run(job, execution_s=10, result="FAILED")
    rig.clock.advance(100)
    await rig.cycle()
    again = await _rig(rig.sim, rig.clock, rig.store)
    again.metrics.restore(await rig.store.job_times())
    await again.client.close()
    labels = {"workspace": "prod", "job_id": str(job)}
    success_end = ws.runs[ok].end_ms
    assert success_end is not None
    assert (
        again.value("databricks_job_last_success_timestamp_seconds", **labels) == success_end / 1000
    )
    assert again.value("databricks_job_last_finish_timestamp_seconds", **labels) == rig.value(
        "databricks_job_last_finish_timestamp_seconds", **labels
    )
    assert again.value("databricks_job_info", **labels, job_name="etl") == 1


async def test_renames_keep_one_series_and_deleted_jobs_vanish(rig: Rig) -> None:
    """A renamed job keeps its job_id series with one info series under the new name; a
    job deleted from the workspace loses its per-job series."""
    ws = rig.sim.workspace
    job = ws.create_job("old-name", duration_threshold_s=20)
    ws.start_run(job, execution_s=30)
    rig.clock.advance(100)
    await rig.cycle()
    ws.jobs[job].settings["name"] = "new-name"
    ws.start_run(job, execution_s=1)
    rig.clock.advance(100)
    await rig.cycle()
    text = rig.metrics.registry.get_sample_value
    assert (
        text(
            "databricks_job_info", {"workspace": "prod", "job_id": str(job), "job_name": "old-name"}
        )
        is None
    )
    assert (
        rig.value("databricks_job_info", workspace="prod", job_id=str(job), job_name="new-name")
        == 1
    )
    assert (
        rig.value(
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
    rig.clock.advance(100)
    await rig.cycle()
    names = {
        s.name
        for m in rig.metrics.registry.collect()
        for s in m.samples
        if s.labels.get("job_id") == str(job)
    }
    assert names == set()


async def test_job_filter_limits_per_job_series(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    """Jobs outside the metrics job filter get no per-job series (cardinality guard)."""
    store = await SQLiteStore.open(tmp_path / "f.db")
    rig = await _rig(
        sim, clock, store, jobs=JobFilter.model_validate({"exclude": {"names": ["noisy-*"]}})
    )
    await rig.cycle()
    keep = sim.workspace.create_job("etl")
    drop = sim.workspace.create_job("noisy-adhoc")
    sim.workspace.start_run(keep, execution_s=1)
    sim.workspace.start_run(drop, execution_s=1)
    clock.advance(100)
    await rig.cycle()
    labels = {m.labels.get("job_id") for f in rig.metrics.registry.collect() for m in f.samples}
    assert str(keep) in labels
    assert str(drop) not in labels
    await rig.client.close()
    await store.close()
