"""Run metrics come from committed transitions: each finished run is observed exactly
once, job names live in one info series, deleted jobs' series go away. What a job costs
in series follows `metrics.per_job` and `metrics.result_state_label` (counted here, and
in docs/metrics.md); counters of configured channels and workspaces start at 0."""

from __future__ import annotations

import gc
import re
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import RestrictedRegistry
from prometheus_client.samples import Sample

from tests.wiring import config_for, daemon
from watcher.app import Daemon, run_once
from watcher.clock import ManualClock
from watcher.config import (
    Config,
    ConfigError,
    JobFilter,
    MetricsConfig,
    parse_config,
)
from watcher.databricks.models import Run, RunState
from watcher.domain import Category, JobRecord, RunRecord, Transition, TransitionKind
from watcher.metrics import Metrics
from watcher.pipeline import CommitReport
from watcher.simulator import Simulator

ROOT = Path(__file__).resolve().parent.parent


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


# -- built directly: label shapes, series counts, counters at zero ----------------------

RUN_FAMILIES = frozenset(
    {
        "databricks_run_queue_duration_seconds",
        "databricks_run_setup_duration_seconds",
        "databricks_run_execution_duration_seconds",
        "databricks_run_cleanup_duration_seconds",
        "databricks_run_duration_seconds",
        "databricks_runs_started",
        "databricks_runs_finished",
    }
)
"""The run metric families `metrics.per_job` and `metrics.result_state_label` shape."""
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def finished(
    job_id: int,
    run_id: int,
    state: str = "SUCCESS",
    *,
    ws: str = "prod",
    execution_ms: int = 200_000,
) -> Transition:
    """A run first seen finished (so also counted as started), with its four phases:
    5 s queued, 20 s setup, 200 s executing (unless told), 25 s cleanup."""
    end = START_MS + 50_000 + execution_ms
    run = Run(
        run_id=run_id,
        job_id=job_id,
        state=RunState(life_cycle_state="TERMINATED", result_state=state),
        start_time=START_MS,
        end_time=end,
        queue_duration=5_000,
        setup_duration=20_000,
        execution_duration=execution_ms,
        cleanup_duration=25_000,
    )
    record = RunRecord(
        workspace=ws,
        run_id=run_id,
        job_id=job_id,
        life_cycle_state="TERMINATED",
        result_state=state,
        start_time=START_MS,
        end_time=end,
        terminal=True,
        snapshot=run,
    )
    category = Category.SUCCESS if state == "SUCCESS" else Category.FAILURE
    return Transition(
        previous=None,
        record=record,
        kind=TransitionKind.FINISHED,
        category=category,
        raw_state=state,
    )


def commit(
    *transitions: Transition,
    jobs: dict[int, str],
    ws: str = "prod",
    deleted: Sequence[int] = (),
) -> CommitReport:
    return CommitReport(
        workspace=ws,
        transitions=transitions,
        events=(),
        jobs={job: JobRecord(workspace=ws, job_id=job, name=name) for job, name in jobs.items()},
        deleted_jobs=deleted,
        active_by_state={},
    )


def samples(metrics: Metrics) -> list[Sample]:
    return [s for family in metrics.registry.collect() for s in family.samples]


def of_job(metrics: Metrics, job_id: int) -> list[Sample]:
    return [s for s in samples(metrics) if s.labels.get("job_id") == str(job_id)]


def of_workspace(metrics: Metrics) -> list[Sample]:
    """The run series without job_id (the families exported per workspace)."""
    return [
        s
        for family in metrics.registry.collect()
        if family.name in RUN_FAMILIES
        for s in family.samples
        if "job_id" not in s.labels
    ]


def built(registry: CollectorRegistry | None = None, **settings: object) -> Metrics:
    config = MetricsConfig.model_validate(settings)
    return Metrics(registry=registry or CollectorRegistry(), config=config)


