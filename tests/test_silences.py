"""Silences at run time: matchers and windows (recurring ones across daylight saving
changes), the store's part on both backends, the CLI and the HTTP API, and what a running
daemon does with them: a silence added from the CLI holds matching events from the next
cycle on, survives a restart, and stops holding when expired."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import TOKEN
from tests.daemon_helpers import WAIT, WatcherProcess, daemon_env, wait_until, write_config
from tests.notify_fixtures import Receiver, make_event
from tests.wiring import Watched
from watcher.app import build, close
from watcher.cli import main
from watcher.clock import ManualClock
from watcher.config import ConfigError, SilenceConfig, load_config
from watcher.config.daemon import ApiConfig
from watcher.events import EventType
from watcher.httpapi import SilenceApi
from watcher.silences import (
    InvalidSilence,
    LiveSilences,
    compile_silence,
    counts,
    new_silence,
    parse_duration,
    parse_matchers,
    silence_json,
)
from watcher.simulator import Simulator
from watcher.statuspage import page_data, render_page, render_text
from watcher.store.base import Store, StoreConflict, StoredSilence, StoreUnavailable
from watcher.store.sqlite import SQLiteStore


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """`main` configures logging to the stderr of the moment (pytest's capture, closed
    after the test): put back what was there."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def recurring(cron: str, duration: float, timezone: str = "Europe/Berlin") -> SilenceConfig:
    return SilenceConfig.model_validate(
        {"recurring": {"cron": cron, "timezone": timezone, "duration": duration}}
    )


# -- matchers, durations, windows ---------------------------------------------------------


def test_matchers_read_as_the_match_they_stand_for() -> None:
    match = parse_matchers(
        ["job=nightly-*", "workspace=prod", "workspace=stage", "tag:tier=1", "job_id=7"]
    )
    assert match.names == ["nightly-*"]
    assert match.workspaces == ["prod", "stage"]
    assert match.tags == {"tier": "1"}
    assert match.job_ids == [7]
    event = make_event(EventType.RUN_FAILED)
    assert parse_matchers([f"workspace={event.workspace}"]).selects(event)
    assert not parse_matchers(["workspace=elsewhere"]).selects(event)


def test_matchers_that_cannot_be_read_are_each_named() -> None:
    with pytest.raises(InvalidSilence) as caught:
        parse_matchers(["owner=me", "job", "tag:a=1", "tag:a=2"])
    assert caught.value.problems == [
        "matcher 'owner=me': unknown key 'owner' (use workspace, job, job_id, event, "
        "trigger, run_type, tag:KEY)",
        "matcher 'job': write KEY=VALUE",
        "matcher 'tag:a=2': tag 'a' given twice",
    ]
    with pytest.raises(InvalidSilence, match="job_ids"):
        parse_matchers(["job_id=seven"])
    with pytest.raises(InvalidSilence, match="event_types"):
        parse_matchers(["event=run_exploded"])


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400)]
)
def test_durations_read_in_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "-5", "0s", "2h 30", "90"])
def test_a_duration_that_cannot_be_read_is_refused(text: str) -> None:
    with pytest.raises(InvalidSilence):
        parse_duration(text)


def test_a_weekly_window_keeps_its_wall_clock_time_across_the_spring_change() -> None:
    """Saturdays 02:00-04:00 in Europe/Berlin: 01:00-03:00 UTC in winter (CET), 00:00-02:00
    UTC after clocks went forward on Sunday 2027-03-28 (CEST)."""
    silence = compile_silence(recurring("0 0 2 ? * SAT", 7200))
    winter = {"00:59": False, "01:00": True, "02:59": True, "03:00": False}
    summer = {"23:59": False, "00:00": True, "01:59": True, "02:00": False}
    for hhmm, active in winter.items():
        assert silence.active(utc(f"2027-03-27T{hhmm}")) is active, hhmm
    for hhmm, active in summer.items():
        day = "2027-04-02" if hhmm == "23:59" else "2027-04-03"
        assert silence.active(utc(f"{day}T{hhmm}")) is active, hhmm
    assert silence.next_window(utc("2027-03-27T12:00")) == utc("2027-04-03T00:00")


