"""Completeness: every terminal outcome of every watched run reaches on-call, once, in the
situations where an earlier release lost it: repairs, runs born blocked, catch-up after a
long downtime, a first start whose first cycles fail, a rule added just before a run ends,
and one malformed run among healthy ones. The daemon's real wiring (app.build) polls the
simulator over HTTP in manual time and commits to SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOKEN
from watcher.app import Daemon, build, close, run_once
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.events import Event
from watcher.notify.payloads import watcher_payload
from watcher.notify.templates import Flavour, Template, title
from watcher.simulator import Simulator
from watcher.simulator.workspace import Workspace

VERSIONS = ["2.0", "2.1", "2.2"]
ORDERS = ["start_time", "end_time"]
INTERVAL = 30
RUNS_LIMIT_MAX = {"2.0": 60, "2.1": 25, "2.2": 25}


@dataclass
class Watch:
    """A simulated workspace and the watcher's daemon wired by app.build, cycled by hand."""

    sim: Simulator
    clock: ManualClock
    config: Config
    db: Path
    daemon: Daemon | None = None
    events: list[Event] = field(default_factory=list)

    @property
    def ws(self) -> Workspace:
        return self.sim.workspace

    async def start(self) -> None:
        """A new process over the same database (a restart, or the first start)."""
        await self.stop()
        self.daemon = await build(self.config, clock=self.clock)

    async def stop(self) -> None:
        if self.daemon is not None:
            await close(self.daemon)
            self.daemon = None

    async def cycle(self, seconds: float = INTERVAL) -> list[Event]:
        """Let `seconds` pass, then one committed cycle; the events it committed."""
        assert self.daemon is not None
        self.clock.advance(seconds)
        new = await run_once(self.daemon)
        self.events.extend(new)
        return new

    def of(self, run_id: int) -> list[tuple[str, int]]:
        """(type, repair) of every committed event of one run, in commit order."""
        return [(e.type.value, e.repair) for e in self.events if e.run.run_id == run_id]


WatchFactory = Callable[..., Awaitable[Watch]]


@pytest.fixture
async def make_watch(clock: ManualClock, tmp_path: Path) -> AsyncIterator[WatchFactory]:
    async with AsyncExitStack() as stack:
        watches: list[Watch] = []

        async def factory(
            *,
            version: str = "2.1",
            order: str = "start_time",
            reconcile: dict[str, Any] | None = None,
            startup: dict[str, Any] | None = None,
            **workspace: Any,
        ) -> Watch:
            sim = Simulator(
                clock=clock,
                tokens={TOKEN},
                completed_order=order,  # type: ignore[arg-type]
                # 2.0 pages of 60, not 999 (the client adopts the maximum the server
                # states): "more than a page" then costs a few hundred runs, not thousands.
                runs_limit_max=dict(RUNS_LIMIT_MAX),
            )
            await stack.enter_async_context(sim)
            db = tmp_path / f"w{len(watches)}.db"
            config = Config.model_validate(
                {
                    "workspaces": [
                        {
                            "name": "ws",
                            "host": sim.url,
                            "api_version": version,
                            "auth": {"type": "pat", "token": TOKEN},
                            "poll_interval": INTERVAL,
                            "requests_per_second": 1000,
                            "reconcile": reconcile or {},
                            **workspace,
                        }
                    ],
                    "store": {"path": str(db)},
                    "startup": startup or {},
                }
            )
            watch = Watch(sim=sim, clock=clock, config=config, db=db)
            watches.append(watch)
            await watch.start()
            return watch

        yield factory
        for watch in watches:
            await watch.stop()


def short(ws: Workspace, job: int, n: int, *, seconds: float = 5) -> list[int]:
    """`n` runs of `job` that start now and end `seconds` later, successfully."""
    return [ws.start_run(job, setup_s=0, execution_s=seconds, cleanup_s=0) for _ in range(n)]


