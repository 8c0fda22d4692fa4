"""The tracker, table by table: every transition becomes exactly the events it should."""

from __future__ import annotations

from typing import Any

import pytest

from watcher.cycle import job_duration_rules
from watcher.databricks.models import JobSettings, Run
from watcher.domain import Category, RunRecord
from watcher.events import EventType, RuleRef, event_id
from watcher.tracker import Evaluation, JobContext, classify, evaluate

T0 = 1_700_000_000_000  # ms
WS = "prod"
JOB = JobContext(job_id=7, name="nightly-etl", tags={"team": "data"})


def run(
    life: str, result: str | None = None, *, start: int = T0, end: int = 0, **extra: Any
) -> Run:
    state: dict[str, Any] = {"life_cycle_state": life}
    if result is not None:
        state["result_state"] = result
    return Run.model_validate(
        {
            "run_id": 42,
            "job_id": 7,
            "run_name": "nightly-etl",
            "state": state,
            "start_time": start,
            "end_time": end,
            **extra,
        }
    )


def done(result: str | None, *, life: str = "TERMINATED", seconds: int = 60, **extra: Any) -> Run:
    return run(life, result, end=T0 + seconds * 1000, **extra)


def step(
    previous: RunRecord | None,
    observed: Run,
    *,
    job: JobContext = JOB,
    rules: list[RuleRef] | None = None,
    now: int = T0 + 10_000,
    **kwargs: Any,
) -> Evaluation:
    # The cycle plan resolves every rule of the run: the job's own, then the given ones.
    every_rule = [*job_duration_rules(job.settings), *(rules or [])]
    return evaluate(
        previous, observed, workspace=WS, job=job, rules=every_rule, now_ms=now, **kwargs
    )


def types(evaluation: Evaluation) -> list[str]:
    return [e.type.value for e in evaluation.events]


def settings(**fields: Any) -> JobSettings:
    return JobSettings.model_validate(fields)


# -- classification ------------------------------------------------------------------


def _status(state: str, code: str | None = None, kind: str | None = None) -> Run:
    """A run described only by the newer `status` object (no classic `state`)."""
    status: dict[str, Any] = {"state": state}
    if code is not None:
        status["termination_details"] = {"code": code, "type": kind}
    return Run.model_validate(
        {"run_id": 42, "start_time": T0, "end_time": T0 + 1 if code else 0, "status": status}
    )


