"""Routing fails open: an error while routing an event (routing runs inside the commit of
a poll cycle) never aborts the cycle; the event goes to every channel instead, through the
real Pipeline and SQLite store, logged as `routing_failed` and counted."""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from tests.conftest import ReceiverFactory
from tests.notify_fixtures import Receiver, make_config, make_event
from tests.wiring import daemon
from watcher.clock import ManualClock
from watcher.config import (
    Config,
    RouteConfig,
    RouteMatch,
    SilenceConfig,
)
from watcher.databricks.models import Job, JobSettings, Run, RunState
from watcher.domain import PollResult
from watcher.events import Event, EventType
from watcher.notify.router import Route, RoutingTable, router_for, table_router
from watcher.pipeline import Pipeline
from watcher.silences import Silence
from watcher.store.base import DeliveryKey, Routed, Store

PD_ACCEPTED: tuple[int, dict[str, str], str] = (202, {}, '{"status":"success"}')


@pytest.fixture
async def slack(make_receiver: ReceiverFactory) -> Receiver:
    return await make_receiver()


@pytest.fixture
async def pagerduty(make_receiver: ReceiverFactory) -> Receiver:
    return await make_receiver(default=PD_ACCEPTED)


def pair(routed: Routed) -> tuple[list[DeliveryKey], list[DeliveryKey]]:
    """(where an event goes, where a silence holds it back)."""
    return list(routed.channels), list(routed.silenced)


def four_channels(hook: Receiver, slack: Receiver, pagerduty: Receiver, db: Path) -> Config:
    """Four channels; the only route sends everything to `hook`; the store at `db`."""
    return make_config(
        store={"path": str(db)},
        channels={
            "hook": {"type": "webhook", "url": f"{hook.url}/hook"},
            "slack": {"type": "slack", "url": f"{slack.url}/services/fake"},
            "pd": {
                "type": "pagerduty",
                "routing_key": "fake-routing-key",
                "url": f"{pagerduty.url}/v2/enqueue",
            },
            "console": {"type": "console"},
        },
        routes=[{"channels": ["hook"]}],
    )


def failed_run(clock: ManualClock) -> PollResult:
    """One cycle that saw job 42's run 1001 fail a second ago."""
    now_ms = int(clock.time() * 1000)
    run = Run(
        run_id=1001,
        job_id=42,
        run_name="nightly-etl",
        state=RunState(life_cycle_state="TERMINATED", result_state="FAILED"),
        start_time=now_ms - 600_000,
        end_time=now_ms - 1000,
        execution_duration=599_000,
    )
    return PollResult(
        workspace="prod",
        runs=[run],
        jobs={42: Job(job_id=42, settings=JobSettings(name="nightly-etl"))},
        vanished=[],
        watermark_ms=now_ms,
        server_now_ms=now_ms,
        news_since_ms=now_ms - 60_000,
        requests=1,
    )


def keys(*texts: str) -> list[DeliveryKey]:
    return [DeliveryKey.parse(text) for text in texts]


def boom(event: Event) -> bool:
    raise RuntimeError("route match exploded")


def raising_silence(table: RoutingTable) -> RoutingTable:
    # The bug seen in production: a naive datetime compared with the time of routing.
    naive = cast(float, datetime(2023, 11, 14, 22, 0))
    return dataclasses.replace(table, silences=(Silence(lambda _: True, naive, naive),))


def raising_route(table: RoutingTable) -> RoutingTable:
    return dataclasses.replace(table, routes=(Route(boom, ("hook",)), *table.routes))


async def deliveries(store: Store, clock: ManualClock) -> list[str]:
    due = await store.due_deliveries(now=clock.time(), limit=100)
    return sorted(str(d.key) for d in due)


