"""The status page for people, in a real browser: a real `watcher run` process over the
simulator runs a scripted workload (a job with a hostile name failing twice, a run over
its duration rule, a channel that dead-letters, a silence holding back starts), then
Debian's chromium, driven by Playwright, opens `/`: it shows all of it as text, runs no
script, and folds into one column on a phone. Screenshots go to tests/artifacts/ (and,
with WATCHER_DOCS_SCREENSHOT=1, to docs/status-page.png for the README). `watcher status`
prints the same from the running daemon, and the store's view when none answers."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Dialog, Page, async_playwright

from tests.conftest import TOKEN
from tests.daemon_helpers import (
    WAIT,
    WatcherProcess,
    daemon_env,
    get_json,
    wait_until,
    write_config,
)
from tests.notify_fixtures import make_event
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.events import EventType
from watcher.simulator import Simulator
from watcher.statuspage import print_status
from watcher.store.base import CycleCommit, DeliveryKey
from watcher.store.sqlite import SQLiteStore

HOSTILE = '<script>alert(1)</script> & "nightly"'
"""The failing job's name: markup, an ampersand and quotes, to be shown as text."""
QUOTES = 'it\'s "quoted" & <b>bold</b>'
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
DOCS_SCREENSHOT = Path(__file__).parents[1] / "docs" / "status-page.png"


def closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


@pytest.fixture
async def live_sim() -> AsyncIterator[Simulator]:
    """A simulator whose time starts half an hour before now (the daemon runs in real
    time: runs' ages and the page's times come out as they would in production)."""
    clock = ManualClock(start=time.time() - 1800)
    async with Simulator(clock=clock, tokens={TOKEN}) as simulator:
        yield simulator


def status_config(tmp_path: Path, sim: Simulator, db: Path) -> Path:
    now = time.time()
    return write_config(
        tmp_path / "watcher.yaml",
        sim=sim,
        db=db,
        channels={
            "console": {"type": "console"},
            # Refused at once, and one attempt only: its deliveries are dead letters.
            "hook": {
                "type": "webhook",
                "url": f"http://127.0.0.1:{closed_port()}/hook",
                "max_attempts": 1,
            },
        },
        routes=[
            {"match": {"event_types": ["run_failed"]}, "channels": ["console", "hook"]},
            {"channels": ["console"]},
        ],
        silences=[
            {
                "match": {"event_types": ["run_started"]},
                "starts_at": iso(now - 3600),
                "ends_at": iso(now + 86_400),
                "comment": "starts are noise",
            },
            {
                "match": {"names": ["maintenance-*"]},
                "starts_at": iso(now + 86_400),
                "ends_at": iso(now + 93_600),
                "comment": "planned upgrade <Friday>",
            },
        ],
    )


async def run_workload(sim: Simulator, daemon: WatcherProcess, db: Path) -> dict[str, int]:
    """Job ids by name, once the workload's every step has been committed: the hostile
    job failed twice, the quoted one succeeded, `long-etl` is still running past its
    300 s rule."""
    ws = sim.workspace
    jobs = {
        HOSTILE: ws.create_job(HOSTILE),
        QUOTES: ws.create_job(QUOTES),
        "long-etl": ws.create_job("long-etl", duration_threshold_s=300),
    }
    ws.start_run(jobs[HOSTILE], execution_s=60, result="FAILED")
    ws.start_run(jobs[QUOTES], execution_s=30)
    ws.start_run(jobs["long-etl"], execution_s=7200)
    await daemon.settle(sim, db)
    ws.advance(120)  # both short runs ended
    await daemon.settle(sim, db)
    ws.start_run(jobs[HOSTILE], execution_s=60, result="FAILED")
    ws.advance(120)  # failed again: the incident counts 2
    await daemon.settle(sim, db)
    ws.advance(200)  # long-etl is 440 s old
    await daemon.settle(sim, db)
    return jobs


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium (scripts/install-system-deps installs it): never a downloaded one."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-system-deps", pytrace=False)
    return CHROMIUM


