"""The composition root: the one place that builds the daemon from its configuration.
Every dependency is injectable as a keyword, so tests run the real wiring in simulated
time against simulated workspaces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO, cast

import structlog
from prometheus_client import CollectorRegistry

from watcher import __version__
from watcher.aio import Stopped, guarded_task, sleep_or_stop
from watcher.clock import Clock, SystemClock
from watcher.config import Config, ExpectationsConfig, WorkspaceConfig
from watcher.config.credentials import auth_from_config
from watcher.databricks import Auth, JobsClient, RetryPolicy, Timeouts
from watcher.databricks.client import ClientHooks
from watcher.domain import PollResult
from watcher.events import Event
from watcher.httpapi import SilenceApi
from watcher.leases import LeaseKeeper, replica_name
from watcher.metrics import Metrics
from watcher.notify.base import Channel
from watcher.notify.channels import build_channels, close_channels
from watcher.notify.dispatcher import Dispatcher
from watcher.notify.payloads import workspace_ids
from watcher.notify.reminders import Reminders
from watcher.notify.router import RoutingTable, table_router
from watcher.pipeline import CommitReport, Pipeline
from watcher.poller import Poller, PollStatus, run_poll_loop
from watcher.server import Probes, StatusServer, WorkspaceHealth
from watcher.silences import LiveSilences, silence_json
from watcher.silences import counts as silence_counts
from watcher.statuspage import page_for
from watcher.store.base import (
    CycleCommit,
    Lease,
    ReminderCommit,
    Store,
    StoreError,
    StoreFenced,
)
from watcher.store.opening import open_store

log = structlog.get_logger(__name__)

PRUNE_EVERY = 3600.0
OUTBOX_STATS_EVERY = 5.0


class StartupError(Exception):
    """The daemon cannot start; the message says why in one line."""


def make_auth(workspace: WorkspaceConfig, clock: Clock) -> Auth:
    return auth_from_config(workspace.auth, str(workspace.host), clock)


def make_client(workspace: WorkspaceConfig, hooks: ClientHooks, clock: Clock) -> JobsClient:
    return JobsClient(
        host=str(workspace.host),
        auth=make_auth(workspace, clock),
        api_version=workspace.api_version,
        requests_per_second=workspace.requests_per_second,
        timeouts=Timeouts(connect=workspace.connect_timeout, total=workspace.request_timeout),
        # Back-off between retries never longer than an interval: an API that answers
        # again is polled again within one (issue 17's recovery goal), Retry-After aside.
        retry=RetryPolicy(
            budget=workspace.retry_budget,
            max_delay=min(RetryPolicy().max_delay, workspace.poll_interval),
        ),
        ca_bundle=workspace.ca_bundle,
        clock=clock,
        on_attempt=hooks,
        on_reject=hooks.item_rejected,
        on_date_missing=hooks.date_header_missing,
        workspace=workspace.name,
    )


@dataclass
class Daemon:
    """The running parts, for the CLI, the server probes and tests."""

    config: Config
    store: Store
    metrics: Metrics
    pipeline: Pipeline
    pollers: list[Poller]
    clients: list[JobsClient]
    channels: dict[str, Channel]
    dispatcher: Dispatcher
    reminders: Reminders
    silences: LiveSilences
    replica: str = field(default_factory=replica_name)
    server: StatusServer | None = None
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    keeper: LeaseKeeper | None = None
    """While serving: the leases this replica holds (None: every workspace is polled)."""
    loops: dict[str, _Loop] = field(default_factory=dict)
    """While serving: the poll loops of the workspaces this replica holds."""
    poll_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    """Every poll loop not yet ended, stopped ones included."""

    def polled(self) -> list[Poller]:
        """The pollers this replica runs: all, or those whose lease it holds."""
        if self.keeper is None:
            return self.pollers
        return [p for p in self.pollers if p.workspace in self.keeper.held]

    def lease_problem(self) -> str | None:
        """Why this replica can neither hold nor take work (readiness), if so."""
        if self.keeper is None or self.keeper.ready():
            return None
        return f"replica {self.replica}: its leases could not be renewed or taken lately"

    def workspace_health(self) -> list[WorkspaceHealth]:
        since = {workspace: loop.since for workspace, loop in self.loops.items()}
        return [_health(p.status, p.interval, since.get(p.workspace)) for p in self.polled()]

    async def status(self) -> dict[str, Any]:
        stats = await self.store.outbox_stats()
        now = self.silences.clock.time()
        held = self.keeper.held if self.keeper is not None else {}
        return {
            "version": __version__,
            "replica": self.replica,
            "workspaces": [
                {
                    "name": p.workspace,
                    # Whether this replica polls it (its lease epoch), with several.
                    "polled_here": self.keeper is None or p.workspace in held,
                    "lease_epoch": held[p.workspace].epoch if p.workspace in held else None,
                    "last_success_at": p.status.last_success_at,
                    "consecutive_failures": p.status.consecutive_failures,
                    "last_error": p.status.last_error,
                    # An outage under way, before the retry budget gives up on the cycle.
                    "retrying": client.retrying,
                    "retrying_since": client.retrying_since,
                    "cycles": p.status.cycles,
                    "last_sweep_at": p.status.last_sweep_at,
                    "last_sweep_seconds": p.status.last_sweep_seconds,
                    "active_runs": len(
                        (await self.store.workspace_state(p.workspace)).active_run_ids
                    ),
                }
                for p, client in zip(self.pollers, self.clients, strict=True)
            ],
            "outbox_pending": stats.pending,
            "dead_letters": stats.dead,
            "incidents_open": dict(stats.incidents_open),
            # Those added at run time; the configured ones are in the configuration.
            "silences": [silence_json(s, now) for s in await self.store.silences(now=now)],
        }


def _health(status: PollStatus, interval: float, since: float | None) -> WorkspaceHealth:
    return WorkspaceHealth(
        name=status.workspace,
        poll_interval=interval,
        last_success_at=status.last_success_at,
        consecutive_failures=status.consecutive_failures,
        last_error=status.last_error,
        consecutive_internal_failures=status.consecutive_internal_failures,
        polled_since=since,
    )


@dataclass
class _Loop:
    """A workspace's poll loop under one lease."""

    task: asyncio.Task[None]
    stop: asyncio.Event
    since: float
    """Local clock time the loop started (readiness counts missed polls from here)."""
    lease: Lease
    forget: bool = False
    """Its lease went to another replica: its workspace's series go when it ends."""


