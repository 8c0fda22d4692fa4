"""The Alertmanager channel against a real `prometheus-alertmanager` (Debian package):
alerts are pushed, then read back from its API."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.notify_fixtures import make_event, run_alertmanager
from watcher.clock import ManualClock
from watcher.config.channels import AlertmanagerChannelConfig
from watcher.events import EventType, IncidentRef, RuleRef
from watcher.notify.alertmanager import AlertmanagerChannel
from watcher.notify.base import Sent


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Alertmanager that notifies nobody, shared by the module's tests."""
    config = "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"
    with run_alertmanager(tmp_path_factory.mktemp("alertmanager"), config) as url:
        yield url


def active_alerts(url: str, **labels: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:  # noqa: S310 - local test server
        alerts: list[dict[str, Any]] = json.loads(response.read())
    return [a for a in alerts if all(a["labels"].get(k) == v for k, v in labels.items())]


def channel(url: str, clock: ManualClock) -> AlertmanagerChannel:
    config = AlertmanagerChannelConfig(
        type="alertmanager",
        url=url,
        labels={"team": "data"},
    )
    return AlertmanagerChannel("am", config, clock=clock)


async def test_failure_fires_and_recovery_resolves(alertmanager: str) -> None:
    """A failure becomes an active alert with stable per-job labels, annotations and the
    run page as generatorURL; the job's recovery resolves that same alert."""
    now = time.time()
    clock = ManualClock(start=now)
    am = channel(alertmanager, clock)
    failed = make_event(EventType.RUN_FAILED, job_id=501, at=now)
    assert isinstance(await am.send(failed), Sent)
    (alert,) = active_alerts(alertmanager, job_id="501")
    assert alert["labels"] == {
        "alertname": "DatabricksJobFailed",
        "severity": "critical",
        "workspace": "prod",
        "job_id": "501",
        "team": "data",
    }
    assert alert["annotations"]["summary"] == "[prod] nightly-etl FAILED (FAILED)"
    assert alert["annotations"]["event_id"] == failed.id
    assert alert["generatorURL"].endswith("#job/501/run/1001")
    assert alert["status"]["state"] == "active"

    # Sending the same failure again is idempotent: still one alert.
    await am.send(failed)
    assert len(active_alerts(alertmanager, job_id="501")) == 1

    recovered = make_event(EventType.JOB_RECOVERED, job_id=501, run_id=1002, at=now + 1)
    clock.advance(1)
    assert isinstance(await am.send(recovered), Sent)
    await am.close()
    assert active_alerts(alertmanager, job_id="501") == []


async def test_duration_breach_has_its_own_alert(alertmanager: str) -> None:
    """A duration breach is a separate alert per rule with the duration severity; events
    this channel does not alert on (a start) are not pushed."""
    now = time.time()
    am = channel(alertmanager, ManualClock(start=now))
    rule = RuleRef(name="job", value=1800, source="job")
    breach = make_event(EventType.RUN_DURATION_EXCEEDED, job_id=502, rule=rule, at=now)
    await am.send(breach)
    await am.send(make_event(EventType.RUN_STARTED, job_id=503, at=now))
    await am.close()
    (alert,) = active_alerts(alertmanager, job_id="502")
    assert alert["labels"]["alertname"] == "DatabricksRunDurationExceeded"
    assert alert["labels"]["rule"] == "job"
    assert alert["labels"]["severity"] == "warning"
    assert "1h 6m 40s > 30m 0s" in alert["annotations"]["summary"]
    assert active_alerts(alertmanager, job_id="503") == []


async def test_duration_incident_fires_from_its_opening_and_resolves(alertmanager: str) -> None:
    """A duration incident's alert starts when the incident opened; its incident_resolved
    (which carries no rule) resolves exactly that alert, and Alertmanager keeps the
    opening as the alert's start."""
    now = time.time()
    clock = ManualClock(start=now)
    am = channel(alertmanager, clock)
    opened_at = datetime.fromtimestamp(int(now) - 600, UTC)  # Alertmanager keeps ms
    ref = IncidentRef(
        id="incident-504",
        key="prod/job/504/duration/job",
        kind="duration",
        state="open",
        opened_at=opened_at,
        count=2,
    )
    rule = RuleRef(name="job", value=1800, source="job")
    breach = make_event(EventType.RUN_DURATION_EXCEEDED, job_id=504, rule=rule, at=now)
    assert isinstance(await am.send(breach.model_copy(update={"incident": ref})), Sent)
    (alert,) = active_alerts(alertmanager, job_id="504")
    assert alert["labels"]["rule"] == "job"
    assert parse(alert["startsAt"]) == opened_at
    assert alert["annotations"]["incident_count"] == "2"

    resolved = ref.model_copy(
        update={"state": "resolved", "resolved_at": opened_at, "cause": "run_ended"}
    )
    ended = make_event(EventType.INCIDENT_RESOLVED, job_id=504, run_id=1002, at=now)
    assert isinstance(await am.send(ended.model_copy(update={"incident": resolved})), Sent)
    await am.close()
    assert active_alerts(alertmanager, job_id="504") == []


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_stuck_runs_of_a_job_are_one_alert_resolved_when_they_run(alertmanager: str) -> None:
    """Stuck runs of one job are one alert (`DatabricksRunStuck`: workspace, job_id) with
    the duration severity, whichever run each event is about; the incident_resolved of
    the job's stuck incident (made from another run's snapshot) resolves it."""
    now = time.time()
    clock = ManualClock(start=now)
    am = channel(alertmanager, clock)
    opened_at = datetime.fromtimestamp(int(now) - 600, UTC)
    ref = IncidentRef(
        id="incident-505", key="prod/job/505/stuck", kind="stuck", state="open", opened_at=opened_at
    )
    for count, run_id in enumerate((2001, 2002), start=1):
        stuck = make_event(EventType.RUN_STUCK, job_id=505, run_id=run_id, at=now)
        update = {"raw_state": "QUEUED", "observed_seconds": 600.0}
        update["incident"] = ref.model_copy(update={"count": count})
        assert isinstance(await am.send(stuck.model_copy(update=update)), Sent)
    (alert,) = active_alerts(alertmanager, job_id="505")
    assert "run_id" not in alert["labels"]
    assert alert["labels"]["alertname"] == "DatabricksRunStuck"
    assert alert["labels"]["severity"] == "warning"
    assert "is stuck in QUEUED: for 10m 0s" in alert["annotations"]["summary"]
    resolved = ref.model_copy(
        update={"state": "resolved", "resolved_at": opened_at, "cause": "running"}
    )
    running = make_event(EventType.INCIDENT_RESOLVED, job_id=505, run_id=2001, at=now)
    assert isinstance(await am.send(running.model_copy(update={"incident": resolved})), Sent)
    await am.close()
    assert active_alerts(alertmanager, job_id="505") == []
