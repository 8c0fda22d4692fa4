"""Shared fixtures, each name with one meaning throughout the tests.

Simulated time: `clock` is the test's ManualClock; `sim` (a simulated workspace over real
HTTP on port 0), `receiver` and `make_receiver` (real HTTP receivers) and the clients of
`make_client` / `client_for` all run on it. `now_clock` is a ManualClock that starts at
the current time, for what is checked against real time (Standard Webhooks signatures).

Real time: `live_receiver` stamps requests with the system clock, for the tests that run
the daemon as a real process (tests/daemon_helpers.py). `smtp` keeps no time at all;
`store` is each store backend in turn (SQLite in the test's directory, PostgreSQL in a
schema of its own), `sqlite_store` the SQLite one alone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tests.notify_fixtures import Receiver, SmtpServer, start_smtp
from tests.pg import pg_store
from watcher.clock import Clock, ManualClock, SystemClock
from watcher.databricks import JobsClient, RetryPolicy, StaticToken
from watcher.simulator import Simulator
from watcher.store.base import Store
from watcher.store.sqlite import SQLiteStore

TOKEN = "dapi-test-not-a-real-token"

ClientFactory = Callable[..., JobsClient]
ReceiverFactory = Callable[..., Awaitable[Receiver]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def now_clock() -> ManualClock:
    """Manual time starting now: Standard Webhooks verification checks the signed
    timestamp against real time."""
    return ManualClock(start=time.time())


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[Simulator]:
    async with Simulator(clock=clock, tokens={TOKEN}) as simulator:
        yield simulator


@pytest.fixture
async def make_receiver(clock: ManualClock) -> AsyncIterator[ReceiverFactory]:
    """Started real HTTP receivers (tests/notify_fixtures.py) on `clock`, stopped at the
    end of the test; keywords are Receiver's (`default`, `script`, `hold`)."""
    started: list[Receiver] = []

    async def factory(**options: Any) -> Receiver:
        r = Receiver(clock=clock, **options)
        await r.start()
        started.append(r)
        return r

    yield factory
    for r in started:
        await r.stop()


@pytest.fixture
async def receiver(make_receiver: ReceiverFactory) -> Receiver:
    """A real HTTP receiver for webhook-style channels, answering 200."""
    return await make_receiver()


@pytest.fixture
async def live_receiver() -> AsyncIterator[Receiver]:
    """A real HTTP receiver in real time, for a daemon running as a real process."""
    r = Receiver(clock=SystemClock())
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    """The SQLite store in the test's directory, closed at the end: for the tests of what
    only SQLite has (its file, its connection)."""
    db = await SQLiteStore.open(tmp_path / "state" / "watcher.db")
    yield db
    await db.close()


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend in turn, the test running once on each: the SQLite store in the
    test's directory, the PostgreSQL store in a schema of its own (tests/pg.py; a server
    that cannot be reached fails the test). Closed (and the schema dropped) at the end."""
    if request.param == "sqlite":
        db = await SQLiteStore.open(tmp_path / "state" / "watcher.db")
        yield db
        await db.close()
        return
    async with pg_store() as pg:
        yield pg


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    """A real plain SMTP server (aiosmtpd) on port 0; what it received is in `.mailbox`."""
    server = await start_smtp()
    yield server
    await server.stop()


def jobs_client(host: str, clock: Clock, **overrides: Any) -> JobsClient:
    """A client of the Jobs API at `host` with the test token, unthrottled (its throttle
    waits in real time), retrying for up to 120 s of `clock` time; close it (or use it
    with `async with`)."""
    options: dict[str, Any] = {
        "host": host,
        "auth": StaticToken(SecretStr(TOKEN)),
        "clock": clock,
        "requests_per_second": 1000.0,
        "retry": RetryPolicy(budget=120.0),
    }
    options.update(overrides)
    return JobsClient(**options)


@pytest.fixture
async def client_for(clock: ManualClock) -> AsyncIterator[Callable[..., JobsClient]]:
    """`client_for(host, **overrides)`: `jobs_client`s in manual time (back-off sleeps
    advance the clock), closed at the end of the test."""
    clients: list[JobsClient] = []

    def factory(host: str, **overrides: Any) -> JobsClient:
        client = jobs_client(host, clock, **overrides)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.close()


@pytest.fixture
def make_client(sim: Simulator, client_for: Callable[..., JobsClient]) -> ClientFactory:
    """Clients of the simulator in manual time (back-off sleeps advance the clock)."""
    return partial(client_for, sim.url)
