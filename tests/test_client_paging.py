"""Paging of runs/list and jobs/list in every API version, through real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
import structlog
from pydantic import SecretStr

from tests.conftest import TOKEN, ClientFactory
from tests.test_client_items import Stub, run
from watcher.clock import ManualClock
from watcher.databricks import ApiError, Attempt, JobsClient, StaticToken
from watcher.databricks.client import MAX_RUNS_LIMIT, ListedRunsPage
from watcher.databricks.models import Run
from watcher.simulator import Fault, Simulator
from watcher.simulator.workspace import SimRun, Workspace


def _history(sim: Simulator, clock: ManualClock, runs: int, jobs: int = 3) -> list[int]:
    """`runs` finished runs spread over `jobs` jobs, one started every 10 s; ids newest first."""
    job_ids = [sim.workspace.create_job(f"job-{i}") for i in range(jobs)]
    ids = []
    for n in range(runs):
        ids.append(
            sim.workspace.start_run(job_ids[n % jobs], setup_s=1, execution_s=3, cleanup_s=1)
        )
        clock.advance(10)
    sim.workspace.settle()
    return ids[::-1]


async def _walk(client_pages: AsyncIterator[ListedRunsPage]) -> tuple[list[int], int]:
    ids: list[int] = []
    pages = 0
    async for page in client_pages:
        pages += 1
        ids.extend(r.run_id for r in page.runs)
    return ids, pages


@pytest.mark.parametrize(
    ("version", "limit", "expected_pages", "paging_param"),
    [("2.0", 20, 3, "offset"), ("2.1", 25, 3, "page_token"), ("2.2", 25, 3, "page_token")],
)
async def test_runs_list_walks_every_page_newest_first(
    sim: Simulator,
    clock: ManualClock,
    make_client: ClientFactory,
    version: str,
    limit: int,
    expected_pages: int,
    paging_param: str,
) -> None:
    """Every run comes back exactly once, newest first, in the fewest pages, using the
    version's own paging (2.0 offset/has_more, 2.1 and 2.2 next_page_token)."""
    total = limit * 2 + 7
    expected = _history(sim, clock, total)
    client = make_client(api_version=version)
    ids, pages = await _walk(client.list_runs(limit=limit))
    assert ids == expected
    assert pages == expected_pages
    follow_ups = [r.params for r in sim.api_requests("runs/list")][1:]
    assert all(paging_param in p for p in follow_ups)
    assert all(r.version == version for r in sim.requests)