# -- 1. repairs ----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("outcome", ["FAILED", "SUCCESS"])
async def test_a_repair_pages_again_or_resolves(
    make_watch: WatchFactory, version: str, order: str, outcome: str
) -> None:
    """A failed run is repaired (same run_id): the repair is seen running, and its failure
    pages again as repair 1, or its success is reported with the job's recovery."""
    w = await make_watch(version=version, order=order)
    job = w.ws.create_job("nightly-etl")
    run_id = w.ws.start_run(job, setup_s=5, execution_s=40, cleanup_s=5, result="FAILED")
    for _ in range(3):
        await w.cycle()
    assert w.of(run_id) == [("run_started", 0), ("run_failed", 0)]
    w.ws.repair_run(run_id, setup_s=5, execution_s=90, cleanup_s=5, result=outcome)
    for _ in range(5):
        await w.cycle()
    expected = (
        [("run_failed", 1)]
        if outcome == "FAILED"
        else [
            ("run_succeeded", 1),
            ("job_recovered", 1),
        ]
    )
    assert w.of(run_id) == [("run_started", 0), ("run_failed", 0), ("run_started", 1), *expected]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", VERSIONS)
async def test_a_short_repair_of_an_old_run_is_found(
    make_watch: WatchFactory, version: str, order: str
) -> None:
    """A run that failed hours ago (far behind the completed walk, a full page of newer
    runs ahead of it) is repaired and fails again between two cycles: the reconciliation
    sweep (default interval, 10 min) finds it within its interval plus one sweep, and it
    pages once as repair 1."""
    w = await make_watch(version=version, order=order)
    job = w.ws.create_job("nightly-etl")
    other = w.ws.create_job("chatty")
    run_id = w.ws.start_run(job, setup_s=5, execution_s=40, cleanup_s=5, result="FAILED")
    await w.cycle()
    await w.cycle()
    for _ in range(4):  # two hours of other, newer runs: more than a page on every version
        short(w.ws, other, 40)
        await w.cycle(1800)
    assert w.of(run_id)[-1] == ("run_failed", 0)
    w.ws.repair_run(run_id, setup_s=0, execution_s=3, cleanup_s=0, result="FAILED")
    cycles = 0
    while w.of(run_id)[-1] != ("run_failed", 1):
        cycles += 1
        # interval (20 cycles) + one sweep (about 170 runs: 2 cycles at 5 pages)
        assert cycles <= 22, "the repair was never reported"
        await w.cycle()
    for _ in range(5):
        await w.cycle()
    assert w.of(run_id) == [("run_started", 0), ("run_failed", 0), ("run_failed", 1)]


# -- 2. runs born blocked ---------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("hold", ["BLOCKED", "WAITING_FOR_RETRY"])
async def test_a_run_born_blocked_that_ends_long_after_is_reported(
    make_watch: WatchFactory, version: str, order: str, hold: str
) -> None:
    """A run born BLOCKED (or WAITING_FOR_RETRY), which runs/list?active_only leaves out,
    ends two hours later, after more than a page of newer short runs: its failure pages."""
    w = await make_watch(version=version, order=order)
    job = w.ws.create_job("downstream")
    other = w.ws.create_job("chatty")
    run_id = w.ws.start_run(job, hold_state=hold, result="FAILED")
    await w.cycle()
    for _ in range(4):
        short(w.ws, other, 40)
        await w.cycle(1800)
    w.ws.force(run_id, "TERMINATED", "FAILED")
    # Within the sweep's interval (20 cycles) and one sweep: 5 pages a cycle (min_pages),
    # about 170 runs, 2 cycles on 2.1.
    cycles = 0
    while not w.of(run_id):
        cycles += 1
        assert cycles <= 22, "the run's failure was never reported"
        await w.cycle()
    for _ in range(3):
        await w.cycle()
    assert [t for t, _ in w.of(run_id)] == ["run_failed"]