@pytest.mark.parametrize(
    ("snapshot", "category", "raw"),
    [
        (run("QUEUED"), Category.ACTIVE, "QUEUED"),
        (run("PENDING"), Category.ACTIVE, "PENDING"),
        (run("RUNNING"), Category.ACTIVE, "RUNNING"),
        (run("TERMINATING", "SUCCESS"), Category.ACTIVE, "TERMINATING"),
        (run("BLOCKED"), Category.ACTIVE, "BLOCKED"),
        (run("WAITING_FOR_RETRY"), Category.ACTIVE, "WAITING_FOR_RETRY"),
        (done("SUCCESS"), Category.SUCCESS, "SUCCESS"),
        (done("SUCCESS_WITH_FAILURES"), Category.SUCCESS, "SUCCESS_WITH_FAILURES"),
        (done("FAILED"), Category.FAILURE, "FAILED"),
        (done("TIMEDOUT"), Category.FAILURE, "TIMEDOUT"),
        (
            done("MAXIMUM_CONCURRENT_RUNS_REACHED"),
            Category.FAILURE,
            "MAXIMUM_CONCURRENT_RUNS_REACHED",
        ),
        (done("UPSTREAM_FAILED"), Category.FAILURE, "UPSTREAM_FAILED"),
        (done("CANCELED"), Category.CANCELED, "CANCELED"),
        (done("UPSTREAM_CANCELED"), Category.CANCELED, "UPSTREAM_CANCELED"),
        (done("EXCLUDED"), Category.SKIPPED, "EXCLUDED"),
        (done("DISABLED"), Category.SKIPPED, "DISABLED"),
        (done(None, life="SKIPPED"), Category.SKIPPED, "SKIPPED"),
        (done(None, life="INTERNAL_ERROR"), Category.FAILURE, "INTERNAL_ERROR"),
        (done("FAILED", life="INTERNAL_ERROR"), Category.FAILURE, "INTERNAL_ERROR"),
        (done("EXPLODED_IN_A_NEW_WAY"), Category.FAILURE, "EXPLODED_IN_A_NEW_WAY"),
        (done(None), Category.FAILURE, "TERMINATED"),
        (done("SUCCESS", life="FROZEN"), Category.SUCCESS, "SUCCESS"),
        (done(None, life="FROZEN"), Category.FAILURE, "FROZEN"),
        (run("FROZEN"), Category.ACTIVE, "FROZEN"),
        (_status("RUNNING"), Category.ACTIVE, "RUNNING"),
        (_status("TERMINATED", "SUCCESS", "SUCCESS"), Category.SUCCESS, "SUCCESS"),
        (_status("TERMINATED", "USER_CANCELED", "SUCCESS"), Category.CANCELED, "CANCELED"),
        (
            _status("TERMINATED", "RUN_EXECUTION_ERROR", "CLIENT_ERROR"),
            Category.FAILURE,
            "RUN_EXECUTION_ERROR",
        ),
        (_status("TERMINATED", "SKIPPED", "SUCCESS"), Category.SKIPPED, "SKIPPED"),
        (
            _status("TERMINATED", "DRIVER_ERROR", "INTERNAL_ERROR"),
            Category.FAILURE,
            "INTERNAL_ERROR",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_classification(snapshot: Run, category: Category, raw: str) -> None:
    """Result and life-cycle states map to categories per docs/architecture.md §3 (run
    semantics); unknown values of a finished run fail, with the raw value kept; unknown
    active states stay active; without `state`, the newer `status` object decides."""
    assert classify(snapshot) == (category, raw)


# -- terminal events -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        (done("SUCCESS"), ["run_succeeded"]),
        (done("SUCCESS_WITH_FAILURES"), ["run_succeeded"]),
        (done("FAILED"), ["run_failed"]),
        (done("TIMEDOUT"), ["run_failed"]),
        (done("MAXIMUM_CONCURRENT_RUNS_REACHED"), ["run_failed"]),
        (done("UPSTREAM_FAILED"), ["run_failed"]),
        (done("CANCELED"), ["run_canceled"]),
        (done("UPSTREAM_CANCELED"), ["run_canceled"]),
        (done(None, life="SKIPPED"), ["run_skipped"]),
        (done(None, life="INTERNAL_ERROR"), ["run_failed"]),
        (done("SOMETHING_NEW"), ["run_failed"]),
    ],
)
def test_first_seen_terminal_yields_only_its_terminal_event(
    snapshot: Run, expected: list[str]
) -> None:
    """A run first seen finished gets its terminal event; its start is implied (no late
    run_started)."""
    evaluation = step(None, snapshot)
    assert types(evaluation) == expected
    assert evaluation.record.terminal
    (event,) = evaluation.events
    assert event.raw_state == classify(snapshot)[1]
    assert event.occurred_at.timestamp() * 1000 == snapshot.end_time


@pytest.mark.parametrize(
    "path",
    [
        ["QUEUED", "PENDING", "RUNNING", "TERMINATING", "TERMINATED"],
        ["QUEUED", "TERMINATED"],
        ["PENDING", "TERMINATED"],
        ["RUNNING", "INTERNAL_ERROR"],
        ["PENDING", "SKIPPED"],
    ],
    ids="->".join,
)
def test_life_cycle_paths_start_once_and_end_once(path: list[str]) -> None:
    """Whatever intermediate states a run skips, it starts once and ends once."""
    record: RunRecord | None = None
    seen: list[str] = []
    for life in path:
        if life in ("TERMINATED", "INTERNAL_ERROR", "SKIPPED"):
            snapshot = done("FAILED" if life == "TERMINATED" else None, life=life)
        else:
            snapshot = run(life)
        evaluation = step(record, snapshot)
        seen += types(evaluation)
        record = evaluation.record
    assert seen[0] == "run_started"
    assert seen.count("run_started") == 1
    assert len(seen) == 2
    assert seen[1] in ("run_failed", "run_skipped")
    # Once terminal, a record never changes again, whatever comes.
    again = step(record, done("SUCCESS"))
    assert (again.record, again.events) == (record, ())


def test_a_run_never_moves_backwards() -> None:
    """An older snapshot after a newer one changes nothing (offset paging and runs/get
    can return stale views)."""
    first = step(None, run("TERMINATING"))
    stale = step(first.record, run("PENDING"))
    assert stale.events == ()
    assert stale.record.life_cycle_state == "TERMINATING"
    assert stale.record == first.record
    # A stale runs/get of a finished run: its repair_history shows no repair.
    ended = step(first.record, done("FAILED")).record
    stale_get = step(ended, run("RUNNING", repair_history=[{"type": "ORIGINAL"}]))
    assert (stale_get.record, stale_get.events) == (ended, ())


# -- retries and notification settings -----------------------------------------------

LAST_ATTEMPT = {"notification_settings": {"alert_on_last_attempt": True}}
TASK_RETRIED_ONCE = {"tasks": [{"task_key": "main", "max_retries": 1, **LAST_ATTEMPT}]}
"""Job settings whose only task is retried once, alerting on its last attempt only."""


@pytest.mark.parametrize(
    ("job_settings", "result", "attempt", "expected"),
    [
        ({"max_retries": 2, **LAST_ATTEMPT}, "FAILED", 0, []),
        ({"max_retries": 2, **LAST_ATTEMPT}, "FAILED", 1, []),
        ({"max_retries": 2, **LAST_ATTEMPT}, "FAILED", 2, ["run_failed"]),
        ({"max_retries": 2}, "FAILED", 0, ["run_failed"]),
        ({"max_retries": -1, **LAST_ATTEMPT}, "FAILED", 9, []),
        ({"max_retries": 2, **LAST_ATTEMPT}, "TIMEDOUT", 0, ["run_failed"]),
        ({"max_retries": 2, "retry_on_timeout": True, **LAST_ATTEMPT}, "TIMEDOUT", 0, []),
        ({"max_retries": 2, **LAST_ATTEMPT}, "UPSTREAM_FAILED", 0, ["run_failed"]),
        ({"max_retries": 2, **LAST_ATTEMPT}, "SUCCESS", 0, ["run_succeeded"]),
        (TASK_RETRIED_ONCE, "FAILED", 0, ["run_failed"]),
        (TASK_RETRIED_ONCE, "FAILED", 1, ["run_failed"]),
    ],
    ids=[
        "last-attempt:first-of-3",
        "last-attempt:second-of-3",
        "last-attempt:last",
        "every-attempt",
        "infinite-retries",
        "timeout-not-retried",
        "timeout-retried",
        "upstream-never-retried",
        "success",
        "2.1-task-retries-are-inside-the-run",
        "2.1-task-retries-last",
    ],
)
def test_alert_on_last_attempt(
    job_settings: dict[str, Any], result: str, attempt: int, expected: list[str]
) -> None:
    """With alert_on_last_attempt, a failed attempt that job-level max_retries (API 2.0)
    will retry as a new run neither pages nor counts as the job's failure; the last
    attempt does, carrying its number. Task-level retries (2.1+) happen inside the job
    run, so a job run that ends failed always pages."""
    job = JobContext(job_id=7, name="nightly-etl", settings=settings(**job_settings))
    evaluation = step(None, done(result, attempt_number=attempt), job=job)
    assert types(evaluation) == expected
    assert evaluation.record.terminal
    if expected:
        assert evaluation.events[0].attempt_number == attempt
    else:
        assert evaluation.outcome is None
        # Nothing is emitted later for this run either.
        assert "terminal" in evaluation.record.emitted


@pytest.mark.parametrize(
    ("job_settings", "snapshot", "expected"),
    [
        (
            {"notification_settings": {"no_alert_for_skipped_runs": True}},
            done(None, life="SKIPPED"),
            [],
        ),
        (
            {"email_notifications": {"no_alert_for_skipped_runs": True}},
            done(None, life="SKIPPED"),
            [],
        ),
        ({"notification_settings": {"no_alert_for_canceled_runs": True}}, done("CANCELED"), []),
        (
            {"notification_settings": {"no_alert_for_canceled_runs": True}},
            done("UPSTREAM_CANCELED"),
            [],
        ),
        (
            {"notification_settings": {"no_alert_for_skipped_runs": True}},
            done("CANCELED"),
            ["run_canceled"],
        ),
        (
            {"notification_settings": {"no_alert_for_canceled_runs": True}},
            done("FAILED"),
            ["run_failed"],
        ),
        (
            {
                "tasks": [
                    {"task_key": "a", "notification_settings": {"no_alert_for_canceled_runs": True}}
                ]
            },
            done("CANCELED"),
            ["run_canceled"],
        ),
        ({}, done(None, life="SKIPPED"), ["run_skipped"]),
    ],
)
def test_skipped_and_canceled_suppression(
    job_settings: dict[str, Any], snapshot: Run, expected: list[str]
) -> None:
    """Job-level no_alert_for_skipped_runs / no_alert_for_canceled_runs hold back exactly
    their events; a task's own flag governs task notifications, not the job's events."""
    job = JobContext(job_id=7, settings=settings(**job_settings))
    assert types(step(None, snapshot, job=job)) == expected


# -- duration rules ------------------------------------------------------------------

HEALTH_100 = {
    "health": {"rules": [{"metric": "RUN_DURATION_SECONDS", "op": "GREATER_THAN", "value": 100}]}
}


def test_job_duration_rule_breaches_once_while_running() -> None:
    """An active run older than the job's RUN_DURATION_SECONDS value breaches once, at
    the moment it crossed the threshold, with the rule and the observed age."""
    job = JobContext(job_id=7, name="etl", settings=settings(**HEALTH_100))
    first = step(None, run("RUNNING"), job=job, now=T0 + 50_000)
    assert types(first) == ["run_started"]
    second = step(first.record, run("RUNNING"), job=job, now=T0 + 150_000)
    assert types(second) == ["run_duration_exceeded"]
    (event,) = second.events
    assert event.rule is not None
    assert (event.rule.name, event.rule.value, event.rule.source) == ("job", 100, "job")
    assert event.observed_seconds == 150
    assert event.occurred_at.timestamp() * 1000 == T0 + 100_000
    third = step(second.record, done("SUCCESS", seconds=300), job=job, now=T0 + 400_000)
    assert types(third) == ["run_succeeded"]


def test_finished_run_over_its_limit_breaches_when_first_seen() -> None:
    """A run first seen finished after exceeding its limit still raises the breach."""
    job = JobContext(job_id=7, settings=settings(**HEALTH_100))
    assert sorted(types(step(None, done("SUCCESS", seconds=101), job=job))) == [
        "run_duration_exceeded",
        "run_succeeded",
    ]
    assert types(step(None, done("SUCCESS", seconds=100), job=job)) == ["run_succeeded"]


def test_config_and_task_rules_each_breach_once() -> None:
    """Config rules and task-level rules are separate rules, each breaching once."""
    job = JobContext(
        job_id=7,
        settings=settings(
            tasks=[
                {"task_key": "load", "health": HEALTH_100["health"]},
                {
                    "task_key": "other",
                    "health": {
                        "rules": [
                            {"metric": "STREAMING_BACKLOG_BYTES", "op": "GREATER_THAN", "value": 1}
                        ]
                    },
                },
            ]
        ),
    )
    config_rule = RuleRef(name="config:slow", value=30, source="config")
    tasks = [
        {
            "task_key": "load",
            "start_time": T0 + 10_000,
            "end_time": 0,
            "state": {"life_cycle_state": "RUNNING"},
        },
        {
            "task_key": "other",
            "start_time": T0,
            "end_time": 0,
            "state": {"life_cycle_state": "RUNNING"},
        },
    ]
    first = step(None, run("RUNNING", tasks=tasks), job=job, rules=[config_rule], now=T0 + 60_000)
    assert types(first) == ["run_started", "run_duration_exceeded"]
    assert first.events[1].rule == config_rule
    second = step(
        first.record, run("RUNNING", tasks=tasks), job=job, rules=[config_rule], now=T0 + 120_000
    )
    assert [(e.type.value, e.rule.name if e.rule else None) for e in second.events] == [
        ("run_duration_exceeded", "task:load")
    ]
    assert second.events[0].observed_seconds == 110
    ids = {e.id for e in first.events + second.events}
    assert len(ids) == 3


# -- recovery ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_outcome", "last_end", "snapshot", "expected", "outcome"),
    [
        ("failure", T0, done("SUCCESS"), ["run_succeeded", "job_recovered"], "success"),
        (
            "failure",
            T0,
            done("SUCCESS_WITH_FAILURES"),
            ["run_succeeded", "job_recovered"],
            "success",
        ),
        ("success", T0, done("SUCCESS"), ["run_succeeded"], "success"),
        (None, None, done("SUCCESS"), ["run_succeeded"], "success"),
        ("failure", T0 + 999_000, done("SUCCESS"), ["run_succeeded"], "success"),
        ("failure", T0, done("FAILED"), ["run_failed"], "failure"),
        ("failure", T0, done("CANCELED"), ["run_canceled"], None),
    ],
    ids=[
        "after-failure",
        "with-failures-counts",
        "after-success",
        "first-ever",
        "older-than-last-failure",
        "still-failing",
        "canceled-settles-nothing",
    ],
)
def test_recovery(
    last_outcome: Any, last_end: int | None, snapshot: Run, expected: list[str], outcome: Any
) -> None:
    """The first success after failures is a job_recovered (the resolve signal), unless
    it is older than the failure it would resolve."""
    job = JobContext(job_id=7, last_outcome=last_outcome, last_outcome_end_time=last_end)
    evaluation = step(None, snapshot, job=job)
    assert types(evaluation) == expected
    assert evaluation.outcome == outcome


