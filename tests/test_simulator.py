"""The simulator speaks the Jobs API as Databricks does: checked on the wire."""

from __future__ import annotations

import base64
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN
from watcher.clock import ManualClock
from watcher.simulator import (
    Fault,
    RandomWorkload,
    RunPlan,
    Simulator,
    TaskPlan,
    WorkloadSpec,
    Workspace,
)
from watcher.simulator.server import LoggedRequest

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(
    http: aiohttp.ClientSession, sim: Simulator, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{sim.url}{path}", json=body, headers=AUTH) as resp:
        return resp.status, await resp.json(content_type=None)


async def _get(
    http: aiohttp.ClientSession,
    sim: Simulator,
    path: str,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[int, dict[str, Any]]:
    query = {k: str(v) for k, v in params.items()}
    async with http.get(f"{sim.url}{path}", params=query, headers=headers or AUTH) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_run_life_cycle_and_durations_follow_the_reference(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """QUEUED -> PENDING -> RUNNING -> TERMINATING -> TERMINATED; end_time is 0 and
    execution/cleanup durations are 0 until the run ends; result_state only at the end."""
    job = sim.workspace.create_job("etl")
    run_id = sim.workspace.start_run(
        job, queue_s=5, setup_s=10, execution_s=60, cleanup_s=5, result="FAILED"
    )
    seen = []
    for step in (0, 6, 10, 60, 5, 1):
        clock.advance(step)
        status, run = await _get(http, sim, "/api/2.0/jobs/runs/get", run_id=run_id)
        assert status == 200
        seen.append(
            (
                run["state"]["life_cycle_state"],
                run["state"].get("result_state"),
                run["end_time"],
                run["setup_duration"],
                run["execution_duration"],
                run["cleanup_duration"],
            )
        )
    start = run["start_time"]
    assert seen == [
        ("QUEUED", None, 0, 0, 0, 0),
        ("PENDING", None, 0, 0, 0, 0),
        ("RUNNING", None, 0, 10_000, 0, 0),
        ("TERMINATING", None, 0, 10_000, 0, 0),
        ("TERMINATED", "FAILED", start + 80_000, 10_000, 60_000, 5_000),
        ("TERMINATED", "FAILED", start + 80_000, 10_000, 60_000, 5_000),
    ]
    assert run["queue_duration"] == 5_000
    assert run["run_duration"] == 75_000


def start_two_tasks(sim: Simulator) -> int:
    """A run of a new job `multi` whose task `a` succeeds after 30 s and whose task `b`
    fails after 90 s; its run id."""
    job = sim.workspace.create_job("multi", task_keys=["a", "b"])
    return sim.workspace.start_run(
        job,
        tasks=[
            TaskPlan("a", execution_ms=30_000),
            TaskPlan("b", execution_ms=90_000, result="FAILED"),
        ],
    )


async def test_multitask_runs_report_tasks_and_run_duration(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A multitask run carries tasks with their own states; its own phase durations are 0
    and run_duration holds the total; the worst task outcome is the run's."""
    run_id = start_two_tasks(sim)
    clock.advance(60)
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id)
    assert run["state"]["life_cycle_state"] == "RUNNING"
    states = {t["task_key"]: t["state"] for t in run["tasks"]}
    assert states["a"]["result_state"] == "SUCCESS"
    assert states["b"]["life_cycle_state"] == "RUNNING"
    clock.advance(60)
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id)
    assert run["state"]["result_state"] == "FAILED"
    assert (run["setup_duration"], run["execution_duration"], run["cleanup_duration"]) == (0, 0, 0)
    assert run["run_duration"] == 90_000
    assert run["status"]["termination_details"]["code"] == "RUN_EXECUTION_ERROR"


async def test_failed_runs_are_retried_as_new_runs(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """With max_retries, a failed run is followed by a new run: attempt_number counts up,
    original_attempt_run_id points at the first attempt, trigger is RETRY."""
    job = sim.workspace.create_job("flaky", max_retries=2, min_retry_interval_ms=30_000)
    first = sim.workspace.start_run(job, execution_s=60, result="FAILED", retry_results=["FAILED"])
    clock.advance(3600)
    _, body = await _get(http, sim, "/api/2.0/jobs/runs/list", job_id=job)
    runs = body["runs"]
    assert [r["attempt_number"] for r in runs] == [2, 1, 0]
    assert [r["state"]["result_state"] for r in runs] == ["SUCCESS", "FAILED", "FAILED"]
    assert {r["original_attempt_run_id"] for r in runs} == {first}
    assert [r["trigger"] for r in runs] == ["RETRY", "RETRY", "PERIODIC"]
    assert runs[1]["start_time"] == runs[2]["end_time"] + 30_000


async def test_skipped_internal_error_and_forced_transitions(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """SKIPPED runs carry no result_state; INTERNAL_ERROR is a terminal life cycle; a run
    forced from QUEUED straight to TERMINATED/CANCELED ends at that instant."""
    job = sim.workspace.create_job("j")
    skipped = sim.workspace.start_run(job, end_state="SKIPPED")
    broken = sim.workspace.start_run(job, execution_s=10, end_state="INTERNAL_ERROR", result=None)
    queued = sim.workspace.start_run(job, queue_s=600)
    clock.advance(30)
    sim.workspace.force(queued, "TERMINATED", "CANCELED")
    _, body = await _get(http, sim, "/api/2.1/jobs/runs/list", completed_only="true")
    by_id = {r["run_id"]: r for r in body["runs"]}
    assert by_id[skipped]["state"] == {"life_cycle_state": "SKIPPED", "state_message": ""}
    assert by_id[broken]["state"]["life_cycle_state"] == "INTERNAL_ERROR"
    cancelled = by_id[queued]
    assert cancelled["state"]["result_state"] == "CANCELED"
    assert cancelled["end_time"] == cancelled["start_time"] + 30_000
    assert cancelled["queue_duration"] == 30_000


async def test_held_state_stays_until_forced_again(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """Forcing an active state freezes the run there, however long, until forced again."""
    job = sim.workspace.create_job("j")
    run_id = sim.workspace.start_run(job, execution_s=10)
    sim.workspace.force(run_id, "RUNNING")
    clock.advance(86_400)
    _, run = await _get(http, sim, "/api/2.0/jobs/runs/get", run_id=run_id)
    assert (run["state"]["life_cycle_state"], run["end_time"]) == ("RUNNING", 0)
    sim.workspace.force(run_id, "TERMINATED", "SUCCESS")
    _, run = await _get(http, sim, "/api/2.0/jobs/runs/get", run_id=run_id)
    assert run["end_time"] - run["start_time"] == 86_400_000
    assert run["setup_duration"] + run["execution_duration"] + run["cleanup_duration"] == 86_400_000


@pytest.mark.parametrize(
    ("version", "limit", "message"),
    [
        ("2.0", 1000, "Invalid limit 1000 - it has to be no more than 999."),
        ("2.1", 26, "Invalid limit 26 - it has to be no more than 25."),
        ("2.2", -1, "Invalid limit -1 - it has to be no more than 25."),
    ],
)
async def test_limit_is_validated_per_version(
    sim: Simulator, http: aiohttp.ClientSession, version: str, limit: int, message: str
) -> None:
    """Out-of-range limits are a 400 INVALID_PARAMETER_VALUE with Databricks' wording."""
    status, body = await _get(http, sim, f"/api/{version}/jobs/runs/list", limit=limit)
    assert status == 400
    assert body == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}


async def test_limit_zero_means_the_maximum(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """limit=0 asks for the version's largest page."""
    job = sim.workspace.create_job("j")
    for _ in range(30):
        sim.workspace.start_run(job, execution_s=1)
        clock.advance(1)
    _, body = await _get(http, sim, "/api/2.1/jobs/runs/list", limit=0)
    assert len(body["runs"]) == 25
    assert body["has_more"] is True


async def test_list_filters_flags_and_boolean_spelling(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """active_only and completed_only split runs; both at once is a 400; Python's
    capitalised `True` is not a boolean to the API and is ignored."""
    job = sim.workspace.create_job("j")
    done = sim.workspace.start_run(job, execution_s=1, setup_s=0, cleanup_s=0)
    clock.advance(5)
    active = sim.workspace.start_run(job, execution_s=600)
    path = "/api/2.1/jobs/runs/list"
    _, body = await _get(http, sim, path, active_only="true")
    assert [r["run_id"] for r in body["runs"]] == [active]
    _, body = await _get(http, sim, path, completed_only="true")
    assert [r["run_id"] for r in body["runs"]] == [done]
    _, body = await _get(http, sim, path, active_only="True")
    assert [r["run_id"] for r in body["runs"]] == [active, done]
    status, body = await _get(http, sim, path, active_only="true", completed_only="true")
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


async def test_2_2_drops_has_more_and_2_0_ignores_time_filters(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """2.2 pages by token only (no has_more); start_time_from exists from 2.1 on."""
    job = sim.workspace.create_job("j")
    for _ in range(3):
        sim.workspace.start_run(job, execution_s=1)
        clock.advance(10)
    _, body = await _get(http, sim, "/api/2.2/jobs/runs/list", limit=2)
    assert "has_more" not in body
    assert "next_page_token" in body
    cutoff = sim.workspace.now_ms() - 15_000
    _, body = await _get(http, sim, "/api/2.1/jobs/runs/list", start_time_from=cutoff)
    assert len(body["runs"]) == 1
    _, body = await _get(http, sim, "/api/2.0/jobs/runs/list", start_time_from=cutoff)
    assert len(body["runs"]) == 3


async def test_missing_objects_are_400_does_not_exist(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Missing runs and jobs answer 400 INVALID_PARAMETER_VALUE "... does not exist."."""
    status, body = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=456)
    assert (status, body) == (
        400,
        {"error_code": "INVALID_PARAMETER_VALUE", "message": "Run 456 does not exist."},
    )
    status, body = await _get(http, sim, "/api/2.1/jobs/get", job_id=123)
    assert (status, body["message"]) == (400, "Job 123 does not exist.")


async def test_authentication(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """No credentials: 401; a wrong token: 403; `Basic token:<PAT>` (netrc style) works."""
    status, _ = await _get(http, sim, "/api/2.1/jobs/list", headers={"X": "y"})
    assert status == 401
    status, body = await _get(
        http, sim, "/api/2.1/jobs/list", headers={"Authorization": "Bearer nope"}
    )
    assert (status, body["error_code"]) == (403, "PERMISSION_DENIED")
    basic = base64.b64encode(f"token:{TOKEN}".encode()).decode()
    status, _ = await _get(
        http, sim, "/api/2.1/jobs/list", headers={"Authorization": f"Basic {basic}"}
    )
    assert status == 200


async def test_jobs_list_offset_is_capped_in_2_1(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """jobs/list 2.1 refuses offsets past 1000, telling the caller to use page_token."""
    status, body = await _get(http, sim, "/api/2.1/jobs/list", offset=1001)
    assert status == 400
    assert "page_token" in body["message"]


async def test_deleted_and_expired_runs_disappear(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A deleted run is gone from lists and runs/get; runs older than 60 days expire."""
    job = sim.workspace.create_job("j")
    old = sim.workspace.start_run(job, execution_s=1)
    clock.advance(59 * 86_400)
    deleted = sim.workspace.start_run(job, execution_s=1)
    kept = sim.workspace.start_run(job, execution_s=1)
    clock.advance(10)
    sim.workspace.delete_run(deleted)
    _, body = await _get(http, sim, "/api/2.0/jobs/runs/list")
    assert [r["run_id"] for r in body["runs"]] == [kept, old]
    clock.advance(2 * 86_400)
    _, body = await _get(http, sim, "/api/2.0/jobs/runs/list")
    assert [r["run_id"] for r in body["runs"]] == [kept]
    status, _ = await _get(http, sim, "/api/2.0/jobs/runs/get", run_id=old)
    assert status == 400


async def test_completed_runs_can_be_ordered_by_end_time(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """The switch for the newer ordering: completed runs by end time, newest first."""
    async with Simulator(clock=clock, tokens={TOKEN}, completed_order="end_time") as sim:
        job = sim.workspace.create_job("j")
        long_run = sim.workspace.start_run(job, execution_s=100)
        clock.advance(10)
        short_run = sim.workspace.start_run(job, execution_s=5)
        clock.advance(200)
        _, body = await _get(http, sim, "/api/2.1/jobs/runs/list", completed_only="true")
        assert [r["run_id"] for r in body["runs"]] == [long_run, short_run]
        _, body = await _get(http, sim, "/api/2.1/jobs/runs/list")
        assert [r["run_id"] for r in body["runs"]] == [short_run, long_run]


async def test_faults_apply_to_their_endpoint_only(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """A fault for runs/list leaves jobs/list alone and is spent after `times` uses."""
    sim.faults.add(Fault(kind="status", endpoint="runs/list", status=429, retry_after="3", times=1))
    status, _ = await _get(http, sim, "/api/2.1/jobs/list")
    assert status == 200
    async with http.get(f"{sim.url}/api/2.1/jobs/runs/list", headers=AUTH) as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
        assert (await resp.json())["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    status, _ = await _get(http, sim, "/api/2.1/jobs/runs/list")
    assert status == 200


async def test_date_header_follows_the_simulated_clock(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """The Date header tells the simulated time, so clients can measure clock skew."""
    from email.utils import parsedate_to_datetime

    clock.advance(12_345)
    async with http.get(f"{sim.url}/api/2.1/jobs/list", headers=AUTH) as resp:
        assert parsedate_to_datetime(resp.headers["Date"]).timestamp() == int(clock.time())


async def test_control_api_scripts_a_scenario_over_http(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    """Another process can create jobs, start, force and delete runs, advance time and
    inject faults through /sim/."""

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with http.post(f"{sim.url}{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            result: dict[str, Any] = await resp.json()
            return result

    job_id = (await post("/sim/jobs", {"name": "ctl", "duration_threshold_s": 30}))["job_id"]
    run_id = (await post("/sim/runs", {"job_id": job_id, "execution_s": 100}))["run_id"]
    await post("/sim/advance", {"seconds": 20})
    await post(
        f"/sim/runs/{run_id}/force", {"life_cycle_state": "TERMINATED", "result_state": "TIMEDOUT"}
    )
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id)
    assert run["state"]["result_state"] == "TIMEDOUT"
    await post("/sim/faults", {"kind": "status", "status": 500})
    status, _ = await _get(http, sim, "/api/2.1/jobs/get", job_id=job_id)
    assert status == 500
    async with http.delete(f"{sim.url}/sim/runs/{run_id}") as resp:
        assert resp.status == 200
    async with http.get(f"{sim.url}/sim/state") as resp:
        state = await resp.json()
    assert (state["jobs"], state["runs"]) == (1, 0)
    async with http.post(f"{sim.url}/sim/runs", json={"job_id": job_id, "bogus": 1}) as resp:
        assert resp.status == 400


async def test_random_workload_is_lively_and_reproducible(clock: ManualClock) -> None:
    """The random workload starts runs on schedule with failures, retries, multitask runs
    and duration-rule jobs, the same way for the same seed."""

    def outcomes() -> list[tuple[int, str | None, int]]:
        sim = Simulator(clock=ManualClock(start=clock.time()))
        RandomWorkload(sim.workspace, WorkloadSpec(jobs=12, seed=3))
        sim.workspace.advance(6 * 3600)
        return [(r.job_id, r.result, r.attempt_number) for r in sim.workspace.runs.values()]

    first = outcomes()
    assert first == outcomes()
    assert len(first) > 100
    results = [result for _, result, _ in first]
    assert results.count("SUCCESS") > results.count("FAILED") > 0
    assert any(attempt > 0 for _, _, attempt in first)


async def test_in_run_retries_keep_one_job_run_with_task_attempts(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """With in-run retries (2.1+ task retries), a failing attempt is retried inside the
    same job run: its task waits (WAITING_FOR_RETRY), the next attempt counts up, and the
    job run ends once, with the last attempt's result; no new job run appears."""
    async with Simulator(clock=clock, tokens={TOKEN}, in_run_retries=True) as sim:
        job = sim.workspace.create_job("flaky", max_retries=2, min_retry_interval_ms=30_000)
        run_id = sim.workspace.start_run(
            job, setup_s=10, execution_s=50, cleanup_s=0, result="FAILED", retry_results=["FAILED"]
        )
        seen = []
        for step in (20, 45, 40, 50, 40, 60):
            clock.advance(step)
            _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id)
            (task,) = run["tasks"]
            seen.append(
                (
                    run["state"]["life_cycle_state"],
                    run["state"].get("result_state"),
                    task["state"]["life_cycle_state"],
                    task["attempt_number"],
                )
            )
        assert seen == [
            ("RUNNING", None, "RUNNING", 0),
            ("RUNNING", None, "WAITING_FOR_RETRY", 0),
            ("RUNNING", None, "RUNNING", 1),
            ("RUNNING", None, "WAITING_FOR_RETRY", 1),
            ("RUNNING", None, "RUNNING", 2),
            ("TERMINATED", "SUCCESS", "TERMINATED", 2),
        ]
        assert run["attempt_number"] == 0
        assert run["end_time"] - run["start_time"] == 3 * 60_000 + 2 * 30_000
        assert run["run_duration"] == 240_000
        _, listed = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job)
        assert [r["run_id"] for r in listed["runs"]] == [run_id]


def _ids(body: dict[str, Any]) -> list[int]:
    return [r["run_id"] for r in body.get("runs", [])]


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_repairs_rerun_a_failed_run_under_the_same_run_id(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession, version: str
) -> None:
    """A repaired run is active again under its own run_id: QUEUED, PENDING, RUNNING,
    TERMINATING with end_time 0 (listed by active_only, not completed_only), then ends
    with the repair's result. A first repair fails again, a second (which must name the
    first as latest_repair_id) succeeds; include_history shows ORIGINAL and each REPAIR,
    with new task run ids, and run_duration adds up the run and its repairs."""
    api = f"/api/{version}/jobs"
    job = sim.workspace.create_job("etl")
    run_id = sim.workspace.start_run(job, result="FAILED")  # setup 10, execution 60, cleanup 5
    start = sim.workspace.now_ms()
    clock.advance(100)
    first = sim.workspace.repair_run(run_id, queue_s=5, result="FAILED")
    seen = []
    for step in (2, 8, 40, 28, 22):
        clock.advance(step)
        _, run = await _get(http, sim, f"{api}/runs/get", run_id=run_id)
        _, active = await _get(http, sim, f"{api}/runs/list", active_only="true")
        _, completed = await _get(http, sim, f"{api}/runs/list", completed_only="true")
        seen.append(
            (
                run["state"]["life_cycle_state"],
                run["state"].get("result_state"),
                run["end_time"],
                run_id in _ids(active),
                run_id in _ids(completed),
            )
        )
        assert run["start_time"] == start
        assert "repair_history" not in run
    assert seen == [
        ("QUEUED", None, 0, True, False),
        ("PENDING", None, 0, True, False),
        ("RUNNING", None, 0, True, False),
        ("TERMINATING", None, 0, True, False),
        ("TERMINATED", "FAILED", start + 180_000, False, True),
    ]

    status, body = await _post(http, sim, f"{api}/runs/repair", {"run_id": run_id})
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    status, body = await _post(
        http, sim, f"{api}/runs/repair", {"run_id": run_id, "latest_repair_id": first}
    )
    assert status == 200
    second = body["repair_id"]
    assert second > first
    assert sim.api_requests("runs/repair")[-1] == LoggedRequest(
        version, "runs/repair", {}, 200, "POST"
    )
    clock.advance(30)
    _, run = await _get(http, sim, f"{api}/runs/get", run_id=run_id, include_history="true")
    assert (run["state"]["life_cycle_state"], run["end_time"]) == ("RUNNING", 0)
    assert run["repair_history"][-1]["end_time"] == 0
    assert "result_state" not in run["repair_history"][-1]["state"]

    clock.advance(100)
    _, run = await _get(http, sim, f"{api}/runs/get", run_id=run_id, include_history="true")
    assert run["state"]["result_state"] == "SUCCESS"
    assert run["end_time"] == start + 200_000 + 75_000
    assert run["run_duration"] == 3 * 75_000
    history = run.pop("repair_history")
    assert [(h["type"], h.get("id")) for h in history] == [
        ("ORIGINAL", None),
        ("REPAIR", first),
        ("REPAIR", second),
    ]
    assert [(h["start_time"] - start, h["end_time"] - start) for h in history] == [
        (0, 75_000),
        (100_000, 180_000),
        (200_000, 275_000),
    ]
    assert [h["state"]["result_state"] for h in history] == ["FAILED", "FAILED", "SUCCESS"]
    task_runs = [h["task_run_ids"] for h in history]
    assert task_runs[0] == [run_id]
    assert len({t for ids in task_runs for t in ids}) == 3  # each repair: a new task run
    if version == "2.0":
        assert "status" not in history[0]
    else:
        assert [h["status"]["state"] for h in history] == ["TERMINATED"] * 3
        assert run["status"]["termination_details"]["code"] == "SUCCESS"
        assert [t["run_id"] for t in run["tasks"]] == task_runs[2]
    _, listed = await _get(http, sim, f"{api}/runs/list", include_history="true")
    assert [r["run_id"] for r in listed["runs"]] == [run_id]  # no new runs appeared
    assert "repair_history" not in listed["runs"][0]


async def test_multitask_repair_reruns_only_the_failed_task(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """rerun_all_failed_tasks re-runs the failed task alone, with a new task run id and
    the repair's times; the task that succeeded keeps its run id, times and result; the
    run's result is the worst task's once the repair ends."""
    run_id = start_two_tasks(sim)
    clock.advance(100)
    _, before = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id)
    old = {t["task_key"]: t for t in before["tasks"]}
    status, _ = await _post(
        http, sim, "/api/2.1/jobs/runs/repair", {"run_id": run_id, "rerun_all_failed_tasks": True}
    )
    assert status == 200
    clock.advance(30)
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id)
    tasks = {t["task_key"]: t for t in run["tasks"]}
    assert run["state"]["life_cycle_state"] == "RUNNING"
    assert tasks["a"] == old["a"]
    assert tasks["b"]["run_id"] != old["b"]["run_id"]
    assert tasks["b"]["state"] == {"life_cycle_state": "RUNNING"}
    assert tasks["b"]["start_time"] == before["start_time"] + 100_000
    clock.advance(100)
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=run_id, include_history="true")
    assert run["state"]["result_state"] == "SUCCESS"
    assert run["run_duration"] == 90_000 + 75_000
    assert [h["task_run_ids"] for h in run["repair_history"]] == [
        [old["a"]["run_id"], old["b"]["run_id"]],
        [tasks["b"]["run_id"]],
    ]


async def test_repair_is_refused_while_the_run_is_in_progress(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """Only a finished run can be repaired: a running one (or one still under repair) is
    a 400 INVALID_STATE; unknown task keys are a 400 INVALID_PARAMETER_VALUE."""
    job = sim.workspace.create_job("j")
    run_id = sim.workspace.start_run(job)
    clock.advance(30)
    status, body = await _post(http, sim, "/api/2.2/jobs/runs/repair", {"run_id": run_id})
    assert (status, body["error_code"]) == (400, "INVALID_STATE")
    assert f"Run {run_id} is in progress" in body["message"]
    clock.advance(60)
    repair_id = sim.workspace.repair_run(run_id)
    with pytest.raises(ValueError, match="in progress"):
        sim.workspace.repair_run(run_id)
    clock.advance(600)
    status, body = await _post(
        http,
        sim,
        "/api/2.2/jobs/runs/repair",
        {"run_id": run_id, "latest_repair_id": repair_id, "rerun_tasks": ["nope"]},
    )
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")


async def test_a_failed_repair_is_not_retried(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """Job retries (new runs, the 2.0 model) follow failed runs, never failed repairs."""
    job = sim.workspace.create_job("flaky", max_retries=2)
    run_id = sim.workspace.start_run(job, result="FAILED")
    clock.advance(600)
    sim.workspace.repair_run(run_id, result="FAILED")
    clock.advance(3600)
    _, body = await _get(http, sim, "/api/2.0/jobs/runs/list", job_id=job)
    assert [(r["run_id"] == run_id, r["state"]["result_state"]) for r in body["runs"]] == [
        (False, "SUCCESS"),  # the one retry of the original failure
        (True, "FAILED"),
    ]


async def test_a_just_repaired_old_run_completes_first_by_end_time(
    clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """With completed runs ordered by end time, a repaired run leaves completed_only
    while under repair and comes back first, by its new end, before newer runs."""
    async with Simulator(clock=clock, tokens={TOKEN}, completed_order="end_time") as sim:
        job = sim.workspace.create_job("j")
        old = sim.workspace.start_run(job, result="FAILED")
        clock.advance(3600)
        newer = sim.workspace.start_run(job)
        clock.advance(600)
        path = "/api/2.1/jobs/runs/list"
        _, body = await _get(http, sim, path, completed_only="true")
        assert _ids(body) == [newer, old]
        sim.workspace.repair_run(old)
        clock.advance(10)
        _, body = await _get(http, sim, path, completed_only="true")
        assert _ids(body) == [newer]
        clock.advance(600)
        _, body = await _get(http, sim, path, completed_only="true")
        assert _ids(body) == [old, newer]


async def test_a_run_born_blocked_waits_for_release(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A run born BLOCKED stays so, unlisted by active_only, until released; then it
    goes PENDING, RUNNING, ... and ends its setup + execution + cleanup after release."""
    job = sim.workspace.create_job("j")
    run_id = sim.workspace.start_run(job, hold_state="BLOCKED", queue_s=30)
    path = "/api/2.1/jobs/runs"
    clock.advance(3600)
    _, run = await _get(http, sim, f"{path}/get", run_id=run_id)
    assert (run["state"]["life_cycle_state"], run["status"]["state"]) == ("BLOCKED", "BLOCKED")
    assert run["end_time"] == 0
    assert (run["tasks"][0]["state"]["life_cycle_state"], run["tasks"][0]["start_time"]) == (
        "BLOCKED",
        0,
    )
    _, active = await _get(http, sim, f"{path}/list", active_only="true")
    _, everything = await _get(http, sim, f"{path}/list")
    assert (_ids(active), _ids(everything)) == ([], [run_id])
    sim.workspace.release(run_id)
    released = sim.workspace.now_ms()
    seen = []
    for step in (0, 10, 60, 5):
        clock.advance(step)
        _, run = await _get(http, sim, f"{path}/get", run_id=run_id)
        _, active = await _get(http, sim, f"{path}/list", active_only="true")
        seen.append((run["state"]["life_cycle_state"], _ids(active)))
    assert seen == [
        ("PENDING", [run_id]),
        ("RUNNING", [run_id]),
        ("TERMINATING", [run_id]),
        ("TERMINATED", []),
    ]
    assert run["end_time"] == released + 75_000
    with pytest.raises(ValueError, match="not held"):
        sim.workspace.release(run_id)


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_runs_limit_maxima_are_configurable(
    clock: ManualClock, http: aiohttp.ClientSession, version: str
) -> None:
    """The largest runs/list limit per version is a constructor argument (here the 26
    a live 2.1 server once answered with); a limit up to it is served, one past is not."""
    maxima = {"2.0": 999, "2.1": 26, "2.2": 25}
    async with Simulator(clock=clock, tokens={TOKEN}, runs_limit_max={"2.1": 26}) as sim:
        path = f"/api/{version}/jobs/runs/list"
        status, _ = await _get(http, sim, path, limit=maxima[version])
        assert status == 200
        status, body = await _get(http, sim, path, limit=maxima[version] + 1)
        assert (status, body["message"]) == (
            400,
            f"Invalid limit {maxima[version] + 1} - it has to be no more than {maxima[version]}.",
        )


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_poisoned_runs_and_jobs_show_their_overrides_everywhere(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession, version: str
) -> None:
    """Poisoned fields replace the real ones in every rendering (runs/list, runs/get,
    jobs/get, jobs/list), a lone surrogate written as the JSON escape \\ud800; a
    poisoned job's "settings" merges into its settings."""
    api = f"/api/{version}/jobs"
    job = sim.workspace.create_job("j", tags={"team": "data"})
    run_id = sim.workspace.start_run(job)
    healthy = sim.workspace.start_run(job)
    clock.advance(100)
    sim.workspace.poison_run(run_id, {"start_time": "yesterday", "run_name": "bad \ud800 name"})
    sim.workspace.poison_job(job, {"settings": {"name": 42}, "created_time": None})
    for path, params in [("runs/list", {}), ("runs/get", {"run_id": run_id})]:
        async with http.get(f"{sim.url}{api}/{path}", params=params, headers=AUTH) as resp:
            raw = await resp.text()
        assert '"bad \\ud800 name"' in raw
    _, listed = await _get(http, sim, f"{api}/runs/list")
    by_id = {r["run_id"]: r for r in listed["runs"]}
    assert by_id[run_id]["start_time"] == "yesterday"
    assert isinstance(by_id[healthy]["start_time"], int)
    _, run = await _get(http, sim, f"{api}/runs/get", run_id=run_id)
    assert (run["start_time"], run["run_name"]) == ("yesterday", "bad \ud800 name")
    _, got = await _get(http, sim, f"{api}/get", job_id=job)
    _, jobs = await _get(http, sim, f"{api}/list")
    for body in (got, jobs["jobs"][0]):
        assert body["created_time"] is None
        assert body["settings"]["name"] == 42
        assert body["settings"]["tags"] == {"team": "data"}


async def test_date_header_can_be_left_out(sim: Simulator, http: aiohttp.ClientSession) -> None:
    """With send_date off, no response carries a Date header, not even the one aiohttp
    adds by itself: API answers, API errors and control answers alike."""
    sim.send_date = False
    for url, headers in [
        (f"{sim.url}/api/2.1/jobs/list", AUTH),
        (f"{sim.url}/api/2.1/jobs/list", {}),
        (f"{sim.url}/sim/state", {}),
    ]:
        async with http.get(url, headers=headers) as resp:
            assert "Date" not in resp.headers, (url, resp.status)
    sim.send_date = True
    async with http.get(f"{sim.url}/api/2.1/jobs/list", headers=AUTH) as resp:
        assert "Date" in resp.headers


async def test_control_api_repairs_releases_and_poisons(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """Through /sim/ another process can start a run born BLOCKED and release it, repair
    a finished run with a scripted outcome, and poison a run and a job."""

    async def post(path: str, body: Any) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{sim.url}{path}", json=body) as resp:
            return resp.status, await resp.json(content_type=None) if resp.ok else {}

    job = sim.workspace.create_job("ctl")
    _, born = await post("/sim/runs", {"job_id": job, "hold_state": "BLOCKED"})
    clock.advance(60)
    assert (await post(f"/sim/runs/{born['run_id']}/repair", {}))[0] == 409
    assert (await post(f"/sim/runs/{born['run_id']}/release", {}))[0] == 200
    clock.advance(100)
    status, repair = await post(
        f"/sim/runs/{born['run_id']}/repair", {"execution_s": 20, "result": "TIMEDOUT"}
    )
    assert status == 200
    clock.advance(40)
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=born["run_id"])
    assert run["state"]["result_state"] == "TIMEDOUT"
    assert run["end_time"] - run["start_time"] == 160_000 + 35_000
    assert repair["repair_id"] > born["run_id"]
    assert (await post(f"/sim/runs/{born['run_id']}/poison", {"run_name": None}))[0] == 200
    assert (await post(f"/sim/jobs/{job}/poison", {"job_id": "x"}))[0] == 200
    assert (await post(f"/sim/jobs/{job}/poison", ["not", "an", "object"]))[0] == 400
    _, run = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=born["run_id"])
    _, got = await _get(http, sim, "/api/2.1/jobs/get", job_id=job)
    assert (run["run_name"], got["job_id"]) == (None, "x")


async def _queue_view(
    http: aiohttp.ClientSession, sim: Simulator, version: str, run_id: int
) -> tuple[str, Any, Any]:
    """(life_cycle_state, state.queue_reason, status.queue_details) of runs/get."""
    _, run = await _get(http, sim, f"/api/{version}/jobs/runs/get", run_id=run_id)
    status = run.get("status", {})
    return (
        run["state"]["life_cycle_state"],
        run["state"].get("queue_reason"),
        status.get("queue_details"),
    )


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_a_queued_run_says_why_while_queued(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession, version: str
) -> None:
    """A run started with a queue reason shows it while QUEUED only: 2.1 as
    state.queue_reason (the message), 2.2 as status.queue_details {code, message}, 2.0
    not at all; runs/list shows it as runs/get does; a run without one shows none."""
    job = sim.workspace.create_job("j")
    reason = ("MAX_CONCURRENT_RUNS_REACHED", "Workspace has too many active runs")
    run_id = sim.workspace.start_run(job, queue_s=30, queue_reason=reason)
    plain = sim.workspace.start_run(job, queue_s=30)
    queued = {
        "2.0": ("QUEUED", None, None),
        "2.1": ("QUEUED", reason[1], None),
        "2.2": ("QUEUED", None, {"code": reason[0], "message": reason[1]}),
    }[version]
    assert await _queue_view(http, sim, version, run_id) == queued
    assert await _queue_view(http, sim, version, plain) == ("QUEUED", None, None)
    _, listed = await _get(http, sim, f"/api/{version}/jobs/runs/list")
    (listed_run,) = (r for r in listed["runs"] if r["run_id"] == run_id)
    assert listed_run["state"].get("queue_reason") == queued[1]
    assert listed_run.get("status", {}).get("queue_details") == queued[2]
    clock.advance(31)
    assert await _queue_view(http, sim, version, run_id) == ("PENDING", None, None)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
async def test_runs_beyond_max_concurrent_runs_queue_until_a_slot_frees(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession, version: str
) -> None:
    """With max_concurrent_runs 1, a second run started while the first is active stays
    QUEUED with ACTIVE_RUNS_LIMIT_REACHED (listed as active) until the first ends, then
    goes through its plan, the wait being its queue time; a third waits for the second."""
    job = sim.workspace.create_job("limited", max_concurrent_runs=1)
    first = sim.workspace.start_run(job, setup_s=10, execution_s=100, cleanup_s=10)
    clock.advance(20)
    second = sim.workspace.start_run(job, setup_s=10, execution_s=50, cleanup_s=0)
    third = sim.workspace.start_run(job, setup_s=10, execution_s=50, cleanup_s=0)
    limit = ("ACTIVE_RUNS_LIMIT_REACHED", "The job has reached its maximum concurrent runs")
    waiting = (
        ("QUEUED", limit[1], None)
        if version == "2.1"
        else ("QUEUED", None, {"code": limit[0], "message": limit[1]})
    )
    clock.advance(50)
    assert await _queue_view(http, sim, version, second) == waiting
    assert await _queue_view(http, sim, version, third) == waiting
    _, active = await _get(http, sim, f"/api/{version}/jobs/runs/list", active_only="true")
    assert _ids(active) == [third, second, first]
    _, run = await _get(http, sim, f"/api/{version}/jobs/runs/get", run_id=second)
    assert (run["queue_duration"], run["tasks"][0]["state"]["life_cycle_state"]) == (
        50_000,
        "QUEUED",
    )
    # The first run ends at 120 s: the second gets its slot then (100 s after its start).
    clock.advance(55)  # 125 s
    assert (await _queue_view(http, sim, version, second))[0] == "PENDING"
    assert await _queue_view(http, sim, version, third) == waiting
    clock.advance(200)  # 325 s: the second ended at 180 s, the third at 240 s
    _, second_run = await _get(http, sim, f"/api/{version}/jobs/runs/get", run_id=second)
    _, third_run = await _get(http, sim, f"/api/{version}/jobs/runs/get", run_id=third)
    start = second_run["start_time"]
    assert second_run["queue_duration"] == 100_000
    assert second_run["end_time"] == start + 160_000
    assert second_run["state"]["result_state"] == "SUCCESS"
    assert "queue_details" not in second_run["status"]
    assert third_run["queue_duration"] == 160_000
    assert third_run["end_time"] == start + 220_000
    assert sim.workspace.active_runs() == []


async def test_max_concurrent_runs_counts_slots_and_spares_other_runs(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """With max_concurrent_runs 2, two runs run side by side and the third queues; a
    queued run canceled by hand ends at once and frees nobody's turn; a job created
    without max_concurrent_runs (settings say 1, as always) queues nothing, nor do runs
    started as history or held."""
    job = sim.workspace.create_job("pair", max_concurrent_runs=2)
    _, settings = await _get(http, sim, "/api/2.1/jobs/get", job_id=job)
    assert settings["settings"]["max_concurrent_runs"] == 2
    a = sim.workspace.start_run(job, execution_s=100)
    b = sim.workspace.start_run(job, execution_s=200)
    c = sim.workspace.start_run(job, execution_s=100, queue_s=5)
    d = sim.workspace.start_run(job, execution_s=100)
    clock.advance(30)
    states = {r: (await _queue_view(http, sim, "2.2", r))[0] for r in (a, b, c, d)}
    assert states == {a: "RUNNING", b: "RUNNING", c: "QUEUED", d: "QUEUED"}
    sim.workspace.force(d, "TERMINATED", "CANCELED")
    _, canceled = await _get(http, sim, "/api/2.2/jobs/runs/get", run_id=d)
    assert (canceled["queue_duration"], canceled["end_time"] - canceled["start_time"]) == (
        30_000,
        30_000,
    )
    clock.advance(100)  # a ended at 115 s: c got its slot then
    _, run = await _get(http, sim, "/api/2.2/jobs/runs/get", run_id=c)
    assert (run["state"]["life_cycle_state"], run["queue_duration"]) == ("RUNNING", 115_000)

    free = sim.workspace.create_job("free")
    _, settings = await _get(http, sim, "/api/2.1/jobs/get", job_id=free)
    assert settings["settings"]["max_concurrent_runs"] == 1
    now = sim.workspace.now_ms()
    runs = [
        sim.workspace.start_run(free),
        sim.workspace.start_run(free),
        sim.workspace.start_run(job, start_ms=now - 1000),
        sim.workspace.start_run(job, hold_state="BLOCKED"),
    ]
    states = {r: (await _queue_view(http, sim, "2.2", r))[0] for r in runs}
    assert states == dict(zip(runs, ["PENDING", "PENDING", "PENDING", "BLOCKED"], strict=True))
    with pytest.raises(ValueError, match="at least 1"):
        sim.workspace.create_job("none", max_concurrent_runs=0)


async def test_control_api_starts_runs_with_queue_reasons_and_limits(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """/sim/jobs takes max_concurrent_runs, /sim/runs a queue_reason [code, message]."""

    async def post(path: str, body: Any) -> dict[str, Any]:
        async with http.post(f"{sim.url}{path}", json=body) as resp:
            assert resp.status == 200, await resp.text()
            answer: dict[str, Any] = await resp.json()
            return answer

    job = (await post("/sim/jobs", {"name": "ctl", "max_concurrent_runs": 1}))["job_id"]
    first = await post("/sim/runs", {"job_id": job, "queue_s": 10, "queue_reason": ["A", "b"]})
    second = await post("/sim/runs", {"job_id": job})
    assert await _queue_view(http, sim, "2.2", first["run_id"]) == (
        "QUEUED",
        None,
        {"code": "A", "message": "b"},
    )
    assert (await _queue_view(http, sim, "2.2", second["run_id"]))[2]["code"] == (
        "ACTIVE_RUNS_LIMIT_REACHED"
    )


# -- the scheduler: schedules, periodic triggers, continuous jobs ---------------------------


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%m-%d %H:%M:%S")


def _starts(sim: Simulator, job: int) -> list[str]:
    """Start times of the job's runs, oldest first, with the workspace brought up to now."""
    sim.workspace.settle()
    return [
        _utc(r.start_ms)
        for r in sorted(sim.workspace.runs.values(), key=lambda r: r.sort_key)
        if r.job_id == job
    ]


async def test_a_schedule_fires_at_its_triggers_unless_paused_or_forgotten(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """18:30 in New York (23:30 UTC in November) starts a PERIODIC run of the job's plan
    at each trigger, however far the clock jumps; a forgotten trigger starts nothing (and
    nothing says so), nor does a trigger while PAUSED; jobs/get shows the pause."""
    ws = sim.workspace  # the clock: 2023-11-14 22:13:20 UTC
    plan = RunPlan(setup_s=0, execution_s=120, cleanup_s=0, result="FAILED")
    job = ws.create_job(
        "nightly", schedule="0 30 18 * * ?", timezone_id="America/New_York", plan=plan
    )
    clock.advance(3 * 86_400)
    _, listed = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job)
    assert [
        (_utc(r["start_time"]), r["trigger"], r["state"]["result_state"]) for r in listed["runs"]
    ] == [(f"11-{day} 23:30:00", "PERIODIC", "FAILED") for day in (16, 15, 14)]
    assert {r["end_time"] - r["start_time"] for r in listed["runs"]} == {120_000}
    ws.skip_next_trigger(job)  # the 17th
    clock.advance(86_400)
    ws.pause_job(job)  # the 18th
    _, got = await _get(http, sim, "/api/2.1/jobs/get", job_id=job)
    assert got["settings"]["schedule"] == {
        "quartz_cron_expression": "0 30 18 * * ?",
        "timezone_id": "America/New_York",
        "pause_status": "PAUSED",
    }
    clock.advance(86_400)
    ws.resume_job(job)  # the 19th fires, not the 18th
    clock.advance(86_400)
    _, listed = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job)
    assert [_utc(r["start_time"]) for r in listed["runs"]] == [
        f"11-{day} 23:30:00" for day in (19, 16, 15, 14)
    ]
    with pytest.raises(ValueError, match="no schedule"):
        ws.pause_job(ws.create_job("plain"))
    # An expression Quartz refuses is shown as it is, and never fires.
    odd = ws.create_job("odd", schedule="0 0 * * *")
    clock.advance(86_400)
    assert _starts(sim, odd) == []


async def test_scheduled_runs_queue_behind_the_concurrency_limit(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """An hourly job with max_concurrent_runs 1 whose runs last 90 minutes: each trigger
    still starts a run at its time (start_time), which waits QUEUED behind the one before
    (ACTIVE_RUNS_LIMIT_REACHED) until it ends."""
    ws = sim.workspace
    plan = RunPlan(setup_s=0, execution_s=5400, cleanup_s=0)
    job = ws.create_job("slow", schedule="0 0 * * * ?", max_concurrent_runs=1, plan=plan)
    clock.advance(3 * 3600)  # 01:13:20: triggers at 23:00, 00:00, 01:00
    _, listed = await _get(http, sim, "/api/2.2/jobs/runs/list", job_id=job)
    runs = [
        (
            _utc(r["start_time"]),
            r["state"]["life_cycle_state"],
            r["queue_duration"],
            r["status"].get("queue_details", {}).get("code"),
        )
        for r in reversed(listed["runs"])
    ]
    assert runs == [
        ("11-14 23:00:00", "TERMINATED", 0, None),
        ("11-15 00:00:00", "RUNNING", 1800_000, None),  # its slot: 00:30
        ("11-15 01:00:00", "QUEUED", 800_000, "ACTIVE_RUNS_LIMIT_REACHED"),  # so far
    ]


def test_triggers_do_not_depend_on_how_the_clock_advances() -> None:
    """The same jobs advanced six hours at once or a minute at a time start the same runs
    at the same times, with the same queues and ends."""

    def runs(steps: int) -> list[tuple[int, int, str, int, int | None]]:
        clock = ManualClock()
        ws = Workspace(clock=clock)
        ws.create_job(
            "hourly", schedule="0 0 * * * ?", plan=RunPlan(execution_s=4000), max_concurrent_runs=1
        )
        skipped = ws.create_job("quarter", schedule="0 0/15 * * * ?")
        ws.skip_next_trigger(skipped)
        ws.create_job("stream", continuous=True, plan=RunPlan(execution_s=1700))
        ws.create_job("periodic", periodic=(2, "HOURS"))
        for _ in range(steps):
            ws.advance(6 * 3600 / steps)
        return sorted(
            (r.job_id, r.start_ms, r.trigger, r.queue_ms, r.end_ms) for r in ws.runs.values()
        )

    at_once = runs(1)
    assert at_once == runs(360)
    by_job = Counter(job for job, *_ in at_once)
    assert by_job == {1: 6, 2: 23, 3: 13, 4: 3}


async def test_a_continuous_job_keeps_one_run_active_until_stopped_or_paused(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """A continuous job runs from its creation, one run after the other (trigger
    CONTINUOUS), always one active; stopped, its run fails now and none follows while its
    settings still say UNPAUSED, until started again; paused, its run is canceled."""
    ws = sim.workspace
    job = ws.create_job(
        "stream", continuous=True, plan=RunPlan(setup_s=0, execution_s=3000, cleanup_s=0)
    )
    for _ in range(8):
        clock.advance(1000)
        _, active = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job, active_only="true")
        assert len(active["runs"]) == 1
    _, listed = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job)
    runs = list(reversed(listed["runs"]))
    assert [r["trigger"] for r in runs] == ["CONTINUOUS"] * 3
    assert [b["start_time"] - a["end_time"] for a, b in itertools.pairwise(runs)] == [0, 0]
    ws.stop_continuous(job)
    clock.advance(3600)
    _, active = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job, active_only="true")
    assert "runs" not in active
    _, stopped = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=runs[-1]["run_id"])
    assert stopped["state"]["result_state"] == "FAILED"
    assert stopped["end_time"] == ws.now_ms() - 3600_000
    _, got = await _get(http, sim, "/api/2.1/jobs/get", job_id=job)
    assert got["settings"]["continuous"] == {"pause_status": "UNPAUSED"}
    ws.start_continuous(job)
    _, active = await _get(http, sim, "/api/2.1/jobs/runs/list", job_id=job, active_only="true")
    (restarted,) = active["runs"]
    assert restarted["start_time"] == ws.now_ms()
    ws.pause_job(job)
    _, canceled = await _get(http, sim, "/api/2.1/jobs/runs/get", run_id=restarted["run_id"])
    assert canceled["state"]["result_state"] == "CANCELED"
    clock.advance(3600)
    assert ws.active_runs() == []
    ws.resume_job(job)
    assert [r.start_ms for r in ws.active_runs()] == [ws.now_ms()]
    with pytest.raises(ValueError, match="not continuous"):
        ws.stop_continuous(ws.create_job("batch"))


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_continuous_and_trigger_settings_are_shown_from_2_1(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession, version: str
) -> None:
    """settings.continuous and settings.trigger (periodic) came with API 2.1: 2.0 leaves
    them out of jobs/get and jobs/list; a schedule shows in every version. A periodic
    trigger fires every interval from the job's creation."""
    ws = sim.workspace
    ws.create_job("stream", continuous=True)
    every_4h = ws.create_job("every-4h", periodic=(4, "HOURS"), pause_status="UNPAUSED")
    ws.create_job("hourly", schedule="0 0 * * * ?")
    _, listed = await _get(http, sim, f"/api/{version}/jobs/list")
    shown = [
        {k: v for k, v in job["settings"].items() if k in ("continuous", "trigger", "schedule")}
        for job in listed["jobs"]
    ]
    newer = version != "2.0"
    assert shown == [
        {"continuous": {"pause_status": "UNPAUSED"}} if newer else {},
        {"trigger": {"pause_status": "UNPAUSED", "periodic": {"interval": 4, "unit": "HOURS"}}}
        if newer
        else {},
        {
            "schedule": {
                "quartz_cron_expression": "0 0 * * * ?",
                "timezone_id": "UTC",
                "pause_status": "UNPAUSED",
            }
        },
    ]
    _, got = await _get(http, sim, f"/api/{version}/jobs/get", job_id=every_4h)
    assert ("trigger" in got["settings"]) is newer
    clock.advance(9 * 3600)
    assert _starts(sim, every_4h) == ["11-15 02:13:20", "11-15 06:13:20"]
    with pytest.raises(ValueError, match="at most one"):
        ws.create_job("both", continuous=True, schedule="0 0 * * * ?")


async def test_control_api_drives_the_scheduler(
    sim: Simulator, clock: ManualClock, http: aiohttp.ClientSession
) -> None:
    """/sim/jobs takes schedule, timezone_id, pause_status, continuous, periodic and a
    plan; /sim/jobs/{id}/pause, resume, skip_next_trigger, stop_continuous (with the
    stopped run's result) and start_continuous drive it."""

    async def post(path: str, body: Any = None, expect: int = 200) -> Any:
        async with http.post(f"{sim.url}{path}", json=body) as resp:
            assert resp.status == expect, await resp.text()
            return await resp.json() if expect == 200 else None

    plan = {"setup_s": 0, "execution_s": 30, "cleanup_s": 0, "result": "FAILED"}
    hourly = (await post("/sim/jobs", {"name": "h", "schedule": "0 0 * * * ?", "plan": plan}))[
        "job_id"
    ]
    stream = (await post("/sim/jobs", {"name": "s", "continuous": True}))["job_id"]
    periodic = {"name": "p", "periodic": {"interval": 1, "unit": "DAYS"}, "pause_status": "PAUSED"}
    daily = (await post("/sim/jobs", periodic))["job_id"]
    await post(f"/sim/jobs/{hourly}/skip_next_trigger")  # 23:00
    clock.advance(3600)
    await post(f"/sim/jobs/{hourly}/pause")
    clock.advance(3600)  # 00:00 paused
    await post(f"/sim/jobs/{hourly}/resume")
    clock.advance(3600)  # 01:00 fires
    assert _starts(sim, hourly) == ["11-15 01:00:00"]
    assert [r.result for r in sim.workspace.runs.values() if r.job_id == hourly] == ["FAILED"]
    await post(f"/sim/jobs/{stream}/stop_continuous", {"result": "CANCELED"})
    (only,) = [r for r in sim.workspace.runs.values() if r.job_id == stream]
    assert only.result == "CANCELED"
    await post(f"/sim/jobs/{stream}/start_continuous")
    assert len([r for r in sim.workspace.active_runs() if r.job_id == stream]) == 1
    await post(f"/sim/jobs/{stream}/stop_continuous")  # default: the run fails
    assert [r.result for r in sim.workspace.runs.values() if r.job_id == stream][-1] == "FAILED"
    assert _starts(sim, daily) == []
    await post(f"/sim/jobs/{daily}/resume")
    clock.advance(86_400)
    assert len(_starts(sim, daily)) == 1
    await post(f"/sim/jobs/{hourly}/start_continuous", expect=409)
    await post(f"/sim/jobs/{hourly}/explode", expect=404)
    await post("/sim/jobs/999/pause", expect=404)
    await post(
        "/sim/jobs", {"name": "x", "periodic": {"interval": 1, "unit": "MINUTES"}}, expect=400
    )
    await post(
        "/sim/jobs", {"name": "x", "continuous": True, "schedule": "0 0 * * * ?"}, expect=400
    )
