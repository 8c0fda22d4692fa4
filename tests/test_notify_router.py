"""Routing: which channels each event goes to, as a table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.notify_fixtures import make_config, make_event
from watcher.clock import ManualClock
from watcher.databricks.models import JobSettings
from watcher.events import EventType, Streak
from watcher.notify.router import group_labels, route, router_for, serves
from watcher.store.base import DeliveryKey, DeliveryPolicy, Routed

NOW = datetime(2023, 11, 14, 22, 0, tzinfo=UTC)
E = EventType


def pair(routed: Routed) -> tuple[list[DeliveryKey], list[DeliveryKey]]:
    """(where an event goes, where a silence holds it back)."""
    return list(routed.channels), list(routed.silenced)


def keys(texts: list[str]) -> list[DeliveryKey]:
    """Delivery keys as `alerts list` shows them: `channel` or `channel:address`."""
    return [DeliveryKey.parse(text) for text in texts]


CHANNELS: dict[str, Any] = {
    "console": {"type": "console"},
    "slack": {"type": "slack", "url": "https://hooks.slack.invalid/fake"},
    "pd": {"type": "pagerduty", "routing_key": "fake-routing-key"},
    "hook": {"type": "webhook", "url": "https://hooks.invalid/a"},
    "dbx": {"type": "webhook", "url": "https://hooks.invalid/b", "format": "databricks"},
    "mail": {"type": "email", "host": "smtp.invalid", "sender": "watcher@example.com"},
}

WORKSPACES = [
    {
        "name": name,
        "host": f"https://{name}.cloud.databricks.com",
        "auth": {"type": "pat", "token": "fake"},
    }
    for name in ("prod", "staging")
]

ROUTES: list[dict[str, Any]] = [
    {"match": {"tags": {"team": "ml"}}, "channels": ["slack"]},
    {"match": {"names": ["nightly-*"], "event_types": ["run_failed"]}, "channels": ["pd"]},
    {"match": {"workspaces": ["staging"]}, "channels": ["console"], "continue": True},
    {"match": {"triggers": ["ONE_TIME"]}, "channels": ["hook"]},
    {"match": {"run_types": ["SUBMIT_RUN"]}, "channels": ["dbx"]},
    {"match": {"job_ids": [7]}, "channels": ["hook"], "continue": True},
    {"match": {"job_ids": [7]}, "channels": ["slack"]},
    {"match": {}, "channels": ["console"]},
]


@pytest.mark.parametrize(
    ("event_kwargs", "expected"),
    [
        pytest.param({"tags": {"team": "ml"}}, ["slack"], id="tag match, first match wins"),
        pytest.param({"name": "nightly-etl"}, ["pd"], id="name glob and event type"),
        pytest.param(
            {"name": "nightly-etl", "type_": E.RUN_SUCCEEDED}, ["console"], id="type mismatch"
        ),
        pytest.param({"workspace": "staging", "name": "x"}, ["console"], id="continue to default"),
        pytest.param(
            {"workspace": "staging", "name": "x", "trigger": "ONE_TIME"},
            ["console", "hook"],
            id="continue then a later match stops",
        ),
        pytest.param({"name": "x", "run_type": "SUBMIT_RUN"}, ["dbx"], id="run type"),
        pytest.param({"name": "x", "job_id": 7}, ["hook", "slack"], id="continue by job id"),
        pytest.param({"name": "other"}, ["console"], id="default route"),
        pytest.param(
            {"name": "x", "run_type": "SUBMIT_RUN", "type_": E.JOB_RECOVERED},
            [],
            id="matched route whose channel cannot express recovery",
        ),
    ],
)
def test_route_table(event_kwargs: dict[str, Any], expected: list[str]) -> None:
    """Routes are tried in order; the first match decides unless it says continue; an
    empty match at the end is the default route."""
    config = make_config(workspaces=WORKSPACES, channels=CHANNELS, routes=ROUTES)
    event = make_event(**event_kwargs)
    routing = route(event, config=config.routing, job_settings=None, now=NOW)
    assert (routing.channels, routing.silenced) == (keys(expected), [])


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        (E.RUN_STARTED, ["console", "slack", "hook", "dbx"]),
        (E.RUN_FAILED, ["console", "slack", "pd", "hook", "dbx"]),
        (E.RUN_DURATION_EXCEEDED, ["console", "slack", "pd", "hook", "dbx"]),
        (E.JOB_RECOVERED, ["console", "slack", "pd", "hook"]),
        (E.RUN_CANCELED, ["console", "slack", "hook", "dbx"]),
    ],
)
def test_without_routes_every_channel_gets_what_it_can_express(
    type_: EventType, expected: list[str]
) -> None:
    """No routes configured: every channel receives every event type it accepts
    (PagerDuty pages on failures and breaches and resolves on recovery only; the
    Databricks webhook format has no recovery). Email without recipients is still listed."""
    channels = {k: v for k, v in CHANNELS.items() if k != "mail"}
    config = make_config(channels=channels)
    routing = route(make_event(type_), config=config.routing, job_settings=None, now=NOW)
    assert routing.channels == keys(expected)


def test_no_route_matches_means_no_delivery() -> None:
    """Routes without a default: an event no route matches goes nowhere."""
    config = make_config(
        channels=CHANNELS, routes=[{"match": {"job_ids": [1]}, "channels": ["pd"]}]
    )
    assert (
        route(make_event(job_id=2), config=config.routing, job_settings=None, now=NOW).channels
        == []
    )


@pytest.mark.parametrize(
    ("now", "silenced"),
    [
        (datetime(2023, 11, 14, 21, 59, tzinfo=UTC), False),
        (datetime(2023, 11, 14, 22, 0, tzinfo=UTC), True),
        (datetime(2023, 11, 14, 22, 59, tzinfo=UTC), True),
        (datetime(2023, 11, 14, 23, 0, tzinfo=UTC), False),
    ],
)
def test_silence_window(now: datetime, silenced: bool) -> None:
    """A matching silence holds every channel back between starts_at (inclusive) and
    ends_at (exclusive): the channels are reported as silenced, none delivered."""
    config = make_config(
        channels=CHANNELS,
        routes=[{"channels": ["slack", "pd"]}],
        silences=[
            {
                "match": {"names": ["nightly-*"]},
                "starts_at": "2023-11-14T22:00:00Z",
                "ends_at": "2023-11-14T23:00:00Z",
                "comment": "maintenance",
            }
        ],
    )
    routing = route(make_event(), config=config.routing, job_settings=None, now=now)
    if silenced:
        assert (routing.channels, routing.silenced) == ([], keys(["slack", "pd"]))
    else:
        assert (routing.channels, routing.silenced) == (keys(["slack", "pd"]), [])
    other = route(make_event(name="hourly"), config=config.routing, job_settings=None, now=now)
    assert other.channels == keys(["slack", "pd"])


SETTINGS = JobSettings.model_validate(
    {
        "name": "nightly-etl",
        "email_notifications": {
            "on_start": ["start@example.com"],
            "on_failure": ["Oncall@Example.com", "oncall@example.com", "bad address", "x@y\r\nz"],
            "on_duration_warning_threshold_exceeded": ["slow@example.com"],
        },
        "webhook_notifications": {
            "on_failure": [{"id": "dest-1"}, {"id": "dest-unknown"}],
            "on_success": [{"id": "dest-2"}],
        },
    }
)


@pytest.mark.parametrize(
    ("type_", "expected"),
    [
        (E.RUN_STARTED, ["console", "mail:start@example.com"]),
        (E.RUN_FAILED, ["console", "slack", "mail:Oncall@Example.com"]),
        (E.RUN_CANCELED, ["console", "slack", "mail:Oncall@Example.com"]),
        (E.RUN_SKIPPED, ["console", "slack", "mail:Oncall@Example.com"]),
        (E.RUN_SUCCEEDED, ["console", "pd"]),
        (E.RUN_DURATION_EXCEEDED, ["console", "mail:slow@example.com"]),
        (E.JOB_RECOVERED, ["console"]),
    ],
)
def test_job_notifications_are_honoured_like_databricks(
    type_: EventType, expected: list[str]
) -> None:
    """With honour_job_notifications, the job's webhook destinations map through
    `destinations` (unknown ids ignored) and its addresses go through the email channel as
    `<channel>:<address>` keys (deduplicated case-insensitively, invalid ones dropped);
    on_failure covers failed, canceled and skipped runs; recovery maps to nothing.
    PagerDuty ignores success even when a destination points there."""
    config = make_config(
        channels=CHANNELS,
        routes=[{"channels": ["console"]}],
        destinations={"dest-1": "slack", "dest-2": "pd"},
        honour_job_notifications=True,
    )
    routing = route(make_event(type_), config=config.routing, job_settings=SETTINGS, now=NOW)
    pd_accepts = type_ in (E.RUN_FAILED, E.RUN_DURATION_EXCEEDED, E.JOB_RECOVERED)
    assert routing.channels == keys([c for c in expected if c != "pd" or pd_accepts])


def test_job_notifications_off_by_default_and_without_settings() -> None:
    """Job notification settings are ignored unless honour_job_notifications is on, and
    unknown settings (None) add nothing."""
    config = make_config(channels=CHANNELS, routes=[{"channels": ["console"]}])
    assert route(
        make_event(), config=config.routing, job_settings=SETTINGS, now=NOW
    ).channels == keys(["console"])
    on = make_config(
        channels=CHANNELS, routes=[{"channels": ["console"]}], honour_job_notifications=True
    )
    assert route(make_event(), config=on.routing, job_settings=None, now=NOW).channels == keys(
        ["console"]
    )


def test_marked_email_channel_carries_job_addresses_and_duplicates_collapse() -> None:
    """The email channel marked job_notifications is used instead of the first one, and a
    channel named by both a route and a destination is delivered once."""
    channels = dict(CHANNELS)
    channels["mail2"] = {**CHANNELS["mail"], "job_notifications": True}
    config = make_config(
        channels=channels,
        routes=[{"channels": ["slack"]}],
        destinations={"dest-1": "slack"},
        honour_job_notifications=True,
    )
    routing = route(make_event(), config=config.routing, job_settings=SETTINGS, now=NOW)
    assert routing.channels == keys(["slack", "mail2:Oncall@Example.com"])


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("mail", ("mail", None)),
        ("mail:alice@example.com", ("mail", "alice@example.com")),
        ("slack", ("slack", None)),
        ("slack:alice@example.com", None),
        ("mail:not an address", None),
        ("gone", None),
    ],
)
def test_channel_keys(key: str, parsed: tuple[str, str | None] | None) -> None:
    """Delivery keys are a channel, or an email channel and one address (shown and typed
    as `channel:address`); keys no configured channel serves are recognised."""
    config = make_config(channels=CHANNELS)
    delivery_key = DeliveryKey.parse(key)
    served = (delivery_key.channel, delivery_key.recipient or None)
    assert (served if serves(delivery_key, config.routing.channels) else None) == parsed
    if parsed:
        assert str(DeliveryKey(parsed[0], parsed[1] or "")) == key


def test_router_for_reads_the_clock_for_silences() -> None:
    """The pipeline-shaped router returns (channels, silenced) at the clock's time."""
    config = make_config(
        channels=CHANNELS,
        routes=[{"channels": ["slack"]}],
        silences=[{"starts_at": "2023-11-14T22:00:00Z", "ends_at": "2023-11-14T23:00:00Z"}],
    )
    clock = ManualClock(start=NOW.timestamp() - 60)
    router = router_for(config.routing, clock=clock)
    assert pair(router(make_event(), None, ())) == (keys(["slack"]), [])
    clock.advance(120)
    assert pair(router(make_event(), None, ())) == ([], keys(["slack"]))


