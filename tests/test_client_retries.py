"""Retries, back-off, typed errors and the per-attempt hook, against injected faults."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
import structlog
import trustme
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.conftest import TOKEN, ClientFactory
from watcher.clock import ManualClock
from watcher.databricks import (
    ApiError,
    Attempt,
    DatabricksError,
    JobsClient,
    MalformedResponse,
    RetryBudgetExceeded,
    RetryPolicy,
    StaticToken,
    Timeouts,
)
from watcher.databricks.client import throttler_for
from watcher.metrics import Metrics
from watcher.simulator import Fault, Simulator
from watcher.simulator.faults import FaultKind


@pytest.fixture
def job(sim: Simulator) -> int:
    return sim.workspace.create_job("nightly")


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int, status: int
) -> None:
    """429 and 503 wait exactly the integer Retry-After seconds, then succeed."""
    sim.faults.add(Fault(kind="status", status=status, retry_after="7", times=2))
    got = await make_client().get_job(job)
    assert got.job_id == job
    assert clock.slept == [7.0, 7.0]
    assert [r.status for r in sim.requests] == [status, status, 200]


async def test_missing_or_odd_retry_after_waits_one_second(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int
) -> None:
    """A 429 without an integer Retry-After waits the documented default of 1 s."""
    sim.faults.add(Fault(kind="status", status=429, times=1))
    sim.faults.add(Fault(kind="status", status=429, retry_after="Wed, 21 Oct 2015", times=1))
    await make_client().get_job(job)
    assert clock.slept == [1.0, 1.0]


async def test_server_errors_back_off_with_growing_full_jitter(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int
) -> None:
    """500s are retried with full-jitter delays bounded by base * 2^(n-1)."""
    sim.faults.add(Fault(kind="status", status=500, times=5))
    client = make_client(retry=RetryPolicy(budget=1000, base_delay=2, max_delay=60))
    await client.get_job(job)
    assert len(clock.slept) == 5
    for n, delay in enumerate(clock.slept, start=1):
        assert 0 <= delay <= 2 * 2 ** (n - 1)
    assert len(set(clock.slept)) == 5  # jittered, not a fixed schedule


async def test_gives_up_when_the_budget_is_spent(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int
) -> None:
    """A 503 storm ends in RetryBudgetExceeded once waiting would pass the budget; the
    total wait never exceeds it."""
    sim.faults.add(Fault(kind="status", status=503, retry_after="10", times=None))
    client = make_client(retry=RetryPolicy(budget=45))
    with pytest.raises(RetryBudgetExceeded) as caught:
        await client.get_job(job)
    assert clock.slept == [10.0, 10.0, 10.0, 10.0]
    assert caught.value.attempts == 5
    assert "TEMPORARILY_UNAVAILABLE" in str(caught.value)


async def test_client_errors_fail_at_once_with_a_typed_error(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory
) -> None:
    """A missing run is 400 INVALID_PARAMETER_VALUE "... does not exist.": not retried,
    raised as ApiError with code, message and status, recognisable as not-found."""
    with pytest.raises(ApiError) as caught:
        await make_client().get_run(424242)
    error = caught.value
    assert (error.status, error.error_code) == (400, "INVALID_PARAMETER_VALUE")
    assert error.message == "Run 424242 does not exist."
    assert error.is_not_found
    assert clock.slept == []
    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            "<html><head><title>Bad Gateway</title></head><body>nope</body></html>",
            "HTTP_418",
            "Bad Gateway",
        ),
        ("QUOTA_EXCEEDED: too many things", "QUOTA_EXCEEDED", "too many things"),
        ("", "HTTP_418", ""),
    ],
    ids=["html", "plain-text", "empty"],
)
async def test_non_json_error_bodies_are_understood(
    sim: Simulator, make_client: ClientFactory, job: int, body: str, code: str, message: str
) -> None:
    """HTML and `CODE: message` plain-text error bodies still give a typed error."""
    sim.faults.add(Fault(kind="status", status=418, body=body))
    with pytest.raises(ApiError) as caught:
        await make_client().get_job(job)
    assert (caught.value.error_code, caught.value.message) == (code, message)


@pytest.mark.parametrize("kind", ["truncated", "malformed"])
async def test_garbled_bodies_are_retried(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int, kind: FaultKind
) -> None:
    """A truncated or malformed 200 body is retried and then succeeds."""
    sim.faults.add(Fault(kind=kind, endpoint="jobs/get", times=1))
    attempts: list[Attempt] = []
    got = await make_client(on_attempt=attempts.append).get_job(job)
    assert got.job_id == job
    assert len(clock.slept) == 1
    assert [a.code for a in attempts] == ["malformed", "200"]
    assert [a.will_retry for a in attempts] == [True, False]


async def test_connection_resets_are_retried(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int
) -> None:
    """Connections reset before an answer are retried until one answers. (aiohttp itself
    may silently re-send a GET once on a dropped connection, so count at least one.)"""
    sim.faults.add(Fault(kind="reset", endpoint="jobs/get", times=4))
    attempts: list[Attempt] = []
    got = await make_client(on_attempt=attempts.append).get_job(job)
    assert got.job_id == job
    assert attempts[-1].code == "200"
    assert {a.code for a in attempts[:-1]} == {"connection_error"}
    assert len(clock.slept) == len(attempts) - 1 >= 1
    assert len(sim.faults) == 0


async def test_persistently_malformed_body_raises_malformed_response(
    sim: Simulator, make_client: ClientFactory, job: int
) -> None:
    """A body that never parses ends in MalformedResponse naming the endpoint."""
    sim.faults.add(Fault(kind="malformed", endpoint="jobs/get", times=None))
    with pytest.raises(MalformedResponse, match="jobs/get"):
        await make_client(retry=RetryPolicy(budget=5)).get_job(job)


async def test_timeouts_are_retried(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int
) -> None:
    """A request slower than the timeout is abandoned and retried."""
    sim.faults.add(Fault(kind="latency", endpoint="jobs/get", delay=0.3, times=1))
    attempts: list[Attempt] = []
    client = make_client(timeouts=Timeouts(connect=1, total=0.05), on_attempt=attempts.append)
    await client.get_job(job)
    assert [a.code for a in attempts] == ["timeout", "200"]


async def test_attempt_hook_sees_every_attempt(
    sim: Simulator, make_client: ClientFactory, job: int
) -> None:
    """The metrics hook gets one record per HTTP attempt: endpoint, code, retry flag."""
    sim.faults.add(Fault(kind="status", status=429, retry_after="1", times=1))
    attempts: list[Attempt] = []
    client = make_client(on_attempt=attempts.append)
    await client.get_job(job)
    with pytest.raises(ApiError):
        await client.get_run(1)
    assert [(a.endpoint, a.code, a.will_retry) for a in attempts] == [
        ("jobs/get", "429", True),
        ("jobs/get", "200", False),
        ("runs/get", "400", False),
    ]


async def test_server_clock_offset_is_estimated_from_the_date_header(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, job: int
) -> None:
    """The workspace's clock is read from the HTTP Date header; server_time() follows it."""
    client = make_client()
    await client.get_job(job)
    assert client.server_offset is not None
    assert abs(client.server_offset) <= 1.0
    assert abs(client.server_time() - clock.time()) <= 1.0