async def build(
    config: Config,
    *,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    store: Store | None = None,
    console: TextIO | None = None,
    dry_run: bool = False,
    accept_new_state: bool = False,
    retry_budget: float | None = None,
) -> Daemon:
    """Open the store and build clients, pollers, the pipeline, channels, the dispatcher
    and metrics (nothing runs yet). A store that cannot be opened raises StoreError naming
    the database; a bad channel template raises naming its field. With `dry_run`, cycles
    decide their events but commit nothing. `accept_new_state` opens an empty database
    file (a lost state) anyway; `retry_budget` caps every workspace's (for one-shot
    commands that must fail fast)."""
    clock = clock or SystemClock()
    metrics = Metrics(
        registry=registry or CollectorRegistry(auto_describe=True),
        config=config.metrics,
        channels=list(config.channels),
        workspaces=[w.name for w in config.workspaces],
    )
    channels = build_channels(
        config.routing,
        clock=clock,
        stream=console,
        workspace_ids=workspace_ids(config.workspaces),
    )
    store = store or await open_store(config.store, accept_new_state=accept_new_state)
    try:
        metrics.restore(await store.job_times())
        return _assemble(config, store, metrics, channels, clock, dry_run, retry_budget)
    except BaseException:
        # A half-built daemon must not keep the store's thread (and the process) alive.
        await store.close()
        await close_channels(channels)
        raise


