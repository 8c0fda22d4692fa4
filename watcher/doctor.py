"""`watcher doctor`: the online half of checking a configuration. check-config proves what
can be proved offline; this asks the world: per workspace, whether its host resolves and
answers, the credentials work, every endpoint the poller uses may be read, and the clock;
per channel, whether its server can be reached (and, with `--send`, takes a test alert)."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from watcher.clock import Clock, SystemClock
from watcher.config import Config, WorkspaceConfig
from watcher.config.channels import ChannelConfig, ConsoleChannelConfig, EmailChannelConfig
from watcher.databricks import JobsClient, RetryPolicy, Timeouts
from watcher.databricks.errors import ApiError, DatabricksError
from watcher.store.base import StoreError, StoreNotMigrated
from watcher.store.opening import open_store

# A doctor answers in seconds: no retry budget, short timeouts.
TIMEOUT = 5.0
# Beyond this the workspace's clock and ours disagree enough to name it (the watcher itself
# keeps to the workspace's clock, from the Date header).
SKEW_WARNING = 30.0


@dataclass(frozen=True, slots=True)
class Check:
    target: str
    check: str
    ok: bool
    detail: str


async def diagnose(
    config: Config,
    *,
    send: bool = False,
    clock: Clock | None = None,
    out: TextIO | None = None,
    patience: float = TIMEOUT,
) -> list[Check]:
    """Every check of every workspace and channel, in config order."""
    clock = clock or SystemClock()
    checks: list[Check] = []
    for workspace in config.workspaces:
        checks += await _workspace(workspace, clock, patience)
    for name, channel in config.channels.items():
        checks += await _channel(config, name, channel, send=send, out=out, patience=patience)
    checks.append(await _store(config))
    return checks


async def _store(config: Config) -> Check:
    """The store opens and takes a write, as `watcher run` will need. PostgreSQL is
    migrated as the first start would; a SQLite file that does not exist yet is not
    created, only its directory checked."""
    if config.store.postgres is None:
        path = config.store.sqlite_path
        if not path.exists():
            parent = next(p for p in path.absolute().parents if p.exists())
            if not os.access(parent, os.W_OK | os.X_OK):
                return Check("store", "sqlite", False, f"{parent} is not writable: {path}")
            return Check("store", "sqlite", True, f"{path} will be created at the first start")
    backend = "sqlite" if config.store.postgres is None else "postgres"
    try:
        store = await open_store(config.store, create=False)
        try:
            await store.ping()
        finally:
            await store.close()
    except StoreNotMigrated as exc:
        # Reachable, writable by the first start, which migrates it: nothing is wrong.
        return Check("store", backend, True, f"reachable; `watcher run` migrates it ({exc})")
    except StoreError as exc:
        return Check("store", backend, False, str(exc))
    return Check("store", backend, True, "opens and takes a write")


def render(checks: list[Check]) -> str:
    """A table: one line per check, ✔ or ✗, with the reason."""
    width = max((len(c.target) for c in checks), default=6)
    kind = max((len(c.check) for c in checks), default=5)
    lines = [f"  {'TARGET':<{width}}  {'CHECK':<{kind}}  RESULT"]
    for c in checks:
        lines.append(f"{'✔' if c.ok else '✗'} {c.target:<{width}}  {c.check:<{kind}}  {c.detail}")
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks)} checks, {failed} failed")
    return "\n".join(lines)


async def _workspace(workspace: WorkspaceConfig, clock: Clock, patience: float) -> list[Check]:
    from watcher.app import make_auth  # the composition root knows how to build auth

    target = f"workspace {workspace.name}"
    url = urlsplit(str(workspace.host))
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port), patience
        )
    except (OSError, TimeoutError) as exc:
        return [Check(target, "resolve", False, f"{host}: {_reason(exc)}")]
    checks = [
        Check(target, "resolve", True, f"{host}: {len({a[4][0] for a in addresses})} address(es)")
    ]
    client = JobsClient(
        host=str(workspace.host),
        auth=make_auth(workspace, clock),
        api_version=workspace.api_version,
        requests_per_second=workspace.requests_per_second,
        timeouts=Timeouts(connect=min(workspace.connect_timeout, patience), total=patience),
        retry=RetryPolicy(budget=0.0),
        ca_bundle=workspace.ca_bundle,
        clock=clock,
    )
    try:
        checks += await _endpoints(target, client)
    finally:
        await client.close()
    return checks


async def _endpoints(target: str, client: JobsClient) -> list[Check]:
    """One cheap call per endpoint the poller uses; the first that cannot even connect or
    authenticate stops the rest (they would fail the same way)."""
    checks: list[Check] = []
    run_id: int | None = None
    job_id: int | None = None

    async def first_page(pages: AsyncGenerator[Any, None]) -> Any:
        page = await anext(pages)
        await pages.aclose()  # the rest of the walk is not wanted
        return page

    async def list_active() -> str:
        page = await first_page(client.list_runs(active_only=True, limit=1))
        return f"{len(page.runs)} run(s) on the first page"

    async def list_completed() -> str:
        nonlocal run_id
        page = await first_page(client.list_runs(completed_only=True, limit=1))
        run_id = page.runs[0].run_id if page.runs else None
        return "readable" if page.runs else "no finished run to show"

    async def get_run() -> str:
        if run_id is None:
            return "no run to read (none finished yet)"
        await client.get_run(run_id)
        return f"run {run_id} readable"

    async def list_jobs() -> str:
        nonlocal job_id
        page = await first_page(client.list_jobs())
        job_id = page.jobs[0].job_id if page.jobs else None
        return f"{len(page.jobs)} job(s) on the first page"

    async def get_job() -> str:
        if job_id is None:
            return "no job to read"
        await client.get_job(job_id)
        return f"job {job_id} readable"

    calls: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("runs/list active", list_active),
        ("runs/list completed", list_completed),
        ("runs/get", get_run),
        ("jobs/list", list_jobs),
        ("jobs/get", get_job),
    ]
    for name, call in calls:
        try:
            checks.append(Check(target, name, True, await call()))
        except ApiError as exc:
            checks.append(Check(target, name, False, _api_reason(exc)))
            if exc.status in (401, 403) and not checks[:-1]:
                return checks  # the credentials: every other call fails alike
        except (DatabricksError, OSError, TimeoutError) as exc:
            checks.append(Check(target, name, False, _reason(exc)))
            if not any(c.ok for c in checks):
                return checks  # not even one answer: unreachable
    checks.append(_skew(target, client))
    return checks


def _skew(target: str, client: JobsClient) -> Check:
    if client.server_offset is None:
        return Check(target, "clock", False, "no Date header: the workspace's time is unknown")
    skew = client.server_offset
    ok = abs(skew) <= SKEW_WARNING
    return Check(
        target,
        "clock",
        ok,
        f"this host is {abs(skew):.1f}s {'behind' if skew > 0 else 'ahead of'} the workspace",
    )


async def _channel(
    config: Config,
    name: str,
    channel: ChannelConfig,
    *,
    send: bool,
    out: TextIO | None,
    patience: float,
) -> list[Check]:
    target = f"channel {name}"
    if isinstance(channel, ConsoleChannelConfig):
        return [Check(target, "reach", True, "standard output: nothing to reach")]
    if isinstance(channel, EmailChannelConfig):
        host, port, tls = channel.host, channel.port, False
    else:
        url = urlsplit(_url(channel))
        host = url.hostname or ""
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
    checks = [await _reach(target, host, port, tls, patience)]
    if send and checks[0].ok:
        from watcher.notify.payloads import workspace_ids
        from watcher.notify.testalert import TestAlertError, send_test_alert

        try:
            detail = await send_test_alert(
                config.routing,
                name,
                stream=out,
                workspace=config.workspaces[0].name,
                workspace_ids=workspace_ids(config.workspaces),
            )
            checks.append(Check(target, "test alert", True, detail))
        except TestAlertError as exc:
            checks.append(Check(target, "test alert", False, str(exc)))
    return checks


def _url(channel: ChannelConfig) -> str:
    url = getattr(channel, "url")  # noqa: B009 - every HTTP channel config has one
    return url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)


async def _reach(target: str, host: str, port: int, tls: bool, patience: float) -> Check:
    """A TCP connection (and a verified TLS handshake for https): the server is there."""
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl.create_default_context() if tls else None),
            patience,
        )
    except (OSError, TimeoutError) as exc:
        return Check(target, "reach", False, f"{host}:{port}: {_reason(exc)}")
    writer.close()
    await writer.wait_closed()
    return Check(target, "reach", True, f"{host}:{port} answers{' (TLS verified)' if tls else ''}")


def _api_reason(exc: ApiError) -> str:
    if exc.status == 401:
        return "HTTP 401: the credentials were refused (token or OAuth client)"
    if exc.status == 403:
        return f"HTTP 403: not permitted ({exc.error_code}): {exc.message[:120]}"
    return f"HTTP {exc.status} {exc.error_code}: {exc.message[:120]}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)[:200] or type(exc).__name__