@pytest.mark.parametrize(
    ("inject", "error_type"),
    [(raising_silence, "TypeError"), (raising_route, "RuntimeError")],
    ids=["silence comparison raises", "route match raises"],
)
async def test_an_event_whose_routing_raises_goes_to_every_channel(
    tmp_path: Path,
    clock: ManualClock,
    receiver: Receiver,
    slack: Receiver,
    pagerduty: Receiver,
    inject: Any,
    error_type: str,
) -> None:
    """A routing table whose evaluation raises at run time (injected past config
    validation) does not abort the cycle: Pipeline.handle commits the event to the SQLite
    outbox with a delivery for every configured channel (not just the routed `hook`, and
    not held by the broken silence), logs `routing_failed` with the event id, type and the
    exception, counts watcher_routing_failures_total, and every channel then receives it."""
    config = four_channels(receiver, slack, pagerduty, tmp_path / "watcher.db")
    table = inject(RoutingTable.compile(config.routing))
    stream = io.StringIO()
    async with daemon(config, clock, console=stream) as built:
        # Everything as app.build wires it but this Pipeline, built by hand like the
        # daemon's because build() has no way to inject a routing table (one that raises).
        pipeline = Pipeline(
            store=built.store,
            health_rules=config.health_rules,
            startup=config.startup,
            clock=clock,
            route=table_router(
                table, clock=clock, on_failure=built.metrics.observe_routing_failure
            ),
        )
        with structlog.testing.capture_logs() as logs:
            (event,) = await pipeline.handle(failed_run(clock))
        assert await deliveries(built.store, clock) == ["console", "hook", "pd", "slack"]
        await built.dispatcher.drain()
    (line,) = [e for e in logs if e["event"] == "routing_failed"]
    assert line["log_level"] == "error"
    assert (line["event_id"], line["type"]) == (event.id, "run_failed")
    assert line["error_type"] == error_type
    assert line["error"]
    assert built.metrics.registry.get_sample_value("watcher_routing_failures_total") == 1
    for target in (receiver, slack, pagerduty):
        assert len(target.requests) == 1
    assert "nightly-etl" in stream.getvalue()


async def test_the_daemon_wiring_fails_open_and_counts(
    tmp_path: Path, clock: ManualClock, receiver: Receiver, slack: Receiver, pagerduty: Receiver
) -> None:
    """Through app.build (the router and metric hook as the daemon wires them): a route
    constructed without validation whose name pattern is not a string raises TypeError
    while matching; the cycle still commits deliveries to every channel and the daemon's
    /metrics registry counts the routing failure."""
    config = four_channels(receiver, slack, pagerduty, tmp_path / "watcher.db")
    broken = RouteConfig.model_construct(
        match=RouteMatch.model_construct(names=[cast(str, None)]), channels=["hook"]
    )
    config = config.model_copy(update={"routes": [broken]})
    async with daemon(config, clock, console=io.StringIO()) as built:
        with structlog.testing.capture_logs() as logs:
            await built.pipeline.handle(failed_run(clock))
        assert await deliveries(built.store, clock) == ["console", "hook", "pd", "slack"]
    assert [e["error_type"] for e in logs if e["event"] == "routing_failed"] == ["TypeError"]
    assert built.metrics.registry.get_sample_value("watcher_routing_failures_total") == 1


@pytest.fixture
def far_from_utc() -> Iterator[None]:
    """The process runs in a time zone other than UTC (so local time is not UTC)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.usefixtures("far_from_utc")
def test_a_silence_without_a_time_zone_is_read_as_utc_once_at_start(clock: ManualClock) -> None:
    """A silence time without a zone (seen: "can't compare offset-naive and offset-aware
    datetimes" on every event, so no cycle committed; constructed here past validation,
    which may reject it) is read as UTC, not local time, when the table is compiled, with
    one warning per time then, and routing works: the event is silenced inside the window
    and delivered outside it."""
    naive = SilenceConfig.model_construct(
        match=RouteMatch(),
        starts_at=datetime(2023, 11, 14, 22, 0),
        ends_at=datetime(2023, 11, 14, 23, 0),
    )
    config = make_config(
        channels={"slack": {"type": "slack", "url": "https://hooks.slack.invalid/fake"}}
    ).model_copy(update={"silences": [naive]})
    clock.advance(datetime.fromisoformat("2023-11-14T22:30:00+00:00").timestamp() - clock.time())
    with structlog.testing.capture_logs() as logs:
        router = router_for(config.routing, clock=clock)
        assert pair(router(make_event(), None, ())) == ([], keys("slack"))
        clock.advance(3600)
        assert pair(router(make_event(), None, ())) == (keys("slack"), [])
    assert [e["event"] for e in logs] == ["silence_without_time_zone"] * 2
    assert [e["silence"] for e in logs] == ["silences.0.starts_at", "silences.0.ends_at"]


def test_fail_open_skips_channels_that_cannot_express_the_event(clock: ManualClock) -> None:
    """Failing open sends the event to every channel that can express its type: a run
    start does not page PagerDuty, everything else gets it; the router still answers."""
    config = make_config(
        channels={
            "console": {"type": "console"},
            "pd": {"type": "pagerduty", "routing_key": "fake-routing-key"},
        }
    )
    table = raising_route(RoutingTable.compile(config.routing))
    router = table_router(table, clock=clock)
    assert pair(router(make_event(EventType.RUN_STARTED), None, ())) == (keys("console"), [])
    assert pair(router(make_event(EventType.RUN_FAILED), None, ())) == (keys("console", "pd"), [])
