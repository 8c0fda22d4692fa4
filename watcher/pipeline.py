"""One workspace cycle after polling: read the stored records, plan the cycle (pure), route
the events, and commit records, events, deliveries and the watermark in one transaction
(the guarantees this carries: docs/architecture.md §2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from watcher.clock import Clock
from watcher.config import HealthRulesConfig, StartupConfig
from watcher.cycle import CyclePlan, plan_cycle
from watcher.databricks.models import JobSettings
from watcher.domain import JobRecord, PollResult, Transition
from watcher.events import Event
from watcher.store.base import CycleCommit, DeliveryKey, Store

Router = Callable[[Event, JobSettings | None], tuple[Sequence[DeliveryKey], Sequence[DeliveryKey]]]
"""(event, job settings) -> (where to deliver it, where a silence holds it back)."""


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
    silenced: Sequence[DeliveryKey] = ()
    """One key per delivery of the new events held back by a silence (the metric labels
    show `str(key)`)."""


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
        run_ids = [r.run_id for r in result.runs] + list(result.vanished)
        job_ids = {r.job_id for r in result.runs if r.job_id is not None}
        plan = plan_cycle(
            result,
            previous=await self._store.get_runs(workspace, run_ids),
            stored_jobs=await self._store.get_jobs(workspace, job_ids),
            health_rules=self._health_rules,
            startup=self._startup,
        )
        channels, silenced = _route_all(self._route, plan)
        inserted = await self._store.commit_cycle(
            CycleCommit(
                workspace=workspace,
                watermark_ms=result.watermark_ms,
                committed_at=self._clock.time(),
                runs=[t.record for t in plan.transitions],
                jobs=plan.changed_jobs,
                events=plan.events,
                channels=channels,
                silenced=silenced,
                news_since_ms=result.news_since_ms,
            )
        )
        if self._on_commit is not None:
            self._on_commit(_report(workspace, plan, inserted, silenced))
        return inserted


def _route_all(
    route: Router | None, plan: CyclePlan
) -> tuple[dict[str, Sequence[DeliveryKey]], dict[str, Sequence[DeliveryKey]]]:
    """event id -> where to deliver it, and event id -> where a silence holds it back
    (both empty without a router)."""
    channels: dict[str, Sequence[DeliveryKey]] = {}
    silenced: dict[str, Sequence[DeliveryKey]] = {}
    if route is not None:
        for event in plan.events:
            channels[event.id], silenced[event.id] = route(event, plan.settings_of[event.id])
    return channels, silenced


def _report(
    workspace: str,
    plan: CyclePlan,
    inserted: Sequence[Event],
    silenced: Mapping[str, Sequence[DeliveryKey]],
) -> CommitReport:
    """What the commit changed: the plan's transitions and jobs, and the events it newly
    inserted (with the silenced keys of those only)."""
    held = [c for e in inserted for c in silenced.get(e.id, ())]
    return CommitReport(
        workspace,
        plan.transitions,
        inserted,
        plan.jobs,
        plan.deleted_jobs,
        plan.active_by_state,
        held,
    )
