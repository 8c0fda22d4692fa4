"""A failure storm through a grouping route: 200 failures in 60 s (simulated) across 40 jobs
of a simulated workspace, routed with `group_by: [workspace]` to a real webhook receiver.

In-process, in simulated time, the receiver gets exactly the digests group_wait and
group_interval make of the poll cycles, the failures in them each once. As a real process
(`watcher run`, real time, the same storm with shorter waits) SIGKILLed three times during
the storm and restarted from the same database, no failure is lost, and the only duplicates
are the documented ones: a digest cut off mid-send is re-sent whole, same members, same
digest id (webhook-id)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import TOKEN, ReceiverFactory
from tests.daemon_helpers import WAIT, WatcherProcess, daemon_env, wait_until, write_config
from tests.notify_fixtures import Receiver, Request
from tests.wiring import daemon
from watcher.app import run_once
from watcher.clock import ManualClock
from watcher.config import Config
from watcher.events import EventType, event_id
from watcher.incidents import derived_id
from watcher.simulator import Simulator

WORKSPACE = "sim"
JOBS = 40
FAILURES = 200
SPACING = 0.3
"""Seconds between two failures: 200 of them end from 0.15 s to 59.85 s into the storm."""
POLL = 5.0
GROUP_WAIT = 30.0
GROUP_INTERVAL = 20.0


def create_jobs(sim: Simulator) -> list[int]:
    return [sim.workspace.create_job(f"storm-{i:02d}") for i in range(JOBS)]


def start_storm(sim: Simulator, jobs: Sequence[int]) -> dict[str, float]:
    """Start the storm's runs now; event id of each failure -> seconds from now to its
    end (never a multiple of POLL: no failure ends at the instant of a poll)."""
    ends: dict[str, float] = {}
    for k in range(FAILURES):
        end = SPACING * k + SPACING / 2
        run_id = sim.workspace.start_run(
            jobs[k % JOBS], setup_s=0, execution_s=end, cleanup_s=0, result="FAILED"
        )
        ends[event_id(WORKSPACE, run_id, str(EventType.RUN_FAILED))] = end
    return ends


def routing(url: str, *, group_wait: float, group_interval: float) -> dict[str, Any]:
    """The webhook channel and the one grouping route, as configuration sections."""
    return {
        "channels": {"hook": {"type": "webhook", "url": f"{url}/hook", "timeout": 10}},
        "routes": [
            {
                "match": {"event_types": ["run_failed"]},
                "channels": ["hook"],
                "group_by": ["workspace"],
                "group_wait": group_wait,
                "group_interval": group_interval,
            }
        ],
    }


@dataclass(frozen=True)
class Message:
    """One request the receiver got: its webhook-id, the event ids in it, when."""

    id: str
    members: tuple[str, ...]
    at: float

    @classmethod
    def of(cls, request: Request) -> Message:
        body = request.json()
        if body["type"] == "digest":
            members = tuple(e["id"] for e in body["events"])
            assert body["count"] == len(members)
            assert body["group"] == {"workspace": WORKSPACE}
        else:
            members = (body["id"],)
        return cls(request.headers["webhook-id"], members, request.at)


def messages(receiver: Receiver) -> list[Message]:
    return [Message.of(r) for r in receiver.requests]


def digest_id(members: Sequence[str]) -> str:
    """What the dispatcher names a digest of these members (an event alone: its id)."""
    return members[0] if len(members) == 1 else derived_id("digest", *sorted(members))


def digest_times(first_commit: float, last_commit: float) -> list[float]:
    """When the digests go out (seconds into the storm), polling every POLL seconds: the
    first member waits GROUP_WAIT, later members the next GROUP_INTERVAL tick after the
    last digest. Each digest carries the failures committed since the one before."""
    times = [first_commit + GROUP_WAIT]
    while times[-1] < last_commit:
        times.append(times[-1] + GROUP_INTERVAL)
    return times


async def test_a_storm_becomes_a_few_digests(
    tmp_path: Path, clock: ManualClock, sim: Simulator, make_receiver: ReceiverFactory
) -> None:
    """Polling every 5 s, the first failure is committed at 5 s: digests at 35 s (group
    wait), 55 s and 75 s (group interval), carrying the failures that ended by 35 s, by
    55 s and by 60 s: 117, 66 and 17 of them, each once, in commit order."""
    receiver = await make_receiver()
    jobs = create_jobs(sim)
    config = Config.model_validate(
        {
            "workspaces": [
                {
                    "name": WORKSPACE,
                    "host": sim.url,
                    "auth": {"type": "pat", "token": TOKEN},
                    "requests_per_second": 1000,
                    "poll_interval": POLL,
                }
            ],
            "store": {"path": str(tmp_path / "storm.db")},
            **routing(receiver.url, group_wait=GROUP_WAIT, group_interval=GROUP_INTERVAL),
        }
    )
    committed: dict[str, float] = {}
    async with daemon(config, clock) as built:
        await run_once(built)  # the first cycle: history, not news
        start = clock.time()
        ends = start_storm(sim, jobs)
        for _ in range(16):  # 80 s: the storm and its last digest
            sim.workspace.advance(POLL)
            for event in await run_once(built):
                if event.type is EventType.RUN_FAILED:
                    committed[event.id] = clock.time() - start
            await built.dispatcher.dispatch_due()
            await built.dispatcher.settle()
    assert committed.keys() == ends.keys()
    # Each failure is committed by the first poll after it ended.
    assert all(0 < at - ends[e] <= POLL for e, at in committed.items())
    times = digest_times(min(committed.values()), max(committed.values()))
    assert times == [35.0, 55.0, 75.0]
    got = messages(receiver)
    assert [m.at - start for m in got] == times
    previous = 0.0
    for message, at in zip(got, times, strict=True):
        expected = sorted(
            (e for e, c in committed.items() if previous < c <= at), key=lambda e: ends[e]
        )
        assert list(message.members) == expected  # oldest first
        assert message.id == digest_id(expected)
        previous = at
    assert [len(m.members) for m in got] == [117, 66, 17]


# -- the same storm, the daemon SIGKILLed during it ------------------------------------

LIVE_WAIT = 2.0
LIVE_INTERVAL = 6.0
"""Real seconds: longer than a restart (about 1.5 s), so a member that arrived while a
digest was cut off is not yet due when the digest is re-sent (it waits for the next)."""
START = float(int(time.time()))


class Storm:
    """The storm played against a real daemon process that the test kills and restarts."""

    def __init__(self, sim: Simulator, receiver: Receiver, config: Path, tmp_path: Path) -> None:
        self.sim = sim
        self.receiver = receiver
        self.config = config
        self.db = tmp_path / "storm.db"
        self.logs = tmp_path / "logs"
        self.process: WatcherProcess | None = None
        self.step = 0

    async def start(self) -> None:
        self.process = await WatcherProcess.start(
            "run", "-c", str(self.config), env=daemon_env(), logs=self.logs
        )
        await self.process.settle(self.sim, self.db)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.assert_running()
        await self.process.kill()

    async def advance(self, steps: int) -> None:
        """`steps` polls' worth of the storm, each committed before the next."""
        assert self.process is not None
        for _ in range(steps):
            self.sim.workspace.advance(POLL)
            await self.process.settle(self.sim, self.db)
            self.step += 1

    async def held(self, count: int) -> Message:
        """The `count`-th request, which the receiver holds."""
        await wait_until(
            lambda: len(self.receiver.requests) >= count,
            f"request {count} (a digest to hold)",
            limit=WAIT,
            context=self.context,
        )
        assert self.receiver.in_flight == 1, self.context()
        return messages(self.receiver)[count - 1]

    def release(self, hold: asyncio.Event) -> None:
        """Answer the held request (its sender is dead) and the next ones at once."""
        self.receiver.hold = None
        hold.set()

    def context(self) -> str:
        tail = self.process.tail() if self.process is not None else "(no daemon)"
        return f"storm step {self.step}, {len(self.receiver.requests)} requests\n{tail}"


