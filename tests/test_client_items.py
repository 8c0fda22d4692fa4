"""Per-item isolation of the client's parsing: one run or job that fails validation is
left out of its page (or fails its own runs/get / jobs/get at once) instead of sinking
the whole answer; lone UTF-16 surrogates are repaired. Served by a tiny Jobs API stub over
real HTTP on port 0, so every case is exactly the body under test."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from tests.conftest import TOKEN, jobs_client
from tests.notify_fixtures import serve
from watcher.app import make_client
from watcher.clock import ManualClock
from watcher.config import WorkspaceConfig
from watcher.databricks import (
    Attempt,
    ItemRejected,
    JobsClient,
    MalformedResponse,
    RejectedItem,
)
from watcher.databricks.models import Job, Run
from watcher.metrics import Metrics

Handler = Callable[[dict[str, str]], tuple[int, bytes]]
SECRET = "dapi-leaked-in-a-field"


class Stub:
    """A tiny Jobs API: `handlers[endpoint](query)` gives (status, body); every request is
    recorded as (endpoint, query). Endpoints are named as the client names them."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Stub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def params(self, endpoint: str) -> list[dict[str, str]]:
        return [query for name, query in self.requests if name == endpoint]

    def client(self, clock: ManualClock, **overrides: Any) -> JobsClient:
        """A client of this stub in manual time; close it (or use it with `async with`)."""
        return jobs_client(self.url, clock, **overrides)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/{version}/jobs/{tail:.+}", self._handle)
        self._runner, self.url = await serve(app)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        endpoint = tail if tail.startswith("runs/") else f"jobs/{tail}"
        query = dict(request.query)
        self.requests.append((endpoint, query))
        status, body = self.handlers[endpoint](query)
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture
async def stub() -> AsyncIterator[Stub]:
    async with Stub() as server:
        yield server


@pytest.fixture
def stub_client(stub: Stub, client_for: Callable[..., JobsClient]) -> Callable[..., JobsClient]:
    """Clients of the stub in manual time, closed at the end of the test."""
    return partial(client_for, stub.url)


def answer(body: object, status: int = 200) -> Handler:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda query: (status, data)


def run(run_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "job_id": 7,
        "run_name": f"run-{run_id}",
        "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
        "start_time": 1_700_000_000_000 + run_id,
        **fields,
    }


def job(job_id: int, **settings: Any) -> dict[str, Any]:
    return {"job_id": job_id, "settings": {"name": f"job-{job_id}", **settings}}


def rejected_samples(registry: CollectorRegistry, endpoint: str) -> float | None:
    return registry.get_sample_value(
        "watcher_api_items_rejected_total", {"workspace": "ws", "endpoint": endpoint}
    )


def wired_client(stub: Stub, clock: ManualClock, metrics: Metrics, **config: Any) -> JobsClient:
    """A client built by the daemon's own make_client, its hooks feeding `metrics`."""
    workspace = WorkspaceConfig.model_validate(
        {
            "name": "ws",
            "host": stub.url,
            "auth": {"type": "pat", "token": TOKEN},
            "requests_per_second": 1000.0,
            **config,
        }
    )
    return make_client(workspace, metrics.attempt_hook("ws"), clock)


async def test_one_poisoned_run_is_left_out_of_its_page(stub: Stub, clock: ManualClock) -> None:
    """A runs/list page of 51 runs, one with a non-integer start_time: the 50 good runs
    come back in order, the bad one is described in `page.rejected` (ids, field path and
    error type, never the value), logged once, counted in the metric, not retried, and not
    part of any dump of the page."""
    runs = [run(100 + n) for n in range(51)]
    runs[25] = run(125, start_time=SECRET)
    stub.handlers["runs/list"] = answer({"runs": runs, "has_more": False})
    metrics = Metrics(registry=CollectorRegistry())
    client = wired_client(stub, clock, metrics, api_version="2.0")
    try:
        assert rejected_samples(metrics.registry, "runs/list") == 0.0  # pre-initialised
        with structlog.testing.capture_logs() as logs:
            pages = [page async for page in client.list_runs()]
    finally:
        await client.close()
    (page,) = pages
    assert [r.run_id for r in page.runs] == [100 + n for n in range(51) if n != 25]
    assert page.rejected == (RejectedItem("runs/list", "run", 125, 7, "start_time: int_parsing"),)
    assert rejected_samples(metrics.registry, "runs/list") == 1.0
    events = [e for e in logs if e["event"] == "api_item_rejected"]
    assert events == [
        {
            "event": "api_item_rejected",
            "log_level": "warning",
            "workspace": "ws",
            "endpoint": "runs/list",
            "kind": "run",
            "item_id": 125,
            "job_id": 7,
            "detail": "start_time: int_parsing",
        }
    ]
    assert SECRET not in repr(logs)
    assert "rejected" not in page.model_dump()
    assert "rejected" not in page.model_dump_json()
    assert len(stub.requests) == 1
    assert clock.slept == []


