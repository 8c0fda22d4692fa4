"""The simulator speaks the Jobs API as Databricks does: checked on the wire."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import TOKEN
from watcher.clock import ManualClock
from watcher.simulator import Fault, RandomWorkload, Simulator, TaskPlan, WorkloadSpec
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
