"""The CLI as users run it (a real process): start-up failures exit at once with one clear
line, `once` fails fast naming the workspace, `alerts` honours --event and never creates a
database, a closed pipe is no error, `doctor` exits non-zero on a failed check."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import TOKEN
from tests.notify_fixtures import free_port
from watcher.cli import _event_line
from watcher.databricks.models import Run
from watcher.events import Event, EventType, JobRef
from watcher.simulator import Simulator
from watcher.store.sqlite import SQLiteStore


def watcher(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(tmp_path: Path, *, host: str, port: int = 0, extra: str = "") -> Path:
    path = tmp_path / "watcher.yaml"
    path.write_text(
        f"workspaces:\n  - name: prod\n    host: {host}\n"
        f"    auth: {{type: pat, token: dapi-not-real}}\n"
        f"store: {{path: {tmp_path / 'state.db'}}}\n"
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        f"logging: {{format: json, level: WARNING}}\n{extra}"
    )
    return path


def test_a_busy_port_makes_run_exit_at_once_naming_the_port(tmp_path: Path) -> None:
    """With the metrics port taken, `watcher run` closes what it opened and exits 1 within
    seconds (no traceback, no hang) with one line that names the address."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, host="http://127.0.0.1:1", port=port)
        began = time.monotonic()
        result = watcher("run", "-c", str(config), timeout=30)
        took = time.monotonic() - began
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert took < 10


def test_an_empty_state_file_is_refused_unless_accepted(tmp_path: Path) -> None:
    """An existing but empty database file is a lost state: `run` refuses it, saying how to
    accept it (and `--accept-new-state` gets past that check)."""
    config = write_config(tmp_path, host="http://127.0.0.1:1", port=free_port())
    (tmp_path / "state.db").touch()
    refused = watcher("run", "-c", str(config))
    assert refused.returncode == 1
    assert "--accept-new-state" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_once_against_an_unreachable_host_fails_fast_naming_the_workspace(
    tmp_path: Path,
) -> None:
    """`watcher once` against a host nobody listens on answers within its 10 s retry
    budget (plus start-up), exit 1, with the workspace named and no traceback."""
    config_host = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, host=config_host)
    began = time.monotonic()
    result = watcher("once", "-c", str(config), timeout=60)
    assert result.returncode == 1
    assert "workspace prod" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - began < 30
    # The retries along the way say which workspace and host, at WARNING from the second.
    retries = [json.loads(line) for line in result.stderr.splitlines() if '"api_retry"' in line]
    assert retries
    assert {(r["workspace"], r["host"]) for r in retries} == {("prod", config_host)}


def test_alerts_commands_never_create_a_database_and_say_when_nothing_matches(
    tmp_path: Path,
) -> None:
    """A mistyped store path is an error, not "0 dead letters" over a new empty database;
    `retry` needs --event or --all; an event id with no dead letter exits 1."""
    config = write_config(tmp_path, host="http://127.0.0.1:1")
    missing = watcher("alerts", "list", "-c", str(config))
    assert missing.returncode == 1
    assert "no database at" in missing.stderr
    assert not (tmp_path / "state.db").exists()
    assert watcher("once", "-c", str(config), "--dry-run").returncode == 1  # creates the db
    assert watcher("alerts", "retry", "-c", str(config)).returncode == 2
    bogus = watcher("alerts", "retry", "-c", str(config), "--event", "bogus")
    assert bogus.returncode == 1
    assert "requeued: 0" in bogus.stdout
    listed = watcher("alerts", "list", "-c", str(config), "--event", "bogus")
    assert listed.returncode == 1
    assert "dead letters: 0" in listed.stdout