def test_on_the_nights_clocks_change_a_window_is_what_the_wall_clock_says() -> None:
    """Sundays 02:00-04:00 in Berlin, as Alertmanager's time intervals read it: on
    2027-03-28 02:00-03:00 does not exist, so the window holds 03:00-04:00 CEST (01:00-02:00
    UTC); on 2026-10-25 02:00-03:00 happens twice and the window holds through both passes,
    02:00 CEST to 04:00 CET (00:00-03:00 UTC)."""
    silence = compile_silence(recurring("0 0 2 ? * SUN", 7200))
    spring = {"00:59": False, "01:00": True, "01:59": True, "02:00": False}
    autumn = {"23:59": False, "00:00": True, "01:30": True, "02:59": True, "03:00": False}
    for hhmm, active in spring.items():
        assert silence.active(utc(f"2027-03-28T{hhmm}")) is active, hhmm
    for hhmm, active in autumn.items():
        day = "2026-10-24" if hhmm == "23:59" else "2026-10-25"
        assert silence.active(utc(f"{day}T{hhmm}")) is active, hhmm
    # An ordinary Sunday: two hours, 00:00-02:00 UTC in summer.
    assert silence.active(utc("2027-04-04T01:59"))
    assert not silence.active(utc("2027-04-04T02:00"))


def test_a_window_that_opens_with_the_silence_is_its_next_one() -> None:
    config = SilenceConfig.model_validate(
        {
            "starts_at": "2026-12-05T01:00:00Z",  # Saturday 02:00 in Berlin
            "recurring": {"cron": "0 0 2 ? * SAT", "timezone": "Europe/Berlin", "duration": 60},
        }
    )
    silence = compile_silence(config)
    assert silence.next_window(utc("2026-12-04T12:00")) == utc("2026-12-05T01:00")
    assert silence.active(utc("2026-12-05T01:00"))
    assert silence.next_window(utc("2026-12-05T01:00")) == utc("2026-12-12T01:00")


def test_a_recurring_silence_whose_windows_are_all_past_is_over() -> None:
    silence = compile_silence(recurring("0 0 2 * * ? 2020", 60, timezone="UTC"))
    assert silence.over(utc("2026-01-01T00:00"))
    assert counts([silence], utc("2026-01-01T00:00")) == {}


def test_a_recurring_window_holds_only_between_the_silences_own_start_and_end() -> None:
    config = SilenceConfig.model_validate(
        {
            "starts_at": "2027-01-01T00:00:00Z",
            "ends_at": "2027-01-10T00:00:00Z",
            "recurring": {"cron": "0 0 2 * * ?", "duration": 3600},
        }
    )
    silence = compile_silence(config)
    assert not silence.active(utc("2026-12-31T02:30"))
    assert silence.active(utc("2027-01-05T02:30"))
    assert not silence.active(utc("2027-01-10T02:30"))
    assert silence.next_window(utc("2027-01-09T03:00")) is None
    assert counts([silence], utc("2027-01-05T02:30")) == {("config", "active"): 1}
    assert counts([silence], utc("2027-01-05T05:00")) == {("config", "pending"): 1}
    assert counts([silence], utc("2027-01-11T00:00")) == {}


def test_a_silence_without_times_needs_a_window_and_a_bad_window_names_its_field(
    tmp_path: Path,
) -> None:
    base = {
        "workspaces": [
            {"name": "w", "host": "https://x.example", "auth": {"type": "pat", "token": "t"}}
        ]
    }
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                **base,
                "silences": [
                    {"comment": "no time"},
                    {"recurring": {"cron": "0 0 2 ? * FUNDAY", "duration": 60}},
                    {
                        "recurring": {
                            "cron": "0 0 2 ? * SAT",
                            "timezone": "Mars/Base",
                            "duration": 60,
                        }
                    },
                ],
            }
        )
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.errors)
    assert "silences.0.starts_at: required unless `recurring` is set" in text
    assert "silences.0.ends_at: required unless `recurring` is set" in text
    assert "silences.1.recurring.cron:" in text
    assert "FUNDAY" in text
    assert "silences.2.recurring.timezone:" in text
    assert "Mars/Base" in text