async def test_poisoned_jobs_are_left_out_of_jobs_list(
    stub: Stub, stub_client: Callable[..., JobsClient]
) -> None:
    """jobs/list keeps the valid jobs; a job with a bad setting and an item that is not an
    object at all are rejected. Keys of free-form maps never reach the detail (they can be
    as telling as values), and the hook sees every rejection."""
    stub.handlers["jobs/list"] = answer(
        {
            "jobs": [
                job(1),
                job(2, max_retries="lots"),
                job(3, tags={SECRET: 5}),
                42,
                job(5),
            ]
        }
    )
    seen: list[RejectedItem] = []
    client = stub_client(api_version="2.0", on_reject=seen.append)
    (page,) = [p async for p in client.list_jobs()]
    assert [j.job_id for j in page.jobs] == [1, 5]
    assert [(r.item_id, r.job_id, r.detail) for r in page.rejected] == [
        (2, 2, "settings.max_retries: int_parsing"),
        (3, 3, "settings.tags.*: string_type"),
        (None, None, "item: model_type"),
    ]
    assert seen == list(page.rejected)
    assert SECRET not in repr(page.rejected)


@pytest.mark.parametrize(
    ("endpoint", "body", "item_id", "detail"),
    [
        ("runs/get", run(9, state="BROKEN"), 9, "state: model_type"),
        ("runs/get", {"run_id": "nine", "job_id": 7}, None, "run_id: int_parsing"),
        ("jobs/get", job(4, timeout_seconds={"a": 1}), 4, "settings.timeout_seconds: int_type"),
    ],
    ids=["run-state", "run-id", "job-setting"],
)
async def test_get_of_a_poisoned_object_raises_item_rejected_at_once(
    stub: Stub,
    clock: ManualClock,
    stub_client: Callable[..., JobsClient],
    endpoint: str,
    body: dict[str, Any],
    item_id: int | None,
    detail: str,
) -> None:
    """runs/get and jobs/get of an object that fails validation raise ItemRejected with
    its RejectedItem after one request: no retry, no back-off (the same object would come
    back), and the attempt itself is reported as the 200 it was."""
    stub.handlers[endpoint] = answer(body)
    attempts: list[Attempt] = []
    seen: list[RejectedItem] = []
    client = stub_client(api_version="2.1", on_attempt=attempts.append, on_reject=seen.append)
    call = client.get_run(9) if endpoint == "runs/get" else client.get_job(4)
    with pytest.raises(ItemRejected) as caught:
        await call
    item = caught.value.item
    assert (item.endpoint, item.item_id, item.detail) == (endpoint, item_id, detail)
    assert seen == [item]
    assert len(stub.requests) == 1
    assert clock.slept == []
    assert [(a.code, a.will_retry) for a in attempts] == [("200", False)]


# A lone high and a lone low surrogate, and a valid pair (U+1F600) that must survive.
_LONE = "bad\ud800name\udc00"
_REPAIRED = "bad\ufffdname\ufffd"
_PAIR = "\U0001f600"


