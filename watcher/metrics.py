"""Prometheus metrics on an injected CollectorRegistry (never the global one).

Run metrics are observed from committed transitions only, so a run is counted once
whatever the poller saw; the daemon's own health comes from hooks on the client, the poll
loops and the dispatcher. No run_id or free text is ever a label; job names travel only in
`databricks_job_info`, to be joined with `group_left`.

How many series a job costs is configured (`MetricsConfig`): each run metric family is
exported per job or per workspace, with or without `result_state`. Counters whose label
values the config names (channels, workspaces) exist at 0 from the start, so `rate()` and
`increase()` see their first event. No `_created` series are exported.
"""

from __future__ import annotations

import contextlib
import math
from array import array
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal, TypeVar

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from watcher import __version__
from watcher.config import JobFilter, MetricsConfig
from watcher.databricks.client import ITEM_ENDPOINTS, Attempt
from watcher.databricks.errors import RejectedItem
from watcher.domain import Category, Transition, TransitionKind
from watcher.events import Event
from watcher.expectations import ScheduleFacts
from watcher.pipeline import CommitReport
from watcher.poller import PollStatus
from watcher.store.base import JobTimes, OutboxStats

API_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CYCLE_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
INCIDENT_KINDS = ("failure", "duration", "unreadable", "stuck", "missed", "not_running", "stale")
STUCK_STATES = ("QUEUED", "PENDING", "BLOCKED")
_Phase = Literal["queue", "setup", "execution", "cleanup"]
PHASES: tuple[_Phase, ...] = ("queue", "setup", "execution", "cleanup")
POLL_OUTCOMES = ("success", "failure")
_JobKey = tuple[str, str]
_Series = tuple[MetricWrapperBase, tuple[str, ...]]
_Stamp = Literal["last_success", "last_finish"]
"""A per-job timestamp gauge, by the name the metrics know it by."""
_M = TypeVar("_M", Counter, Gauge)


@dataclass(frozen=True, slots=True)
class _Shape:
    """The labels of a run metric family: workspace, then job_id if the family is
    exported per job, then result_state if it carries one."""

    per_job: bool
    state: bool

    @property
    def names(self) -> tuple[str, ...]:
        return self.values("workspace", "job_id", "result_state")

    def values(self, ws: str, job_id: str, state: str) -> tuple[str, ...]:
        return (ws, *((job_id,) if self.per_job else ()), *((state,) if self.state else ()))

    def shown(self, job_has_series: bool) -> bool:
        """Whether a run of a job counts here: always per workspace; per job only for the
        jobs the metrics job filter gives per-job series."""
        return job_has_series or not self.per_job