PER_JOB_SETTINGS: list[tuple[str, ...]] = [
    ("durations", "phases", "counts"),
    ("durations", "counts"),
    ("phases", "counts"),
    ("durations", "phases"),
    ("counts",),
    ("durations",),
    ("phases",),
    (),
]
SERIES: dict[tuple[tuple[str, ...], bool], tuple[int, int, int, int]] = {
    # (per_job, result_state_label): series of the job after one run, more for each further
    # result state of the job; run series of the workspace (no job_id) after that run,
    # more for each further result state in the workspace.
    (("durations", "phases", "counts"), True): (85, 81, 0, 0),
    (("durations", "counts"), True): (23, 19, 62, 62),
    (("phases", "counts"), True): (67, 63, 18, 18),
    (("durations", "phases"), True): (83, 80, 2, 1),
    (("counts",), True): (5, 1, 80, 80),
    (("durations",), True): (21, 18, 64, 63),
    (("phases",), True): (65, 62, 20, 19),
    ((), True): (3, 0, 82, 81),
    (("durations", "phases", "counts"), False): (85, 0, 0, 0),
    (("durations", "counts"), False): (23, 0, 62, 0),
    (("phases", "counts"), False): (67, 0, 18, 0),
    (("durations", "phases"), False): (83, 0, 2, 0),
    (("counts",), False): (5, 0, 80, 0),
    (("durations",), False): (21, 0, 64, 0),
    (("phases",), False): (65, 0, 20, 0),
    ((), False): (3, 0, 82, 0),
}


def count_series(per_job: tuple[str, ...], result_state_label: bool) -> tuple[int, int, int, int]:
    """Build Metrics with the setting, observe one finished run (4 phases) of one job and
    count the job's samples and the workspace's run samples; then a FAILED run of the job
    and count again."""
    metrics = built(per_job=list(per_job), result_state_label=result_state_label)
    metrics.observe_commit(commit(finished(1, 10), jobs={1: "etl"}))
    job, ws = len(of_job(metrics, 1)), len(of_workspace(metrics))
    metrics.observe_commit(commit(finished(1, 11, "FAILED"), jobs={1: "etl"}))
    return job, len(of_job(metrics, 1)) - job, ws, len(of_workspace(metrics)) - ws


def doc_row(per_job: tuple[str, ...], result_state_label: bool) -> str:
    counts = " | ".join(str(n) for n in SERIES[(per_job, result_state_label)])
    return f"| `[{', '.join(per_job)}]` | {str(result_state_label).lower()} | {counts} |"


@pytest.mark.parametrize("result_state_label", [True, False])
@pytest.mark.parametrize("per_job", PER_JOB_SETTINGS, ids=lambda p: "+".join(p) or "none")
def test_series_per_job_follow_the_settings(
    per_job: tuple[str, ...], result_state_label: bool
) -> None:
    """Counted from the registry, per setting (the default buckets: 15 for durations,
    setup and execution, 10 for queue and cleanup); docs/metrics.md shows the same."""
    assert count_series(per_job, result_state_label) == SERIES[(per_job, result_state_label)]
    doc = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert doc_row(per_job, result_state_label) in doc


def test_the_defaults_are_every_family_per_job_with_result_state() -> None:
    """Metrics without settings keeps the shape of earlier versions."""
    metrics = Metrics(registry=CollectorRegistry())
    metrics.observe_commit(commit(finished(1, 10), jobs={1: "etl"}))
    assert len(of_job(metrics, 1)) == SERIES[(("durations", "phases", "counts"), True)][0]
    assert of_workspace(metrics) == []


def test_families_switched_off_are_aggregated_per_workspace() -> None:
    """A family not in per_job loses job_id and adds up every job's runs; without
    result_state_label the finished counter and the histograms lose result_state."""
    metrics = built(per_job=["counts"], result_state_label=False)
    metrics.observe_commit(
        commit(finished(1, 10), finished(2, 20, "FAILED"), jobs={1: "etl", 2: "report"})
    )
    value = metrics.registry.get_sample_value
    assert value("databricks_run_duration_seconds_count", {"workspace": "prod"}) == 2
    assert value("databricks_run_duration_seconds_sum", {"workspace": "prod"}) == 2 * 245
    assert value("databricks_run_queue_duration_seconds_sum", {"workspace": "prod"}) == 10
    for job in ("1", "2"):
        assert value("databricks_runs_finished_total", {"workspace": "prod", "job_id": job}) == 1
        assert value("databricks_runs_started_total", {"workspace": "prod", "job_id": job}) == 1
    labels = {
        family.name: set(family.samples[0].labels) - {"le"}
        for family in metrics.registry.collect()
        if family.name in RUN_FAMILIES
    }
    assert labels == {
        "databricks_run_queue_duration_seconds": {"workspace"},
        "databricks_run_setup_duration_seconds": {"workspace"},
        "databricks_run_execution_duration_seconds": {"workspace"},
        "databricks_run_cleanup_duration_seconds": {"workspace"},
        "databricks_run_duration_seconds": {"workspace"},
        "databricks_runs_started": {"workspace", "job_id"},
        "databricks_runs_finished": {"workspace", "job_id"},
    }


