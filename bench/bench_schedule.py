"""Schedule benchmark: CPU time per poll cycle to evaluate the Quartz schedules of many jobs.

    .venv/bin/python bench/bench_schedule.py [--jobs 10000] [--cycles 240] [--interval 30]
        [--start 2026-03-08T08:00:00+00:00]

A seeded, realistic mix of expressions (mostly UI-made daily schedules with a seconds
value, then hourly, every-n-minutes, weekday, weekly, monthly and L / W / # ones) in eight
time zones. The default start walks the cycles over the 2026 spring change in the US zones.
Per cycle, for every job, three ways:

* stateless: whether a fire time fell in (previous cycle, this cycle] and the next
  expected fire time, from nothing but the two moments (`next_after(previous)`, then
  `next_after(now)` when one fell);
* cached: the same answers keeping each job's next fire time between cycles, so a job is
  evaluated again only once that time has passed (what a daemon would do);
* missed-run check: what a missed-run detector asks of every job each cycle
  (`next_after(now)`, `default_grace_seconds(now)`, `latest_at_or_before(now - grace)`).

Prints figures (CPU ms per cycle: mean, p95, max); asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise

from watcher.config import ExpectationsConfig
from watcher.databricks.models import Job
from watcher.domain import JobRecord
from watcher.expectations import check_jobs
from watcher.incidents import IncidentBook
from watcher.schedule import Schedule

ZONES = [
    ("UTC", 40),
    ("America/Los_Angeles", 12),
    ("America/New_York", 12),
    ("Europe/Berlin", 10),
    ("Europe/London", 8),
    ("Asia/Kolkata", 8),
    ("Australia/Sydney", 5),
    ("Asia/Tokyo", 5),
]


def _expression(rng: random.Random) -> str:
    s, m, h = rng.randrange(60), rng.randrange(60), rng.randrange(24)
    kinds: list[tuple[int, Callable[[], str]]] = [
        (40, lambda: f"{s} {m} {h} * * ?"),
        (15, lambda: f"0 {m} * * * ?"),
        (10, lambda: f"0 {rng.randrange(5)}/{rng.choice([5, 10, 15, 20, 30])} * * * ?"),
        (10, lambda: f"0 {m} {h} ? * MON-FRI"),
        (8, lambda: f"0 {m} {h} ? * {rng.choice(['SUN', 'MON', 'SAT', '2', '6'])}"),
        (5, lambda: f"0 {m} {h} {rng.randint(1, 28)} * ?"),
        (5, lambda: f"0 {m} {rng.randrange(12)},{12 + rng.randrange(12)} * * ?"),
        (2, lambda: f"0 {m} {h} L * ?"),
        (2, lambda: f"0 {m} {h} ? * {rng.randint(1, 7)}L"),
        (2, lambda: f"0 {m} {h} ? * {rng.randint(1, 7)}#{rng.randint(1, 4)}"),
        (1, lambda: f"0 {m} {h} {rng.randint(1, 28)}W * ?"),
    ]
    make = rng.choices([k for _, k in kinds], weights=[w for w, _ in kinds])[0]
    return make()


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    return (
        f"{name:<18} {statistics.fmean(samples):8.1f} ms mean  {p95:8.1f} ms p95  "
        f"{max(samples):8.1f} ms max per cycle"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=240)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--start", default="2026-03-08T08:00:00+00:00")
    args = parser.parse_args()
    rng = random.Random(14)
    zones = rng.choices([z for z, _ in ZONES], weights=[w for _, w in ZONES], k=args.jobs)
    expressions = [_expression(rng) for _ in range(args.jobs)]

    began = time.process_time()
    schedules = [Schedule.parse(e, z) for e, z in zip(expressions, zones, strict=True)]
    parse_ms = (time.process_time() - began) * 1000
    start = datetime.fromisoformat(args.start)
    step = timedelta(seconds=args.interval)
    moments = [start + step * i for i in range(args.cycles + 1)]

    stateless: list[float] = []
    fired_total = 0
    for previous, now in pairwise(moments):
        began = time.process_time()
        for schedule in schedules:
            due = schedule.next_after(previous)
            if due is not None and due <= now:
                fired_total += 1
                due = schedule.next_after(now)
        stateless.append((time.process_time() - began) * 1000)

    cached: list[float] = []
    upcoming = [s.next_after(moments[0]) for s in schedules]
    for now in moments[1:]:
        began = time.process_time()
        for i, schedule in enumerate(schedules):
            due = upcoming[i]
            if due is not None and due <= now:
                upcoming[i] = schedule.next_after(now)
        cached.append((time.process_time() - began) * 1000)

    # The watcher's own per-cycle check (watcher.expectations.check_jobs) of every job,
    # each of which starts its runs on time (so nothing is missed and no event is built).
    jobs = {
        i: Job.model_validate(
            {
                "job_id": i,
                "created_time": 0,
                "settings": {
                    "name": f"job-{i}",
                    "schedule": {"quartz_cron_expression": e, "timezone_id": z},
                },
            }
        )
        for i, (e, z) in enumerate(zip(expressions, zones, strict=True), start=1)
    }
    config = ExpectationsConfig()
    checks: list[float] = []
    reported = 0
    for now in moments[1:]:
        now_ms = int(now.timestamp() * 1000)
        records = {i: JobRecord(workspace="bench", job_id=i, last_start_ms=now_ms) for i in jobs}
        book = IncidentBook.of("bench", {})
        began = time.process_time()
        checked = check_jobs("bench", jobs, records, book, now_ms=now_ms, config=config)
        checks.append((time.process_time() - began) * 1000)
        reported += len(checked.events)

    print(
        f"{args.jobs} jobs, {len(set(expressions))} distinct expressions, "
        f"{args.cycles} cycles of {args.interval:g} s from {start.isoformat()}, "
        f"{fired_total} fire times passed"
    )
    print(f"parse all:         {parse_ms:8.1f} ms")
    print(_summary("stateless", stateless))
    print(_summary("cached", cached))
    print(_summary("check_jobs (the watcher's per-cycle check)", checks))
    print(f"events from check_jobs: {reported} (every job ran on time: expect 0)")


if __name__ == "__main__":
    main()
