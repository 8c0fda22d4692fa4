"""End to end, through real processes: `watcher run` as a subprocess against the in-test
Simulator, delivering to a real webhook receiver (Standard Webhooks signatures) and a real
SMTP server (aiosmtpd); SIGTERM with deliveries pending; and `watcher demo`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import signal
import sqlite3
from collections import Counter
from pathlib import Path

from aiosmtpd.smtp import Envelope
from standardwebhooks import Webhook

from tests.conftest import TOKEN
from tests.daemon_helpers import (
    EXPECTED_EVENTS,
    PAGING,
    RESULTS,
    RUN_SECONDS,
    WAIT,
    WORKSPACE,
    WatcherProcess,
    create_jobs,
    daemon_env,
    event_names,
    get_json,
    job_of,
    play,
    scrape,
    wait_until,
    write_config,
)
from tests.notify_fixtures import FAKE_SECRET, Receiver, SmtpServer
from watcher import __version__
from watcher.simulator import Simulator

T0 = 1_700_000_000.0
"""Simulated time at which the workload starts: where the test's ManualClock `clock` (the
`sim`'s) starts."""


def hook_channel(receiver: Receiver, **options: object) -> dict[str, object]:
    return {
        "type": "webhook",
        "url": f"{receiver.url}/hook",
        "format": "watcher",
        "secret": "${HOOK_SECRET}",
        "retry_base_delay": 0.2,
        "retry_max_delay": 1.0,
        **options,
    }


def mail_event_id(envelope: Envelope) -> str:
    assert isinstance(envelope.content, bytes)
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    return str(message["X-Watcher-Event-Id"])


async def status(daemon: WatcherProcess) -> dict[str, object]:
    url = (await daemon.metrics_url()).removesuffix("/metrics") + "/status"
    found: dict[str, object] = await get_json(url)
    return found