# -- backfill and ids ----------------------------------------------------------------


def test_transitions_before_the_watcher_started_are_recorded_silently() -> None:
    """Transitions before `history_before_ms` (the instant the watcher started) are
    recorded with their events marked emitted, so they never page later; an active run
    still alerts when it finishes, and a silent failure settles no job outcome (so no
    recovery answers it)."""
    started = T0 + 3_600_000
    quiet = step(None, done("FAILED"), history_before_ms=started)
    assert quiet.events == ()
    assert quiet.record.backfill
    assert quiet.record.terminal
    assert quiet.outcome is None
    assert step(None, done("SUCCESS"), history_before_ms=started).outcome == "success"
    loud = step(None, done("FAILED"), alert_on_history=True, history_before_ms=started)
    assert types(loud) == ["run_failed"]
    assert loud.events[0].backfill
    active = step(None, run("RUNNING"), history_before_ms=started)
    assert active.events == ()
    finished = step(active.record, done("FAILED", seconds=7200), history_before_ms=started)
    assert types(finished) == ["run_failed"]
    assert not finished.events[0].backfill
    # A run breaching its duration rule right now is news, not history.
    job = JobContext(job_id=7, settings=settings(**HEALTH_100))
    late = step(None, run("RUNNING"), job=job, now=T0 + 500_000, history_before_ms=started)
    assert types(late) == ["run_duration_exceeded"]
    old = step(None, done("SUCCESS", seconds=500), job=job, history_before_ms=started)
    assert old.events == ()