def _assemble(
    config: Config,
    store: Store,
    metrics: Metrics,
    channels: dict[str, Channel],
    clock: Clock,
    dry_run: bool,
    retry_budget: float | None,
) -> Daemon:
    """The daemon's parts around an open store and built channels."""
    if dry_run:
        store = cast(Store, _DryRun(store))
    replica = replica_name(shared=config.store.postgres is not None)
    dispatcher = Dispatcher(
        store=store,
        channels=channels,
        clock=clock,
        on_result=metrics.observe_delivery,
        owner=replica,
    )
    # One compiled table: the pipeline routes with it, reminders ask its silences (those
    # of the configuration and those added at run time, read again before each cycle).
    live = LiveSilences(
        store,
        clock,
        on_refresh=lambda: metrics.set_silences(silence_counts(table.all_silences, clock.time())),
        on_failure=metrics.silence_refresh_failures.inc,
    )
    table = RoutingTable.compile(config.routing, live=live)
    metrics.set_silences(silence_counts(table.silences, clock.time()))
    reminders = Reminders(store=store, table=table, clock=clock, on_queued=dispatcher.wake)

    def committed(report: CommitReport) -> None:
        metrics.observe_commit(report)
        if report.events:
            dispatcher.wake()
            reminders.wake()  # the events may have given incidents new targets

    pipeline = Pipeline(
        store=store,
        health_rules=config.health_rules,
        startup=config.startup,
        stuck=config.stuck,
        expectations=config.expectations,
        clock=clock,
        route=table_router(table, clock=clock, on_failure=metrics.observe_routing_failure),
        on_commit=committed,
    )
    clients: list[JobsClient] = []
    pollers: list[Poller] = []
    for workspace in config.workspaces:
        if retry_budget is not None:
            workspace = workspace.model_copy(
                update={"retry_budget": min(workspace.retry_budget, retry_budget)}
            )
        client = make_client(workspace, metrics.attempt_hook(workspace.name), clock)
        clients.append(client)
        pollers.append(
            Poller(
                config=workspace,
                startup=config.startup,
                client=client,
                state=store,
                clock=clock,
                jobs_every=_jobs_every(config.expectations),
            )
        )
        metrics.poll_interval.labels(workspace.name).set(workspace.poll_interval)
    return Daemon(
        config,
        store,
        metrics,
        pipeline,
        pollers,
        clients,
        channels,
        dispatcher,
        reminders,
        live,
        replica,
    )


def _jobs_every(expectations: ExpectationsConfig) -> float | None:
    """How often every job is read for the expectation checks (None: every check off)."""
    on = expectations.missed_schedules or expectations.not_running_after
    return expectations.jobs_every if on or expectations.success_within else None


async def run_once(daemon: Daemon) -> list[Event]:
    """One cycle per workspace, all at once; the events each committed."""
    results = await asyncio.gather(*(p.poll() for p in daemon.pollers))
    events: list[Event] = []
    await daemon.silences.refresh()
    for result in results:
        events.extend(await daemon.pipeline.handle(result))
    return events