async def test_scripted_workload_produces_exactly_the_expected_alerts_and_metrics(
    tmp_path: Path, sim: Simulator, live_receiver: Receiver, smtp: SmtpServer
) -> None:
    """A scripted workload (success; failure then recovery; a job health-rule breach; a
    skipped run of a job with no_alert_for_skipped_runs and one without; a failed attempt
    that is retried as a new run, with alert_on_last_attempt; a canceled run) watched over
    Jobs API 2.0 by the real daemon
    produces exactly the expected (event type, run) set on each channel: every event on the
    signed webhook, failures, breaches and recoveries by email too, nothing else and
    nothing twice. /metrics then shows the matching run counts per result state, histogram
    counts, sums and buckets, the rule breach, per-channel alert counts, no active runs,
    job names in databricks_job_info; /healthz and /readyz say ok; SIGTERM exits 0; and
    no secret appears in the daemon's log."""
    jobs = create_jobs(sim)
    db = tmp_path / "watcher.db"
    config = write_config(
        tmp_path / "watcher.yaml",
        sim=sim,
        db=db,
        # Job-level retries as new runs, which alert_on_last_attempt applies to (JOBS).
        api_version="2.0",
        channels={
            "hook": hook_channel(live_receiver),
            "mail": {
                "type": "email",
                "host": "127.0.0.1",
                "port": smtp.port,
                "security": "none",
                "sender": "watcher@example.org",
                "recipients": ["oncall@example.org"],
            },
        },
        routes=[
            {"match": {"event_types": sorted(PAGING)}, "channels": ["mail", "hook"]},
            {"channels": ["hook"]},
        ],
    )
    env = daemon_env(HOOK_SECRET=FAKE_SECRET, WATCHER_REPLICA="e2e")
    daemon = await WatcherProcess.start("run", "-c", str(config), env=env, logs=tmp_path)
    async with daemon:
        metrics_url = await daemon.metrics_url()
        await daemon.settle(sim, db)  # the first cycle: a backfill, alerting nothing

        async def settle() -> None:
            await daemon.settle(sim, db)

        runs = await play(sim, jobs, settle)
        names = event_names(runs, jobs)
        expected_mail = {e for e in EXPECTED_EVENTS if e[0] in PAGING}

        def context() -> str:
            got = sorted(
                names.get(r.headers.get("webhook-id", ""), ("?", "?"))
                for r in live_receiver.requests
            )
            return f"webhook so far: {got}\n{daemon.tail()}"

        async def outbox_empty() -> bool:
            return (await status(daemon))["outbox_pending"] == 0

        # Every event is committed by now; once none of its deliveries is pending (in
        # flight or waiting for a retry), nothing more can arrive: compare, exactly.
        await wait_until(outbox_empty, "every delivery to be made", context=context)
        hook_ids = [r.headers["webhook-id"] for r in live_receiver.requests]
        mail_ids = [mail_event_id(e) for e in smtp.mailbox.envelopes]
        samples = await scrape(metrics_url)
        state = await status(daemon)
        base = metrics_url.removesuffix("/metrics")
        assert await get_json(f"{base}/healthz") == {"status": "ok"}
        assert await get_json(f"{base}/readyz") == {"ready": True, "problems": []}
        code, _ = await daemon.terminate()
        assert code == 0, daemon.tail()

    def described(ids: list[str]) -> set[tuple[str, str]]:
        return {names.get(i, ("unknown event", i)) for i in ids}

    # Exactly the expected alerts per channel, each once (the webhook-id is the event id).
    assert described(hook_ids) == EXPECTED_EVENTS
    assert described(mail_ids) == expected_mail
    assert [i for i, n in Counter(hook_ids).items() if n > 1] == []
    assert [i for i, n in Counter(mail_ids).items() if n > 1] == []
    assert state["dead_letters"] == 0
    # One replica on SQLite holds its workspace's lease from its first tick.
    assert state["replica"] == "e2e"
    assert [(w["polled_here"], w["lease_epoch"]) for w in state["workspaces"]] == [(True, 1)]  # type: ignore[attr-defined]
    assert samples.sum("watcher_workspace_leases", replica="e2e") == 1
    # flaky's failure was resolved by its recovery, the slow run's breach when it ended;
    # retried's last attempt failed and nothing has recovered it.
    assert state["incidents_open"] == {"failure": 1}

    # Every webhook is signed, and its body is the event the webhook-id names.
    verifier = Webhook(FAKE_SECRET)
    for request in live_receiver.requests:
        assert request.path == "/hook"
        body = verifier.verify(request.body, request.headers)
        event_type, run = names[request.headers["webhook-id"]]
        if event_type == "job_recovered":
            run = "flaky-2"  # the success that recovered; the id names the failure
        assert body["id"] == request.headers["webhook-id"]
        assert (body["type"], body["run"]["run_id"]) == (event_type, runs[run])
        assert body["workspace"] == WORKSPACE
        assert body["job"]["name"] == f"e2e-{job_of(run)}"
        if event_type == "run_duration_exceeded":
            assert body["rule"]["value"] == 120
            assert body["observed_seconds"] > 120
    for envelope in smtp.mailbox.envelopes:
        assert envelope.rcpt_tos == ["oncall@example.org"]

    # Metrics of the committed transitions.
    finished = Counter(RESULTS.values())
    assert samples.by("databricks_runs_finished_total", "result_state") == finished
    assert samples.by("databricks_run_duration_seconds_count", "result_state") == finished
    assert samples.sum("databricks_runs_started_total") == len(RUN_SECONDS)
    for name, job_id in jobs.items():
        job_runs = [r for r in RUN_SECONDS if job_of(r) == name]
        assert samples.sum("databricks_run_duration_seconds_sum", job_id=str(job_id)) == sum(
            RUN_SECONDS[r] for r in job_runs
        ), name
        assert samples.sum(
            "databricks_run_execution_duration_seconds_count", job_id=str(job_id)
        ) == len(job_runs), name
    for le in ("60.0", "120.0", "300.0", "600.0", "+Inf"):
        fitting = sum(1 for s in RUN_SECONDS.values() if le == "+Inf" or s <= float(le))
        assert samples.sum("databricks_run_duration_seconds_bucket", le=le) == fitting, le
    assert samples.by("databricks_run_duration_rule_breaches_total", "job_id") == {
        str(jobs["slow"]): 1.0
    }
    assert samples.sum("databricks_run_duration_rule_breaches_total", rule="job") == 1
    assert samples.sum("databricks_runs_active") == 0
    assert (
        samples.sum("databricks_job_last_success_timestamp_seconds", job_id=str(jobs["ok"]))
        == T0 + RUN_SECONDS["ok"]
    )
    assert samples.by("databricks_job_info", "job_name") == {f"e2e-{n}": 1.0 for n in jobs}
    assert samples.by("watcher_alerts_sent_total", "channel") == {
        "hook": len(EXPECTED_EVENTS),
        "mail": len(expected_mail),
    }
    assert samples.sum("watcher_alerts_failed_total") == 0
    assert samples.sum("watcher_alerts_dead_lettered_total") == 0
    assert samples.sum("watcher_build_info", version=__version__) == 1
    assert samples.sum("watcher_poll_cycles_total", outcome="success") >= 7
    assert samples.sum("watcher_poll_cycles_total", outcome="failure") == 0

    # Secrets never reach the log.
    log = daemon.stderr
    assert TOKEN not in log
    assert FAKE_SECRET.removeprefix("whsec_") not in log


