"""/metrics, /healthz, /readyz and /status over real HTTP, on the real daemon wiring."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog

from tests.conftest import TOKEN
from watcher.app import Daemon, _housekeeping, build, close, run_once, serve
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.databricks import ApiError, RetryBudgetExceeded
from watcher.leases import LeaseKeeper
from watcher.poller import run_poll_loop
from watcher.server import STUCK_AFTER_CYCLES, Probes, StatusServer
from watcher.simulator import Fault, Simulator


@pytest.fixture
async def daemon(sim: Simulator, clock: ManualClock, tmp_path: Path) -> AsyncIterator[Daemon]:
    config = Config.model_validate(
        {
            "workspaces": [
                {
                    "name": "prod",
                    "host": sim.url,
                    "poll_interval": 30,
                    "auth": {"type": "pat", "token": TOKEN},
                    "requests_per_second": 1000,
                },
            ],
            "store": {"path": str(tmp_path / "s.db")},
        }
    )
    built = await build(config, clock=clock)
    built.server = StatusServer(
        registry=built.metrics.registry,
        probes=Probes(
            workspaces=built.workspace_health,
            ping_store=built.store.ping,
            status=built.status,
            leases=built.lease_problem,
        ),
        clock=clock,
        ready_after_missed_polls=3,
    )
    await built.server.start("127.0.0.1", 0)
    yield built
    await close(built)


async def _get(daemon: Daemon, path: str, **headers: str) -> tuple[int, str, str]:
    assert daemon.server is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(daemon.server.url + path, headers=headers) as resp,
    ):
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_metrics_in_text_and_openmetrics(
    daemon: Daemon, sim: Simulator, clock: ManualClock
) -> None:
    """Prometheus text by default, OpenMetrics when asked; both carry the daemon's series,
    the process and Python runtime's, and no `_created` series. Gzip when the scraper
    accepts it, decoding to the same text; `name[]` selects metrics."""
    sim.workspace.start_run(sim.workspace.create_job("etl"), execution_s=1)
    await run_once(daemon)
    clock.advance(60)
    await run_once(daemon)
    status, content_type, body = await _get(daemon, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    assert 'watcher_build_info{version="0.1.0"} 1.0' in body
    assert 'watcher_api_requests_total{code="200",endpoint="runs/list",workspace="prod"}' in body
    assert (
        'databricks_runs_finished_total{job_id="1",result_state="SUCCESS",workspace="prod"} 1.0'
        in body
    )
    assert "\nprocess_cpu_seconds_total " in body
    assert "\npython_info{" in body
    assert not re.search(r"^\w+_created[{ ]", body, flags=re.MULTILINE)
    status, content_type, body = await _get(
        daemon, "/metrics", Accept="application/openmetrics-text"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    assert 'databricks_runs_finished_total{job_id="1",result_state="SUCCESS",workspace="prod"}' in (
        body
    )
    assert not re.search(r"^\w+_created[{ ]", body, flags=re.MULTILINE)

    assert daemon.server is not None
    url = daemon.server.url + "/metrics"
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url, headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            plain = await resp.read()
        async with http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            compressed = await resp.read()
        only = {"name[]": "watcher_build_info"}
        async with http.get(url, params=only, headers={"Accept-Encoding": "identity"}) as resp:
            selected = (await resp.read()).decode()

    def steady(text: bytes) -> list[bytes]:
        """The lines, but the process' own samples (CPU, memory, GC counts change between
        two scrapes; nothing else runs on the manual clock)."""
        return [
            line for line in text.splitlines() if not line.startswith((b"process_", b"python_gc_"))
        ]

    assert len(compressed) < len(plain) / 3
    assert steady(gzip.decompress(compressed)) == steady(plain)
    assert b"\ndatabricks_run_duration_seconds_bucket{" in plain
    assert [line for line in selected.splitlines() if not line.startswith("#")] == [
        'watcher_build_info{version="0.1.0"} 1.0'
    ]


async def test_readiness_follows_polls_and_the_store(daemon: Daemon, clock: ManualClock) -> None:
    """Ready while every workspace polled within N intervals and the store takes writes;
    not ready, saying why, otherwise. Liveness stays up throughout."""
    daemon.pollers[0].status.last_success_at = clock.time()
    status, _, body = await _get(daemon, "/readyz")
    assert (status, body) == (200, '{"ready": true, "problems": []}')
    clock.advance(3 * 30 + 1)
    status, _, body = await _get(daemon, "/readyz")
    assert status == 503
    assert "workspace prod: last successful poll 91s ago" in body
    daemon.pollers[0].status.last_success_at = clock.time()
    blocker = sqlite3.connect(daemon.config.store.path, timeout=1)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        status, _, body = await _get(daemon, "/readyz")
    finally:
        blocker.rollback()
        blocker.close()
    assert status == 503
    assert "cannot be written" in body
    assert (await _get(daemon, "/healthz"))[0] == 200


async def test_readiness_follows_the_leases(daemon: Daemon, clock: ManualClock) -> None:
    """Serving under leases: not ready until the lease keeper has reached the store, and
    again once it has not for a lease period; missed polls count only for the workspaces
    this replica holds, from when it took each (a replica holding none stands by, ready)."""
    daemon.keeper = LeaseKeeper(
        store=daemon.store,
        replica="r1",
        workspaces=[],  # holds nothing: another replica polls `prod`
        ttl=30,
        clock=clock,
        on_gained=lambda lease, taken_over: None,
        on_lost=lambda workspace, why: None,
    )
    status, _, body = await _get(daemon, "/readyz")
    assert status == 503
    assert "replica" in body
    assert "leases could not be renewed" in body
    await daemon.keeper.tick_once()
    clock.advance(4 * 30)  # `prod` never polled here: not this replica's to poll
    await daemon.keeper.tick_once()
    assert await _get(daemon, "/readyz") == (
        200,
        "application/json; charset=utf-8",
        '{"ready": true, "problems": []}',
    )
    clock.advance(31)  # the keeper has not reached the store for a lease period
    assert (await _get(daemon, "/readyz"))[0] == 503


async def test_status_reports_workspaces_and_outbox(daemon: Daemon, sim: Simulator) -> None:
    """/status is a small JSON summary: workspaces, active runs, outbox depth."""
    sim.workspace.start_run(sim.workspace.create_job("etl"), execution_s=600)
    await run_once(daemon)
    status, _, body = await _get(daemon, "/status")
    data = json.loads(body)
    assert status == 200
    assert data["workspaces"][0]["name"] == "prod"
    assert data["workspaces"][0]["active_runs"] == 1
    assert (data["outbox_pending"], data["dead_letters"]) == (0, 0)


async def test_a_dying_background_task_stops_the_daemon_with_exit_code_1(
    daemon: Daemon, clock: ManualClock
) -> None:
    """When a background task dies (here: the database connection is gone), the daemon
    logs it and serve() returns 1 instead of leaving a half-alive process."""
    stop, ready = asyncio.Event(), asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        running = asyncio.create_task(
            serve(daemon, stop=stop, clock=clock, shutdown_grace=1, on_ready=lambda d: ready.set())
        )
        await ready.wait()
        await daemon.store.close()  # every later store call fails
        code = await asyncio.wait_for(running, timeout=30)
    assert code == 1
    died = [e for e in logs if e["event"] == "background_task_died"]
    assert died
    assert not stop.is_set()


async def test_healthz_fails_when_a_workspace_loop_cannot_make_progress(
    daemon: Daemon, clock: ManualClock, sim: Simulator
) -> None:
    """A workspace loop whose cycles keep failing for a reason of its own (not an API
    outage) is alive but stuck: /healthz answers 503 naming it after STUCK_AFTER_CYCLES
    cycles, and 200 again after a good cycle. An API outage alone never fails /healthz."""
    poller = daemon.pollers[0]
    stop = asyncio.Event()
    outcomes: list[Exception | None] = []

    async def handle(result: object) -> None:
        error = outcomes.pop(0)
        if not outcomes:
            stop.set()
        if error is not None:
            raise error

    async def cycles(*errors: Exception | None) -> int:
        outcomes.extend(errors)
        stop.clear()
        await run_poll_loop(poller=poller, handle=handle, clock=clock, stop=stop)
        return (await _get(daemon, "/healthz"))[0]

    assert (
        await cycles(*[ApiError(endpoint="runs/list", status=503, error_code="X", message="m")] * 6)
        == 200
    )
    assert await cycles(*[RuntimeError("store unreadable")] * (STUCK_AFTER_CYCLES - 1)) == 200
    assert await cycles(RuntimeError("store unreadable")) == 503
    _, _, body = await _get(daemon, "/healthz")
    assert "workspace prod" in body
    assert "store unreadable" in body
    assert await cycles(None) == 200


async def test_status_shows_an_outage_while_the_client_retries(
    daemon: Daemon, sim: Simulator
) -> None:
    """While the API keeps failing, /status names the problem being retried (not only
    after the retry budget); the first answer clears it."""
    sim.faults.add(Fault(kind="status", status=503, times=None))
    with pytest.raises(RetryBudgetExceeded):
        await run_once(daemon)
    data = json.loads((await _get(daemon, "/status"))[2])
    assert "HTTP 503" in data["workspaces"][0]["retrying"]
    assert data["workspaces"][0]["retrying_since"] is not None
    sim.faults.clear()
    await run_once(daemon)
    data = json.loads((await _get(daemon, "/status"))[2])
    assert data["workspaces"][0]["retrying"] is None


async def test_housekeeping_rides_out_a_database_outage(daemon: Daemon, clock: ManualClock) -> None:
    """The outbox gauges cannot be read (the database is down): housekeeping logs it and
    carries on, instead of ending and taking the daemon down with it."""

    async def down() -> None:
        raise ConnectionRefusedError("connection refused")

    daemon.store.outbox_stats = down  # type: ignore[method-assign,assignment]
    stop = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(_housekeeping(daemon, clock, stop))
        for _ in range(3):
            await asyncio.sleep(0.05)
            clock.advance(5)
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 5)
    assert "housekeeping_failed" in [e["event"] for e in logs]