async def serve(
    daemon: Daemon,
    *,
    stop: asyncio.Event,
    clock: Clock | None = None,
    on_ready: Callable[[Daemon], None] | None = None,
    shutdown_grace: float = 10.0,
) -> int:
    """Run until `stop` is set (exit code 0) or a background task dies (exit code 1).

    On stop, polling ends (a commit in progress finishes), in-flight deliveries get
    `shutdown_grace` seconds (undelivered ones stay pending in the store for the next
    start), then what is left is cancelled and everything closed: well inside
    Kubernetes' 30 s termination grace period."""
    clock = clock or SystemClock()
    config = daemon.config
    daemon.server = StatusServer(
        registry=daemon.metrics.registry,
        probes=Probes(
            workspaces=daemon.workspace_health,
            ping_store=daemon.store.ping,
            status=daemon.status,
            leases=daemon.lease_problem,
            page=page_for(daemon.status, daemon.store, config, clock),
        ),
        clock=clock,
        ready_after_missed_polls=config.server.ready_after_missed_polls,
        extra_routes=[SilenceApi(daemon.store, clock, config.server.api).add_routes],
    )
    try:
        await daemon.server.start(config.server.host, config.server.port)
    except OSError as err:
        # Nothing runs yet: close what build() opened (the store's thread would keep the
        # process alive) and say which address, so Kubernetes sees an exit, not a hang.
        await close(daemon)
        where = f"{config.server.host}:{config.server.port}"
        raise StartupError(f"cannot serve on {where}: {err.strerror or err}") from None
    inner_stop = asyncio.Event()

    keeper = _keeper(daemon, clock)
    # Guarded: each task logs its own death, also while shutting down (past the wait below).
    housekeeping = guarded_task(_housekeeping(daemon, clock, inner_stop), name="housekeeping")
    leases = guarded_task(keeper.run(stop=inner_stop), name="leases")
    others = [
        leases,
        guarded_task(
            daemon.dispatcher.run(stop=inner_stop, grace=shutdown_grace), name="dispatcher"
        ),
        guarded_task(daemon.reminders.run(stop=inner_stop), name="reminders"),
    ]
    daemon.tasks = [housekeeping, *others]
    log.info(
        "watcher_started",
        version=__version__,
        replica=daemon.replica,
        workspaces=[w.name for w in config.workspaces],
        metrics_url=f"{daemon.server.url}/metrics",
    )
    stopper = asyncio.create_task(stop.wait(), name="stop")
    code = 1  # unless the wait below ends by `stop`
    try:
        if on_ready is not None:
            on_ready(daemon)
        done, _ = await asyncio.wait([stopper, *daemon.tasks], return_when=asyncio.FIRST_COMPLETED)
        # A background task ended before the stop: the daemon is half-alive. A failure has
        # been logged by the task's guard; an end without one is logged here.
        code = 0 if done == {stopper} else 1
        for task in done - {stopper}:
            if task.cancelled() or task.exception() is None:
                log.error("background_task_died", task=task.get_name(), error="ended early")
    finally:
        # Whatever ended the wait (stop, a dead task, an error here), shut down fully.
        inner_stop.set()
        log.info("watcher_stopping", reason="signal" if code == 0 else "failure")
        # The keeper first: its last tick may still start a loop, which it then stops
        # with every other. The loops finish a commit in progress; the dispatcher gives
        # in-flight sends its own grace and leaves the rest pending in the store.
        await asyncio.wait([leases], timeout=shutdown_grace)
        for loop in daemon.loops.values():
            loop.stop.set()
        every = [*daemon.tasks, *daemon.poll_tasks]
        _, pending = await asyncio.wait(every, timeout=shutdown_grace + 2)
        for task in [*pending, stopper]:
            task.cancel()
        await asyncio.gather(*every, stopper, return_exceptions=True)
        # Only now that no loop can commit: the others take the workspaces at once.
        await keeper.retire()
        await close(daemon)
        log.info("watcher_stopped", exit_code=code)
    return code


def _keeper(daemon: Daemon, clock: Clock) -> LeaseKeeper:
    """The lease keeper, which starts a workspace's poll loop when this replica takes its
    lease and stops it when the lease goes. The per-job series of a workspace are
    exported by the replica polling it alone."""
    metrics = daemon.metrics
    workspaces = [p.workspace for p in daemon.pollers]
    for workspace in workspaces:
        metrics.forget_workspace(workspace)  # build() restored them all
    pollers = {p.workspace: p for p in daemon.pollers}

    def gained(lease: Lease, taken_over: bool) -> None:
        stop = asyncio.Event()
        task = guarded_task(
            _poll_under(daemon, pollers[lease.workspace], lease, clock, stop),
            name=f"poll:{lease.workspace}",
        )
        loop = _Loop(task, stop, clock.time(), lease)
        daemon.loops[lease.workspace] = loop
        metrics.poll_interval.labels(lease.workspace).set(pollers[lease.workspace].interval)
        # Kept until done, also once the lease is gone: shutdown waits for its commit.
        daemon.poll_tasks.add(task)
        task.add_done_callback(lambda _: ended(loop))
        metrics.workspace_leases.labels(daemon.replica).set(len(keeper.held))
        if taken_over:
            metrics.lease_takeovers.labels(lease.workspace).inc()

    def lost(workspace: str, why: str) -> None:
        loop = daemon.loops.pop(workspace, None)
        if loop is not None:
            loop.stop.set()
            loop.forget = why != "stopped"  # at shutdown the series go with the process
        metrics.workspace_leases.labels(daemon.replica).set(len(keeper.held))
        if why != "stopped":
            metrics.forget_workspace(workspace)

    def ended(loop: _Loop) -> None:
        """A loop's end: a loop that died gives its lease up (another replica, or this
        one at its next tick, polls the workspace again); the last commit or metrics
        restore of a loop whose lease went may have brought series back: they go."""
        daemon.poll_tasks.discard(loop.task)
        if not loop.task.cancelled() and loop.task.exception() is not None:
            keeper.lose(loop.lease, "died")
        if loop.forget and keeper.held.get(loop.lease.workspace) is None:
            metrics.forget_workspace(loop.lease.workspace)

    keeper = LeaseKeeper(
        store=daemon.store,
        replica=daemon.replica,
        workspaces=workspaces,
        ttl=daemon.config.ha.lease_seconds,
        clock=clock,
        on_gained=gained,
        on_lost=lost,
    )
    metrics.workspace_leases.labels(daemon.replica).set(0)
    daemon.keeper = keeper
    return keeper