# -- 3. catch-up after a downtime longer than max_catchup --------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("version", VERSIONS)
async def test_catch_up_reads_past_a_full_page_ahead_of_a_straddling_run(
    make_watch: WatchFactory, version: str, order: str
) -> None:
    """Down for three hours with max_catchup one hour: a run that started before the
    catch-up floor and failed after it is reported by the first cycle back, although a
    full page of newer runs that ended before the floor sorts ahead of it; those are not."""
    # Without the sweep, which would find it too (later): this is the walk's own duty.
    w = await make_watch(
        version=version,
        order=order,
        startup={"max_catchup": 3600},
        reconcile={"enabled": False},
    )
    job = w.ws.create_job("slow")
    other = w.ws.create_job("chatty")
    await w.cycle()
    await w.stop()
    w.clock.advance(600)
    straddling = w.ws.start_run(job, setup_s=0, execution_s=2.5 * 3600, result="FAILED")
    w.clock.advance(60)
    ahead = short(w.ws, other, 70, seconds=60)
    w.clock.advance(3 * 3600)
    await w.start()
    await w.cycle()
    assert [t for t, _ in w.of(straddling)] == ["run_failed"]
    assert not any(e.run.run_id in ahead for e in w.events)


# -- 4. first start ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_first_start_with_failing_first_cycles_reports_runs_ended_meanwhile(
    make_watch: WatchFactory, version: str
) -> None:
    """The watcher starts with a rejected token, then the API answers 503 for a while;
    runs end meanwhile. Everything that ended after the start pages once the API answers;
    what ended before the start stays history."""
    w = await make_watch(version=version)
    job = w.ws.create_job("etl")
    before = w.ws.start_run(job, start_ms=w.ws.now_ms() - 600_000, execution_s=60, result="FAILED")
    w.sim.tokens.clear()
    meanwhile = []
    for _ in range(3):
        meanwhile.append(w.ws.start_run(job, setup_s=0, execution_s=10, result="FAILED"))
        with pytest.raises(Exception):  # noqa: B017, PT011 - any failure of the cycle
            await w.cycle()
    w.sim.tokens.add(TOKEN)
    await w.cycle()
    for run_id in meanwhile:
        assert [t for t, _ in w.of(run_id)] == ["run_failed"]
    assert w.of(before) == []


async def test_a_recovery_answers_only_an_alerted_failure(make_watch: WatchFactory) -> None:
    """A failure recorded as history (before the start) pages nobody, so the job's next
    success is not announced as a recovery; after a paged failure it is."""
    w = await make_watch()
    job = w.ws.create_job("etl")
    w.ws.start_run(job, start_ms=w.ws.now_ms() - 600_000, execution_s=60, result="FAILED")
    await w.cycle()
    ok = w.ws.start_run(job, setup_s=0, execution_s=10)
    await w.cycle()
    assert [t for t, _ in w.of(ok)] == ["run_succeeded"]
    failed = w.ws.start_run(job, setup_s=0, execution_s=10, result="FAILED")
    await w.cycle()
    fixed = w.ws.start_run(job, setup_s=0, execution_s=10)
    await w.cycle()
    assert [t for t, _ in w.of(failed)] == ["run_failed"]
    assert [t for t, _ in w.of(fixed)] == ["run_succeeded", "job_recovered"]


# -- 5. a rule added just before the run ends ---------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_rule_added_just_before_the_run_ends_is_applied(
    make_watch: WatchFactory, version: str
) -> None:
    """The job's settings are cached for job_settings_ttl, but a run's end is judged with
    the settings as they are: a RUN_DURATION_SECONDS rule added while the run was going
    (its settings cached) breaches on the finished run, and the breach's incident is
    resolved at once: its run has ended."""
    w = await make_watch(version=version, job_settings_ttl=3600)
    job = w.ws.create_job("etl")
    run_id = w.ws.start_run(job, setup_s=0, execution_s=600, cleanup_s=0)
    await w.cycle()
    await w.cycle(300)
    w.ws.jobs[job].settings["health"] = {
        "rules": [{"metric": "RUN_DURATION_SECONDS", "op": "GREATER_THAN", "value": 120}]
    }
    await w.cycle(400)
    assert [t for t, _ in w.of(run_id)] == [
        "run_started",
        "run_duration_exceeded",
        "run_succeeded",
        "incident_resolved",
    ]