def test_a_transition_after_the_start_is_news_whichever_cycle_sees_it_first() -> None:
    """First start by time, not by cycle: a run that ended after the watcher started pages
    even if no cycle saw it before (the first cycles failed); one that ended before does not."""
    started = T0 + 30_000
    assert types(step(None, done("FAILED", seconds=31), history_before_ms=started)) == [
        "run_failed"
    ]
    assert step(None, done("FAILED", seconds=29), history_before_ms=started).events == ()


def test_event_ids_are_deterministic_and_carry_the_snapshot() -> None:
    """The same transition always gets the same id (workspace, run, type, rule), and the
    event carries the job's name and tags and the full run snapshot."""
    a = step(None, done("FAILED")).events[0]
    b = step(None, done("FAILED")).events[0]
    assert a.id == b.id == event_id(WS, 42, EventType.RUN_FAILED)
    assert event_id(WS, 42, EventType.RUN_FAILED) != event_id("staging", 42, EventType.RUN_FAILED)
    assert event_id(WS, 42, "run_duration_exceeded", "job") != event_id(
        WS, 42, "run_duration_exceeded", "config:x"
    )
    assert (a.job.name, a.job.tags, a.run.run_id) == ("nightly-etl", {"team": "data"}, 42)


# -- repairs ---------------------------------------------------------------------------

