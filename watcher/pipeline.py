"""One workspace cycle after polling: track every observation, route the events, and
commit records, events, deliveries and the watermark in one transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from watcher.clock import Clock
from watcher.config import HealthRulesConfig, StartupConfig
from watcher.databricks.models import Job, JobSettings
from watcher.events import Event, RuleRef
from watcher.poller import PollResult
from watcher.store.base import CycleCommit, JobRecord, RunRecord, Store
from watcher.tracker import JobContext, evaluate, job_duration_rules

Router = Callable[[Event, JobSettings | None], tuple[Sequence[str], Sequence[str]]]
"""(event, job settings) -> (channels to deliver to, channels held back by a silence)."""


@dataclass(frozen=True, slots=True)
class Transition:
    previous: RunRecord | None
    record: RunRecord


@dataclass(frozen=True, slots=True)
class CommitReport:
    """What one committed cycle changed: the input of the metrics."""

    workspace: str
    transitions: Sequence[Transition]
    events: Sequence[Event]
    """Events newly inserted by this commit."""
    jobs: Mapping[int, JobRecord]
    """Every job seen this cycle, with its current name and tags."""
    deleted_jobs: Sequence[int]
    """Jobs of observed runs that no longer exist in the workspace."""
    active_by_state: Mapping[str, int]
    """Active runs this cycle by life-cycle state."""
    silenced: Sequence[str] = ()
    """One channel name per delivery of the new events held back by a silence."""


def config_rules(
    config: HealthRulesConfig,
    job_id: int | None,
    name: str | None,
    tags: Mapping[str, str],
    *,
    has_own_rule: bool,
) -> list[RuleRef]:
    """Duration rules from the config for one job: every matching rule, or the default
    when the job has no rule at all."""
    rules = [
        RuleRef(name=f"config:{rule.name}", value=rule.seconds, source="config")
        for rule in config.rules
        if rule.match.matches(job_id, name, tags)
    ]
    if not rules and not has_own_rule and config.default_seconds is not None:
        rules.append(RuleRef(name="config:default", value=config.default_seconds, source="config"))
    return rules


class Pipeline:
    def __init__(
        self,
        *,
        store: Store,
        health_rules: HealthRulesConfig,
        startup: StartupConfig,
        clock: Clock,
        route: Router | None = None,
        on_commit: Callable[[CommitReport], None] | None = None,
    ) -> None:
        self._store = store
        self._health_rules = health_rules
        self._startup = startup
        self._clock = clock
        self._route = route
        self._on_commit = on_commit

    async def handle(self, result: PollResult) -> list[Event]:
        """Track, route and commit one poll result; the events newly committed."""
        workspace = result.workspace
        run_ids = [o.run.run_id for o in result.observations] + list(result.vanished)
        previous = await self._store.get_runs(workspace, run_ids)
        job_ids = {o.run.job_id for o in result.observations if o.run.job_id is not None}
        stored_jobs = await self._store.get_jobs(workspace, job_ids)
        jobs: dict[int, JobRecord] = {}
        active: Counter[str] = Counter()
        transitions: list[Transition] = []
        events: list[Event] = []
        settings_of: dict[str, JobSettings | None] = {}
        # Finished runs in end order, then active ones: a failure followed by a success
        # of the same job within one cycle is a recovery, the other way round is not.
        ordered = sorted(
            result.observations,
            key=lambda o: (o.run.end_time or 2**62, o.run.start_time or 0, o.run.run_id),
        )
        for observation in ordered:
            run = observation.run
            job = result.jobs.get(run.job_id) if run.job_id is not None else None
            record = self._job_record(workspace, run.job_id, job, jobs, stored_jobs, run.run_name)
            settings = job.settings if job is not None else None
            context = JobContext(
                job_id=run.job_id,
                name=record.name if record else run.run_name,
                tags=record.tags if record else {},
                settings=settings,
                last_outcome=record.last_outcome if record else None,
                last_outcome_end_time=record.last_outcome_end_time if record else None,
            )
            rules = config_rules(
                self._health_rules,
                run.job_id,
                context.name,
                context.tags,
                has_own_rule=bool(job_duration_rules(settings)),
            )
            before = previous.get(run.run_id)
            evaluation = evaluate(
                before,
                run,
                workspace=workspace,
                job=context,
                rules=rules,
                now_ms=result.server_now_ms,
                backfill=observation.backfill,
                alert_on_backfill=self._startup.alert_on_backfill,
            )
            if not evaluation.record.terminal:
                active[evaluation.record.life_cycle_state or "UNKNOWN"] += 1
            if evaluation.record != before:
                transitions.append(Transition(before, evaluation.record))
            events.extend(evaluation.events)
            for event in evaluation.events:
                settings_of[event.id] = settings
            if record is not None and evaluation.outcome is not None:
                ended = evaluation.record.end_time or result.server_now_ms
                if record.last_outcome_end_time is None or ended >= record.last_outcome_end_time:
                    jobs[record.job_id] = record.model_copy(
                        update={
                            "last_outcome": evaluation.outcome,
                            "last_outcome_run_id": run.run_id,
                            "last_outcome_end_time": ended,
                        }
                    )
        for run_id in result.vanished:
            before = previous.get(run_id)
            if before is not None and not before.terminal:
                # Deleted while we watched it: close it out, with nothing to alert on.
                transitions.append(Transition(before, before.model_copy(update={"terminal": True})))
        channels: dict[str, Sequence[str]] = {}
        silenced: dict[str, Sequence[str]] = {}
        if self._route is not None:
            for event in events:
                channels[event.id], silenced[event.id] = self._route(event, settings_of[event.id])
        changed_jobs = [j for j in jobs.values() if stored_jobs.get(j.job_id) != j]
        inserted = await self._store.commit_cycle(
            CycleCommit(
                workspace=workspace,
                watermark_ms=result.watermark_ms,
                committed_at=self._clock.time(),
                runs=[t.record for t in transitions],
                jobs=changed_jobs,
                events=events,
                channels=channels,
                silenced=silenced,
            )
        )
        if self._on_commit is not None:
            deleted = sorted(j for j in job_ids if j not in result.jobs)
            held = [c for e in inserted for c in silenced.get(e.id, ())]
            self._on_commit(
                CommitReport(workspace, transitions, inserted, jobs, deleted, dict(active), held)
            )
        return inserted

    @staticmethod
    def _job_record(
        workspace: str,
        job_id: int | None,
        job: Job | None,
        updated: dict[int, JobRecord],
        stored: Mapping[int, JobRecord],
        run_name: str | None,
    ) -> JobRecord | None:
        """The job's record as of this point in the cycle, refreshed with its settings."""
        if job_id is None:
            return None
        record = (
            updated.get(job_id)
            or stored.get(job_id)
            or JobRecord(workspace=workspace, job_id=job_id, name=run_name)
        )
        if job is not None:
            name = job.settings.name or record.name
            if (name, job.settings.tags) != (record.name, record.tags):
                record = record.model_copy(update={"name": name, "tags": dict(job.settings.tags)})
        updated[job_id] = record
        return record