async def _poll_under(
    daemon: Daemon, poller: Poller, lease: Lease, clock: Clock, stop: asyncio.Event
) -> None:
    """Poll a workspace while this replica holds its lease, every commit fenced by the
    lease's epoch: a commit refused (the lease moved on while this replica stalled)
    stops the loop at once."""
    workspace = lease.workspace
    keeper = daemon.keeper
    # Beside the first cycle, not before it: a takeover polls at once.
    restoring = asyncio.create_task(_restore(daemon, workspace))

    async def handle(result: PollResult) -> list[Event]:
        await daemon.silences.refresh()  # one added since the last cycle holds from this one
        try:
            return await daemon.pipeline.handle(result, epoch=lease.epoch)
        except StoreFenced as exc:
            daemon.metrics.fenced_commits.labels(workspace).inc()
            log.warning("commit_fenced", workspace=workspace, epoch=lease.epoch, error=str(exc))
            if keeper is not None:
                keeper.lose(lease, "fenced")
            raise Stopped from None  # the loop ends here, counting no cycle

    await run_poll_loop(
        poller=poller,
        handle=handle,
        clock=clock,
        stop=stop,
        on_cycle=daemon.metrics.observe_cycle,
        before_cycle=None if keeper is None else lambda: keeper.renew(lease),
    )
    await restoring


async def _restore(daemon: Daemon, workspace: str) -> None:
    """The workspace's per-job timestamps and names, as this replica starts exporting them."""
    try:
        daemon.metrics.restore(await daemon.store.job_times(workspace), workspace)
    except Exception as exc:  # the next commits set them again
        log.warning("metrics_not_restored", workspace=workspace, error=str(exc))


async def close(daemon: Daemon) -> None:
    if daemon.server is not None:
        await daemon.server.stop()
    for client in daemon.clients:
        await client.close()
    await close_channels(daemon.channels)
    await daemon.store.close()


async def _housekeeping(daemon: Daemon, clock: Clock, stop: asyncio.Event) -> None:
    """Keep the outbox and silence gauges fresh and prune the database now and then."""
    last_prune = float("-inf")
    store_problem: str | None = None
    while not stop.is_set():
        # /readyz reports a lost database; the log says so once, when it happens.
        try:
            await daemon.store.ping()
            problem = None
        except StoreError as exc:
            problem = str(exc)
        if problem is not None and problem != store_problem:
            log.error("store_unavailable", error=problem)
        store_problem = problem
        # A database outage is /readyz's to report and the poll loops' to ride out: it
        # must not end this task, which would stop the daemon.
        # Also where this replica polls nothing: the silence gauges stay true.
        await daemon.silences.refresh()
        try:
            daemon.metrics.set_outbox(await daemon.store.outbox_stats())
            if clock.monotonic() - last_prune >= PRUNE_EVERY:
                last_prune = clock.monotonic()
                pruned = await daemon.store.prune(
                    now=clock.time(),
                    run_retention_days=daemon.config.store.run_retention_days,
                    event_retention_days=daemon.config.store.event_retention_days,
                )
                if pruned.runs or pruned.events:
                    log.info("store_pruned", runs=pruned.runs, events=pruned.events)
        except Exception as exc:
            if store_problem is None:
                log.warning("housekeeping_failed", error=str(exc) or repr(exc))
        await sleep_or_stop(clock, OUTBOX_STATS_EVERY, stop)


class _DryRun:
    """A store whose commits write nothing: reads pass through, commits report their events."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit_cycle(self, commit: CycleCommit) -> list[Event]:
        return list(commit.events)

    async def commit_reminder(self, commit: ReminderCommit) -> bool:
        return False