REPAIR_AT = T0 + 600_000


def repaired(
    life: str, result: str | None = None, *, end: int = 0, history: int | None = None
) -> Run:
    """Run 42 seen again after a repair started at REPAIR_AT: its re-run task started then;
    `history` repairs in its repair_history (None: no history sent, as lists do)."""
    extra: dict[str, Any] = {
        "tasks": [
            {"task_key": "load", "start_time": T0, "end_time": T0 + 60_000},
            {"task_key": "main", "start_time": REPAIR_AT, "end_time": end},
        ]
    }
    if history is not None:
        extra["repair_history"] = [{"type": "ORIGINAL", "start_time": T0}] + [
            {"type": "REPAIR", "id": 900 + n, "start_time": REPAIR_AT} for n in range(history)
        ]
    return run(life, result, end=end, **extra)


def failed_record() -> RunRecord:
    return step(None, done("FAILED")).record


@pytest.mark.parametrize("history", [None, 1], ids=["counted-locally", "repair-history"])
def test_a_repair_that_fails_again_pages_again_with_its_own_id(history: int | None) -> None:
    """A repaired run re-runs under the same run_id: seen active again, its record reopens
    as repair 1, and the repair's failure is an event of its own (a new id), not a
    duplicate of the original failure that the outbox would drop."""
    original = step(None, done("FAILED"))
    reopened = step(original.record, repaired("RUNNING", history=history), now=REPAIR_AT + 5_000)
    assert types(reopened) == ["run_started"]
    assert reopened.record.repair == 1
    assert not reopened.record.terminal
    assert reopened.record.repair_start == REPAIR_AT
    end = REPAIR_AT + 60_000
    again = step(reopened.record, repaired("TERMINATED", "FAILED", end=end, history=history))
    assert types(again) == ["run_failed"]
    failure = again.events[0]
    assert failure.repair == 1
    assert failure.id == event_id(WS, 42, EventType.RUN_FAILED, repair=1)
    assert failure.id != original.events[0].id
    assert again.outcome == "failure"
    # And it stays settled: the same snapshot again changes nothing.
    same = step(again.record, repaired("TERMINATED", "FAILED", end=end, history=history))
    assert (same.record, same.events) == (again.record, ())