def test_a_new_silence_says_everything_that_is_wrong_with_it() -> None:
    now = time.time()
    with pytest.raises(InvalidSilence) as caught:
        new_silence(matchers=["nope"], comment=" ", created_by="me", now=now)
    assert caught.value.problems == [
        "comment: say why, for the next on-call",
        "give an end time or a duration (or a recurring window)",
        "matcher 'nope': write KEY=VALUE",
    ]
    with pytest.raises(InvalidSilence, match="at least one matcher"):
        new_silence(matchers=[], comment="x", created_by="me", now=now, duration=60)
    for ends_at, problem in [
        (datetime.fromisoformat("9999-12-31T23:00:00-14:00"), "between 1970 and the year 9999"),
        (datetime.fromtimestamp(now - 1, UTC), "already past"),
    ]:
        with pytest.raises(InvalidSilence, match=problem):
            new_silence(matchers=["job=a"], comment="x", created_by="me", now=now, ends_at=ends_at)
    with pytest.raises(InvalidSilence, match="at most 3650 days"):
        new_silence(matchers=["job=a"], comment="x", created_by="me", now=now, duration=1e12)
    made = new_silence(matchers=["job=a*"], comment="deploy", created_by="me", now=now, duration=60)
    shown = silence_json(made, now)
    assert (shown["state"], shown["matchers"], shown["comment"]) == ("active", ["job=a*"], "deploy")
    assert silence_json(made, now + 61)["state"] == "expired"


# -- the store, both backends -------------------------------------------------------------


def _stored(now: float, **options: Any) -> StoredSilence:
    return new_silence(
        matchers=options.pop("matchers", ["job=nightly-*"]),
        comment="deploy",
        created_by="alice",
        now=now,
        **({"duration": 3600} | options),
    )


async def test_the_store_keeps_lists_expires_and_prunes_silences(store: Store) -> None:
    now = 1_800_000_000.0
    one = _stored(now)
    forever = _stored(now + 1, duration=None, recurring={"cron": "0 0 2 ? * SAT", "duration": 60})
    await store.add_silence(one)
    await store.add_silence(forever)
    with pytest.raises(StoreConflict):
        await store.add_silence(one)
    assert [s.id for s in await store.silences(now=now)] == [one.id, forever.id]
    (read, _) = await store.silences(now=now)
    assert read == one  # the whole silence round-trips
    assert [s.id for s in await store.silences(now=now + 3600)] == [forever.id]

    expired = await store.expire_silence(forever.id, now=now + 10)
    assert expired is not None
    assert expired.expired_at == now + 10
    assert expired.ended(now + 10)
    assert await store.expire_silence(forever.id, now=now + 20) is None
    assert await store.expire_silence("no-such-id", now=now) is None
    assert [s.id for s in await store.silences(now=now + 10)] == [one.id]
    assert {s.id for s in await store.silences(now=now + 10, ended=True)} == {one.id, forever.id}

    # Ended silences go with the events of their age, not before.
    await store.prune(now=now + 86_400, run_retention_days=60, event_retention_days=2)
    assert len(await store.silences(now=now, ended=True)) == 2
    await store.prune(now=now + 3 * 86_400, run_retention_days=60, event_retention_days=2)
    assert await store.silences(now=now, ended=True) == []


async def test_a_silence_row_that_cannot_be_read_is_left_out_and_logged(
    sqlite_store: SQLiteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    good = _stored(now)
    await sqlite_store.add_silence(good)
    await sqlite_store.add_silence(_stored(now, matchers=["job=b"]))
    await sqlite_store._db.execute(
        "UPDATE silences SET record = '{\"silence\": 1}' WHERE id != ?", (good.id,)
    )
    await sqlite_store._db.commit()
    assert [s.id for s in await sqlite_store.silences(now=now)] == [good.id]
    assert "silence_unreadable" in capsys.readouterr().out


# -- a daemon in manual time: routing, refresh, restart, status page, metrics -------------


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture
async def watched(now_clock: ManualClock, tmp_path: Path) -> AsyncIterator[tuple[Watched, Path]]:
    """The daemon over a simulator, both in manual time starting now (the CLI's silences
    begin at the real now), and its configuration's file."""
    async with (
        Simulator(clock=now_clock, tokens={TOKEN}) as sim,
        _watched(sim, now_clock, tmp_path) as found,
    ):
        yield found


@asynccontextmanager
async def _watched(
    sim: Simulator, now_clock: ManualClock, tmp_path: Path
) -> AsyncIterator[tuple[Watched, Path]]:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "workspaces": [
                    {
                        "name": "sim",
                        "host": sim.url,
                        "auth": {"type": "pat", "token": TOKEN},
                        "requests_per_second": 1000,
                        "poll_interval": 30,
                    }
                ],
                "store": {"path": str(tmp_path / "w.db")},
                "server": {"host": "127.0.0.1", "port": 0},
                "channels": {"out": {"type": "console"}},
            }
        )
    )
    config = load_config(path)
    watch = Watched(
        sim, now_clock, config, await build(config, clock=now_clock, console=io.StringIO())
    )
    await watch.cycle()
    try:
        yield watch, path
    finally:
        await close(watch.daemon)


