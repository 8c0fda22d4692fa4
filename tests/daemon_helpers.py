"""Helpers of the tests that run the daemon as a real process (`python -m watcher ...`)
against a Simulator served by the test's own event loop: knowing when a cycle has
committed, bounded waits that fail with the daemon's log, scraping /metrics, and the
scripted workload whose alerts and metrics the end-to-end tests know in advance."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN
from watcher.events import EventType, event_id
from watcher.incidents import derived_id
from watcher.simulator import Simulator
from watcher.simulator.server import LoggedRequest

WAIT = 20.0
"""Real seconds any single wait may take before the test fails."""
WORKSPACE = "sim"

# -- cycles ------------------------------------------------------------------------------


def committed_at(db: Path) -> float | None:
    """Local time of the latest cycle commit (the watermark row is rewritten by each)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT updated_at FROM watermarks").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None  # not created yet
    return float(row[0]) if row else None


def starts_cycle(request: LoggedRequest) -> bool:
    """The first page of active runs: what every poll cycle asks first."""
    params = request.params
    return (
        request.endpoint == "runs/list"
        and params.get("active_only") == "true"
        and "page_token" not in params
        and "offset" not in params
    )


async def settle(
    sim: Simulator,
    db: Path,
    *,
    tick: Callable[[], Awaitable[None]] | None = None,
    limit: float = WAIT,
    context: Callable[[], str] | None = None,
) -> None:
    """Wait until a cycle that began after this call has committed. A cycle begins with
    the first page of active runs; it has committed once the watermark row is rewritten
    after it. `tick` runs between checks (default: a 50 ms sleep); fail after `limit`
    real seconds, with `context()` in the message."""
    first = len(sim.requests)
    began_by: float | None = None
    deadline = time.monotonic() + limit
    while began_by is None or (committed_at(db) or 0) <= began_by:
        if began_by is None and any(starts_cycle(r) for r in sim.requests[first:]):
            began_by = time.time()
        if time.monotonic() > deadline:
            state = "began but did not commit" if began_by else "did not begin"
            raise AssertionError(
                f"no poll cycle committed within {limit:g}s (a new cycle {state})\n"
                + (context() if context else "")
            )
        await (tick() if tick is not None else asyncio.sleep(0.05))


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]],
    what: str,
    *,
    limit: float = WAIT,
    context: Callable[[], str] | None = None,
) -> None:
    """Poll `check` every 50 ms until it holds; fail after `limit` real seconds with
    `what` and `context()` in the message."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {limit:g}s waiting for {what}\n" + (context() if context else "")
            )
        await asyncio.sleep(0.05)


# -- the daemon process ------------------------------------------------------------------


def write_config(
    path: Path,
    *,
    sim: Simulator,
    db: Path,
    api_version: str = "2.1",
    workspace: Mapping[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """A `watcher run` config for one simulated workspace polled every 0.1 s, the store
    at `db`, the server on a free port and JSON logs; `workspace` adds or replaces keys of
    the workspace, `sections` top-level keys. The token is a `${SIM_TOKEN}` reference (see
    `daemon_env`)."""
    config: dict[str, Any] = {
        "workspaces": [
            {
                "name": WORKSPACE,
                "host": sim.url,
                "api_version": api_version,
                "poll_interval": 0.1,
                "auth": {"type": "pat", "token": "${SIM_TOKEN}"},
                **(workspace or {}),
            }
        ],
        "store": {"path": str(db)},
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"format": "json", "level": "INFO"},
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def daemon_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "SIM_TOKEN": TOKEN, **extra}


def _output_files(logs: Path, name: str) -> tuple[Path, Path]:
    """Fresh stdout and stderr files for the next process called `name`."""
    logs.mkdir(parents=True, exist_ok=True)
    index = len(list(logs.glob(f"{name}-*.stderr")))
    return logs / f"{name}-{index}.stdout", logs / f"{name}-{index}.stderr"


@dataclass
class WatcherProcess:
    """`python -m watcher ARGS` with stdout and stderr in files (a pipe nobody reads
    would fill up and stall the daemon). Use `async with`: the process is killed on the
    way out if it is still running."""

    process: asyncio.subprocess.Process
    stdout_path: Path
    stderr_path: Path
    args: tuple[str, ...] = field(default=())

    @classmethod
    async def start(
        cls, *args: str, env: Mapping[str, str], logs: Path, name: str = "watcher"
    ) -> WatcherProcess:
        out, err = _output_files(logs, name)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "watcher", *args, env=dict(env), stdout=stdout, stderr=stderr
            )
        return cls(process, out, err, args)

    async def __aenter__(self) -> WatcherProcess:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.kill()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        """The end of both outputs, for failure messages."""
        code = self.process.returncode
        state = "running" if code is None else f"exited with {code}"
        return (
            f"--- watcher {' '.join(self.args)} ({state}); stderr tail:\n{self.stderr[-chars:]}"
            f"\n--- stdout tail:\n{self.stdout[-chars:]}"
        )

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        found = []
        for line in self.stderr.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                found.append(entry)
        return found

    def log(self, event: str) -> dict[str, Any] | None:
        return next((e for e in self.logs() if e.get("event") == event), None)

    def assert_running(self) -> None:
        if self.process.returncode is not None:
            raise AssertionError(f"the daemon died\n{self.tail()}")

    async def wait_log(self, event: str, limit: float = WAIT) -> dict[str, Any]:
        def found() -> bool:
            if self.log(event) is None:
                self.assert_running()
                return False
            return True

        await wait_until(found, f"log event {event!r}", limit=limit, context=self.tail)
        entry = self.log(event)
        assert entry is not None
        return entry

    async def metrics_url(self) -> str:
        url: str = (await self.wait_log("watcher_started"))["metrics_url"]
        return url

    async def settle(self, sim: Simulator, db: Path) -> None:
        """Wait until a cycle that began after this call has committed; fail at once if
        the daemon dies, and after WAIT seconds otherwise."""

        async def tick() -> None:
            self.assert_running()
            await asyncio.sleep(0.05)

        await settle(sim, db, tick=tick, limit=WAIT, context=self.tail)

    async def wait_exit(self, limit: float) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), limit)
        except TimeoutError:
            raise AssertionError(
                f"the daemon did not exit within {limit:g}s\n{self.tail()}"
            ) from None

    async def terminate(
        self, limit: float = 15.0, sig: signal.Signals = signal.SIGTERM
    ) -> tuple[int, float]:
        """Send `sig`; the exit code and the real seconds it took (fails after `limit`)."""
        self.assert_running()
        began = time.monotonic()
        self.process.send_signal(sig)
        code = await self.wait_exit(limit)
        return code, time.monotonic() - began

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# -- /metrics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Samples:
    """One scrape of /metrics in the Prometheus text format."""

    text: str
    values: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def sum(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= ls)

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Samples called `name` (matching `labels`) summed by one label."""
        wanted = set(labels.items())
        out: dict[str, float] = {}
        for (n, ls), value in self.values.items():
            if n == name and wanted <= ls:
                key = dict(ls)[label]
                out[key] = out.get(key, 0.0) + value
        return out


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200, f"GET {url}: HTTP {resp.status}"
        text = await resp.text()
    values = {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return Samples(text, values)


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return await resp.json(content_type=None)


# -- the scripted workload ---------------------------------------------------------------

JOBS: dict[str, dict[str, Any]] = {
    "ok": {},
    "flaky": {},
    "slow": {"duration_threshold_s": 120},
    "retried": {"max_retries": 1, "notification_settings": {"alert_on_last_attempt": True}},
    "canceled": {},
    "skip-quiet": {"notification_settings": {"no_alert_for_skipped_runs": True}},
    "skip-loud": {},
}
"""Jobs by short name (the job name is `e2e-<short name>`) and their settings. `retried`
has a job-level retry policy: on API 2.0 a failed run is retried as a new run (attempt 1),
and alert_on_last_attempt keeps the first failure quiet. On 2.1+ retry policies belong to
tasks, which retry inside the job run, so a failed job run always pages (the tracker's
rule); the simulator still retries as a new run there, so the alert expectations below
hold on API 2.0 (the metrics hold on any version)."""

EXPECTED_EVENTS = frozenset(
    {
        ("run_started", "ok"),
        ("run_succeeded", "ok"),
        ("run_started", "flaky-1"),
        ("run_failed", "flaky-1"),
        ("run_started", "flaky-2"),
        ("run_succeeded", "flaky-2"),
        # Named after the failure it answers (its id is flaky-1's), sent when flaky-2 succeeds.
        ("job_recovered", "flaky-1"),
        ("run_started", "slow"),
        ("run_duration_exceeded", "slow"),
        ("run_succeeded", "slow"),
        # The breach's incident resolves when its run ends (and follows it to every channel).
        ("incident_resolved", "slow"),
        ("run_started", "retried-0"),  # its failure is not alerted: a retry follows
        ("run_started", "retried-1"),
        ("run_failed", "retried-1"),
        ("run_started", "canceled"),
        ("run_canceled", "canceled"),
        ("run_skipped", "skip-loud"),  # skip-quiet's is not alerted: no_alert_for_skipped_runs
    }
)
"""(event type, run) of every event the workload must produce, and no other."""

PAGING = frozenset({"run_failed", "run_duration_exceeded", "job_recovered", "incident_resolved"})

RUN_SECONDS = {
    "ok": 75.0,
    "flaky-1": 75.0,
    "flaky-2": 75.0,
    "slow": 315.0,
    "retried-0": 75.0,
    "retried-1": 75.0,
    "canceled": 50.0,
    "skip-quiet": 0.0,
    "skip-loud": 0.0,
}
"""Total duration of each finished run (setup 10 + execution + cleanup 5; canceled at 50)."""

RESULTS = {
    "ok": "SUCCESS",
    "flaky-1": "FAILED",
    "flaky-2": "SUCCESS",
    "slow": "SUCCESS",
    "retried-0": "FAILED",
    "retried-1": "FAILED",
    "canceled": "CANCELED",
    "skip-quiet": "SKIPPED",
    "skip-loud": "SKIPPED",
}
"""The result_state label of each finished run (a skipped run has its life-cycle state)."""


def job_of(run: str) -> str:
    return run.rsplit("-", 1)[0] if run[-1].isdigit() else run


def create_jobs(sim: Simulator) -> dict[str, int]:
    """The workload's jobs (create them before the daemon starts)."""
    return {name: sim.workspace.create_job(f"e2e-{name}", **opts) for name, opts in JOBS.items()}


async def play(
    sim: Simulator, jobs: Mapping[str, int], settle: Callable[[], Awaitable[None]]
) -> dict[str, int]:
    """Run the workload in simulated time, waiting for a committed cycle after each step;
    returns run ids by run name. Call it after the daemon's first (backfill) cycle."""
    ws = sim.workspace
    runs: dict[str, int] = {}

    def start(run: str, **plan: Any) -> None:
        runs[run] = ws.start_run(jobs[job_of(run)], setup_s=10, cleanup_s=5, **plan)

    # t=0: five runs start; two jobs' runs are skipped at once.
    start("ok", execution_s=60)
    start("flaky-1", execution_s=60, result="FAILED")
    start("slow", execution_s=300)
    start("retried-0", execution_s=60, result="FAILED", retry_results=["FAILED"])
    start("canceled", execution_s=600)
    start("skip-quiet", end_state="SKIPPED")
    start("skip-loud", end_state="SKIPPED")
    await settle()
    # t=50: a user cancels the long run.
    ws.advance(50)
    ws.force(runs["canceled"], "TERMINATED", "CANCELED")
    await settle()
    # t=100: ok, flaky-1 and retried-0 ended at 75; retried-0's retry runs since 75.
    ws.advance(50)
    await settle()
    (retry,) = [
        r.run_id
        for r in ws.runs.values()
        if r.original_attempt_run_id == runs["retried-0"] and r.attempt_number == 1
    ]
    runs["retried-1"] = retry
    # t=150: slow is 150 s old (rule: 120 s); the retry failed at 150; flaky runs again.
    ws.advance(50)
    start("flaky-2", execution_s=60)
    await settle()
    # t=250: flaky-2 succeeded at 225 (a recovery).
    ws.advance(100)
    await settle()
    # t=350: slow succeeded at 315.
    ws.advance(100)
    await settle()
    return runs


def event_names(
    runs: Mapping[str, int], jobs: Mapping[str, int] | None = None
) -> dict[str, tuple[str, str]]:
    """Event id -> (event type, run name) for every event any run could have produced
    (with `jobs`, also the resolve of a duration incident the run opened)."""
    names: dict[str, tuple[str, str]] = {}
    for run, run_id in runs.items():
        for type_ in EventType:
            rule = "job" if type_ is EventType.RUN_DURATION_EXCEEDED else None
            names[event_id(WORKSPACE, run_id, str(type_), rule)] = (str(type_), run)
        if jobs is not None:
            breach = event_id(WORKSPACE, run_id, str(EventType.RUN_DURATION_EXCEEDED), "job")
            key = f"{WORKSPACE}/job/{jobs[job_of(run)]}/duration/job"
            incident = derived_id(key, breach)
            names[derived_id(incident, "resolved")] = (str(EventType.INCIDENT_RESOLVED), run)
    return names
