"""Evidence that the simulator speaks real Databricks: the official databricks-sdk, a
client this project did not write, reads it unchanged."""

from __future__ import annotations

import asyncio
from typing import Any

from databricks.sdk import WorkspaceClient

from tests.conftest import TOKEN
from watcher.clock import ManualClock
from watcher.simulator import Simulator, TaskPlan


def _read_with_sdk(url: str, job_id: int, multitask_run: int) -> dict[str, Any]:
    client = WorkspaceClient(host=url, token=TOKEN)
    jobs = list(client.jobs.list())
    job = client.jobs.get(job_id)
    runs = list(client.jobs.list_runs(job_id=job_id, limit=7))
    active = list(client.jobs.list_runs(active_only=True))
    completed = list(client.jobs.list_runs(completed_only=True, limit=25))
    multi = client.jobs.get_run(multitask_run)
    return {
        "jobs": jobs,
        "job": job,
        "runs": runs,
        "active": active,
        "completed": completed,
        "multi": multi,
    }


async def test_databricks_sdk_reads_the_simulator(sim: Simulator, clock: ManualClock) -> None:
    """jobs.list, jobs.get, jobs.list_runs over several pages and jobs.get_run return
    the values the simulator was scripted with."""
    ws = sim.workspace
    etl = ws.create_job(
        "nightly-etl", tags={"team": "data"}, duration_threshold_s=900, max_retries=1
    )
    other = ws.create_job("other", task_keys=["extract", "load"])
    run_ids = []
    for n in range(20):
        run_ids.append(
            ws.start_run(
                etl,
                setup_s=30,
                execution_s=120,
                cleanup_s=10,
                result="FAILED" if n == 5 else "SUCCESS",
            )
        )
        clock.advance(600)
    running = ws.start_run(etl, execution_s=3600)
    multi = ws.start_run(
        other,
        tasks=[TaskPlan("extract", execution_ms=10_000), TaskPlan("load", execution_ms=20_000)],
    )
    clock.advance(15)
    got = await asyncio.get_running_loop().run_in_executor(
        None, _read_with_sdk, sim.url, etl, multi
    )

    assert sorted((j.job_id, j.settings.name) for j in got["jobs"]) == [
        (etl, "nightly-etl"),
        (other, "other"),
    ]
    job = got["job"]
    assert job.settings.tags == {"team": "data"}
    # 2.1+ shows every job in multi-task format: retries live on the task.
    assert [(t.task_key, t.max_retries) for t in job.settings.tasks] == [("main", 1)]
    (rule,) = job.settings.health.rules
    assert (rule.metric.value, rule.op.value, rule.value) == (
        "RUN_DURATION_SECONDS",
        "GREATER_THAN",
        900,
    )

    runs = got["runs"]
    # 20 scripted runs + 1 retry of the failure + the running one, newest first, every page.
    assert len(runs) == 22
    assert [r.start_time for r in runs] == sorted((r.start_time for r in runs), reverse=True)
    assert runs[0].run_id == running
    assert runs[0].state.life_cycle_state.value == "RUNNING"
    assert runs[0].end_time == 0
    finished = [r for r in runs if r.run_id in run_ids]
    assert [r.run_id for r in finished] == run_ids[::-1]
    assert {r.setup_duration for r in finished} == {30_000}
    assert {r.execution_duration for r in finished} == {120_000}
    retry = next(r for r in runs if r.attempt_number == 1)
    assert retry.original_attempt_run_id == run_ids[5]
    assert (
        sum(
            r.state.result_state is not None and r.state.result_state.value == "FAILED"
            for r in runs
        )
        == 1
    )

    assert {r.run_id for r in got["active"]} == {running, multi}
    assert running not in {r.run_id for r in got["completed"]}
    assert len(got["completed"]) == 21

    multi_run = got["multi"]
    assert [t.task_key for t in multi_run.tasks] == ["extract", "load"]
    assert multi_run.state.life_cycle_state.value == "RUNNING"
    assert {t.task_key: t.state.life_cycle_state.value for t in multi_run.tasks} == {
        "extract": "TERMINATED",
        "load": "RUNNING",
    }
    # The SDK paged runs/list with tokens and asked the 2.2 API.
    assert {r.version for r in sim.requests} == {"2.2"}
    assert any("page_token" in r.params for r in sim.api_requests("runs/list"))


async def test_databricks_sdk_repairs_a_run_and_reads_its_history(
    sim: Simulator, clock: ManualClock
) -> None:
    """jobs.repair_run re-runs a failed run's failed task under the same run id, and
    jobs.get_run(include_history=True) reads the repair_history, ORIGINAL then REPAIR."""
    job = sim.workspace.create_job("multi", task_keys=["extract", "load"])
    run_id = sim.workspace.start_run(
        job, tasks=[TaskPlan("extract"), TaskPlan("load", result="FAILED")]
    )
    clock.advance(600)
    loop = asyncio.get_running_loop()
    # Built off the loop: the client asks the host for its metadata as it starts.
    client = await loop.run_in_executor(None, lambda: WorkspaceClient(host=sim.url, token=TOKEN))
    waiter: Any = await loop.run_in_executor(
        None, lambda: client.jobs.repair_run(run_id, rerun_all_failed_tasks=True)
    )
    clock.advance(600)
    run: Any = await loop.run_in_executor(
        None, lambda: client.jobs.get_run(run_id, include_history=True)
    )

    assert run.state.result_state.value == "SUCCESS"
    history = run.repair_history
    assert [(h.type.value, h.id) for h in history] == [
        ("ORIGINAL", None),
        ("REPAIR", waiter.response.repair_id),
    ]
    assert [h.state.result_state.value for h in history] == ["FAILED", "SUCCESS"]
    load = next(t for t in run.tasks if t.task_key == "load")
    assert history[1].task_run_ids == [load.run_id]
    assert load.run_id not in history[0].task_run_ids
    assert [r.endpoint for r in sim.requests] == ["runs/repair", "runs/get"]
