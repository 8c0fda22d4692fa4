"""`watcher test-alert`: one clearly marked test alert sent straight through a channel
(no outbox, no retries), so an operator sees at once whether the channel works."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import TextIO

from watcher.clock import Clock, SystemClock
from watcher.config import Config
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, JobRef
from watcher.notify.base import Retry, Sent
from watcher.notify.channels import build_channel
from watcher.notify.payloads import workspace_id_from_host
from watcher.notify.router import parse_key


class TestAlertError(Exception):
    """The test alert could not be delivered; the message says why (never a secret)."""

    __test__ = False  # not a pytest test class


def test_event(config: Config, *, now: float) -> Event:
    """A failed-run event flagged `test=True`, with texts saying it is a test."""
    moment = datetime.fromtimestamp(now, UTC)
    ms = int(now * 1000)
    return Event(
        id=str(uuid.uuid4()),
        type=EventType.RUN_FAILED,
        workspace=config.workspaces[0].name,
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
    config: Config, channel: str, *, clock: Clock | None = None, stream: TextIO | None = None
) -> str:
    """Send a test alert through `channel` (a channel name, or `<email channel>:<address>`);
    the result in words, or TestAlertError. `stream` receives console channel output."""
    clock = clock or SystemClock()
    parsed = parse_key(channel, dict(config.channels))
    if parsed is None:
        known = ", ".join(sorted(config.channels)) or "none"
        raise TestAlertError(f"unknown channel {channel!r} (configured: {known})")
    name, recipient = parsed
    settings = config.channels[name]
    workspace_ids = {
        w.name: found for w in config.workspaces if (found := workspace_id_from_host(str(w.host)))
    }
    target = build_channel(name, settings, clock=clock, stream=stream, workspace_ids=workspace_ids)
    event = test_event(config, now=clock.time())
    try:
        async with asyncio.timeout(settings.timeout):
            result = await target.send(event, recipient=recipient)
    except TimeoutError:
        result = Retry(f"timed out after {settings.timeout:g}s")
    finally:
        await target.close()
    if isinstance(result, Sent):
        detail = f": {result.detail}" if result.detail else ""
        return f"test alert {event.id} sent through {channel!r} ({settings.type}){detail}"
    kind = "temporary failure" if isinstance(result, Retry) else "permanent failure"
    raise TestAlertError(f"test alert through {channel!r} failed ({kind}): {result.error}")
