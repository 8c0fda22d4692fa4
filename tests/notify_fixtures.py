"""Helpers of the notify tests: events, real HTTP receivers on port 0, real SMTP servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from watcher.clock import Clock
from watcher.config import Config
from watcher.config.channels import (
    AlertmanagerChannelConfig,
    EmailChannelConfig,
    PagerDutyChannelConfig,
)
from watcher.databricks.models import Run, RunState
from watcher.events import Event, EventType, JobRef, RuleRef, event_id
from watcher.notify.alertmanager import AlertmanagerChannel
from watcher.notify.email import EmailChannel
from watcher.notify.pagerduty import PagerDutyChannel

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


# -- PagerDuty, keeping incidents ------------------------------------------------------------

PdStatus = Literal["triggered", "acknowledged", "resolved"]


@dataclass
class PdIncident:
    """One PagerDuty incident: opened by a trigger, deduplicated by its dedup_key while
    open, ended by a resolve."""

    dedup_key: str
    triggered_at: float
    status: PdStatus = "triggered"
    triggers: int = 1
    """Trigger events deduplicated into it (the first included)."""
    resolved_at: float | None = None


@dataclass
class PagerDutyService:
    """A real HTTP server answering POST /v2/enqueue as the Events API v2 does: a trigger
    opens an incident for its dedup_key unless one is open (then it counts in that one),
    acknowledge and resolve act on the open one (a resolve with none open does nothing),
    every accepted event is answered 202 {"status": "success", ...}, an invalid one 400."""

    clock: Clock
    routing_key: str = "fake-routing-key"
    incidents: list[PdIncident] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    def open(self, dedup_key: str) -> PdIncident | None:
        return next(
            (i for i in self.incidents if i.dedup_key == dedup_key and i.status != "resolved"),
            None,
        )

    def of(self, dedup_key: str) -> list[PdIncident]:
        return [i for i in self.incidents if i.dedup_key == dedup_key]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self._enqueue)
        self._runner, base = await serve(app)
        self.url = f"{base}/v2/enqueue"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _enqueue(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._invalid("body is not JSON")
        errors = _pd_errors(body, self.routing_key)
        if errors:
            return self._invalid(*errors)
        self.events.append(body)
        key, action = str(body["dedup_key"]), body["event_action"]
        incident = self.open(key)
        if action == "trigger" and incident is None:
            self.incidents.append(PdIncident(key, self.clock.time()))
        elif action == "trigger" and incident is not None:
            incident.triggers += 1
        elif action == "acknowledge" and incident is not None:
            incident.status = "acknowledged"
        elif action == "resolve" and incident is not None:
            incident.status, incident.resolved_at = "resolved", self.clock.time()
        answer = {"status": "success", "message": "Event processed", "dedup_key": key}
        return web.json_response(answer, status=202)

    @staticmethod
    def _invalid(*errors: str) -> web.Response:
        answer = {"status": "invalid event", "message": "Event object is invalid"}
        return web.json_response({**answer, "errors": list(errors)}, status=400)


def _pd_errors(body: Any, routing_key: str) -> list[str]:
    """What the Events API v2 would reject of `body` (the parts the watcher sends)."""
    if not isinstance(body, dict):
        return ["body is not an object"]
    errors = []
    if body.get("routing_key") != routing_key:
        errors.append("routing_key is wrong")
    if body.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        errors.append("event_action must be trigger, acknowledge or resolve")
    if not isinstance(body.get("dedup_key"), str) or not 0 < len(body["dedup_key"]) <= 255:
        errors.append("dedup_key must be a string of 1 to 255 characters")
    if body.get("event_action") == "trigger":
        payload = body.get("payload")
        if not isinstance(payload, dict) or not all(
            payload.get(k) for k in ("summary", "source", "severity")
        ):
            errors.append("payload needs summary, source and severity")
    return errors


# -- a real Alertmanager -----------------------------------------------------------------------

ALERTMANAGER = "prometheus-alertmanager"


@contextmanager
def run_alertmanager(directory: Path, config: str) -> Iterator[str]:
    """A private Alertmanager (Debian package prometheus-alertmanager) with `config` (its
    YAML) on a free port, clustering off, its files in `directory`: its base URL once it
    is ready; stopped on the way out."""
    binary = shutil.which(ALERTMANAGER) or f"/usr/bin/{ALERTMANAGER}"
    if not Path(binary).exists():
        pytest.fail(f"{ALERTMANAGER} is not installed (Debian package prometheus-alertmanager)")
    (directory / "alertmanager.yml").write_text(config)
    port = free_port()
    log = directory / "alertmanager.log"  # a file: a pipe nobody reads would fill and stall it
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'alertmanager.yml'}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:  # noqa: S310 - local test server
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"alertmanager did not start: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)


def pagerduty_channel(receiver: Receiver, clock: Clock, **options: Any) -> PagerDutyChannel:
    """A PagerDuty channel posting to `receiver`, which answers as the Events API does."""
    receiver.default = (202, {}, '{"status":"success"}')
    config = PagerDutyChannelConfig.model_validate(
        {
            "type": "pagerduty",
            "routing_key": "fake-routing-key",
            "url": f"{receiver.url}/v2/enqueue",
            **options,
        }
    )
    return PagerDutyChannel("pd", config, clock=clock)


def alertmanager_channel(receiver: Receiver, clock: Clock, **options: Any) -> AlertmanagerChannel:
    """An Alertmanager channel posting to `receiver`, which answers as Alertmanager does."""
    receiver.default = (200, {}, "")
    config = AlertmanagerChannelConfig.model_validate(
        {"type": "alertmanager", "url": receiver.url, **options}
    )
    return AlertmanagerChannel("am", config, clock=clock)


def email_channel(smtp: SmtpServer, clock: Clock) -> EmailChannel:
    """An email channel in clear text to the test's SMTP server, one recipient."""
    config = EmailChannelConfig(
        type="email",
        host="127.0.0.1",
        port=smtp.port,
        security="none",
        sender="watcher@example.com",
        recipients=["oncall@example.com"],
    )
    return EmailChannel("mail", config, clock=clock)