# -- streaks, reminders, digests, resolves ---------------------------------------------------


def test_min_consecutive_failures_matches_long_streaks_only() -> None:
    config = make_config(
        channels=CHANNELS,
        workspaces=WORKSPACES,
        routes=[
            {"match": {"min_consecutive_failures": 3}, "channels": ["pd"], "continue": True},
            {"channels": ["slack"]},
        ],
    )

    def routed(streak: int | None) -> Sequence[DeliveryKey]:
        event = make_event()
        if streak is not None:
            event = event.model_copy(update={"streak": Streak(consecutive_failures=streak)})
        return route(event, config=config.routing, job_settings=None, now=NOW).channels

    assert routed(None) == keys(["slack"])
    assert routed(2) == keys(["slack"])
    assert routed(3) == keys(["pd", "slack"])
    assert routed(7) == keys(["pd", "slack"])


def test_reminders_by_route_else_by_channel_type() -> None:
    """Email reminds every 4 h unless its route says otherwise (0: never); chat and the
    rest only when the route asks; Alertmanager always, every its resend_interval."""
    channels = {
        **CHANNELS,
        "am": {"type": "alertmanager", "url": "https://am.invalid", "resend_interval": 120},
    }
    config = make_config(
        channels=channels,
        workspaces=WORKSPACES,
        routes=[
            {"match": {"workspaces": ["staging"]}, "channels": ["mail"], "repeat_interval": 0},
            {"match": {"tags": {"team": "ml"}}, "channels": ["slack"], "repeat_interval": 600},
            {"channels": ["mail", "slack", "hook", "am", "pd"]},
        ],
    )

    def every(**event: Any) -> dict[str, float | None]:
        routing = route(make_event(**event), config=config.routing, job_settings=None, now=NOW)
        return {
            str(k): routing.policies.get(k, DeliveryPolicy()).repeat_every for k in routing.channels
        }

    assert every() == {"mail": 4 * 3600.0, "slack": None, "hook": None, "am": 120.0, "pd": None}
    assert every(workspace="staging") == {"mail": None}
    assert every(tags={"team": "ml"}) == {"slack": 600.0}


