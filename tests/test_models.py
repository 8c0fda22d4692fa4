"""The typed models: the reference's JSON examples parse, and the models tolerate what a
newer API sends (unknown fields, unknown enum values, absent fields)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from watcher.databricks.models import Job, JobsPage, Run, RunsPage

VECTORS = Path(__file__).parent / "vectors"


def _vector(name: str) -> bytes:
    return (VECTORS / f"{name}.json").read_bytes()


def test_reference_runs_list_example_parses() -> None:
    """The Jobs API 2.0 runs/list example parses with every documented value kept."""
    page = RunsPage.model_validate_json(_vector("runs_list"))
    assert page.has_more is True
    (run,) = page.runs
    assert (run.job_id, run.run_id, run.number_in_job) == (1, 452, 5)
    assert run.life_cycle_state == "RUNNING"
    assert run.result_state is None
    assert run.cluster_instance is not None
    assert run.cluster_instance.spark_context_id == "1102398-spark-context-id"
    assert (run.setup_duration, run.execution_duration, run.cleanup_duration) == (
        259754,
        3589020,
        31038,
    )
    assert run.run_duration == 3879812
    assert run.trigger == "PERIODIC"
    assert run.overriding_parameters == {"jar_params": ["param1", "param2"]}


def test_reference_runs_get_and_output_examples_parse() -> None:
    """runs/get and the run metadata inside runs/get-output parse to the same run."""
    run = Run.model_validate_json(_vector("runs_get"))
    meta = Run.model_validate(json.loads(_vector("runs_get_output"))["metadata"])
    assert run.run_id == meta.run_id == 452
    assert run.task == {
        "notebook_task": {"notebook_path": "/Users/someone@example.com/my-notebook"}
    }
    assert meta.state.result_state == "SUCCESS"
    assert meta.end_time is None  # absent in that example: not ended as far as we know
    assert not meta.has_ended


def test_reference_jobs_examples_parse() -> None:
    """jobs/get and jobs/list examples parse, including webhook notification ids."""
    job = Job.model_validate_json(_vector("jobs_get"))
    assert job.job_id == 1
    assert job.settings.name == "Nightly model training"
    assert job.settings.max_retries == 1
    assert job.settings.schedule is not None
    assert job.settings.schedule.pause_status == "UNPAUSED"
    assert job.settings.webhook_notifications is not None
    assert [w.id for w in job.settings.webhook_notifications.on_start] == [
        "bf2fbd0a-4a05-4300-98a5-303fc8132233"
    ]
    assert job.settings.email_notifications is not None
    assert job.settings.email_notifications.on_failure == []
    page = JobsPage.model_validate_json(_vector("jobs_list"))
    assert [j.job_id for j in page.jobs] == [1]
    assert page.jobs[0].created_time == 1457570074236


def test_unknown_fields_and_enum_values_are_tolerated() -> None:
    """A value Databricks adds later is kept as a string; unknown fields are ignored."""
    run = Run.model_validate(
        {
            "run_id": 9,
            "state": {"life_cycle_state": "HIBERNATING", "result_state": "PARTIALLY_EXPLODED"},
            "brand_new_field": {"nested": [1, 2]},
            "trigger": "SOLAR_FLARE",
            "tasks": [{"task_key": "t", "state": {"life_cycle_state": "NEW_STATE"}, "x": 1}],
        }
    )
    assert run.life_cycle_state == "HIBERNATING"
    assert run.result_state == "PARTIALLY_EXPLODED"
    assert run.trigger == "SOLAR_FLARE"
    assert not run.is_terminal
    assert run.tasks[0].state is not None
    assert run.tasks[0].state.life_cycle_state == "NEW_STATE"


def test_empty_page_may_omit_runs_and_has_more() -> None:
    """An empty runs/list page omits `runs`; 2.2 omits `has_more` too."""
    assert RunsPage.model_validate_json(b'{"has_more": false}').runs == []
    page = RunsPage.model_validate_json(b"{}")
    assert page.runs == []
    assert page.has_more is None
    assert page.next_page_token is None


@pytest.mark.parametrize(
    ("body", "ended", "terminal", "duration"),
    [
        (
            {"state": {"life_cycle_state": "RUNNING"}, "end_time": 0, "setup_duration": 5},
            False,
            False,
            None,
        ),
        (
            {
                "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
                "start_time": 1000,
                "end_time": 9000,
                "setup_duration": 1000,
                "execution_duration": 6000,
                "cleanup_duration": 1000,
            },
            True,
            True,
            8000,
        ),
        (
            {
                "state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED"},
                "start_time": 1000,
                "end_time": 61000,
                "setup_duration": 0,
                "execution_duration": 0,
                "cleanup_duration": 0,
                "run_duration": 55000,
            },
            True,
            True,
            55000,
        ),
        ({"state": {"life_cycle_state": "SKIPPED"}, "start_time": 7, "end_time": 7}, True, True, 0),
        ({"state": {"life_cycle_state": "PENDING"}}, False, False, None),
    ],
    ids=["running", "single-task-sum", "multitask-run_duration", "skipped", "no-timings"],
)
def test_end_time_zero_means_running_and_durations(
    body: dict[str, object], ended: bool, terminal: bool, duration: int | None
) -> None:
    """end_time 0 is "not ended"; total duration is run_duration or the phase sum, and
    unknown (None) while the run is active."""
    run = Run.model_validate({"run_id": 1, **body})
    assert run.has_ended is ended
    assert run.is_terminal is terminal
    assert run.duration_ms == duration


def test_models_are_immutable() -> None:
    """Observations are values: nothing downstream can edit a run in place."""
    run = Run.model_validate({"run_id": 1})
    with pytest.raises(ValueError, match="frozen"):
        run.run_id = 2  # type: ignore[misc]