def test_the_job_filter_limits_per_job_series_not_workspace_totals() -> None:
    """A job outside `metrics.jobs` gets no per-job series, but its runs count in the
    families exported per workspace."""
    metrics = built(
        per_job=["durations"],
        jobs={"exclude": {"names": ["noisy-*"]}},
    )
    metrics.observe_commit(
        commit(finished(1, 10), finished(2, 20), jobs={1: "etl", 2: "noisy-adhoc"})
    )
    assert of_job(metrics, 2) == []
    assert len(of_job(metrics, 1)) == SERIES[(("durations",), True)][0]
    value = metrics.registry.get_sample_value
    started = {"workspace": "prod"}
    assert value("databricks_runs_started_total", started) == 2
    finished_ok = {"workspace": "prod", "result_state": "SUCCESS"}
    assert value("databricks_runs_finished_total", finished_ok) == 2
    assert value("databricks_run_setup_duration_seconds_count", finished_ok) == 2


@pytest.mark.parametrize("per_job", [["durations", "phases", "counts"], ["phases"], []])
def test_deleted_jobs_and_forgotten_workspaces_lose_their_series(per_job: list[str]) -> None:
    """A deleted job loses its per-job series, not the workspace's totals (other jobs'
    runs are in them); a workspace this replica stops polling loses both."""
    metrics = built(per_job=per_job)
    metrics.observe_commit(commit(finished(1, 10), finished(2, 20), jobs={1: "etl", 2: "bi"}))
    metrics.observe_commit(commit(finished(3, 30, ws="dev"), jobs={3: "x"}, ws="dev"))
    workspace_series = {(s.name, tuple(sorted(s.labels.items()))) for s in of_workspace(metrics)}
    metrics.observe_commit(commit(jobs={}, deleted=[1]))
    assert of_job(metrics, 1) == []
    assert len(of_job(metrics, 2)) == len(of_job(metrics, 3)) > 0
    assert {(s.name, tuple(sorted(s.labels.items()))) for s in of_workspace(metrics)} == (
        workspace_series
    )
    metrics.forget_workspace("prod")
    left = [s for s in samples(metrics) if s.labels.get("workspace") == "prod"]
    assert [s for s in left if s.name.startswith("databricks_")] == []
    assert len(of_job(metrics, 3)) > 0
    assert [s for s in of_workspace(metrics) if s.labels["workspace"] == "prod"] == []


