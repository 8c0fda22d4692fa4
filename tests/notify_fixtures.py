"""Helpers of the notify tests: events, real HTTP receivers on port 0, real SMTP servers."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from watcher.clock import Clock
from watcher.config import Config
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, JobRef, RuleRef, event_id

HOSTILE_NAME = (
    "evil\r\nBcc: victim@example.org\r\n<script>alert(1)</script> <!channel> *bold* "
    "[link](https://phish.example) {{ 7*7 }} {% raw %}"
)
FAKE_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtbm90LXJlYWwtMDAwMDAwMDA="  # base64 of a fake key


def make_event(
    type_: EventType = EventType.RUN_FAILED,
    *,
    workspace: str = "prod",
    job_id: int | None = 42,
    name: str | None = "nightly-etl",
    tags: dict[str, str] | None = None,
    run_id: int = 1001,
    trigger: str | None = "PERIODIC",
    run_type: str | None = "JOB_RUN",
    at: float = 1_700_000_000.0,
    rule: RuleRef | None = None,
    message: str | None = "Task ingest failed: boom",
    test: bool = False,
) -> Event:
    result = {
        EventType.RUN_FAILED: "FAILED",
        EventType.RUN_SUCCEEDED: "SUCCESS",
        EventType.JOB_RECOVERED: "SUCCESS",
        EventType.RUN_CANCELED: "CANCELED",
    }.get(type_)
    terminal = result is not None or type_ == EventType.RUN_SKIPPED
    start_ms = int(at * 1000) - 600_000
    return Event(
        id=event_id(workspace, run_id, str(type_), rule.name if rule else None),
        type=type_,
        workspace=workspace,
        occurred_at=datetime.fromtimestamp(at, UTC),
        job=JobRef(job_id=job_id, name=name, tags=tags or {}),
        run=Run(
            run_id=run_id,
            job_id=job_id,
            run_name=name,
            state=RunState(
                life_cycle_state="TERMINATED" if terminal else "RUNNING",
                result_state=result,
                state_message=message,
            ),
            start_time=start_ms,
            end_time=int(at * 1000) if terminal else 0,
            setup_duration=60_000,
            execution_duration=500_000 if terminal else 0,
            cleanup_duration=40_000 if terminal else 0,
            trigger=trigger,
            run_type=run_type,
            run_page_url=f"https://adb-1234567890123456.7.azuredatabricks.net/?o=1234567890123456#job/{job_id}/run/{run_id}",
        ),
        rule=rule,
        observed_seconds=4000.0 if rule else None,
        raw_state=result,
        test=test,
    )


def make_config(**raw: Any) -> Config:
    """A Config with one workspace and whatever channels/routes are given."""
    base: dict[str, Any] = {
        "workspaces": [
            {
                "name": "prod",
                "host": "https://adb-1234567890123456.7.azuredatabricks.net",
                "auth": {"type": "pat", "token": "dapi-fake-token-for-tests"},
            }
        ]
    }
    base.update(raw)
    return Config.model_validate(base)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real HTTP server recording every request; answers from `script` in order, then
    `default` (status, headers, body). `hold` makes requests wait until released."""

    clock: Clock
    default: tuple[int, dict[str, str], str] = (200, {}, "ok")
    script: list[tuple[int, dict[str, str], str]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    hold: asyncio.Event | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await request.read()
            self.requests.append(
                Request(request.path_qs, dict(request.headers), body, self.clock.time())
            )
            self.arrived.set()
            if self.hold is not None:
                await self.hold.wait()
            status, headers, text = self.script.pop(0) if self.script else self.default
            return web.Response(status=status, headers=headers, text=text)
        finally:
            self.in_flight -= 1

    async def wait_for(self, predicate: Callable[[list[Request]], bool]) -> None:
        """Until the requests so far satisfy `predicate` (bound it with asyncio.timeout)."""
        while not predicate(self.requests):
            self.arrived.clear()
            await self.arrived.wait()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner, self.url = await serve(app)
        return self.url

    async def stop(self) -> None:
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve `app` over real HTTP on a free port of 127.0.0.1: its runner (clean it up to
    stop) and its base URL."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Mailbox:
    """What a real SMTP server (aiosmtpd, in this event loop) received."""

    envelopes: list[Envelope] = field(default_factory=list)
    tls_sessions: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        if session.ssl is not None:
            self.tls_sessions += 1
        return "250 OK"


@dataclass
class SmtpServer:
    mailbox: Mailbox
    port: int
    server: asyncio.Server

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def tls_files(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A trustme CA: the server's TLS context, and the CA bundle file clients trust."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    bundle = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return context, bundle


USER, PASSWORD = "watcher", "not-a-real-password"


def _authenticator(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


async def start_smtp(
    *,
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    require_starttls: bool = False,
    auth: bool = False,
    mailbox: Mailbox | None = None,
) -> SmtpServer:
    mailbox = mailbox or Mailbox()
    options: dict[str, Any] = {"hostname": "mx.test"}
    if tls is not None and not implicit_tls:
        options.update(tls_context=tls, require_starttls=require_starttls)
    if auth:
        options.update(auth_required=True, authenticator=_authenticator)
    factory: Callable[[], SMTP] = lambda: SMTP(mailbox, **options)  # noqa: E731
    server = await asyncio.get_running_loop().create_server(
        factory, "127.0.0.1", port, ssl=tls if implicit_tls else None
    )
    bound: int = server.sockets[0].getsockname()[1]
    return SmtpServer(mailbox, bound, server)
