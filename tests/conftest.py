"""Shared fixtures: a simulated workspace over real HTTP on port 0, in manual time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from tests.notify_fixtures import Receiver
from watcher.clock import ManualClock
from watcher.databricks import JobsClient, RetryPolicy, StaticToken
from watcher.simulator import Simulator

TOKEN = "dapi-test-not-a-real-token"

ClientFactory = Callable[..., JobsClient]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock, tokens={TOKEN}) as simulator:
        yield simulator


@pytest.fixture
async def receiver(clock: ManualClock) -> AsyncIterator[Receiver]:
    """A real HTTP receiver for webhook-style channels (tests/notify_fixtures.py)."""
    r = Receiver(clock=clock)
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def make_client(sim: Simulator, clock: ManualClock) -> AsyncIterator[ClientFactory]:
    """Clients of the simulator in manual time (back-off sleeps advance the clock)."""
    clients: list[JobsClient] = []

    def factory(**overrides: Any) -> JobsClient:
        options: dict[str, Any] = {
            "host": sim.url,
            "auth": StaticToken(SecretStr(TOKEN)),
            "clock": clock,
            "requests_per_second": 1000.0,
            "retry": RetryPolicy(budget=120.0),
        }
        options.update(overrides)
        client = JobsClient(**options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()