class _RunFamily:
    """A run metric family, histogram or counter, as a custom collector that keeps each
    series as one array of doubles: the observations in each bucket then their sum (a
    counter: its value). prometheus_client's Histogram makes a child per label set with
    a locked value object per bucket, about 3.9 KB a series: with thousands of jobs, most
    of the daemon's memory. Series sit under their job, (workspace, job_id), job_id ""
    when the family has none, then under result_state ("" without the label), so a job's
    or a workspace's series go in one step. No lock: observations and scrapes (the
    server's handler) all run in the event loop's thread."""

    def __init__(
        self,
        name: str,
        documentation: str,
        shape: _Shape,
        registry: CollectorRegistry,
        buckets: Sequence[float] | None = None,
    ) -> None:
        self._name, self._doc, self._shape = name, documentation, shape
        # Bounds as Histogram has them (floats, +Inf last), `le` as it prints them.
        finite = [float(b) for b in buckets or () if b != math.inf]
        self._bounds = (*finite, math.inf) if buckets is not None else ()
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._series: dict[_JobKey, dict[str, array[float]]] = {}
        registry.register(self)

    def add(self, job: _JobKey, state: str, amount: float = 1.0) -> None:
        """Observe `amount` (a histogram) or count it (a counter) for a run of `job`."""
        values = self._values(job, state)
        if self._bounds:
            values[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount
        values[-1] += amount

    def zero(self, ws: str) -> None:
        """The workspace's series at 0, when its labels are all known (no job_id, no
        result_state)."""
        if not self._shape.per_job and not self._shape.state:
            self._values((ws, ""), "")

    def forget_job(self, job: _JobKey) -> None:
        if self._shape.per_job:
            self._series.pop(job, None)

    def forget_workspace(self, ws: str) -> None:
        for job in [job for job in self._series if job[0] == ws]:
            del self._series[job]

    def _values(self, job: _JobKey, state: str) -> array[float]:
        key = job if self._shape.per_job else (job[0], "")
        states = self._series.setdefault(key, {})
        state = state if self._shape.state else ""
        if (values := states.get(state)) is None:
            values = states[state] = array("d", bytes(8 * (len(self._bounds) + 1)))
        return values

    def _family(self) -> HistogramMetricFamily | CounterMetricFamily:
        if self._bounds:
            return HistogramMetricFamily(self._name, self._doc, labels=self._shape.names)
        return CounterMetricFamily(self._name, self._doc, labels=self._shape.names)

    def describe(self) -> Iterator[Metric]:
        """The family without samples: lets the registry refuse a duplicate name and
        serve `?name[]=` (a collector without `describe` has no names there)."""
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for (ws, job_id), states in self._series.items():
            for state, values in states.items():
                labels = self._shape.values(ws, job_id, state)
                if isinstance(family, HistogramMetricFamily):
                    buckets = list(zip(self._le, accumulate(values[:-1]), strict=True))
                    family.add_metric(labels, buckets, values[-1])
                else:
                    family.add_metric(labels, values[0])
        yield family


class Metrics:
    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        config: MetricsConfig | None = None,
        run_buckets: Sequence[float] | None = None,
        jobs: JobFilter | None = None,
        channels: Iterable[str] = (),
        workspaces: Iterable[str] = (),
    ) -> None:
        """`config` (the `metrics` section) decides the run metrics' buckets, labels and
        jobs; without it, `run_buckets` and `jobs` (the older way) over the defaults.
        `channels` and `workspaces` are the configured names, whose counters start at 0."""
        if config is None:
            config = MetricsConfig(
                run_buckets=MetricsConfig().run_buckets if run_buckets is None else [*run_buckets],
                jobs=jobs or JobFilter(),
            )
        elif run_buckets is not None or jobs is not None:
            raise TypeError("pass config, or run_buckets and jobs, not both")
        # Counters and histograms without `_created` series: one fewer series each, and
        # nothing Prometheus uses (a process-wide switch of prometheus_client).
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry
        self._jobs = config.jobs
        self._declare_run_metrics(registry, config)
        self._declare_api_metrics(registry)
        self._declare_poll_metrics(registry)
        self._declare_alert_metrics(registry)
        self.build_info = Gauge(
            "watcher_build_info", "Build information (value 1).", ("version",), registry=registry
        )
        self.build_info.labels(__version__).set(1)
        # process_* (Linux) and python_* series of the daemon's own process.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._stamps: dict[_Stamp, Gauge] = {
            "last_success": self.last_success,
            "last_finish": self.last_finish,
        }
        # Label sets created per job, so a deleted job's series can be removed (the run
        # families keep theirs by job themselves).
        self._series: dict[_JobKey, set[_Series]] = defaultdict(set)
        self._job_names: dict[_JobKey, str] = {}
        self._timestamps: dict[tuple[_Stamp, str, str], float] = {}
        self._active_states: dict[str, set[str]] = defaultdict(set)
        self._scheduled: dict[str, set[str]] = defaultdict(set)  # job ids with schedule gauges
        self._workspaces = list(dict.fromkeys(workspaces))
        for channel in dict.fromkeys(channels):
            for counter in (
                self.alerts_sent,
                self.alerts_failed,
                self.alerts_dead,
                self.alerts_silenced,
            ):
                counter.labels(channel)
        for ws in self._workspaces:
            self._zero_workspace(ws)
            self._zero_run_counters(ws)

    def _declare_run_metrics(self, r: CollectorRegistry, config: MetricsConfig) -> None:
        """Runs and jobs of the workspaces: observed from committed transitions."""
        per_job, state = set(config.per_job), config.result_state_label
        self._durations = _Shape("durations" in per_job, state)
        self._phases = _Shape("phases" in per_job, state)
        self._started = _Shape("counts" in per_job, state=False)
        self._finished = _Shape("counts" in per_job, state)
        self.phase_seconds = {
            phase: _RunFamily(
                f"databricks_run_{phase}_duration_seconds",
                f"Run {phase} duration of finished runs, seconds.",
                self._phases,
                r,
                config.buckets_of(phase),
            )
            for phase in PHASES
        }
        self.duration_seconds = _RunFamily(
            "databricks_run_duration_seconds",
            "Total duration of finished runs (run_duration, else the phase sum), seconds.",
            self._durations,
            r,
            config.buckets_of("duration"),
        )
        self.runs_started = _RunFamily(
            "databricks_runs_started", "Runs seen starting.", self._started, r
        )
        self.runs_finished = _RunFamily(
            "databricks_runs_finished",
            "Runs seen finishing" + (", by result state." if self._finished.state else "."),
            self._finished,
            r,
        )
        self._run_families = (
            *self.phase_seconds.values(),
            self.duration_seconds,
            self.runs_started,
            self.runs_finished,
        )
        self.runs_active = Gauge(
            "databricks_runs_active",
            "Active runs by life-cycle state.",
            ("workspace", "life_cycle_state"),
            registry=r,
        )
        self.next_expected_run = Gauge(
            "databricks_job_next_expected_run_timestamp_seconds",
            "When the job's schedule (or periodic trigger) next expects a run.",
            ("workspace", "job_id"),
            registry=r,
        )
        self.schedule_paused = Gauge(
            "databricks_job_schedule_paused",
            "1 when the job's schedule (or periodic trigger) is PAUSED, else 0.",
            ("workspace", "job_id"),
            registry=r,
        )
        self.runs_stuck = Gauge(
            "databricks_runs_stuck",
            "Active runs waiting in QUEUED, PENDING or BLOCKED longer than their stuck "
            "threshold, by state.",
            ("workspace", "life_cycle_state"),
            registry=r,
        )
        self.rule_breaches = Counter(
            "databricks_run_duration_rule_breaches",
            "RUN_DURATION_SECONDS rule breaches.",
            ("workspace", "job_id", "rule"),
            registry=r,
        )
        self.last_success = Gauge(
            "databricks_job_last_success_timestamp_seconds",
            "End time of the job's latest successful run, epoch seconds.",
            ("workspace", "job_id"),
            registry=r,
        )
        self.last_finish = Gauge(
            "databricks_job_last_finish_timestamp_seconds",
            "End time of the job's latest finished run, epoch seconds.",
            ("workspace", "job_id"),
            registry=r,
        )
        self.job_info = Gauge(
            "databricks_job_info",
            "Job names (value 1): join with group_left.",
            ("workspace", "job_id", "job_name"),
            registry=r,
        )

    def _declare_api_metrics(self, r: CollectorRegistry) -> None:
        """The Jobs API as the watcher's clients see it."""
        self.api_requests = Counter(
            "watcher_api_requests",
            "Jobs API HTTP attempts by endpoint and status code.",
            ("workspace", "endpoint", "code"),
            registry=r,
        )
        self.api_latency = Histogram(
            "watcher_api_request_duration_seconds",
            "Jobs API request latency, seconds.",
            ("workspace", "endpoint"),
            buckets=API_BUCKETS,
            registry=r,
        )
        self.api_retries = Counter(
            "watcher_api_retries",
            "Jobs API attempts that were retried.",
            ("workspace", "endpoint", "code"),
            registry=r,
        )
        self.api_throttled = Counter(
            "watcher_api_throttled_seconds",
            "Seconds spent waiting for the client rate limit.",
            ("workspace",),
            registry=r,
        )
        self.api_items_rejected = Counter(
            "watcher_api_items_rejected",
            "Runs and jobs left out of Jobs API answers because they failed validation.",
            ("workspace", "endpoint"),
            registry=r,
        )
        self.api_date_missing = Counter(
            "watcher_api_date_header_missing",
            "Jobs API responses without a usable Date header (clock skew not measured).",
            ("workspace",),
            registry=r,
        )

    def _declare_poll_metrics(self, r: CollectorRegistry) -> None:
        """The poll loops."""
        self.cycle_seconds = Histogram(
            "watcher_poll_cycle_duration_seconds",
            "Duration of poll cycles, seconds.",
            ("workspace",),
            buckets=CYCLE_BUCKETS,
            registry=r,
        )
        self.cycles = Counter(
            "watcher_poll_cycles", "Poll cycles by outcome.", ("workspace", "outcome"), registry=r
        )
        self.last_poll = Gauge(
            "watcher_last_successful_poll_timestamp_seconds",
            "When the workspace was last polled and committed successfully, epoch seconds.",
            ("workspace",),
            registry=r,
        )
        self.poll_interval = Gauge(
            "watcher_poll_interval_seconds",
            "Configured poll interval, seconds.",
            ("workspace",),
            registry=r,
        )
        self.workspace_leases = Gauge(
            "watcher_workspace_leases",
            "Workspaces whose lease this replica holds (it polls them).",
            ("replica",),
            registry=r,
        )
        self.lease_takeovers = Counter(
            "watcher_lease_takeovers",
            "Leases this replica took from another replica that died or stalled holding them.",
            ("workspace",),
            registry=r,
        )
        self.fenced_commits = Counter(
            "watcher_fenced_commits",
            "Cycle commits refused because the workspace's lease had moved on (this replica "
            "stalled past its lease).",
            ("workspace",),
            registry=r,
        )

    def _declare_alert_metrics(self, r: CollectorRegistry) -> None:
        """Alert routing, delivery and the outbox."""
        self.alerts_sent = Counter(
            "watcher_alerts_sent",
            "Alert messages delivered (a digest counts once).",
            ("channel",),
            registry=r,
        )
        self.alerts_failed = Counter(
            "watcher_alerts_failed",
            "Failed delivery attempts (a digest counts once).",
            ("channel",),
            registry=r,
        )
        self.alerts_dead = Counter(
            "watcher_alerts_dead_lettered",
            "Alert messages given up and dead-lettered (a digest counts once).",
            ("channel",),
            registry=r,
        )
        self.alerts_unconfirmed = Counter(
            "watcher_alerts_unconfirmed",
            "Delivery attempts whose answer looked like success but proved none, by reason.",
            ("channel", "reason"),
            registry=r,
        )
        self.routing_failures = Counter(
            "watcher_routing_failures",
            "Events sent to every channel because evaluating their routes failed.",
            registry=r,
        )
        self.alerts_silenced = Counter(
            "watcher_alerts_silenced", "Alerts held back by a silence.", ("channel",), registry=r
        )
        self.silences = Gauge(
            "watcher_silences",
            "Silences not over: active now, or pending (not started, or between two windows).",
            ("source", "state"),
            registry=r,
        )
        self.silence_refresh_failures = Counter(
            "watcher_silence_refresh_failures",
            "Reads of the silences added at run time that failed (the last read stays in use).",
            registry=r,
        )
        self.outbox_pending = Gauge(
            "watcher_outbox_pending", "Alert deliveries waiting to be sent.", registry=r
        )
        self.dead_letters = Gauge(
            "watcher_dead_letters", "Alert deliveries in the dead-letter state.", registry=r
        )
        self.incidents_open = Gauge(
            "watcher_incidents_open", "Incidents open now, by kind.", ("kind",), registry=r
        )
        self.incidents_opened = Counter(
            "watcher_incidents_opened", "Incidents opened, by kind.", ("kind",), registry=r
        )
        self.incidents_resolved = Counter(
            "watcher_incidents_resolved",
            "Incidents resolved, by kind and cause (recovered, run_ended, manual).",
            ("kind", "cause"),
            registry=r,
        )

    # -- hooks -----------------------------------------------------------------------

    def attempt_hook(self, workspace: str) -> _ClientHooks:
        """The hooks of the workspace's client: called with each HTTP attempt, and with
        `item_rejected` / `date_header_missing` (a watcher.databricks.client.ClientHooks)."""
        return _ClientHooks(self, workspace)

    def observe_cycle(self, status: PollStatus, ok: bool) -> None:
        """Hook for the poll loops: one call per finished cycle."""
        ws = status.workspace
        self.cycles.labels(ws, "success" if ok else "failure").inc()
        if ok and status.last_cycle_seconds is not None:
            self.cycle_seconds.labels(ws).observe(status.last_cycle_seconds)
        if ok and status.last_success_at is not None:
            self.last_poll.labels(ws).set(status.last_success_at)

    def observe_delivery(
        self, channel: str, outcome: str, seconds: float, reason: str | None = None
    ) -> None:
        counter = {"sent": self.alerts_sent, "failed": self.alerts_failed, "dead": self.alerts_dead}
        if outcome in counter:
            counter[outcome].labels(channel).inc()
        if reason is not None:
            self.alerts_unconfirmed.labels(channel, reason).inc()

    def observe_routing_failure(self) -> None:
        """Hook for the router: an event's routes could not be evaluated (it failed open)."""
        self.routing_failures.inc()

    def set_silences(self, counts: Mapping[tuple[str, str], int]) -> None:
        """(source, state) -> silences, as `watcher.silences.counts` gives them."""
        for source in ("config", "runtime"):
            for state in ("active", "pending"):
                self.silences.labels(source, state).set(counts.get((source, state), 0))

    def set_outbox(self, stats: OutboxStats) -> None:
        self.outbox_pending.set(stats.pending)
        self.dead_letters.set(stats.dead)
        for kind in INCIDENT_KINDS:
            self.incidents_open.labels(kind).set(stats.incidents_open.get(kind, 0))

    def restore(self, jobs: Sequence[JobTimes], workspace: str | None = None) -> None:
        """Per-job timestamps and names from the store (of one workspace, or all), when
        this replica starts polling: a job that has not succeeded since the restart
        still shows when it last did. The workspace's run counters exported per workspace
        start at 0 again."""
        for ws in self._workspaces if workspace is None else [workspace]:
            self._zero_run_counters(ws)
        for job in jobs:
            if workspace is not None and job.workspace != workspace:
                continue
            if not self._jobs.allows(job.job_id, job.name, job.tags):
                continue
            ws, job_id = job.workspace, str(job.job_id)
            if job.name is not None:
                self._set_job_name(ws, job_id, job.name)
            if job.last_finish_ms is not None:
                self._raise_to("last_finish", ws, job_id, job.last_finish_ms / 1000)
            if job.last_success_ms is not None:
                self._raise_to("last_success", ws, job_id, job.last_success_ms / 1000)

    def observe_commit(self, report: CommitReport) -> None:
        ws = report.workspace
        allowed = {
            job.job_id: self._jobs.allows(job.job_id, job.name, job.tags)
            for job in report.jobs.values()
        }
        for job in report.jobs.values():
            if allowed[job.job_id]:
                self._set_job_name(ws, str(job.job_id), job.name or "")
        for transition in report.transitions:
            job_id = transition.record.job_id
            per_job = allowed.get(job_id, self._jobs.allows(job_id, None, {})) if job_id else True
            self._observe_transition(ws, transition, per_job)
        for event in report.events:
            if event.type == "run_duration_exceeded" and event.rule is not None:
                job_id = event.job.job_id
                if job_id is None or allowed.get(job_id, True):
                    labels = (ws, str(job_id), event.rule.name)
                    self._labels(self.rule_breaches, ws, str(job_id), labels).inc()
        for state, count in report.active_by_state.items():
            self.runs_active.labels(ws, state).set(count)
        for state in self._active_states[ws] - set(report.active_by_state):
            self.runs_active.labels(ws, state).set(0)
        self._active_states[ws] |= set(report.active_by_state)
        for state in STUCK_STATES:
            self.runs_stuck.labels(ws, state).set(report.stuck_by_state.get(state, 0))
        if report.schedules is not None:
            self._set_schedules(ws, report.schedules)
        for job_id in report.deleted_jobs:
            self._forget_job(ws, str(job_id))
        for key in report.silenced:
            self.alerts_silenced.labels(str(key)).inc()  # `channel` or `channel:address`
        for event in report.events:
            self.observe_incident(event)

    def observe_incident(self, event: Event) -> None:
        """Count the incident an event newly committed opened or resolved."""
        incident = event.incident
        if incident is None or event.repeat:
            return
        if incident.state == "resolved":
            self.incidents_resolved.labels(incident.kind, incident.cause or "unknown").inc()
        elif incident.count == 1:
            self.incidents_opened.labels(incident.kind).inc()

    # -- internals -------------------------------------------------------------------

    def _set_schedules(self, ws: str, schedules: Mapping[int, ScheduleFacts]) -> None:
        """The schedule gauges of the jobs the metrics watch; a job no longer scheduled
        (or watched) loses its series."""
        shown = {
            str(job_id): facts
            for job_id, facts in schedules.items()
            if self._jobs.allows(job_id, facts.name, facts.tags)
        }
        for job_id in self._scheduled[ws] - shown.keys():
            for gauge in (self.next_expected_run, self.schedule_paused):
                with contextlib.suppress(KeyError):
                    gauge.remove(ws, job_id)
        for job_id, facts in shown.items():
            self.schedule_paused.labels(ws, job_id).set(1 if facts.paused else 0)
            if facts.next_expected_ms is not None:
                self.next_expected_run.labels(ws, job_id).set(facts.next_expected_ms / 1000)
            else:
                with contextlib.suppress(KeyError):
                    self.next_expected_run.remove(ws, job_id)
        self._scheduled[ws] = set(shown)

    def _observe_transition(self, ws: str, transition: Transition, per_job: bool) -> None:
        """Count a run started (first seen active, or first seen finished: its start is
        implied) and measure a finish. A repair, an update, or a run closed out because it
        vanished has nothing to count. A job outside the metrics job filter (`per_job`
        false) counts only in the families exported per workspace."""
        kind, run = transition.kind, transition.record.snapshot
        job_id = str(transition.record.job_id)
        job = (ws, job_id)  # one tuple for every run family that keeps a new series
        state = transition.raw_state or "UNKNOWN"
        first_seen = transition.previous is None
        started = kind is TransitionKind.STARTED or (kind is TransitionKind.FINISHED and first_seen)
        if started and self._started.shown(per_job):
            self.runs_started.add(job, state)
        if kind is not TransitionKind.FINISHED:
            return
        if self._finished.shown(per_job):
            self.runs_finished.add(job, state)
        phases: dict[_Phase, int | None] = {
            "queue": run.queue_duration,
            "setup": run.setup_duration,
            "execution": run.execution_duration,
            "cleanup": run.cleanup_duration,
        }
        for phase, ms in phases.items():
            if ms is not None and self._phases.shown(per_job):
                self.phase_seconds[phase].add(job, state, ms / 1000)
        if (total := run.duration_ms) is not None and self._durations.shown(per_job):
            self.duration_seconds.add(job, state, total / 1000)
        if per_job and run.end_time:
            self._raise_to("last_finish", ws, job_id, run.end_time / 1000)
            if transition.category is Category.SUCCESS:
                self._raise_to("last_success", ws, job_id, run.end_time / 1000)

    def _raise_to(self, stamp: _Stamp, ws: str, job_id: str, value: float) -> None:
        """Set a per-job timestamp unless a later one is already set (runs may be
        committed out of end order)."""
        key = (stamp, ws, job_id)
        if value > self._timestamps.get(key, float("-inf")):
            self._timestamps[key] = value
            self._labels(self._stamps[stamp], ws, job_id, (ws, job_id)).set(value)

    def _zero_workspace(self, ws: str) -> None:
        """The watcher's own counters of a configured workspace, at 0 (they stay while the
        process runs, whichever replica polls the workspace)."""
        for outcome in POLL_OUTCOMES:
            self.cycles.labels(ws, outcome)
        for endpoint in ITEM_ENDPOINTS:
            self.api_items_rejected.labels(ws, endpoint)
        for counter in (
            self.api_throttled,
            self.api_date_missing,
            self.lease_takeovers,
            self.fenced_commits,
        ):
            counter.labels(ws)

    def _zero_run_counters(self, ws: str) -> None:
        """The run counters exported per workspace whose labels are all known (no job_id,
        no result_state), at 0: exported, like every run series, while this replica polls
        the workspace."""
        for counter in (self.runs_started, self.runs_finished):
            counter.zero(ws)

    def _labels(self, metric: _M, ws: str, job_id: str, labels: tuple[str, ...]) -> _M:
        """metric.labels(...), remembering the label set under its job."""
        self._series[(ws, job_id)].add((metric, labels))
        return metric.labels(*labels)

    def _set_job_name(self, ws: str, job_id: str, name: str) -> None:
        key = (ws, job_id)
        old = self._job_names.get(key)
        if old == name:
            return
        if old is not None:
            self.job_info.remove(ws, job_id, old)
            self._series[key].discard((self.job_info, (ws, job_id, old)))
        self._job_names[key] = name
        self._labels(self.job_info, ws, job_id, (ws, job_id, name)).set(1)

    def forget_workspace(self, ws: str) -> None:
        """Drop the per-job, per-state and poll series of a workspace this replica no
        longer polls: only the replica that owns a workspace exports them."""
        for job_ws, job_id in [k for k in self._series if k[0] == ws]:
            self._forget_job(job_ws, job_id)
        for family in self._run_families:
            family.forget_workspace(ws)
        for state in self._active_states.pop(ws, set()):
            with contextlib.suppress(KeyError):
                self.runs_active.remove(ws, state)
        for state in STUCK_STATES:
            with contextlib.suppress(KeyError):
                self.runs_stuck.remove(ws, state)
        for job_id in self._scheduled.pop(ws, set()):
            for gauge in (self.next_expected_run, self.schedule_paused):
                with contextlib.suppress(KeyError):
                    gauge.remove(ws, job_id)
        # The staleness alert compares these per replica: only the poller has them.
        for gauge in (self.poll_interval, self.last_poll):
            with contextlib.suppress(KeyError):
                gauge.remove(ws)

    def _forget_job(self, ws: str, job_id: str) -> None:
        for family in self._run_families:
            family.forget_job((ws, job_id))
        for metric, labels in self._series.pop((ws, job_id), set()):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
        self._job_names.pop((ws, job_id), None)
        for stamp in self._stamps:
            self._timestamps.pop((stamp, ws, job_id), None)


class _ClientHooks:
    def __init__(self, metrics: Metrics, workspace: str) -> None:
        self._m = metrics
        self._ws = workspace
        # Zero series from the start, so `increase(...) > 0` alerts see the first one.
        for endpoint in ITEM_ENDPOINTS:
            metrics.api_items_rejected.labels(workspace, endpoint)
        metrics.api_date_missing.labels(workspace)

    def __call__(self, attempt: Attempt) -> None:
        m, ws = self._m, self._ws
        m.api_requests.labels(ws, attempt.endpoint, attempt.code).inc()
        m.api_latency.labels(ws, attempt.endpoint).observe(attempt.seconds)
        if attempt.will_retry:
            m.api_retries.labels(ws, attempt.endpoint, attempt.code).inc()
        if attempt.throttled_seconds > 0:
            m.api_throttled.labels(ws).inc(attempt.throttled_seconds)

    def item_rejected(self, item: RejectedItem) -> None:
        self._m.api_items_rejected.labels(self._ws, item.endpoint).inc()

    def date_header_missing(self) -> None:
        self._m.api_date_missing.labels(self._ws).inc()
