"""One workspace cycle after polling: read the stored records, plan the cycle (pure), route
the events, and commit records, events, deliveries and the watermark in one transaction
(the guarantees this carries: docs/architecture.md §2)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from watcher.clock import Clock
from watcher.config import ExpectationsConfig, HealthRulesConfig, StartupConfig, StuckConfig
from watcher.cycle import CyclePlan, plan_cycle
from watcher.databricks.models import JobSettings
from watcher.domain import JobRecord, PollResult, Transition
from watcher.events import Event
from watcher.expectations import ScheduleFacts, checkable
from watcher.store.base import (
    CycleCommit,
    CycleStore,
    DeliveryKey,
    Routed,
    StoreConflict,
)

log = structlog.get_logger(__name__)

Router = Callable[[Event, JobSettings | None, Sequence[DeliveryKey]], Routed]
"""(event, job settings, where the incident the event resolves was delivered) -> where
to deliver it, where a silence holds it back, and how."""

CONFLICT_ATTEMPTS = 3
"""Plans of one poll result tried when another writer (an operator resolving an
incident) changes an incident meanwhile."""


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
    stuck_by_state: Mapping[str, int] = field(default_factory=dict)
    """Runs waiting longer than their stuck threshold this cycle, by state."""
    schedules: Mapping[int, ScheduleFacts] | None = None
    """Scheduled watched jobs: paused, next trigger (None: not checked this cycle)."""


class Pipeline:
    def __init__(
        self,
        *,
        store: CycleStore,
        health_rules: HealthRulesConfig,
        startup: StartupConfig,
        clock: Clock,
        route: Router | None = None,
        on_commit: Callable[[CommitReport], None] | None = None,
        stuck: StuckConfig | None = None,
        expectations: ExpectationsConfig | None = None,
    ) -> None:
        self._store = store
        self._health_rules = health_rules
        self._startup = startup
        self._clock = clock
        self._route = route
        self._on_commit = on_commit
        self._stuck = stuck or StuckConfig()
        self._expectations = expectations or ExpectationsConfig()

    async def handle(self, result: PollResult, *, epoch: int | None = None) -> list[Event]:
        """Track, route and commit one poll result; the events newly committed. A commit
        that finds an incident changed by another writer is planned again. With `epoch`
        (the lease the poll ran under) the commit is fenced: StoreFenced when the
        workspace's lease has moved on."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return await self._handle(result, epoch)
            except StoreConflict as exc:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                log.warning("cycle_conflict", workspace=result.workspace, error=str(exc))
        raise AssertionError("unreachable")

    async def _handle(self, result: PollResult, epoch: int | None) -> list[Event]:
        plan = await self._plan(result)
        routed = await self._route_all(plan)
        inserted = await self._store.commit_cycle(
            CycleCommit(
                workspace=result.workspace,
                watermark_ms=result.watermark_ms,
                committed_at=self._clock.time(),
                runs=[t.record for t in plan.transitions],
                jobs=plan.changed_jobs,
                events=plan.events,
                channels={i: r.channels for i, r in routed.items()},
                silenced={i: r.silenced for i, r in routed.items()},
                news_since_ms=result.news_since_ms,
                epoch=epoch,
                incidents=plan.incidents,
                policies={i: r.policies for i, r in routed.items()},
            )
        )
        if self._on_commit is not None:
            self._on_commit(_report(result.workspace, plan, inserted, routed))
        return inserted

    async def _plan(self, result: PollResult) -> CyclePlan:
        """The cycle plan, without the events an earlier commit stored already."""
        workspace = result.workspace
        run_ids = [r.run_id for r in result.runs] + list(result.vanished)
        job_ids = {r.job_id for r in result.runs if r.job_id is not None}
        previous = await self._store.get_runs(workspace, run_ids)
        job_ids |= {r.job_id for r in previous.values() if r.job_id is not None}
        watched = result.watched_jobs or {}
        job_ids |= {j for j, job in watched.items() if checkable(job, self._expectations)}
        stored_jobs = await self._store.get_jobs(workspace, job_ids)
        incidents = await self._store.open_incidents(workspace, job_ids)

        def plan(known: set[str]) -> CyclePlan:
            return plan_cycle(
                result,
                previous=previous,
                stored_jobs=stored_jobs,
                health_rules=self._health_rules,
                startup=self._startup,
                incidents=incidents,
                known_events=known,
                stuck=self._stuck,
                expectations=self._expectations,
            )

        first = plan(set())
        known = await self._store.known_events([e.id for e in first.events])
        return plan(known) if known else first

    async def _route_all(self, plan: CyclePlan) -> dict[str, Routed]:
        """event id -> where it goes (nothing without a router). A resolve also goes where
        its incident's earlier events went: those committed before, and those of this
        very cycle (an incident opened and resolved in one cycle)."""
        if self._route is None:
            return {}
        resolving = [e.incident.id for e in plan.events if e.incident and _resolves(e)]
        targets = await self._store.incident_targets(resolving) if resolving else {}
        routed: dict[str, Routed] = {}
        for event in plan.events:
            incident = event.incident.id if event.incident else None
            follow = targets.setdefault(incident, []) if incident else []
            resolves = _resolves(event)
            route = self._route(event, plan.settings_of[event.id], follow if resolves else [])
            routed[event.id] = route
            if incident and not resolves:
                follow.extend(k for k in route.channels if k not in follow)
        return routed


def _resolves(event: Event) -> bool:
    return event.incident is not None and event.incident.state == "resolved"


def _report(
    workspace: str, plan: CyclePlan, inserted: Sequence[Event], routed: Mapping[str, Routed]
) -> CommitReport:
    """What the commit changed: the plan's transitions and jobs, and the events it newly
    inserted (with the silenced keys of those only)."""
    held = [c for e in inserted if e.id in routed for c in routed[e.id].silenced]
    return CommitReport(
        workspace,
        plan.transitions,
        inserted,
        plan.jobs,
        plan.deleted_jobs,
        plan.active_by_state,
        held,
        plan.stuck_by_state,
        plan.schedules,
    )
