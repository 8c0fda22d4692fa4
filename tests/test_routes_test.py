"""`watcher routes test`: the routing of a sample event by the example configuration,
explained and rendered, with nothing sent and no secret shown."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from tests.test_config import EXAMPLE_ENV
from watcher.cli import check_config
from watcher.clock import ManualClock
from watcher.events import EventType
from watcher.notify.routestest import Sample, explain

EXAMPLE = Path(__file__).parent.parent / "config" / "example.yaml"


async def test_a_tier_1_failure_pages_and_mails_as_the_example_routes_say() -> None:
    config = check_config(EXAMPLE, env=EXAMPLE_ENV)
    sample = Sample(EventType.RUN_FAILED, "prod", "nightly-etl", 42, {"tier": "1"})
    text = await explain(config.routing, sample, clock=ManualClock(start=1_796_000_000))
    assert text.splitlines()[:9] == [
        "event: run_failed  workspace: prod  job: nightly-etl (id 42)  tags: tier=1",
        "routes:",
        "  1. matches: pagerduty, slack, continue",
        "  2. matches: oncall-email, slack",
        "  3. not tried (an earlier route decided)",
        "deliveries:",
        "  pagerduty (pagerduty): sent at once",
        "  slack (slack): sent at once",
        "  oncall-email (email): sent at once; reminded every 14400s while open",
    ]
    assert '"dedup_key": "prod/job/42/failed"' in text  # PagerDuty's body, as sent
    assert "--- slack (slack) ---" in text
    assert "Subject: " in text  # the email, rendered
    assert EXAMPLE_ENV["PAGERDUTY_ROUTING_KEY"] not in text  # the routing key is redacted


async def test_a_silence_holds_back_and_the_catch_all_takes_the_rest() -> None:
    """The example's holiday silence of `analytics`, at a moment inside it, holds the
    deliveries back; a start of an untagged job goes to the catch-all route only."""
    config = check_config(EXAMPLE, env=EXAMPLE_ENV)
    christmas = ManualClock(start=datetime(2026, 12, 25, tzinfo=UTC).timestamp())
    failed = Sample(EventType.RUN_FAILED, "analytics", "report", 7)
    text = await explain(config.routing, failed, clock=christmas)
    assert "  oncall-email (email): held back by an active silence" in text
    assert "---" not in text  # nothing would be sent
    started = Sample(EventType.RUN_STARTED, "prod", "nightly-etl", 7)
    text = await explain(config.routing, started, clock=ManualClock(start=1_796_000_000))
    assert "  3. matches: ops-webhook" in text
    assert "  ops-webhook (webhook): sent at once" in text
    assert EXAMPLE_ENV["WEBHOOK_SECRET"] not in text


def test_the_command_names_an_unknown_event_type(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "workspaces: [{name: prod, host: 'https://x.cloud.databricks.com', "
        "auth: {type: pat, token: dapi-not-real}}]\nchannels: {out: {type: console}}\n"
    )
    args = ["routes", "test", "-c", str(config), "--workspace", "prod", "--job", "etl"]
    bad = subprocess.run(
        [sys.executable, "-m", "watcher", *args, "--event", "run_exploded"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "run_exploded" in bad.stderr
    good = subprocess.run(
        [sys.executable, "-m", "watcher", *args, "--event", "run_failed", "--tag", "team=data"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    assert "  out (console): sent at once" in good.stdout
    assert "--- out (console) ---" in good.stdout