def test_a_short_repair_seen_only_finished_is_reported() -> None:
    """A repair that started and ended between two cycles shows up as a later end time
    (lists carry no repair_history): it is repair 1, and its success recovers the job."""
    job = JobContext(
        job_id=7, name="nightly-etl", last_outcome="failure", last_outcome_end_time=T0 + 60_000
    )
    end = REPAIR_AT + 30_000
    fixed = step(failed_record(), repaired("TERMINATED", "SUCCESS", end=end), job=job)
    assert types(fixed) == ["run_succeeded", "job_recovered"]
    assert {e.repair for e in fixed.events} == {1}
    assert fixed.outcome == "success"
    assert fixed.record.repair == 1


def test_repair_history_gives_the_repair_number() -> None:
    """With repair_history (runs/get), the repair number is Databricks' own, even when a
    repair in between was never seen; a history with no new repair reopens nothing."""
    seen = step(failed_record(), repaired("RUNNING", history=3))
    assert seen.record.repair == 3
    assert seen.events[0].id == event_id(WS, 42, EventType.RUN_STARTED, repair=3)
    no_news = step(seen.record, repaired("TERMINATED", "FAILED", end=REPAIR_AT + 1, history=3))
    assert types(no_news) == ["run_failed"]
    settled = step(no_news.record, repaired("TERMINATED", "FAILED", end=REPAIR_AT + 1, history=3))
    assert settled.events == ()


def test_duration_rules_of_a_repair_count_from_the_repair() -> None:
    """A repair's run rule counts from the repair's start, not the original start (which
    would breach at once); a task rule is not measured again for a task the repair did
    not re-run; one the repair re-ran is."""
    job = JobContext(
        job_id=7,
        settings=settings(
            health={
                "rules": [{"metric": "RUN_DURATION_SECONDS", "op": "GREATER_THAN", "value": 100}]
            },
            tasks=[
                {
                    "task_key": k,
                    "health": {
                        "rules": [
                            {"metric": "RUN_DURATION_SECONDS", "op": "GREATER_THAN", "value": 30}
                        ]
                    },
                }
                for k in ("load", "main")
            ],
        ),
    )
    original = step(None, done("FAILED", seconds=200), job=job, now=T0 + 200_000)
    assert types(original).count("run_duration_exceeded") == 1  # the run rule; tasks lack times
    early = step(original.record, repaired("RUNNING"), job=job, now=REPAIR_AT + 20_000)
    assert types(early) == ["run_started"]
    late = step(early.record, repaired("RUNNING"), job=job, now=REPAIR_AT + 101_000)
    assert sorted(e.rule.name for e in late.events if e.rule) == ["job", "task:main"]
    assert {e.repair for e in late.events} == {1}