def test_grouping_routes_give_deliveries_a_group_key_except_to_pagers() -> None:
    config = make_config(
        channels=CHANNELS,
        workspaces=WORKSPACES,
        routes=[
            {
                "channels": ["slack", "pd"],
                "group_by": ["workspace", "tag:team"],
                "group_wait": 10,
                "group_interval": 60,
            }
        ],
    )

    def policy(channel: str, **event: Any) -> DeliveryPolicy:
        routing = route(make_event(**event), config=config.routing, job_settings=None, now=NOW)
        return routing.policies.get(DeliveryKey(channel), DeliveryPolicy())

    slack = policy("slack", tags={"team": "data"}, job_id=1)
    assert (slack.group_wait, slack.group_interval) == (10, 60)
    assert group_labels(slack.group_key) == {"workspace": "prod", "tag:team": "data"}
    assert policy("slack", tags={"team": "data"}, job_id=2).group_key == slack.group_key
    assert policy("slack", tags={"team": "ml"}).group_key != slack.group_key
    assert policy("slack", workspace="staging", tags={"team": "data"}).group_key != slack.group_key
    assert policy("pd").group_key == ""


def test_a_resolve_follows_its_incident_even_where_routes_or_silences_say_no() -> None:
    """A resolve goes to every channel its incident was delivered to that can express it,
    whatever the routes say, and a silence holds back only the routed channels."""
    config = make_config(
        channels=CHANNELS,
        workspaces=WORKSPACES,
        routes=[{"match": {"event_types": ["run_failed"]}, "channels": ["pd"]}],
        silences=[{"starts_at": "2023-11-14T21:00:00Z", "ends_at": "2023-11-14T23:00:00Z"}],
    )
    event = make_event(EventType.INCIDENT_RESOLVED)
    follow = keys(["pd", "slack", "dbx"])  # dbx (Databricks format) cannot express it
    routing = route(event, config=config.routing, job_settings=None, now=NOW, follow=follow)
    assert pair(Routed(routing.channels, routing.silenced)) == (keys(["pd", "slack"]), [])
    failure = route(make_event(), config=config.routing, job_settings=None, now=NOW)
    assert pair(Routed(failure.channels, failure.silenced)) == ([], keys(["pd"]))