def test_counters_of_configured_channels_and_workspaces_start_at_zero() -> None:
    """Counters whose labels the config names exist at 0 before their first event, so
    `rate()` and `increase()` count that event; the run counters exported per workspace
    without result_state too, while this replica polls the workspace."""
    metrics = Metrics(
        registry=CollectorRegistry(),
        config=MetricsConfig(per_job=[], result_state_label=False),
        channels=["oncall", "team-chat"],
        workspaces=["prod", "dev"],
    )
    value = metrics.registry.get_sample_value
    for channel in ("oncall", "team-chat"):
        for name in (
            "watcher_alerts_sent_total",
            "watcher_alerts_failed_total",
            "watcher_alerts_dead_lettered_total",
            "watcher_alerts_silenced_total",
        ):
            assert value(name, {"channel": channel}) == 0, name
    for ws in ("prod", "dev"):
        for outcome in ("success", "failure"):
            assert value("watcher_poll_cycles_total", {"workspace": ws, "outcome": outcome}) == 0
        for name in (
            "watcher_api_throttled_seconds_total",
            "watcher_api_date_header_missing_total",
            "watcher_lease_takeovers_total",
            "watcher_fenced_commits_total",
            "databricks_runs_started_total",
            "databricks_runs_finished_total",
        ):
            assert value(name, {"workspace": ws}) == 0, name
        for endpoint in ("runs/list", "runs/get", "jobs/list", "jobs/get"):
            labels = {"workspace": ws, "endpoint": endpoint}
            assert value("watcher_api_items_rejected_total", labels) == 0
    # The per-workspace run series follow the lease, like the per-job ones.
    metrics.forget_workspace("prod")
    assert value("databricks_runs_started_total", {"workspace": "prod"}) is None
    assert value("watcher_poll_cycles_total", {"workspace": "prod", "outcome": "success"}) == 0
    metrics.restore([], "prod")
    assert value("databricks_runs_started_total", {"workspace": "prod"}) == 0
    metrics.observe_delivery("oncall", "sent", 0.1)
    assert value("watcher_alerts_sent_total", {"channel": "oncall"}) == 1


def test_run_counters_with_unknown_labels_are_not_made_up() -> None:
    """A counter with a job_id or result_state label has no series before a run: its label
    values are not in the config."""
    metrics = Metrics(registry=CollectorRegistry(), workspaces=["prod"])
    names = {s.name for s in samples(metrics)}
    assert "databricks_runs_started_total" not in names
    assert "databricks_runs_finished_total" not in names


def test_process_and_python_series_and_no_created_series() -> None:
    """The registry exports the process (Linux) and Python runtime series, and no
    `_created` series in either format."""
    metrics = built()
    metrics.observe_commit(commit(finished(1, 10), jobs={1: "etl"}))
    names = {family.name for family in metrics.registry.collect()}
    assert {
        "process_cpu_seconds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "python_info",
        "python_gc_collections",
    } <= names
    text = generate_latest(metrics.registry).decode()
    assert "databricks_runs_finished_total{" in text
    assert not re.search(r"^\w+_created[{ ]", text, flags=re.MULTILINE)
    assert [s.name for s in samples(metrics) if s.name.endswith("_created")] == []


