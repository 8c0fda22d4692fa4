"""A real Prometheus (Debian's `prometheus`) scrapes the real daemon, run as a process
against the in-test Simulator with a scripted workload: PromQL answers the counts the
workload implies, and `promtool check metrics` accepts the exposition."""

from __future__ import annotations

import asyncio
import gzip
import re
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import TOKEN
from tests.daemon_helpers import (
    RESULTS,
    RUN_SECONDS,
    WAIT,
    WatcherProcess,
    create_jobs,
    daemon_env,
    job_of,
    play,
    wait_until,
    write_config,
)
from tests.notify_fixtures import free_port
from watcher import __version__
from watcher.clock import ManualClock
from watcher.simulator import Simulator


def binary(name: str) -> str:
    """A Debian prometheus binary; missing is a failure, never a skip."""
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        pytest.fail(f"{name} is not installed: run scripts/install-system-deps (Debian prometheus)")
    return path


class Prometheus:
    """A private Prometheus server scraping one target every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "watcher", "static_configs": [{"targets": [target]}]}],
        }
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                binary("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=log,
                stderr=log,
            )

        async def ready() -> bool:
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(f"prometheus exited\n{self.tail()}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{self.url}/-/ready") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, "prometheus to be ready", context=self.tail)

    def tail(self) -> str:
        return "--- prometheus log tail:\n" + self.log.read_text(errors="replace")[-3000:]

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) of each series of the resulting vector."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params={"query": expr}) as resp,
        ):
            body: dict[str, Any] = await resp.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] == "vector", f"{expr}: {body}"
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    async def value(self, expr: str) -> float:
        """The single value of a query that must return exactly one series."""
        result = await self.query(expr)
        assert len(result) == 1, f"{expr}: {result}"
        return result[0][1]

    async def by(self, expr: str, label: str) -> dict[str, float]:
        return {labels[label]: value for labels, value in await self.query(expr)}


async def test_prometheus_scrapes_the_daemon_and_promql_returns_the_workload(
    tmp_path: Path,
) -> None:
    """Prometheus scraping the daemon (every second) after a scripted workload, watched
    over Jobs API 2.1 (the default), answers
    PromQL with exactly the workload's numbers: histogram counts per result state, bucket
    counts, a sum, a quantile, runs started, the active-runs gauge by life-cycle state
    (one RUNNING, one QUEUED left running), watcher_build_info, and counts joined to job
    names with `group_left` on databricks_job_info. `promtool check metrics` finds no
    problem (nor lint warning) in the exposition."""
    async with Simulator(clock=ManualClock(), tokens={TOKEN}) as sim:
        ws = sim.workspace
        jobs = create_jobs(sim)
        jobs["long"] = ws.create_job("e2e-long")
        jobs["waiting"] = ws.create_job("e2e-waiting")
        db = tmp_path / "watcher.db"
        config = write_config(tmp_path / "watcher.yaml", sim=sim, db=db)
        daemon = await WatcherProcess.start(
            "run", "-c", str(config), env=daemon_env(), logs=tmp_path
        )
        prometheus: Prometheus | None = None
        async with daemon:
            try:
                metrics_url = await daemon.metrics_url()
                target = metrics_url.removeprefix("http://").removesuffix("/metrics")
                prometheus = Prometheus(tmp_path, target)
                await prometheus.start()
                await daemon.settle(sim, db)  # the backfill cycle

                async def settle() -> None:
                    await daemon.settle(sim, db)

                await play(sim, jobs, settle)
                ws.start_run(jobs["long"], execution_s=3600)
                ws.start_run(jobs["waiting"], queue_s=3600)
                ws.advance(30)
                await settle()
                # A cycle began after the last commit, so its metrics are observed.
                await settle()
                settled = time.time()

                async def scraped_since_settled() -> bool:
                    assert prometheus is not None
                    result = await prometheus.query('timestamp(up{job="watcher"})')
                    return bool(result) and result[0][1] > settled

                await wait_until(
                    scraped_since_settled,
                    "a scrape after the workload settled",
                    context=lambda: f"{prometheus.tail() if prometheus else ''}\n{daemon.tail()}",
                )
                await check_promql(prometheus, jobs)
                await check_promtool(metrics_url)
                code, _ = await daemon.terminate()
                assert code == 0, daemon.tail()
            finally:
                if prometheus is not None:
                    await prometheus.stop()


async def check_promql(prometheus: Prometheus, jobs: dict[str, int]) -> None:
    finished = Counter(RESULTS.values())
    assert await prometheus.value('up{job="watcher"}') == 1
    assert (
        await prometheus.value('sum(databricks_run_duration_seconds_count{result_state="FAILED"})')
        == finished["FAILED"]
    )
    assert (
        await prometheus.by(
            "sum by (result_state) (databricks_run_duration_seconds_count)", "result_state"
        )
        == finished
    )
    assert (
        await prometheus.by(
            "sum by (result_state) (databricks_runs_finished_total)", "result_state"
        )
        == finished
    )
    # le is "120.0" in the exposition; newer Prometheus versions normalise it to "120".
    within_2m = sum(1 for seconds in RUN_SECONDS.values() if seconds <= 120)
    assert (
        await prometheus.value('sum(databricks_run_duration_seconds_bucket{le=~"120(\\\\.0)?"})')
        == within_2m
    )
    slow = f'job_id="{jobs["slow"]}"'
    assert await prometheus.value(f"sum(databricks_run_duration_seconds_sum{{{slow}}})") == 315
    # One observation (315 s) in the (300, 600] bucket: the median interpolates to 450.
    assert (
        await prometheus.value(
            "histogram_quantile(0.5, sum by (le) "
            f"(databricks_run_duration_seconds_bucket{{{slow}}}))"
        )
        == 450
    )
    assert await prometheus.value("sum(databricks_runs_started_total)") == len(RUN_SECONDS) + 2
    active = await prometheus.by(
        "sum by (life_cycle_state) (databricks_runs_active)", "life_cycle_state"
    )
    assert {state: n for state, n in active.items() if n} == {"RUNNING": 1, "QUEUED": 1}
    (build,) = await prometheus.query("watcher_build_info")
    assert (build[0]["version"], build[1]) == (__version__, 1)
    by_name = await prometheus.by(
        "sum by (job_name) (databricks_runs_finished_total"
        " * on (workspace, job_id) group_left (job_name) databricks_job_info)",
        "job_name",
    )
    assert by_name == {f"e2e-{job}": n for job, n in Counter(map(job_of, RESULTS)).items()}
    (breach,) = await prometheus.query(
        "databricks_run_duration_rule_breaches_total"
        " * on (workspace, job_id) group_left (job_name) databricks_job_info"
    )
    assert (breach[0]["job_name"], breach[0]["rule"], breach[1]) == ("e2e-slow", "job", 1)
    names = await prometheus.by("databricks_job_info", "job_name")
    assert names == {f"e2e-{job}": 1 for job in jobs}


RUN_SERIES = (b"databricks_run_", b"databricks_runs_started", b"databricks_runs_finished")
"""Samples that change only when a run starts or ends: still once the workload settled."""


async def check_promtool(metrics_url: str) -> None:
    """`promtool check metrics` accepts the exposition, plain and gzip-decoded, and finds
    no lint problem; the gzip answer decodes to the same families and run series (the
    daemon keeps polling between the two scrapes, so its own counters move on); no
    `_created` series."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(metrics_url, headers={"Accept-Encoding": "identity"}) as resp:
            assert "Content-Encoding" not in resp.headers
            exposition = await resp.read()
        async with session.get(metrics_url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            decoded = gzip.decompress(await resp.read())
    assert b"databricks_run_duration_seconds_bucket" in exposition

    def settled(text: bytes) -> list[bytes]:
        return [
            line
            for line in text.splitlines()
            if line.startswith((b"# TYPE ", b"# HELP ", *RUN_SERIES))
        ]

    assert settled(decoded) == settled(exposition)
    assert len(settled(exposition)) > 100
    assert not re.search(rb"^\w+_created[{ ]", exposition, flags=re.MULTILINE)
    assert b"\nprocess_cpu_seconds_total " in exposition
    for text in (exposition, decoded):
        process = await asyncio.create_subprocess_exec(
            binary("promtool"),
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(text), WAIT)
        assert process.returncode == 0, output.decode()
        assert output.decode().strip() == "", output.decode()