# -- 6. one bad item ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_poisoned_run_among_fifty_is_reported_once_and_the_rest_alert(
    make_watch: WatchFactory, version: str
) -> None:
    """Fifty runs fail; one of them the API answers in a shape the watcher cannot read. The
    fifty others page in the first cycle, the bad one is reported once (run_unreadable)
    after report_unreadable_after cycles, and a lone surrogate in a job name is repaired,
    not rejected."""
    w = await make_watch(version=version, report_unreadable_after=3)
    jobs = [w.ws.create_job(f"job-{i}") for i in range(10)]
    w.ws.poison_job(jobs[1], {"settings": {"name": "bad \ud800 name"}})
    runs = [
        w.ws.start_run(jobs[i % 10], setup_s=0, execution_s=5, result="FAILED") for i in range(51)
    ]
    w.ws.poison_run(runs[7], {"start_time": "yesterday"})
    await w.cycle()
    healthy = [r for r in runs if r != runs[7]]
    assert all([t for t, _ in w.of(r)] == ["run_failed"] for r in healthy)
    assert w.of(runs[7]) == []
    named = [e.job.name for e in w.events if e.job.job_id == jobs[1]]
    assert named
    assert all(name == "bad \ufffd name" for name in named)
    for _ in range(5):
        await w.cycle()
    assert w.of(runs[7]) == [("run_unreadable", 0)]
    [report] = [e for e in w.events if e.run.run_id == runs[7]]
    assert report.detail
    assert "yesterday" not in report.detail
    assert report.job.job_id == jobs[7 % 10]


async def test_a_repair_says_so_in_every_rendering(make_watch: WatchFactory) -> None:
    """The repair's failure names the repair in the title (subjects and chat headers), in
    the email, Slack, Teams and console bodies, and as `repair` in the watcher payload."""
    w = await make_watch()
    job = w.ws.create_job("nightly-etl")
    run_id = w.ws.start_run(job, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
    await w.cycle()
    w.ws.repair_run(run_id, setup_s=0, execution_s=10, cleanup_s=0, result="FAILED")
    await w.cycle()
    [event] = [e for e in w.events if e.repair == 1]
    assert title(event) == "nightly-etl repair 1 FAILED"
    assert watcher_payload(event)["repair"] == 1
    assert watcher_payload(w.events[0])["repair"] == 0
    flavours: list[tuple[str, Flavour]] = [
        ("email.txt.j2", "text"),
        ("slack.md.j2", "slack"),
        ("teams.md.j2", "markdown"),
        ("console.txt.j2", "text"),
    ]
    for name, flavour in flavours:
        rendered = Template(name, flavour=flavour, override=None, field="t").render(event)
        assert "repair" in rendered, name


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_unreadable_job_under_a_tag_filter_still_has_its_runs_watched(
    make_watch: WatchFactory, version: str
) -> None:
    """Only tier-1 jobs are watched, and one tier-1 job's settings cannot be read: each of
    its failing runs still pages (fail open), and the job is reported once, after it was
    unreadable in report_unreadable_after (3) cycles."""
    w = await make_watch(version=version, jobs={"include": {"tags": {"tier": "1"}}})
    job = w.ws.create_job("etl", tags={"tier": "1"})
    w.ws.create_job("other", tags={"tier": "2"})
    w.ws.poison_job(job, {"settings": {"max_retries": "many"}})
    runs = []
    for _ in range(4):
        runs.append(w.ws.start_run(job, setup_s=0, execution_s=10, result="FAILED"))
        await w.cycle()
    assert all([t for t, _ in w.of(r)] == ["run_failed"] for r in runs)
    assert [e.type.value for e in w.events if e.run.run_id == 0] == ["job_unreadable"]


async def test_an_absurd_timestamp_is_one_unreadable_run_not_a_stopped_workspace(
    make_watch: WatchFactory,
) -> None:
    """A run whose end_time is past the year 9999 cannot become a datetime (or a SQLite
    integer if larger): it is reported as unreadable, and the other runs page."""
    w = await make_watch()
    job = w.ws.create_job("etl")
    bad, good = (w.ws.start_run(job, setup_s=0, execution_s=5, result="FAILED") for _ in range(2))
    w.ws.poison_run(bad, {"end_time": 10**17})
    for _ in range(4):
        await w.cycle()
    assert [t for t, _ in w.of(good)] == ["run_failed"]
    assert [t for t, _ in w.of(bad)] == ["run_unreadable"]
