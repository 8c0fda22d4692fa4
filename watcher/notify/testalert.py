"""`watcher test-alert`: one clearly marked test alert sent straight through a channel
(no outbox, no retries), so an operator sees at once whether the channel works.

Channels with incidents of their own (PagerDuty, Alertmanager) get a test incident
opened and resolved: the test failure, then a test `incident_resolved` of the same
incident (key `watcher-test/<incident id>`), so the check leaves nothing open there."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TextIO

from watcher.aio import Timeout, within
from watcher.clock import Clock, SystemClock
from watcher.config import RoutingConfig
from watcher.config.channels import ChannelConfig
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, IncidentRef, JobRef
from watcher.notify.base import Channel, Failed, Result, Retry, Sent
from watcher.notify.channels import build_channel
from watcher.notify.router import serves
from watcher.store.base import DeliveryKey

TEST_WORKSPACE = "watcher-test"
"""The workspace of a test alert sent without any configured workspace."""
RESOLVING_TYPES = ("pagerduty", "alertmanager")
"""Channel types whose test opens an incident there, and so also resolves it."""


class TestAlertError(Exception):
    """The test alert could not be delivered; the message says why (never a secret)."""

    __test__ = False  # not a pytest test class


def test_event(workspace: str, *, now: float) -> Event:
    """A failed-run event in `workspace` flagged `test=True`, with texts saying it is a
    test, opening a test incident (key `watcher-test/<incident id>`)."""
    moment = datetime.fromtimestamp(now, UTC)
    ms = int(now * 1000)
    incident_id = str(uuid.uuid4())
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
        incident=IncidentRef(
            id=incident_id,
            key=f"watcher-test/{incident_id}",
            kind="failure",
            state="open",
            opened_at=moment,
        ),
    )


def test_resolve(trigger: Event) -> Event:
    """The test `incident_resolved` closing the incident `trigger` opened, flagged
    `test=True` as well."""
    if trigger.incident is None:
        raise ValueError("a test resolve needs the test alert's incident")
    run = trigger.run.model_copy(
        update={
            "state": RunState(
                life_cycle_state="TERMINATED",
                state_message="Test resolve sent by `watcher test-alert`: no job changed.",
            )
        }
    )
    incident = trigger.incident.model_copy(
        update={"state": "resolved", "resolved_at": trigger.occurred_at, "cause": "manual"}
    )
    return trigger.model_copy(
        update={
            "id": str(uuid.uuid4()),
            "type": EventType.INCIDENT_RESOLVED,
            "run": run,
            "raw_state": None,
            "incident": incident,
        }
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
    events = [event, test_resolve(event)] if settings.type in RESOLVING_TYPES else [event]
    target = built.target(key)
    try:
        if target is None:
            results: list[Result] = [Failed(f"channel {key.channel!r} has no recipients")]
        else:
            results = await _send_all(target, events, clock=clock, settings=settings)
    finally:
        await built.close()
    return _outcome(results, events, channel=channel, kind=settings.type)


async def _send_all(
    target: Channel, events: list[Event], *, clock: Clock, settings: ChannelConfig
) -> list[Result]:
    """Each event in turn until one is not sent (a resolve needs its trigger)."""
    results: list[Result] = []
    for event in events:
        try:
            result = await within(clock, settings.timeout, target.send(event))
        except (Timeout, TimeoutError):
            result = Retry(f"timed out after {settings.timeout:g}s")
        results.append(result)
        if not isinstance(result, Sent):
            break
    return results


def _outcome(results: list[Result], events: list[Event], *, channel: str, kind: str) -> str:
    """The results in words (TestAlertError for a failure)."""
    last = results[-1]
    if isinstance(last, Sent):
        detail = f": {last.detail}" if last.detail else ""
        sent = f"test alert {events[0].id} sent through {channel!r} ({kind})"
        if len(events) == 1:
            return sent + detail
        incident = events[0].incident.key if events[0].incident else events[0].id
        return f"{sent}, then resolved by test event {events[1].id} (incident {incident}){detail}"
    failure = "temporary failure" if isinstance(last, Retry) else "permanent failure"
    what = "test alert" if len(results) == 1 else "resolve of the test alert (it was sent)"
    raise TestAlertError(f"{what} through {channel!r} failed ({failure}): {last.error}")