async def hanging_setup(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> tuple[WatcherProcess, Path, Path, dict[str, tuple[str, str]], asyncio.Event]:
    """Three jobs each start a run and fail while the webhook receiver hangs: their three
    run_started alerts are in flight (one per job at a time), the three run_failed ones
    wait behind them. Returns the running daemon, its config and database, the event
    names and the receiver's hold."""
    ws = sim.workspace
    jobs = {name: ws.create_job(f"term-{name}") for name in ("a", "b", "c")}
    db = tmp_path / "watcher.db"
    config = write_config(
        tmp_path / "watcher.yaml",
        sim=sim,
        db=db,
        # Attempts must outlive the shutdown grace (10 s) rather than time out.
        channels={"hook": hook_channel(receiver, timeout=60)},
    )
    hold = asyncio.Event()
    receiver.hold = hold
    daemon = await WatcherProcess.start(
        "run", "-c", str(config), env=daemon_env(HOOK_SECRET=FAKE_SECRET), logs=tmp_path
    )
    try:
        await daemon.settle(sim, db)  # the backfill cycle
        runs = {name: ws.start_run(job, result="FAILED") for name, job in jobs.items()}
        await daemon.settle(sim, db)
        ws.advance(100)
        await daemon.settle(sim, db)
        await wait_until(
            lambda: receiver.in_flight == 3, "three deliveries in flight", context=daemon.tail
        )
    except BaseException:
        await daemon.kill()
        raise
    return daemon, config, db, event_names(runs), hold


def deliveries(db: Path) -> dict[str, str]:
    """Event id -> status of its delivery to the `hook` channel, from the store."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT e.id, d.status FROM deliveries d JOIN events e ON e.id = d.event_id "
            "WHERE d.channel = 'hook'"
        ).fetchall()
    finally:
        conn.close()
    return {event_id: status for event_id, status in rows}


async def test_sigterm_with_a_hanging_receiver_exits_0_and_loses_no_alert(
    tmp_path: Path, sim: Simulator, live_receiver: Receiver
) -> None:
    """SIGTERM while every delivery hangs: the daemon exits 0 (in-flight attempts get the
    grace period, then are abandoned), well inside Kubernetes' 30 s, with all six alerts
    still pending in the store; restarted against a healthy receiver, it delivers each of
    them, and commits no new event."""
    daemon, config, db, names, hold = await hanging_setup(tmp_path, sim, live_receiver)
    async with daemon:
        code, _ = await daemon.terminate(limit=15.0)
        assert code == 0, daemon.tail()
    stopped = daemon.log("watcher_stopped")
    assert stopped is not None, daemon.tail()
    assert stopped["exit_code"] == 0
    pending = deliveries(db)
    assert len(pending) == 6, pending
    assert set(pending.values()) == {"pending"}, pending
    expected = {names[i] for i in pending}

    hold.set()  # healthy again: the held requests are answered (to nobody), new ones at once
    live_receiver.hold = None
    before = len(live_receiver.requests)
    daemon = await WatcherProcess.start(
        "run", "-c", str(config), env=daemon_env(HOOK_SECRET=FAKE_SECRET), logs=tmp_path
    )
    async with daemon:
        await wait_until(
            lambda: (
                {r.headers["webhook-id"] for r in live_receiver.requests[before:]} >= set(pending)
            ),
            "the pending alerts to be delivered after the restart",
            context=daemon.tail,
        )
        await daemon.settle(sim, db)
        code, _ = await daemon.terminate()
        assert code == 0, daemon.tail()
    after = [r.headers["webhook-id"] for r in live_receiver.requests[before:]]
    assert sorted(names[i] for i in after) == sorted(expected)  # each once
    assert {n[0] for n in expected} == {"run_started", "run_failed"}
    assert set(deliveries(db).values()) == {"delivered"}
    assert set(deliveries(db)) == set(pending)  # no new event after the restart


async def test_sigterm_lets_in_flight_deliveries_finish_within_the_grace(
    tmp_path: Path, sim: Simulator, live_receiver: Receiver
) -> None:
    """SIGTERM while three deliveries are in flight and three wait behind them: the
    in-flight ones that complete within the grace period are recorded as delivered and
    not sent again; no new one starts; the process exits 0; after a restart the waiting
    three are delivered (and SIGINT stops that process with 0 too). Over both processes
    every alert arrives exactly once."""
    daemon, config, db, names, hold = await hanging_setup(tmp_path, sim, live_receiver)
    async with daemon:
        daemon.process.send_signal(signal.SIGTERM)
        await daemon.wait_log("watcher_stopping")
        hold.set()  # the receiver answers the three in-flight requests now
        code = await daemon.wait_exit(limit=15.0)
        assert code == 0, daemon.tail()
    first = [r.headers["webhook-id"] for r in live_receiver.requests]
    state = deliveries(db)
    assert sorted(names[i][0] for i in first) == ["run_started"] * 3
    assert {i for i, s in state.items() if s == "delivered"} == set(first)
    assert sorted(names[i][0] for i, s in state.items() if s == "pending") == ["run_failed"] * 3

    live_receiver.hold = None
    daemon = await WatcherProcess.start(
        "run", "-c", str(config), env=daemon_env(HOOK_SECRET=FAKE_SECRET), logs=tmp_path
    )
    async with daemon:
        await wait_until(
            lambda: len(live_receiver.requests) >= 6,
            "the three waiting alerts after the restart",
            context=daemon.tail,
        )
        await daemon.settle(sim, db)
        code, _ = await daemon.terminate(sig=signal.SIGINT)
        assert code == 0, daemon.tail()
    ids = [r.headers["webhook-id"] for r in live_receiver.requests]
    assert Counter(ids) == Counter(set(state))  # all six, each exactly once
    assert set(deliveries(db).values()) == {"delivered"}


BANNER_METRICS = re.compile(r"Prometheus metrics\s+(http://\S+/metrics)")
ALERT_LINE = re.compile(r"^\S+ (run_failed|run_succeeded|job_recovered|run_duration_exceeded) ")


async def test_demo_shows_alerts_and_serves_metrics(tmp_path: Path) -> None:
    """`watcher demo --duration 30 --port 0` needs no config or account: it prints its
    banner with the metrics URL, then alert lines as runs finish; while it runs, /metrics
    is non-empty and counts finished runs; after 30 s it exits 0 by itself."""
    demo = await WatcherProcess.start(
        "demo", "--duration", "30", "--port", "0", env=daemon_env(), logs=tmp_path, name="demo"
    )
    async with demo:
        await wait_until(
            lambda: BANNER_METRICS.search(demo.stdout) is not None,
            "the demo banner",
            context=demo.tail,
        )
        match = BANNER_METRICS.search(demo.stdout)
        assert match is not None
        metrics_url = match.group(1)
        assert "watcher demo:" in demo.stdout

        async def runs_finished() -> bool:
            demo.assert_running()
            samples = await scrape(metrics_url)
            return samples.sum("databricks_runs_finished_total") > 0

        await wait_until(runs_finished, "finished runs in the demo's /metrics", context=demo.tail)
        samples = await scrape(metrics_url)
        assert "databricks_runs_finished_total" in samples.text
        assert samples.sum("watcher_poll_cycles_total", outcome="success") > 0
        code = await demo.wait_exit(limit=30 + WAIT)
        assert code == 0, demo.tail()
    alerts = [line for line in demo.stdout.splitlines() if ALERT_LINE.match(line)]
    assert alerts, demo.tail()
    assert "the clock is simulated" in demo.stdout
    # The closing summary counts what the demo's metrics counted.
    last = demo.stdout.strip().splitlines()[-1]
    assert last.startswith("watcher demo: done after "), demo.tail()
    finished = int(samples.sum("databricks_runs_finished_total"))
    assert int(last.split(" runs finished")[0].rsplit(" ", 1)[1]) >= finished
    assert all(" demo job=" in line for line in alerts), alerts
