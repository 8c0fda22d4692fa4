"""`watcher test-alert`: one clearly marked test alert sent straight through a channel
(no outbox, no retries), so an operator sees at once whether the channel works."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from watcher.aio import Timeout, within
from watcher.clock import Clock, SystemClock
from watcher.config import RoutingConfig
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, JobRef
from watcher.notify.base import Failed, Result, Retry, Sent
from watcher.notify.channels import build_channel
from watcher.notify.router import serves
from watcher.store.base import DeliveryKey

TEST_WORKSPACE = "watcher-test"
"""The workspace of a test alert sent without any configured workspace."""


class TestAlertError(Exception):
    """The test alert could not be delivered; the message says why (never a secret)."""

    __test__ = False  # not a pytest test class


def test_event(workspace: str, *, now: float) -> Event:
    """A failed-run event in `workspace` flagged `test=True`, with texts saying it is a
    test."""
    moment = datetime.fromtimestamp(now, UTC)
    ms = int(now * 1000)
    return Event(
        id=str(uuid.uuid4()),
        type=EventType.RUN_FAILED,
        workspace=workspace,
        occurred_at=moment,
        job=JobRef(name="watcher test alert"),
        run=Run(
            run_id=0,
            run_name="watcher test alert",
            state=RunState(
                life_cycle_state="TERMINATED",
                result_state="FAILED",
                state_message="Test alert sent by `watcher test-alert`: no job failed.",
            ),
            start_time=ms - 60_000,
            end_time=ms,
            execution_duration=60_000,
        ),
        raw_state="FAILED",
        test=True,
    )


async def send_test_alert(
    config: RoutingConfig,
    channel: str,
    *,
    clock: Clock | None = None,
    stream: TextIO | None = None,
    workspace: str = TEST_WORKSPACE,
    workspace_ids: Mapping[str, str] | None = None,
) -> str:
    """Send a test alert through `channel` (a channel name, or `<email channel>:<address>`,
    as typed on the command line); the result in words, or TestAlertError. `stream`
    receives console channel output. The event is in `workspace` (callers pass the first
    configured one); `workspace_ids` is what Databricks-format webhooks send as its id."""
    clock = clock or SystemClock()
    try:
        key = DeliveryKey.parse(channel)
    except ValueError as exc:
        raise TestAlertError(str(exc)) from None
    if not serves(key, config.channels):
        known = ", ".join(sorted(config.channels)) or "none"
        raise TestAlertError(f"unknown channel {channel!r} (configured: {known})")
    settings = config.channels[key.channel]
    built = build_channel(
        key.channel, settings, clock=clock, stream=stream, workspace_ids=workspace_ids
    )
    event = test_event(workspace, now=clock.time())
    target = built.target(key)
    result: Result
    try:
        if target is None:
            result = Failed(f"channel {key.channel!r} has no recipients")
        else:
            result = await within(clock, settings.timeout, target.send(event))
    except (Timeout, TimeoutError):
        result = Retry(f"timed out after {settings.timeout:g}s")
    finally:
        await built.close()
    if isinstance(result, Sent):
        detail = f": {result.detail}" if result.detail else ""
        return f"test alert {event.id} sent through {channel!r} ({settings.type}){detail}"
    kind = "temporary failure" if isinstance(result, Retry) else "permanent failure"
    raise TestAlertError(f"test alert through {channel!r} failed ({kind}): {result.error}")