async def test_the_status_page_in_a_real_browser(
    tmp_path: Path, live_sim: Simulator, chromium: Path
) -> None:
    """The page shows the workspace and its poll health, the failing job's hostile name as
    text (no script ran: no dialog, no script element), its failed events with their
    deliveries (delivered, dead, silenced), the open incident, the run over its rule
    highlighted, the dead letters, both silences; it refreshes itself, forbids scripts by
    its CSP, and is one column without sideways scrolling on a phone."""
    db = tmp_path / "watcher.db"
    config = status_config(tmp_path, live_sim, db)
    daemon = await WatcherProcess.start("run", "-c", str(config), env=daemon_env(), logs=tmp_path)
    async with daemon:
        base = (await daemon.metrics_url()).removesuffix("/metrics")
        await daemon.settle(live_sim, db)  # the first cycle: history, alerting nothing
        await run_workload(live_sim, daemon, db)

        async def settled() -> bool:
            status = await get_json(f"{base}/status")
            return bool(status["outbox_pending"] == 0 and status["dead_letters"] == 2)

        await wait_until(settled, "every delivery settled", context=daemon.tail)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                dialogs: list[str] = []

                async def on_dialog(dialog: Dialog) -> None:
                    dialogs.append(dialog.message)
                    await dialog.dismiss()

                page.on("dialog", on_dialog)
                response = await page.goto(f"{base}/", timeout=WAIT * 1000)
                assert response is not None
                assert response.status == 200
                assert response.headers["content-type"].startswith("text/html")
                assert "script-src" not in response.headers["content-security-policy"]
                assert "default-src 'none'" in response.headers["content-security-policy"]
                refresh = page.locator('meta[http-equiv="refresh"]')
                assert await refresh.get_attribute("content") == "15"

                # Escaped, not run: the names read as typed, and no script exists.
                assert await page.locator("script").count() == 0
                assert await page.get_by_text(HOSTILE, exact=True).count() >= 3
                assert await page.get_by_text(QUOTES, exact=True).count() >= 1
                assert await page.locator("b").count() == 0

                workspaces = await page.inner_text("#workspaces")
                assert "sim" in workspaces
                row = page.locator("#workspaces tbody tr")
                assert await row.count() == 1
                cells = await row.locator("td").all_inner_texts()
                assert cells[1:3] == ["ok", "yes"]  # health, polled here
                assert cells[3].endswith("UTC")  # the last successful poll
                assert cells[5] == "0"  # failures in a row

                failed = page.locator("#events tbody tr", has_text="run_failed")
                assert await failed.count() == 2
                for text in await failed.all_inner_texts():
                    assert HOSTILE in text
                    assert "console: delivered (1 attempt)" in text
                    assert "hook: dead (1 attempt)" in text
                started = page.locator("#events tbody tr", has_text="run_started")
                assert await started.count() == 3  # the 2nd failure began and ended unseen
                assert "console: silenced" in await started.first.inner_text()

                assert await page.locator("#incidents tbody tr").count() == 2
                incident = page.locator("#incidents tbody tr", has_text="failure")
                cells = await incident.locator("td").all_inner_texts()
                assert (cells[0], cells[1], cells[4]) == ("failure", HOSTILE, "2")
                assert cells[2].startswith("sim/job/")

                duration = page.locator("#incidents tbody tr", has_text="duration")
                assert "long-etl" in await duration.inner_text()

                over = page.locator("#active-runs tbody tr.over")
                assert await over.count() == 1
                assert "long-etl" in await over.inner_text()
                assert "over rule job" in await over.inner_text()
                assert "RUNNING" in await over.inner_text()

                dead = await page.inner_text("#dead-letters")
                assert "Dead letters (2)" in dead
                assert dead.count("hook") == 2
                silences = await page.inner_text("#silences")
                assert "active" in silences
                assert "upcoming" in silences
                assert "event run_started" in silences
                assert "planned upgrade <Friday>" in silences
                shot = await screenshot(page, "status-page.png")
                if os.environ.get("WATCHER_DOCS_SCREENSHOT") == "1":
                    shutil.copyfile(shot, DOCS_SCREENSHOT)
                    print(f"screenshot: {DOCS_SCREENSHOT}")

                phone = await browser.new_page(viewport={"width": 390, "height": 844})
                phone.on("dialog", on_dialog)
                await phone.goto(f"{base}/", timeout=WAIT * 1000)
                columns = await phone.evaluate(
                    "getComputedStyle(document.querySelector('main')).gridTemplateColumns"
                )
                assert len(columns.split()) == 1
                assert await phone.evaluate(
                    "document.documentElement.scrollWidth <= window.innerWidth"
                )
                await screenshot(phone, "status-page-phone.png")
                assert dialogs == []
            finally:
                await browser.close()

        # The same in a terminal, with the daemon's poll health.
        out = await watcher_status("-c", str(config), "--url", base, env=daemon_env())
        assert "WORKSPACES" in out
        assert "yes" in out.split("WORKSPACES")[1].splitlines()[2]
        assert HOSTILE in out
        assert "run_failed" in out
        assert "hook: dead (1 attempt)" in out
        assert "OPEN INCIDENTS (2)" in out
        assert "DEAD LETTERS (2)" in out
        assert "1 over a duration rule" in out
        assert "replica" in out.splitlines()[0]
        # Without an address (the config's port is 0): the store's view, saying so.
        out = await watcher_status("-c", str(config), env=daemon_env())
        assert "the store's view (watermarks, leases) is shown" in out
        assert "store only" in out.splitlines()[0]
        assert HOSTILE in out


async def watcher_status(*args: str, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "watcher",
        "status",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_watcher_status_without_a_daemon_shows_the_store_and_no_control_characters(
    tmp_path: Path,
) -> None:
    """A watcher that does not answer: the store's view (the watermark, no poll health),
    saying why; a job name with terminal escapes is printed without them."""
    db = tmp_path / "watcher.db"
    store = await SQLiteStore.open(db)
    event = make_event(
        EventType.RUN_FAILED, workspace="prod", name="\x1b[31mred\x1b[0m job", at=1_700_000_000
    )
    await store.commit_cycle(
        CycleCommit(
            workspace="prod",
            watermark_ms=1_700_000_000_000,
            committed_at=1_700_000_001,
            events=[event],
            channels={event.id: [DeliveryKey("ops")]},
        )
    )
    await store.close()
    raw: dict[str, Any] = {
        "workspaces": [
            {
                "name": "prod",
                "host": "https://example.cloud.databricks.com",
                "auth": {"type": "pat", "token": TOKEN},
            }
        ],
        "store": {"path": str(db)},
        "channels": {"ops": {"type": "console"}},
    }
    config = Config.model_validate(raw)
    clock = ManualClock(start=1_700_000_060)
    out = io.StringIO()
    url = f"http://127.0.0.1:{closed_port()}"
    assert await print_status(config, url, out, clock=clock) == 0
    text = out.getvalue()
    assert "\x1b" not in text
    assert "?[31mred?[0m job" in text
    assert f"the watcher at {url} did not answer" in text
    lines = text.split("WORKSPACES\n")[1].splitlines()
    assert lines[1].split()[:3] == ["prod", "?", "-"]  # polled here, last poll: unknown
    assert "2023-11-14 22:13:20 UTC" in lines[1]  # the watermark
    assert "ops: pending (0 attempts)" in text