async def test_default_page_size_is_the_versions_maximum(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Without a limit the client asks for the largest page (999 in 2.0, 25 later)."""
    _history(sim, clock, 60)
    ids, pages = await _walk(make_client(api_version="2.0").list_runs())
    assert (len(ids), pages) == (60, 1)
    ids, pages = await _walk(make_client(api_version="2.1").list_runs())
    assert (len(ids), pages) == (60, 3)
    assert {r.params["limit"] for r in sim.requests} == {"999", "25"}


async def test_2_0_never_asks_for_a_limit_of_1000(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """The 2.0 reference wants a limit "greater than 0 and less than 1000": the client's
    largest 2.0 page is 999, a walk over more runs than that never sends 1000, and asking
    for 1000 is refused before any request."""
    assert MAX_RUNS_LIMIT["2.0"] == 999
    expected = _history(sim, clock, 1_005, jobs=1)
    client = make_client(api_version="2.0")
    ids, pages = await _walk(client.list_runs(overlap=99))  # the poller's 2.0 overlap
    assert set(ids) == set(expected)
    assert pages == 2
    assert [r.params["limit"] for r in sim.requests] == ["999", "999"]
    with pytest.raises(ValueError, match="limit"):
        await anext(client.list_runs(limit=1000))
    assert len(sim.requests) == 2


@pytest.mark.parametrize("version", ["2.0", "2.1", "2.2"])
async def test_empty_result_is_one_request(
    sim: Simulator, make_client: ClientFactory, version: str
) -> None:
    """An empty page (no `runs` key at all) ends the walk after one request."""
    ids, pages = await _walk(make_client(api_version=version).list_runs(active_only=True))
    assert (ids, pages) == ([], 1)
    assert len(sim.requests) == 1


async def test_has_more_false_on_exact_multiple_stops(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """When the last page is exactly full, has_more=false still ends the walk without an
    extra empty request."""
    _history(sim, clock, 40)
    ids, pages = await _walk(make_client(api_version="2.0").list_runs(limit=20))
    assert (len(ids), pages) == (40, 2)


async def test_offset_walk_with_overlap_survives_deletions_mid_walk(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Runs deleted between two offset pages shift the rest up; stepping back by an
    overlap keeps every surviving run in the walk (duplicates are the caller's to drop)."""
    expected = _history(sim, clock, 50)
    sim.faults.add(Fault(kind="delete_after_page", endpoint="runs/list", count=2, times=1))
    client = make_client(api_version="2.0")
    ids, _ = await _walk(client.list_runs(limit=10, overlap=3))
    deleted = set(expected) - set(sim.workspace.runs)
    assert len(deleted) == 2
    assert set(expected) - deleted <= set(ids)
    # Without the overlap the same deletion makes runs slip through unseen.
    sim.workspace.start_run(1)  # a fresh state for the second walk
    clock.advance(100)
    before = set(sim.workspace.runs)
    sim.faults.add(Fault(kind="delete_after_page", endpoint="runs/list", count=2, times=1))
    ids, _ = await _walk(client.list_runs(limit=10, overlap=0))
    survivors = before & set(sim.workspace.runs)
    assert not survivors <= set(ids)


async def test_offset_walk_sees_runs_started_mid_walk_as_duplicates_not_misses(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Runs that start during a walk push older runs down a page: they come back twice,
    never zero times."""
    expected = _history(sim, clock, 30)
    job = next(iter(sim.workspace.jobs))

    def start_two(workspace: Workspace, page: list[SimRun]) -> None:
        sim.workspace.start_run(job)
        sim.workspace.start_run(job)

    sim.workspace.list_hooks.append(start_two)
    ids, _ = await _walk(make_client(api_version="2.0").list_runs(limit=10))
    assert set(expected) <= set(ids)
    assert len(ids) > len(set(ids))


async def test_lowercase_booleans_and_filters_are_sent(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """Query booleans go out as lowercase `true` (the only spelling the API honours), and
    job_id / run_type / start_time_from filter on the server."""
    ids = _history(sim, clock, 9, jobs=3)
    client = make_client(api_version="2.1")
    runs: list[Run] = []
    async for page in client.list_runs(
        completed_only=True,
        job_id=2,
        run_type="JOB_RUN",
        start_time_from=1_700_000_000_000 + 30_000,
    ):
        runs.extend(page.runs)
    params = sim.requests[-1].params
    assert params["completed_only"] == "true"
    assert "active_only" not in params
    assert [r.run_id for r in runs] == [i for i in ids if sim.workspace.runs[i].job_id == 2][:2]
    assert all(r.job_id == 2 for r in runs)


async def test_client_rejects_arguments_the_api_would_refuse(make_client: ClientFactory) -> None:
    """Both active_only and completed_only, an over-limit page, or a time filter on 2.0
    are caught before any request."""
    with pytest.raises(ValueError, match="exclude"):
        await anext(make_client().list_runs(active_only=True, completed_only=True))
    with pytest.raises(ValueError, match="limit"):
        await anext(make_client(api_version="2.1").list_runs(limit=26))
    with pytest.raises(ValueError, match=r"2\.1"):
        await anext(make_client(api_version="2.0").list_runs(start_time_from=1))


@pytest.mark.parametrize(("version", "requests"), [("2.0", 1), ("2.1", 3), ("2.2", 3)])
async def test_jobs_list_pages(
    sim: Simulator, make_client: ClientFactory, version: str, requests: int
) -> None:
    """jobs/list: unpaged in 2.0, 100 per page with tokens in 2.1 and 2.2."""
    for i in range(230):
        sim.workspace.create_job(f"job-{i}")
    client = make_client(api_version=version)
    job_ids = [j.job_id async for page in client.list_jobs() for j in page.jobs]
    assert job_ids == sorted(sim.workspace.jobs)
    assert len(sim.requests) == requests


async def test_get_run_and_job_merge_task_pages_in_2_2(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """API 2.2 pages the tasks of big runs and jobs 100 at a time; the client merges them."""
    from watcher.simulator import TaskPlan

    keys = [f"t{i:03d}" for i in range(230)]
    job = sim.workspace.create_job("wide", task_keys=keys)
    run_id = sim.workspace.start_run(job, tasks=[TaskPlan(task_key=k) for k in keys])
    client = make_client(api_version="2.2")
    run = await client.get_run(run_id)
    assert [t.task_key for t in run.tasks] == keys
    assert len(sim.api_requests("runs/get")) == 3
    got = await client.get_job(job)
    assert [t.task_key for t in got.settings.tasks] == keys
    assert len(sim.api_requests("jobs/get")) == 3


def _capped_runs_list(runs: int, cap: int) -> Callable[[dict[str, str]], tuple[int, bytes]]:
    """runs/list of `runs` runs (ids runs..1, offset paging) refusing any limit over `cap`
    the way a live workspace words it."""

    def handle(query: dict[str, str]) -> tuple[int, bytes]:
        limit = int(query["limit"])
        if limit > cap:
            message = f"Invalid limit {limit} - it has to be no more than {cap}."
            error = {"error_code": "INVALID_PARAMETER_VALUE", "message": message}
            return 400, json.dumps(error).encode()
        offset = int(query.get("offset", "0"))
        ids = list(range(runs, 0, -1))[offset : offset + limit]
        more = offset + limit < runs
        return 200, json.dumps({"runs": [run(i) for i in ids], "has_more": more}).encode()

    return handle


async def test_a_stated_maximum_page_size_is_adopted_at_once(clock: ManualClock) -> None:
    """A 400 INVALID_PARAMETER_VALUE "Invalid limit 999 - it has to be no more than 26."
    is not a failure: the same request is sent again at once with limit 26, which becomes
    the client's runs_page_size for every later walk, and the caller's overlap shrinks in
    proportion so it stays below the page size (99 of 999 -> 2 of 26)."""
    attempts: list[Attempt] = []
    async with (
        Stub() as stub,
        stub.client(clock, api_version="2.0", on_attempt=attempts.append) as client,
    ):
        stub.handlers["runs/list"] = _capped_runs_list(60, cap=26)
        assert client.runs_page_size == 999
        with structlog.testing.capture_logs() as logs:
            ids, _ = await _walk(client.list_runs(overlap=99))
        assert set(ids) == set(range(1, 61))
        assert client.runs_page_size == 26
        sent = stub.params("runs/list")
        assert [q["limit"] for q in sent] == ["999", "26", "26", "26"]
        assert [q.get("offset") for q in sent] == [None, None, "24", "48"]
        assert clock.slept == []
        assert [(a.code, a.will_retry) for a in attempts[:2]] == [("400", True), ("200", False)]
        assert [e["limit"] for e in logs if e["event"] == "api_page_size_reduced"] == [26]
        # Later walks start at the adopted size, and an explicit limit is cut to it too.
        stub.requests.clear()
        await _walk(client.list_runs(overlap=99))
        await _walk(client.list_runs(limit=500))
        assert {q["limit"] for q in stub.params("runs/list")} == {"26"}


async def test_a_stated_maximum_that_is_not_smaller_fails_the_call(clock: ManualClock) -> None:
    """A limit error stating a maximum no smaller than what was sent cannot be fixed by
    asking again: it is an ApiError after one request, not a loop."""
    async with Stub() as stub, stub.client(clock, api_version="2.1") as client:
        stub.handlers["runs/list"] = lambda query: (
            400,
            b'{"error_code": "INVALID_PARAMETER_VALUE", '
            b'"message": "Invalid limit 20 - it has to be no more than 26."}',
        )
        with pytest.raises(ApiError, match="no more than 26"):
            await anext(client.list_runs(limit=20))
        assert len(stub.requests) == 1
        assert client.runs_page_size == 25


async def test_walks_after_a_cut_page_size_keep_their_overlap(clock: ManualClock) -> None:
    """After the server cut 2.0 pages to 60, later walks ask for 60 a page from the start,
    and an overlap sized for that page (6) steps offsets by 54, not 60."""
    async with Simulator(clock=clock, tokens={TOKEN}, runs_limit_max={"2.0": 60}) as sim:
        job = sim.workspace.create_job("busy")
        base = sim.workspace.now_ms() - 3600_000
        for i in range(200):
            sim.workspace.start_run(job, start_ms=base + i * 1000, execution_s=1, setup_s=0)
        client = JobsClient(
            host=sim.url, auth=StaticToken(SecretStr(TOKEN)), api_version="2.0", clock=clock
        )
        try:
            async for _ in client.list_runs(overlap=99):
                pass
            assert client.runs_page_size == 60
            mark = len(sim.requests)
            ids = [r.run_id async for page in client.list_runs(overlap=6) for r in page.runs]
        finally:
            await client.close()
    sent = [r.params for r in sim.requests[mark:]]
    assert [q["limit"] for q in sent] == ["60"] * len(sent)
    assert [q.get("offset") for q in sent][:4] == [None, "54", "108", "162"]
    assert len(set(ids)) == 200