async def _deliveries(watched: Watched, job: str) -> list[str]:
    recent = await watched.daemon.store.recent_events(limit=100)
    return sorted(
        d.status
        for r in recent
        if r.event.job.name == job and r.event.type is EventType.RUN_FAILED
        for d in r.deliveries
    )


async def test_a_silence_added_from_the_cli_holds_from_the_next_cycle_and_survives_a_restart(
    watched: tuple[Watched, Path],
) -> None:
    watch, path = watched
    ws = watch.sim.workspace
    nightly, other = ws.create_job("nightly-etl"), ws.create_job("hourly-report")
    code, out = await asyncio.to_thread(
        _cli, "silence", "add", "-c", str(path), "--match", "job=nightly-*",
        "--match", "workspace=sim", "--for", "2h", "--comment", "deploy", "-o", "json",
    )  # fmt: skip
    assert code == 0, out
    added = json.loads(out)
    assert added["state"] == "active"

    for job in (nightly, other):
        ws.start_run(job, setup_s=1, execution_s=5, cleanup_s=1, result="FAILED")
    await watch.cycle()
    assert await _deliveries(watch, "nightly-etl") == ["silenced"]
    assert await _deliveries(watch, "hourly-report") == ["pending"]
    registry = watch.daemon.metrics.registry
    assert (
        registry.get_sample_value("watcher_silences", {"source": "runtime", "state": "active"}) == 1
    )
    assert registry.get_sample_value("watcher_alerts_silenced_total", {"channel": "out"}) == 1

    await watch.restart()
    ws.start_run(nightly, setup_s=1, execution_s=5, cleanup_s=1, result="FAILED")
    await watch.cycle()
    assert await _deliveries(watch, "nightly-etl") == ["silenced", "silenced"]

    # On the page and in `watcher status` too, with its id.
    data = await page_data(None, watch.daemon.store, watch.config, watch.clock)
    (row,) = data.silences
    assert (row.id, row.active, row.created_by) == (added["id"], True, added["created_by"])
    assert added["id"] in render_text(data)
    code, out = await asyncio.to_thread(
        _cli, "status", "-c", str(path), "--url", "http://127.0.0.1:9", "-o", "json"
    )
    assert code == 0
    assert [s["id"] for s in json.loads(out)["silences"]] == [added["id"]]
    status = await watch.daemon.status()  # the server's /status
    assert [(s["id"], s["state"]) for s in status["silences"]] == [(added["id"], "active")]

    code, out = await asyncio.to_thread(_cli, "silence", "expire", "-c", str(path), added["id"][:6])
    assert code == 0
    assert added["id"] in out
    ws.start_run(nightly, setup_s=1, execution_s=5, cleanup_s=1, result="FAILED")
    await watch.cycle()
    assert (await _deliveries(watch, "nightly-etl")).count("pending") == 1
    code, out = await asyncio.to_thread(_cli, "silence", "list", "-c", str(path))
    assert (code, out) == (0, "silences: 0\n")


async def test_a_store_that_cannot_be_read_keeps_the_silences_last_read(
    watched: tuple[Watched, Path],
) -> None:
    watch, _ = watched
    daemon = watch.daemon
    await daemon.store.add_silence(_stored(watch.clock.time(), matchers=["job=nightly-*"]))
    await daemon.silences.refresh()
    assert len(daemon.silences.current) == 1

    async def broken(**_: Any) -> list[StoredSilence]:
        raise OSError("disk gone")

    daemon.store.silences = broken  # type: ignore[method-assign]
    await daemon.silences.refresh()
    assert len(daemon.silences.current) == 1
    assert daemon.metrics.registry.get_sample_value("watcher_silence_refresh_failures_total") == 1