def outbox(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
    finally:
        conn.close()
    return {str(status): int(count) for status, count in rows}


async def test_a_storm_survives_sigkills_mid_digest(
    tmp_path: Path, live_receiver: Receiver
) -> None:
    """Killed (1) while its first digest is in flight, (2) while the next members wait
    their group interval, (3) while the next digest is in flight, and restarted each
    time: the receiver ends with every failure, and each failure it got twice was in a
    digest cut off mid-send and re-sent whole: the same members, the same webhook-id."""
    clock = ManualClock(START)
    async with Simulator(clock=clock, tokens={TOKEN}) as sim:
        jobs = create_jobs(sim)
        config = write_config(
            tmp_path / "watcher.yaml",
            sim=sim,
            db=tmp_path / "storm.db",
            workspace={"requests_per_second": 1000},
            **routing(live_receiver.url, group_wait=LIVE_WAIT, group_interval=LIVE_INTERVAL),
        )
        storm = Storm(sim, live_receiver, config, tmp_path)
        first = asyncio.Event()
        live_receiver.hold = first
        await storm.start()
        try:
            expected = set(start_storm(sim, jobs))
            # (1) A third into the storm, the first digest (group_wait after the first
            # failure) is held by the receiver: kill the daemon with it in flight.
            await storm.advance(4)
            cut = await storm.held(1)
            await storm.kill()
            last = asyncio.Event()
            storm.release(first)
            await storm.start()
            await wait_until(lambda: len(live_receiver.requests) >= 2, "the re-sent digest")
            live_receiver.hold = last
            # (2) Mid-storm, the next failures waiting for the group interval (a digest
            # would be held, and counted here).
            await storm.advance(4)
            assert len(live_receiver.requests) == 2, storm.context()
            await storm.kill()
            await storm.start()
            await storm.advance(4)  # the storm's last 20 s
            # (3) The next digest, held: kill the daemon with it in flight.
            cut_last = await storm.held(3)
            await storm.kill()
            storm.release(last)
            await storm.start()

            def everything() -> bool:
                return {e for m in messages(live_receiver) for e in m.members} >= expected

            await wait_until(everything, "every failure delivered", context=storm.context)
            await wait_until(lambda: outbox(storm.db).get("pending", 0) == 0, "an empty outbox")
            assert storm.process is not None
            code, _ = await storm.process.terminate()
            assert code == 0, storm.context()
        finally:
            if storm.process is not None:
                await storm.process.kill()
    got = messages(live_receiver)
    assert {e for m in got for e in m.members} == expected
    assert outbox(storm.db) == {"delivered": FAILURES}
    for m in got:
        assert m.id == digest_id(m.members)
    # Each digest cut off mid-send arrived again next, whole, with the same id.
    resent = got[got.index(cut) + 1]
    assert (resent.id, resent.members) == (cut.id, cut.members)
    resent_last = got[got.index(cut_last) + 1]
    assert (resent_last.id, resent_last.members) == (cut_last.id, cut_last.members)
    # No other duplicate: distinct messages are disjoint, each failure in exactly one.
    distinct = {m.id: m.members for m in got}
    assert len(got) == len(distinct) + 2
    assert sum(len(members) for members in distinct.values()) == FAILURES
    # group_wait, then one digest per group interval: the storm's 60 s (simulated) are
    # played in about 3 s of real time, so the last digest is the second or, when the
    # restarts were slow, a third.
    assert 2 <= len(distinct) <= 3, [len(m) for m in distinct.values()]