def test_buckets_per_histogram() -> None:
    """Queue and cleanup default to seconds-scale buckets; run_buckets still sets setup,
    execution and duration; `buckets` overrides each."""

    def bounds(metrics: Metrics, family: str) -> list[str]:
        found = [
            s.labels["le"]
            for f in metrics.registry.collect()
            if f.name == family
            for s in f.samples
            if s.name.endswith("_bucket")
        ]
        return found

    metrics = built(run_buckets=[60, 3600])
    metrics.observe_commit(commit(finished(1, 10), jobs={1: "etl"}))
    short = ["0.5", "1.0", "2.0", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0", "+Inf"]
    assert bounds(metrics, "databricks_run_queue_duration_seconds") == short
    assert bounds(metrics, "databricks_run_cleanup_duration_seconds") == short
    for family in ("setup", "execution"):
        assert bounds(metrics, f"databricks_run_{family}_duration_seconds") == [
            "60.0",
            "3600.0",
            "+Inf",
        ]
    assert bounds(metrics, "databricks_run_duration_seconds") == ["60.0", "3600.0", "+Inf"]
    metrics = built(buckets={"queue": [1], "duration": [10, 100]})
    metrics.observe_commit(commit(finished(1, 10), jobs={1: "etl"}))
    assert bounds(metrics, "databricks_run_queue_duration_seconds") == ["1.0", "+Inf"]
    assert bounds(metrics, "databricks_run_duration_seconds") == ["10.0", "100.0", "+Inf"]
    assert len(bounds(metrics, "databricks_run_setup_duration_seconds")) == 16


METRICS_CONFIG = """
workspaces:
  - name: prod
    host: https://adb-1.2.azuredatabricks.net
    auth: {type: pat, token: dapi-fake}
metrics:
"""


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("  buckets: {queue: [2, 1]}", "metrics.buckets.queue: buckets must be positive"),
        ("  buckets: {cleanup: [0, 1]}", "metrics.buckets.cleanup: buckets must be positive"),
        ("  buckets: {setup: []}", "metrics.buckets.setup: List should have at least 1 item"),
        ("  buckets: {duration: [5, 5]}", "metrics.buckets.duration: buckets must be positive"),
        ("  buckets: {execution: [-1]}", "metrics.buckets.execution: buckets must be positive"),
        ("  buckets: {queu: [1]}", "metrics.buckets.queu: unknown key; did you mean `queue`?"),
        ("  run_buckets: [10, 1]", "metrics.run_buckets: buckets must be positive"),
        ("  per_job: [jobs]", "metrics.per_job.0: Input should be 'durations', 'phases' or"),
        ("  per_job: [counts, counts]", "metrics.per_job: per_job families must be unique"),
        ("  result_state_label: sometimes", "metrics.result_state_label: Input should be"),
    ],
)
def test_metrics_settings_errors_name_the_field(section: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(METRICS_CONFIG + section + "\n", env={})
    assert any(line.startswith(message) for line in caught.value.errors), caught.value.errors


def test_metrics_takes_a_config_or_the_older_keywords() -> None:
    with pytest.raises(TypeError, match="not both"):
        Metrics(registry=CollectorRegistry(), config=MetricsConfig(), run_buckets=[1.0])


DURATIONS_TEXT = """\
# HELP databricks_run_duration_seconds Total duration of finished runs (run_duration, else the phase sum), seconds.
# TYPE databricks_run_duration_seconds histogram
{job1}databricks_run_duration_seconds_bucket{{job_id="2",le="60.0",result_state="SUCCESS",workspace="prod"}} 0.0
databricks_run_duration_seconds_bucket{{job_id="2",le="300.0",result_state="SUCCESS",workspace="prod"}} 1.0
databricks_run_duration_seconds_bucket{{job_id="2",le="3600.0",result_state="SUCCESS",workspace="prod"}} 1.0
databricks_run_duration_seconds_bucket{{job_id="2",le="+Inf",result_state="SUCCESS",workspace="prod"}} 1.0
databricks_run_duration_seconds_count{{job_id="2",result_state="SUCCESS",workspace="prod"}} 1.0
databricks_run_duration_seconds_sum{{job_id="2",result_state="SUCCESS",workspace="prod"}} 245.0
"""  # noqa: E501 (exposition lines, as served)
JOB1_DURATIONS = """\
databricks_run_duration_seconds_bucket{job_id="1",le="60.0",result_state="SUCCESS",workspace="prod"} 1.0
databricks_run_duration_seconds_bucket{job_id="1",le="300.0",result_state="SUCCESS",workspace="prod"} 2.0
databricks_run_duration_seconds_bucket{job_id="1",le="3600.0",result_state="SUCCESS",workspace="prod"} 2.0
databricks_run_duration_seconds_bucket{job_id="1",le="+Inf",result_state="SUCCESS",workspace="prod"} 2.0
databricks_run_duration_seconds_count{job_id="1",result_state="SUCCESS",workspace="prod"} 2.0
databricks_run_duration_seconds_sum{job_id="1",result_state="SUCCESS",workspace="prod"} 300.0
databricks_run_duration_seconds_bucket{job_id="1",le="60.0",result_state="FAILED",workspace="prod"} 0.0
databricks_run_duration_seconds_bucket{job_id="1",le="300.0",result_state="FAILED",workspace="prod"} 0.0
databricks_run_duration_seconds_bucket{job_id="1",le="3600.0",result_state="FAILED",workspace="prod"} 0.0
databricks_run_duration_seconds_bucket{job_id="1",le="+Inf",result_state="FAILED",workspace="prod"} 1.0
databricks_run_duration_seconds_count{job_id="1",result_state="FAILED",workspace="prod"} 1.0
databricks_run_duration_seconds_sum{job_id="1",result_state="FAILED",workspace="prod"} 5045.0
"""  # noqa: E501 (exposition lines, as served)
FINISHED_OPENMETRICS = """\
# HELP databricks_runs_finished Runs seen finishing, by result state.
# TYPE databricks_runs_finished counter
{job1}databricks_runs_finished_total{{job_id="2",result_state="SUCCESS",workspace="prod"}} 1.0
# EOF
"""
JOB1_FINISHED = """\
databricks_runs_finished_total{job_id="1",result_state="SUCCESS",workspace="prod"} 2.0
databricks_runs_finished_total{job_id="1",result_state="FAILED",workspace="prod"} 1.0
"""


def openmetrics(registry: RestrictedRegistry) -> str:
    """The exposition in the OpenMetrics format (prometheus_client's is untyped)."""
    text: bytes = openmetrics_latest(registry)  # type: ignore[no-untyped-call]
    return text.decode()


def test_run_histograms_and_counters_expose_what_prometheus_client_did() -> None:
    """The run families are a custom collector keeping each series compactly: its
    exposition is prometheus_client's Histogram's and Counter's (cumulative buckets with
    their bounds, `_count` then `_sum`, `_total`, no `_created`), in both formats and for
    `?name[]=`; a deleted job's series go."""
    metrics = built(buckets={"duration": [60, 300, 3600]})
    metrics.observe_commit(
        commit(
            finished(1, 10, execution_ms=10_000),  # 55 s
            finished(1, 11),  # 245 s
            finished(1, 12, "FAILED", execution_ms=5_000_000),  # 5045 s: only in +Inf
            finished(2, 20),
            jobs={1: "etl", 2: "bi"},
        )
    )
    durations = metrics.registry.restricted_registry(
        [f"databricks_run_duration_seconds_{suffix}" for suffix in ("bucket", "count", "sum")]
    )
    runs = metrics.registry.restricted_registry(["databricks_runs_finished_total"])
    assert generate_latest(durations).decode() == DURATIONS_TEXT.format(job1=JOB1_DURATIONS)
    assert openmetrics(runs) == FINISHED_OPENMETRICS.format(job1=JOB1_FINISHED)
    value = metrics.registry.get_sample_value
    queue = "databricks_run_queue_duration_seconds"  # 5 s each, default buckets
    ok = {"workspace": "prod", "job_id": "1", "result_state": "SUCCESS"}
    assert value(f"{queue}_bucket", {**ok, "le": "2.0"}) == 0
    assert value(f"{queue}_bucket", {**ok, "le": "5.0"}) == 2
    assert value(f"{queue}_bucket", {**ok, "le": "+Inf"}) == 2
    assert value(f"{queue}_count", ok) == 2
    assert value(f"{queue}_sum", ok) == 10
    assert value("databricks_run_execution_duration_seconds_sum", ok) == 210
    assert value("databricks_runs_started_total", {"workspace": "prod", "job_id": "1"}) == 3
    metrics.observe_commit(commit(jobs={}, deleted=[1]))
    assert generate_latest(durations).decode() == DURATIONS_TEXT.format(job1="")
    assert openmetrics(runs) == FINISHED_OPENMETRICS.format(job1="")
    assert of_job(metrics, 1) == []
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        built(metrics.registry)  # the families describe their names to the registry


def test_the_series_of_a_job_take_little_memory() -> None:
    """What Python allocates per job, every family per job, two result states each (the
    jobs of bench/bench_memory.py): about 7 KB measured, 44 KB when the run families were
    prometheus_client Histograms and Counters (docs/metrics.md, "Memory"). The bound leaves
    room for other Python versions, not for a locked object per bucket again."""
    metrics = built()

    def observe(jobs: range) -> None:
        for job in jobs:
            runs = finished(job, 2 * job), finished(job, 2 * job + 1, "FAILED")
            metrics.observe_commit(commit(*runs, jobs={job: f"job-{job}"}))

    observe(range(1, 101))  # families, caches and code paths warmed up
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        observe(range(1_000, 2_000))
        gc.collect()
        per_job = (tracemalloc.get_traced_memory()[0] - before) / 1_000
    finally:
        tracemalloc.stop()
    assert len(of_job(metrics, 1_000)) == 85 + 81
    assert per_job < 12_000, f"{per_job:,.0f} bytes per job"
