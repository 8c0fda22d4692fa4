"""The HTTP side of the daemon: /metrics for Prometheus, /healthz and /readyz for
Kubernetes, a small JSON /status, the status page at / and whatever routes the
composition root adds (the silences API)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from watcher.clock import Clock
from watcher.store.base import StoreError

STUCK_AFTER_CYCLES = 5
"""Cycles in a row failing for a reason other than the API before /healthz fails."""


@dataclass(frozen=True, slots=True)
class WorkspaceHealth:
    name: str
    poll_interval: float
    last_success_at: float | None
    consecutive_failures: int
    last_error: str | None
    consecutive_internal_failures: int = 0
    """Failed cycles in a row that were not an API outage: the loop cannot progress."""
    polled_since: float | None = None
    """When this replica began to poll it (it took the workspace's lease), if later than
    the start: missed polls count from then."""


@dataclass(frozen=True, slots=True)
class Probes:
    """What the server asks the running daemon."""

    workspaces: Callable[[], list[WorkspaceHealth]]
    ping_store: Callable[[], Awaitable[None]]
    status: Callable[[], Awaitable[dict[str, Any]]]
    leases: Callable[[], str | None] = lambda: None
    """Why this replica can neither hold nor take a workspace's lease, if so."""
    page: Callable[[], Awaitable[str]] | None = None
    """The status page for people at `/`, as HTML (watcher.statuspage); None: no page."""


class StatusServer:
    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        probes: Probes,
        clock: Clock,
        ready_after_missed_polls: int,
        extra_routes: Sequence[Callable[[web.Application], None]] = (),
    ) -> None:
        self._registry = registry
        self._extra_routes = extra_routes
        self._probes = probes
        self._clock = clock
        self._missed = ready_after_missed_polls
        self._started_at = clock.time()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        # prometheus_client's own handler: the text format, or OpenMetrics when asked for
        # in Accept; gzip (or deflate) when Accept-Encoding allows it; `?name[]=` filters.
        app.router.add_get("/metrics", make_aiohttp_handler(self._registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/", self._page)
        for add_routes in self._extra_routes:
            add_routes(app)  # the silences API (watcher.httpapi)
        return app

    async def start(self, host: str, port: int) -> str:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound = server.sockets[0].getsockname()
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 - display only
        self.url = f"http://{shown}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        # Answering at all proves the event loop is alive; a workspace loop failing cycle
        # after cycle for a reason of its own (not an API outage) is alive but stuck, and a
        # restart is the remedy Kubernetes can offer.
        stuck = [
            f"workspace {ws.name}: {ws.consecutive_internal_failures} cycles failed in a row: "
            f"{ws.last_error}"
            for ws in self._probes.workspaces()
            if ws.consecutive_internal_failures >= STUCK_AFTER_CYCLES
        ]
        if stuck:
            return web.json_response({"status": "stuck", "problems": stuck}, status=503)
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        problems = await self.problems()
        status = 503 if problems else 200
        return web.json_response({"ready": not problems, "problems": problems}, status=status)

    async def problems(self) -> list[str]:
        """Why the daemon is not ready; empty when it is."""
        problems: list[str] = []
        try:
            await self._probes.ping_store()
        except StoreError as exc:
            problems.append(str(exc))
        if (lease_problem := self._probes.leases()) is not None:
            problems.append(lease_problem)
        now = self._clock.time()
        for ws in self._probes.workspaces():
            since = max(
                t for t in (ws.last_success_at, ws.polled_since, self._started_at) if t is not None
            )
            if now - since > self._missed * ws.poll_interval:
                last = ws.last_success_at
                when = "never" if last is None else f"{now - last:.0f}s ago"
                detail = f": {ws.last_error}" if ws.last_error else ""
                problems.append(f"workspace {ws.name}: last successful poll {when}{detail}")
        return problems

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._probes.status())

    async def _page(self, request: web.Request) -> web.Response:
        if self._probes.page is None:
            raise web.HTTPNotFound()
        try:
            html = await self._probes.page()
        except StoreError as exc:
            return web.Response(status=503, text=f"the store cannot be read: {exc}\n")
        # No script, no asset from elsewhere: were a value ever not escaped, it still ran
        # nothing. Always fresh (it refreshes itself).
        headers = {
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=headers)