def test_a_recovery_is_named_after_the_failure_it_answers() -> None:
    """job_recovered's id is the failure's (run and repair), not the success's: whichever
    success is seen first (one found late by the sweep, say), the recovery is one event;
    the next failure of the same run, a repair, gets a recovery of its own."""
    failing = JobContext(
        job_id=7,
        name="nightly-etl",
        last_outcome="failure",
        last_outcome_end_time=T0,
        last_outcome_run_id=41,
    )
    a = step(None, done("SUCCESS"), job=failing).events[-1]
    b = step(None, done("SUCCESS", run_id=43), job=failing).events[-1]
    assert a.type is b.type is EventType.JOB_RECOVERED
    assert a.id == b.id == event_id(WS, 41, EventType.JOB_RECOVERED)
    after_repair = JobContext(
        job_id=7,
        last_outcome="failure",
        last_outcome_end_time=T0,
        last_outcome_run_id=41,
        last_outcome_repair=1,
    )
    c = step(None, done("SUCCESS"), job=after_repair).events[-1]
    assert c.id == event_id(WS, 41, EventType.JOB_RECOVERED, repair=1) != a.id


def test_a_failure_found_after_a_later_success_pages_and_is_resolved_at_once() -> None:
    """A failure found late (the sweep) that ended before the job's latest success pages,
    and is recovered from at once, with the id a recovery seen in time order would have."""
    ok_since = JobContext(
        job_id=7, last_outcome="success", last_outcome_end_time=T0 + 120_000, last_outcome_run_id=43
    )
    late = step(None, done("FAILED"), job=ok_since)
    assert types(late) == ["run_failed", "job_recovered"]
    assert late.events[1].id == event_id(WS, 42, EventType.JOB_RECOVERED)
    assert late.events[1].occurred_at.timestamp() * 1000 == T0 + 120_000
    assert late.outcome == "failure"


def test_a_snapshot_older_than_the_repair_changes_nothing() -> None:
    """Once a run is reopened as repair 1, a stale snapshot of its original end (ended
    before the repair started) is ignored: no second page for the original failure, and
    the real repair's end is still repair 1."""
    reopened = step(failed_record(), repaired("RUNNING"), now=REPAIR_AT + 5_000)
    stale = step(reopened.record, done("FAILED"))
    assert (stale.record, stale.events) == (reopened.record, ())
    real = step(reopened.record, repaired("TERMINATED", "FAILED", end=REPAIR_AT + 9_000))
    assert [(e.type.value, e.repair) for e in real.events] == [("run_failed", 1)]


def test_a_phantom_repair_is_undone_by_the_repair_history() -> None:
    """A stale list reopened a finished run (no repair_history to check then); runs/get's
    history then shows no repair: the record is finished again at repair 0 with nothing
    sent, and a later real repair is repair 1 and pages."""
    phantom = step(failed_record(), repaired("RUNNING"), now=REPAIR_AT + 5_000)
    assert phantom.record.repair == 1
    undone = step(phantom.record, done("FAILED", repair_history=[{"type": "ORIGINAL"}]))
    assert undone.events == ()
    assert (undone.record.terminal, undone.record.repair) == (True, 0)
    real = step(undone.record, repaired("TERMINATED", "FAILED", end=REPAIR_AT + 9_000, history=1))
    assert [(e.type.value, e.repair) for e in real.events] == [("run_failed", 1)]


# -- stuck before running ------------------------------------------------------------------