def test_a_closed_pipe_is_no_error(tmp_path: Path) -> None:
    """`watcher alerts list | head -0`: the reader is gone before anything is written;
    the command ends quietly (exit 0), with no BrokenPipeError."""
    config = write_config(tmp_path, host="http://127.0.0.1:1")
    watcher("once", "-c", str(config), "--dry-run")
    process = subprocess.Popen(
        [sys.executable, "-m", "watcher", "alerts", "list", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    process.stdout.close()  # no reader left: every write the child makes fails
    _, stderr = process.communicate(timeout=60)
    assert "BrokenPipe" not in stderr.decode()
    assert process.returncode == 0


def test_doctor_exits_non_zero_on_any_failed_check(tmp_path: Path) -> None:
    """`watcher doctor` prints its table and exits 1 when a check fails (here: no server
    where the workspace should be); the checks that pass say so beside it."""
    host = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, host=host, extra="channels: {out: {type: console}}\n")
    result = watcher("doctor", "-c", str(config))
    assert result.returncode == 1
    assert "✗ workspace prod" in result.stdout
    assert "✔ channel out" in result.stdout


async def test_once_leaves_a_workspace_whose_lease_a_running_watcher_holds(
    tmp_path: Path,
) -> None:
    """`once` polls only under a workspace's lease: one held by a running watcher is left
    to it, saying so, without a request to the workspace or a write to its state."""
    config = write_config(tmp_path, host="http://127.0.0.1:1")
    store = await SQLiteStore.open(tmp_path / "state.db")
    try:
        lease = await store.acquire("prod", "pod-a", now=time.time(), ttl=600)
        assert lease is not None
        result = watcher("once", "-c", str(config), timeout=60)
        assert result.returncode == 0, result.stderr
        assert "workspace prod: skipped, another watcher holds its lease" in result.stderr
        assert result.stdout == ""
        assert await store.leases() == [lease]
        assert (await store.workspace_state("prod")).watermark_ms is None
    finally:
        await store.close()


async def test_run_without_a_file_watches_the_workspace_the_environment_names(
    tmp_path: Path,
) -> None:
    """`watcher run` with no -c: DATABRICKS_HOST and DATABRICKS_TOKEN, as the Databricks
    CLI reads them, are one workspace polled with the token, alerts on the console."""
    async with Simulator(tokens={TOKEN}) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "WATCHER_"))}
        env |= {"DATABRICKS_HOST": sim.url, "DATABRICKS_TOKEN": TOKEN}
        env["DATABRICKS_CONFIG_FILE"] = str(tmp_path / "no-such-databrickscfg")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "watcher",
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(30):
                while not any(r.status == 200 and r.endpoint == "runs/list" for r in sim.requests):
                    assert process.returncode is None, await process.stderr.read()  # type: ignore[union-attr]
                    await asyncio.sleep(0.05)
        finally:
            process.terminate()
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    assert (tmp_path / "data" / "watcher.db").exists()  # the default store, in the cwd


def test_completion_help_defaults_log_level_and_output_choices(tmp_path: Path) -> None:
    """Tab completion answers a shell's request (argcomplete), `completion bash` prints
    the script to eval; --help shows defaults; --log-level goes before or after the
    command and must be a level; `-o` is table or json."""
    script = watcher("completion", "bash")
    assert script.returncode == 0
    assert "complete" in script.stdout
    assert "watcher" in script.stdout
    answer = tmp_path / "completions"
    env = os.environ | {
        "_ARGCOMPLETE": "1",
        "COMP_LINE": "watcher ro",
        "COMP_POINT": "10",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
    }
    subprocess.run(
        [sys.executable, "-m", "watcher"], env=env, capture_output=True, timeout=60, check=False
    )
    assert answer.read_text().split() == ["routes"]
    helped = watcher("routes", "test", "--help")
    assert "job id (default: 1)" in " ".join(helped.stdout.split())
    config = write_config(tmp_path, host="http://127.0.0.1:1")
    for args in (
        ["--log-level", "ERROR", "check-config", "-c", str(config)],
        ["check-config", "-c", str(config), "--log-level", "ERROR"],
    ):
        assert watcher(*args).returncode == 0
    assert "invalid choice: 'xml'" in watcher("once", "-c", str(config), "-o", "xml").stderr
    bad = watcher("once", "-c", str(config), "--log-level", "LOUD")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


def test_once_prints_an_event_as_json_or_as_one_line_for_people() -> None:
    event = Event(
        id="e1",
        type=EventType.RUN_FAILED,
        workspace="prod",
        occurred_at=datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
        job=JobRef(job_id=7, name="nightly\tetl\x1b]52;c;eA==\x07"),
        run=Run.model_validate({"run_id": 42, "job_id": 7}),
    )
    assert json.loads(_event_line(event, "json"))["id"] == "e1"
    assert _event_line(event, "table").split("\t") == [
        "2026-12-03T02:00:00+00:00",
        "run_failed",
        "prod",
        "nightly etl ]52;c;eA==",
        "42",
        "e1",
    ]