async def _dateless_server(body: bytes) -> asyncio.Server:
    """HTTP/1.1 by hand, answering every GET with `body` and no Date header (aiohttp's
    server always adds one)."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (await reader.readuntil(b"\r\n\r\n")).startswith(b"GET "):
                writer.write(f"{head}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_a_missing_date_header_is_warned_once_and_counted_each_time(
    clock: ManualClock,
) -> None:
    """Answers without a Date header leave the skew unmeasured: the client logs
    api_date_header_missing once (with the host) and counts every such response in
    watcher_api_date_header_missing_total."""
    server = await _dateless_server(json.dumps({"job_id": 3}).encode())
    port = server.sockets[0].getsockname()[1]
    registry = CollectorRegistry()
    hooks = Metrics(registry=registry).attempt_hook("ws")
    client = JobsClient(
        host=f"http://127.0.0.1:{port}",
        auth=StaticToken(SecretStr(TOKEN)),
        clock=clock,
        on_attempt=hooks,
        on_date_missing=hooks.date_header_missing,
    )
    sample = "watcher_api_date_header_missing_total"
    try:
        assert registry.get_sample_value(sample, {"workspace": "ws"}) == 0.0
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                assert (await client.get_job(3)).job_id == 3
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    warnings = [e for e in logs if e["event"] == "api_date_header_missing"]
    assert warnings == [
        {"event": "api_date_header_missing", "log_level": "warning", "host": client.host}
    ]
    assert registry.get_sample_value(sample, {"workspace": "ws"}) == 3.0
    assert client.server_offset is None
    assert client.server_time() == clock.time()


@pytest.mark.parametrize(
    ("rps", "burst", "period"), [(10.0, 10, 1.0), (0.5, 1, 2.0), (2.5, 2, 0.8), (100, 100, 1.0)]
)
def test_fractional_rates_map_to_a_throttler(rps: float, burst: int, period: float) -> None:
    """requests_per_second maps to (rate_limit per period) with the same average rate."""
    throttler = throttler_for(rps)
    assert throttler.rate_limit == burst
    assert throttler.period == pytest.approx(period)


async def test_rate_limit_bounds_requests_in_flight_per_window(
    sim: Simulator, make_client: ClientFactory, job: int
) -> None:
    """With 5 requests/s, the sixth of six concurrent calls waits for the window: the
    attempt hook reports it throttled while the first five were not."""
    import asyncio

    attempts: list[Attempt] = []
    client = make_client(requests_per_second=5.0, on_attempt=attempts.append)
    await asyncio.gather(*(client.get_job(job) for _ in range(6)))
    assert len(sim.requests) == 6
    # Five pass at once (microseconds); the sixth waits for the one-second window.
    throttled = [a for a in attempts if a.throttled_seconds > 0.5]
    assert len(throttled) == 1


async def test_tls_is_verified_and_a_custom_ca_bundle_is_honoured(
    clock: ManualClock, tmp_path: Path
) -> None:
    """Over HTTPS the server certificate is verified: an untrusted one fails at once
    (no retries), and the workspace's ca_bundle makes it trusted."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    sim = Simulator(clock=clock, tokens={TOKEN})
    url = await sim.start(ssl_context=server_ctx)
    job = sim.workspace.create_job("tls")
    auth = StaticToken(SecretStr(TOKEN))
    untrusted = JobsClient(host=url, auth=auth, clock=clock)
    trusted = JobsClient(host=url, auth=auth, clock=clock, ca_bundle=bundle)
    try:
        with pytest.raises(DatabricksError, match="not trusted"):
            await untrusted.get_job(job)
        assert clock.slept == []
        assert (await trusted.get_job(job)).job_id == job
    finally:
        await untrusted.close()
        await trusted.close()
        await sim.stop()