async def test_a_read_that_ends_after_a_newer_one_does_not_bring_back_its_older_set(
    sqlite_store: SQLiteStore, now_clock: ManualClock
) -> None:
    """Two workspaces' cycles read side by side; the first read is slow, and a silence
    expired between the two reads must stay expired once both have ended."""
    silence = _stored(now_clock.time())
    await sqlite_store.add_silence(silence)
    live = LiveSilences(sqlite_store, now_clock)
    gate, waiting = asyncio.Event(), asyncio.Event()
    real = sqlite_store.silences

    async def slow_first(**options: Any) -> list[StoredSilence]:
        sqlite_store.silences = real  # type: ignore[method-assign]
        found = await real(**options)
        waiting.set()
        await gate.wait()
        return found

    sqlite_store.silences = slow_first  # type: ignore[method-assign]
    older = asyncio.create_task(live.refresh())
    await waiting.wait()  # the first read has its rows and waits
    await sqlite_store.expire_silence(silence.id, now=now_clock.time())
    await live.refresh()
    assert live.current == ()
    gate.set()
    await older
    assert live.current == ()


# -- the HTTP API -------------------------------------------------------------------------

API_TOKEN = "test-api-token-not-a-secret"


@pytest.fixture
async def api(sqlite_store: SQLiteStore, now_clock: ManualClock) -> AsyncIterator[Iterator[Any]]:
    servers: list[TestServer] = []

    async def start(**config: Any) -> str:
        app = web.Application()
        SilenceApi(sqlite_store, now_clock, ApiConfig.model_validate(config)).add_routes(app)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/api/v1/silences"))

    yield start  # type: ignore[misc]
    for server in servers:
        await server.close()


async def _call(
    method: str, url: str, token: str | None = None, body: Any = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json(), dict(response.headers)


async def test_the_api_needs_the_bearer_token_and_is_off_without_one(api: Any) -> None:
    off = await api()
    assert (await _call("GET", off, API_TOKEN))[0] == 403
    status, body, _ = await _call("POST", off, API_TOKEN, {"comment": "x", "duration": 60})
    assert status == 403
    assert "server.api.token" in body["errors"][0]

    url = await api(token=API_TOKEN)
    for token in (None, "wrong"):
        status, body, headers = await _call("GET", url, token)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="watcher"'
    assert (await _call("GET", url, API_TOKEN))[:2] == (200, {"silences": []})

    reads = await api(token=API_TOKEN, open_reads=True)
    assert (await _call("GET", reads))[0] == 200
    assert (await _call("POST", reads, None, {"comment": "x", "duration": 60}))[0] == 401


async def test_the_api_adds_lists_and_expires_silences(api: Any) -> None:
    url = await api(token=API_TOKEN)
    status, made, _ = await _call(
        "POST",
        url,
        API_TOKEN,
        {
            "matchers": ["job=nightly-*"],
            "comment": "maintenance",
            "created_by": "bob",
            "recurring": {"cron": "0 0 2 ? * SAT", "timezone": "Europe/Berlin", "duration": "2h"},
        },
    )
    assert status == 201, made
    assert made["recurring"]["duration"] == 7200
    assert made["ends_at"] is None
    assert made["created_by"] == "bob"
    status, listed, _ = await _call("GET", url, API_TOKEN)
    assert [s["id"] for s in listed["silences"]] == [made["id"]]
    status, expired, _ = await _call("DELETE", f"{url}/{made['id']}", API_TOKEN)
    assert status == 200
    assert expired["state"] == "expired"
    assert (await _call("DELETE", f"{url}/{made['id']}", API_TOKEN))[0] == 404
    assert (await _call("GET", url, API_TOKEN))[1] == {"silences": []}
    status, every, _ = await _call("GET", f"{url}?all=1", API_TOKEN)
    assert [s["state"] for s in every["silences"]] == ["expired"]


async def test_the_api_names_each_problem_of_a_bad_request(api: Any) -> None:
    url = await api(token=API_TOKEN)
    status, body, _ = await _call(
        "POST",
        url,
        API_TOKEN,
        {"matchers": ["who=me"], "comment": 5, "ends_at": "tomorrow", "color": "red"},
    )
    assert status == 400
    assert body["errors"] == [
        "color: unknown field",
        "comment: a string",
        "ends_at: an ISO 8601 time with a time zone",
    ]
    status, body, _ = await _call(
        "POST", url, API_TOKEN, {"matchers": ["who=me"], "comment": "x", "duration": "2h"}
    )
    assert status == 400
    assert body["errors"][0].startswith("matcher 'who=me': unknown key")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url, data=b"{not json", headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as response,
    ):
        assert response.status == 400
        assert await response.json() == {"errors": ["the body is not JSON"]}