def test_a_resolve_is_never_silenced_nor_grouped_where_its_incident_went() -> None:
    """Without routes every channel takes every event; a silence is active. The recovery
    still goes to the channel its incident went to (only the others are held), and goes
    there alone even when a grouping route also chose that channel."""
    config = make_config(
        channels=CHANNELS,
        workspaces=WORKSPACES,
        silences=[{"starts_at": "2023-11-14T21:00:00Z", "ends_at": "2023-11-14T23:00:00Z"}],
    )
    event = make_event(EventType.JOB_RECOVERED)
    routing = route(event, config=config.routing, job_settings=None, now=NOW, follow=keys(["pd"]))
    assert routing.channels == keys(["pd"])
    assert DeliveryKey("pd") not in routing.silenced
    assert DeliveryKey("slack") in routing.silenced
    grouping = make_config(
        channels=CHANNELS,
        workspaces=WORKSPACES,
        routes=[{"channels": ["slack", "hook"], "group_by": ["workspace"]}],
    )
    routing = route(
        event, config=grouping.routing, job_settings=None, now=NOW, follow=keys(["slack"])
    )
    assert set(routing.channels) == set(keys(["slack", "hook"]))
    assert routing.policies[DeliveryKey("hook")].group_key != ""
    assert routing.policies.get(DeliveryKey("slack"), DeliveryPolicy()).group_key == ""


def test_repeat_interval_is_0_or_at_least_a_minute() -> None:
    with pytest.raises(ValueError, match="repeat_interval: 5: at least 60 seconds"):
        make_config(channels=CHANNELS, routes=[{"channels": ["slack"], "repeat_interval": 5}])