@pytest.mark.parametrize(
    "endpoint", ["runs/list", "runs/get", "jobs/list", "jobs/get"], ids=lambda e: e
)
async def test_lone_surrogates_are_repaired_wherever_they_are(
    stub: Stub, stub_client: Callable[..., JobsClient], endpoint: str
) -> None:
    """A lone UTF-16 surrogate escape (`\\ud800`) makes pydantic's JSON parser refuse the
    whole body; the client instead replaces it with U+FFFD, in names, nested strings and
    map keys alike, and the run or job comes out valid and encodable as UTF-8."""
    bad_run = run(
        3,
        run_name=_LONE,
        tasks=[{"task_key": "t", "state": {"state_message": _LONE}}],
        overriding_parameters={_LONE: [_PAIR]},
    )
    bad_job = job(3, name=_LONE, tags={_LONE: _LONE})
    bodies: dict[str, object] = {
        "runs/list": {"runs": [run(4), bad_run], "has_more": False},
        "runs/get": bad_run,
        "jobs/list": {"jobs": [job(2), bad_job]},
        "jobs/get": bad_job,
    }
    raw = json.dumps(bodies[endpoint]).encode()  # ensure_ascii: "\ud800" escapes
    assert b"\\ud800" in raw
    model = Run if endpoint.startswith("runs/") else Job
    with pytest.raises(ValidationError, match=r"surrogate|hex escape"):
        model.model_validate_json(json.dumps(bad_run if model is Run else bad_job))
    stub.handlers[endpoint] = answer(raw)
    seen: list[RejectedItem] = []
    client = stub_client(api_version="2.0", on_reject=seen.append)
    if endpoint == "runs/list":
        (page,) = [p async for p in client.list_runs()]
        assert page.rejected == ()
        got: Run | Job = page.runs[1]
    elif endpoint == "runs/get":
        got = await client.get_run(3)
    elif endpoint == "jobs/list":
        (jobs,) = [p async for p in client.list_jobs()]
        assert jobs.rejected == ()
        got = jobs.jobs[1]
    else:
        got = await client.get_job(3)
    assert seen == []
    if isinstance(got, Run):
        assert got.run_name == _REPAIRED
        assert got.tasks[0].state is not None
        assert got.tasks[0].state.state_message == _REPAIRED
        assert got.overriding_parameters == {_REPAIRED: [_PAIR]}
    else:
        assert got.settings.name == _REPAIRED
        assert got.settings.tags == {_REPAIRED: _REPAIRED}
    got.model_dump_json().encode("utf-8")  # would raise on a surrogate left behind


@pytest.mark.parametrize(
    "body",
    [
        b'{"runs": "oops"}',
        b'{"runs": null}',
        b'{"runs": [], "has_more": "perhaps"}',
        b'[{"run_id": 1}]',
        b'{"runs": [{"run_id": 1}, {"run_id": 2',
        b"<html>gateway</html>",
    ],
    ids=["runs-not-a-list", "runs-null", "bad-has_more", "not-an-object", "truncated", "html"],
)
async def test_envelope_errors_are_retried_once_then_malformed(
    stub: Stub, clock: ManualClock, stub_client: Callable[..., JobsClient], body: bytes
) -> None:
    """A 2xx body that is not JSON, or whose envelope is wrong, is still `malformed`:
    retried once, then MalformedResponse; nothing is reported as a rejected item."""
    stub.handlers["runs/list"] = answer(body)
    attempts: list[Attempt] = []
    seen: list[RejectedItem] = []
    client = stub_client(api_version="2.0", on_attempt=attempts.append, on_reject=seen.append)
    with pytest.raises(MalformedResponse, match="runs/list"):
        await anext(client.list_runs())
    assert [(a.code, a.will_retry) for a in attempts] == [("malformed", True), ("malformed", False)]
    assert len(clock.slept) == 1
    assert seen == []


@pytest.mark.parametrize("body", [b"[]", b'"run"', b'{"run_id": 1'], ids=["list", "str", "cut"])
async def test_a_get_body_that_is_no_object_is_malformed_not_rejected(
    stub: Stub, stub_client: Callable[..., JobsClient], body: bytes
) -> None:
    """runs/get answering something that is not a JSON object is a garbled answer
    (retried once, MalformedResponse), not a rejected run."""
    stub.handlers["runs/get"] = answer(body)
    with pytest.raises(MalformedResponse, match="runs/get"):
        await stub_client().get_run(1)
    assert len(stub.requests) == 2


async def test_get_run_asks_for_history_and_keeps_it_across_task_pages(
    stub: Stub, stub_client: Callable[..., JobsClient]
) -> None:
    """runs/get sends include_history=true on every request; with 2.2 task paging, the
    repair_history of the first page survives a later page that leaves it out."""
    history = [{"type": "ORIGINAL", "start_time": 1}, {"type": "REPAIR", "id": 77}]

    def pages(query: dict[str, str]) -> tuple[int, bytes]:
        if query.get("page_token") is None:
            body = run(5, tasks=[{"task_key": "a"}], repair_history=history, next_page_token="p2")
        else:
            body = run(5, tasks=[{"task_key": "b"}])
        return 200, json.dumps(body).encode()

    stub.handlers["runs/get"] = pages
    got = await stub_client(api_version="2.2").get_run(5)
    assert [t.task_key for t in got.tasks] == ["a", "b"]
    assert got.repair_count == 1
    assert got.repair_history is not None
    assert [h.id for h in got.repair_history] == [None, 77]
    assert [q.get("include_history") for q in stub.params("runs/get")] == ["true", "true"]
    assert [q.get("page_token") for q in stub.params("runs/get")] == [None, "p2"]