async def test_what_the_api_cannot_use_is_a_400_never_a_500(api: Any) -> None:
    url = await api(token=API_TOKEN)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    huge = b'{"matchers": ["job=a"], "comment": "x", "duration": 1' + b"0" * 400 + b"}"
    deep = b"[" * 100_000
    async with aiohttp.ClientSession() as session:
        for body, content_type in [
            (huge, "application/json"),
            (b'{"matchers": ["job=a"]}', "application/json; charset=no-such-charset"),
            (deep, "application/json"),
        ]:
            headers = {**auth, "Content-Type": content_type}
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 400, await response.text()
    # A token header that is not UTF-8 is only a wrong token.
    reader, writer = await asyncio.open_connection(*url.split("//")[1].split("/")[0].split(":"))
    writer.write(
        b"GET /api/v1/silences HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401"


async def test_a_store_that_cannot_answer_is_a_503_that_names_no_database(
    api: Any, sqlite_store: SQLiteStore
) -> None:
    url = await api(token=API_TOKEN)

    async def down(**_: Any) -> list[StoredSilence]:
        raise StoreUnavailable("the PostgreSQL database db.internal:5432/watcher is down")

    sqlite_store.silences = down  # type: ignore[method-assign]
    status, body, _ = await _call("GET", url, API_TOKEN)
    assert status == 503
    assert body == {"errors": ["the store cannot answer now (see the watcher's log)"]}


@pytest.mark.parametrize(
    ("api_config", "error"),
    [
        ({"open_reads": True}, "open_reads: the API is off without a token"),
        ({"token": "short"}, "token: at least 16 characters"),
    ],
)
def test_an_api_configuration_that_would_not_do_what_it_says_is_refused(
    api_config: dict[str, Any], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        ApiConfig.model_validate(api_config)


def test_cli_problems_go_to_stderr_naming_the_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.yaml"
    auth = {"type": "pat", "token": "t"}
    path.write_text(
        yaml.safe_dump(
            {
                "workspaces": [{"name": "w", "host": "https://x.example", "auth": auth}],
                "store": {"path": str(tmp_path / "absent.db")},
            }
        )
    )
    add = ["silence", "add", "-c", str(path), "--match", "job=a", "--comment", "x"]
    assert main([*add, "--every", "0 0 2 ? * SAT", "--window", "2h", "--tz", "Mars/Base"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("watcher: --tz: '0 0 2 ? * SAT' in 'Mars/Base': time zone:")
    assert main([*add, "--for", "2h", "--tz", "UTC"]) == 2
    assert "give --every" in capsys.readouterr().err
    assert main([*add, "--for", "2"]) == 2
    assert "duration '2': write e.g. 90s" in capsys.readouterr().err
    # Nothing was wrong with this one but the store: no database there is an error too.
    assert main([*add, "--for", "2h"]) == 1
    assert "absent.db" in capsys.readouterr().err


async def test_expire_wants_a_prefix_long_enough_and_one_silence_only(
    watched: tuple[Watched, Path],
) -> None:
    watch, path = watched
    now = watch.clock.time()
    for silence_id in ("abcdef01", "abcdef02"):
        await watch.daemon.store.add_silence(dataclasses.replace(_stored(now), id=silence_id))
    expire = ("silence", "expire", "-c", str(path))
    code, _, err = await asyncio.to_thread(_cli_err, *expire, "abcde")
    assert (code, err) == (1, "watcher: 'abcde' is shorter than 6 characters\n")
    code, _, err = await asyncio.to_thread(_cli_err, *expire, "abcdef")
    assert (code, err) == (1, "watcher: 'abcdef' matches several\n")
    code, out, _ = await asyncio.to_thread(_cli_err, *expire, "abcdef01")
    assert code == 0
    assert out.startswith("abcdef01\texpired\t")
    assert [s.id for s in await watch.daemon.store.silences(now=now)] == ["abcdef02"]


def _cli_err(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


async def test_the_page_shows_a_recurring_configured_silence_without_start_or_end(
    sqlite_store: SQLiteStore, now_clock: ManualClock, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    auth = {"type": "pat", "token": "t"}
    window = {"cron": "0 0 2 ? * SAT", "timezone": "Europe/Berlin", "duration": 7200}
    path.write_text(
        yaml.safe_dump(
            {
                "workspaces": [{"name": "w", "host": "https://x.example", "auth": auth}],
                "silences": [{"match": {"names": ["<b>nightly</b>"]}, "recurring": window}],
            }
        )
    )
    config = load_config(path)
    data = await page_data(None, sqlite_store, config, now_clock)
    (row,) = data.silences
    assert (row.id, row.starts_at, row.ends_at) == (None, None, None)
    assert row.recurring == "0 0 2 ? * SAT in Europe/Berlin for 2h 00m"
    assert row.next_window_at is not None
    assert "0 0 2 ? * SAT in Europe/Berlin" in render_text(data)
    html = render_page(data)
    assert "&lt;b&gt;nightly&lt;/b&gt;" in html
    assert "<b>nightly" not in html


# -- a running daemon (a real process) and the CLI (another) ------------------------------


async def test_a_running_watcher_holds_back_what_a_cli_silence_matches_from_its_next_cycle(
    tmp_path: Path, live_receiver: Receiver
) -> None:
    """`watcher run` delivers a failure by webhook; `watcher silence add` (another
    process) silences the job; the next failure is held back while the other job's is
    delivered; after a restart the silence still holds; expired, it holds no more."""
    clock = ManualClock(time.time())
    db = tmp_path / "watcher.db"
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        ws = sim.workspace
        silenced, other = ws.create_job("nightly-etl"), ws.create_job("report")
        config = write_config(
            tmp_path / "watcher.yaml",
            sim=sim,
            db=db,
            workspace={"requests_per_second": 1000},
            logging={"format": "json", "level": "WARNING"},
            channels={"hook": {"type": "webhook", "url": f"{live_receiver.url}/hook"}},
            routes=[{"match": {"event_types": ["run_failed"]}, "channels": ["hook"]}],
        )
        logs = tmp_path / "logs"

        def failed_jobs() -> list[str]:
            return [json.loads(r.body)["job"]["name"] for r in live_receiver.requests]

        async def fail(job: int) -> None:
            ws.start_run(job, setup_s=0, execution_s=1, cleanup_s=0, result="FAILED")
            clock.advance(5)

        async def cli(*args: str) -> str:
            cli_process = await WatcherProcess.start(
                "silence", *args, "-c", str(config), env=daemon_env(), logs=logs
            )
            code = await cli_process.wait_exit(WAIT)
            assert code == 0, cli_process.tail()
            return cli_process.stdout

        async with await WatcherProcess.start(
            "run", "-c", str(config), env=daemon_env(), logs=logs
        ) as first:
            await first.settle(sim, db)
            await fail(silenced)
            await wait_until(
                lambda: failed_jobs() == ["nightly-etl"], "first failure", context=first.tail
            )
            made = json.loads(
                await cli(
                    "add",
                    "--match",
                    "job=nightly-etl",
                    "--for",
                    "1h",
                    "--comment",
                    "deploy",
                    "-o",
                    "json",
                )
            )
            await first.settle(sim, db)  # the cycle that began after the silence
            await fail(silenced)
            await fail(other)
            await wait_until(
                lambda: len(failed_jobs()) == 2,
                "the other failure",
                context=lambda: str(failed_jobs()) + first.tail(),
            )
            await first.settle(sim, db)
            assert failed_jobs() == ["nightly-etl", "report"]
            code, _ = await first.terminate()
            assert code == 0
        async with await WatcherProcess.start(
            "run", "-c", str(config), env=daemon_env(), logs=logs
        ) as second:
            await second.settle(sim, db)
            await fail(silenced)
            await fail(other)
            await wait_until(
                lambda: len(failed_jobs()) == 3, "after the restart", context=second.tail
            )
            await second.settle(sim, db)
            assert failed_jobs() == ["nightly-etl", "report", "report"]
            await cli("expire", made["id"])
            await second.settle(sim, db)
            await second.settle(sim, db)
            await fail(silenced)
            await wait_until(
                lambda: len(failed_jobs()) == 4, "after the expiry", context=second.tail
            )
            assert failed_jobs()[-1] == "nightly-etl"
            code, _ = await second.terminate()
            assert code == 0