def test_a_run_waiting_too_long_is_stuck_once_per_state() -> None:
    """QUEUED for longer than the threshold: run_stuck once (with the time waited and the
    queue reason); PENDING next, counted from when a cycle first saw it: stuck again once;
    RUNNING: never."""
    queued = run("QUEUED", state={"life_cycle_state": "QUEUED", "queue_reason": "Waiting"})
    first = step(None, queued, now=T0 + 60_000, stuck_after_s=600)
    assert types(first) == ["run_started"]
    assert first.record.state_since == T0
    late = step(first.record, queued, now=T0 + 601_000, stuck_after_s=600)
    (stuck,) = late.events
    assert stuck.type is EventType.RUN_STUCK
    assert stuck.raw_state == "QUEUED"
    assert stuck.observed_seconds == 601
    assert stuck.detail == "Waiting"
    assert stuck.occurred_at.timestamp() * 1000 == T0 + 600_000
    assert stuck.id == event_id(WS, 42, "run_stuck", "QUEUED")
    assert types(step(late.record, queued, now=T0 + 900_000, stuck_after_s=600)) == []
    pending = run("PENDING")
    moved = step(late.record, pending, now=T0 + 1_000_000, stuck_after_s=600)
    assert types(moved) == []
    assert moved.record.state_since == T0 + 1_000_000
    again = step(moved.record, pending, now=T0 + 1_700_000, stuck_after_s=600)
    assert [(e.type.value, e.raw_state) for e in again.events] == [("run_stuck", "PENDING")]
    running = step(again.record, run("RUNNING"), now=T0 + 9_000_000, stuck_after_s=600)
    assert types(running) == []


@pytest.mark.parametrize(
    ("observed", "threshold", "expected"),
    [
        pytest.param(run("QUEUED"), 0, [], id="threshold 0: never stuck"),
        pytest.param(run("RUNNING"), 60, [], id="running is not waiting"),
        pytest.param(run("BLOCKED"), 60, ["run_stuck"], id="blocked"),
        pytest.param(
            run(
                "QUEUED",
                status={
                    "state": "QUEUED",
                    "queue_details": {"code": "ACTIVE_RUNS_LIMIT_REACHED", "message": "Limit"},
                },
            ),
            60,
            ["run_stuck"],
            id="2.2 queue details",
        ),
    ],
)
def test_stuck_thresholds_and_states(observed: Run, threshold: int, expected: list[str]) -> None:
    """A run first seen waiting since its start an hour ago (news, not history: it is
    stuck now)."""
    evaluation = step(
        None,
        observed,
        now=T0 + 3_600_000,
        stuck_after_s=threshold,
        history_before_ms=T0 + 3_500_000,
    )
    assert [t for t in types(evaluation) if t != "run_started"] == expected
    for event in evaluation.events:
        if event.type is EventType.RUN_STUCK and observed.status is not None:
            assert event.detail == "ACTIVE_RUNS_LIMIT_REACHED: Limit"


def test_stuck_time_counts_from_the_start_where_nothing_better_is_known() -> None:
    """A record stored before the watcher kept `state_since`, a repair seen for the first
    time, and a run the API describes by its `status` object only: time in the state
    counts from the run's (or the repair's) start, so a run queued for 3 h is stuck now."""
    first = step(None, run("QUEUED"), now=T0 + 60_000, stuck_after_s=3600)
    legacy = first.record.model_copy(update={"state_since": None})
    assert "run_stuck" in types(
        step(legacy, run("QUEUED"), now=T0 + 3 * 3_600_000, stuck_after_s=3600)
    )
    ended = step(None, done("FAILED"), now=T0 + 120_000)
    repair_at = T0 + 10 * 3_600_000
    history = [{"type": "ORIGINAL", "start_time": T0}, {"type": "REPAIR", "start_time": repair_at}]
    repaired = run("QUEUED", end=T0 + 60_000, repair_history=history)
    seen = step(ended.record, repaired, now=repair_at + 2 * 3_600_000, stuck_after_s=3600)
    assert seen.record.repair == 1
    assert seen.record.state_since == repair_at
    assert "run_stuck" in types(seen)
    status_only = Run.model_validate(
        {"run_id": 42, "job_id": 7, "state": {}, "start_time": T0, "status": {"state": "QUEUED"}}
    )
    seen = step(None, status_only, now=T0 + 3 * 3_600_000, stuck_after_s=3600)
    assert seen.record.life_cycle_state == "QUEUED"
    assert "run_stuck" in types(seen)
