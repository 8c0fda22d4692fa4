"""The simulated workspace over HTTP: the Jobs API (2.0, 2.1, 2.2) as Databricks serves it,
an OAuth token endpoint, fault injection, and a control API under /sim/ for scenarios run
from another process."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from watcher.clock import Clock, SystemClock
from watcher.simulator.faults import Fault, FaultPlan
from watcher.simulator.render import job_json, poisoned, run_json
from watcher.simulator.workspace import (
    InProgressError,
    NotFoundError,
    RunPlan,
    SimRun,
    TaskPlan,
    Workspace,
)

# runs/list 2.0 takes a limit "greater than 0 and less than 1000"; 2.1+ at most 25.
MAX_RUNS_LIMIT = {"2.0": 999, "2.1": 25, "2.2": 25}
MAX_JOBS_LIMIT = 100
MAX_JOBS_OFFSET = 1000
TASK_PAGE = 100  # 2.2 pages tasks of runs/get and jobs/get, and caps them in runs/list
VERSIONS = ("2.0", "2.1", "2.2")
_RESPONSE_FAULTS = frozenset({"status", "reset", "malformed", "truncated"})


class ApiProblem(Exception):
    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


def _invalid(message: str) -> ApiProblem:
    return ApiProblem(400, "INVALID_PARAMETER_VALUE", message)


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    version: str
    endpoint: str
    params: dict[str, str]
    status: int
    method: str = "GET"
    received_at: float = field(default=0.0, compare=False)
    """Real monotonic seconds when it arrived (whatever the simulator's clock): the
    gaps between a workspace's polls, measured from outside the watcher."""


class Simulator:
    """One simulated workspace served over HTTP. Use as `async with Simulator(...) as sim`;
    `sim.url` is then the host to give a client."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        tokens: set[str] | None = None,
        oauth_clients: dict[str, str] | None = None,
        oauth_token_ttl: int = 3600,
        completed_order: Literal["start_time", "end_time"] = "start_time",
        in_run_retries: bool = False,
        runs_limit_max: dict[str, int] | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.workspace = Workspace(clock=self.clock, in_run_retries=in_run_retries)
        self.runs_limit_max = dict(MAX_RUNS_LIMIT) | (runs_limit_max or {})
        """Largest runs/list limit per API version (limit=0 asks for it)."""
        self.send_date: bool = True
        """False: responses carry no Date header at all, as from a server that omits it."""
        self.tokens = set(tokens or {"dapi-simulator-token"})
        self.oauth_clients = dict(oauth_clients or {})
        self.oauth_token_ttl = oauth_token_ttl
        self.completed_order = completed_order
        self.faults = FaultPlan()
        self.requests: list[LoggedRequest] = []
        self.on_request: Callable[[LoggedRequest], None] | None = None
        """Called with each API request as it is logged, before its response is sent (a
        crash test kills its client there, at a point of the request stream it can replay)."""
        self.oauth_issued = 0
        self._oauth_tokens: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._set_date)
        app.router.add_get("/api/{version}/jobs/{path:.+}", self._api)
        app.router.add_post("/api/{version}/jobs/{path:.+}", self._api_post)
        app.router.add_get("/.well-known/databricks-config", self._host_metadata)
        app.router.add_post("/oidc/v1/token", self._oauth_token)
        app.router.add_post("/sim/jobs", self._ctl_create_job)
        app.router.add_post("/sim/jobs/{job_id}/poison", self._ctl_poison_job)
        app.router.add_post("/sim/jobs/{job_id}/{action}", self._ctl_job_action)
        app.router.add_post("/sim/runs", self._ctl_start_run)
        app.router.add_post("/sim/runs/{run_id}/force", self._ctl_force)
        app.router.add_post("/sim/runs/{run_id}/release", self._ctl_release)
        app.router.add_post("/sim/runs/{run_id}/repair", self._ctl_repair)
        app.router.add_post("/sim/runs/{run_id}/poison", self._ctl_poison_run)
        app.router.add_delete("/sim/runs/{run_id}", self._ctl_delete_run)
        app.router.add_post("/sim/advance", self._ctl_advance)
        app.router.add_post("/sim/faults", self._ctl_add_fault)
        app.router.add_delete("/sim/faults", self._ctl_clear_faults)
        app.router.add_get("/sim/state", self._ctl_state)
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on `host:port` (0: any free port), over TLS with `ssl_context`; the URL."""
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound_port = server.sockets[0].getsockname()[1]
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://{host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def api_requests(self, endpoint: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    # -- middleware: date, faults, errors, request log ---------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        endpoint = _endpoint(request)
        version = request.match_info.get("version", "")
        is_api = request.path.startswith("/api/")
        response: web.StreamResponse
        if is_api and (fault := self.faults.take(endpoint, frozenset({"latency"}))):
            await asyncio.sleep(fault.delay)
        fault = self.faults.take(endpoint, _RESPONSE_FAULTS) if is_api else None
        if fault is not None and fault.kind == "reset":
            self._log(version, endpoint, request, 0)
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)  # never reaches the client
        if fault is not None and fault.kind == "status":
            response = _fault_response(fault)
        else:
            try:
                response = await handler(request)
            except ApiProblem as problem:
                response = _error(problem.status, problem.error_code, problem.message)
            if fault is not None and isinstance(response, web.Response) and response.body:
                raw = bytes(response.body)  # type: ignore[arg-type]
                body = raw[: len(raw) // 2] if fault.kind == "truncated" else b'{"runs": "oops"'
                response = web.Response(body=body, status=200, content_type="application/json")
        if is_api:
            self._log(version, endpoint, request, response.status)
        return response

    async def _set_date(self, request: web.Request, response: web.StreamResponse) -> None:
        """The Date header tells the simulated time, so clients can measure clock skew.
        aiohttp stamps a real Date on every response before this hook runs, so the hook
        replaces it, or removes it when `send_date` is off."""
        if self.send_date:
            response.headers["Date"] = formatdate(self.clock.time(), usegmt=True)
        else:
            response.headers.popall("Date", None)

    def _log(self, version: str, endpoint: str, request: web.Request, status: int) -> None:
        logged = LoggedRequest(
            version, endpoint, dict(request.query), status, request.method, time.monotonic()
        )
        self.requests.append(logged)
        if self.on_request is not None:
            self.on_request(logged)

    # -- auth ------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme == "Basic":
            try:
                user, _, credential = base64.b64decode(credential).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                credential = ""
            if user != "token":
                credential = ""
        elif scheme != "Bearer":
            raise ApiProblem(401, "UNAUTHENTICATED", "No credentials were sent.")
        if credential in self.tokens:
            return
        expires = self._oauth_tokens.get(credential)
        if expires is not None:
            if self.clock.time() < expires:
                return
            raise ApiProblem(401, "UNAUTHENTICATED", "Token is expired.")
        raise ApiProblem(403, "PERMISSION_DENIED", "Invalid access token.")

    async def _oauth_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        basic = request.headers.get("Authorization", "")
        try:
            client_id, _, secret = (
                base64.b64decode(basic.removeprefix("Basic ")).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            client_id, secret = "", ""
        if form.get("grant_type") != "client_credentials" or form.get("scope") != "all-apis":
            return web.json_response(
                {"error": "invalid_request", "error_description": "unsupported grant or scope"},
                status=400,
            )
        if not client_id or self.oauth_clients.get(client_id) != secret:
            return web.json_response(
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                status=401,
            )
        token = f"sim-oauth-{secrets.token_hex(12)}"
        self._oauth_tokens[token] = self.clock.time() + self.oauth_token_ttl
        self.oauth_issued += 1
        return web.json_response(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.oauth_token_ttl,
                "scope": "all-apis",
            }
        )

    # -- the Jobs API ----------------------------------------------------------------

    async def _host_metadata(self, request: web.Request) -> web.Response:
        base = f"{request.scheme}://{request.host}"
        return web.json_response(
            {"oidc_endpoint": f"{base}/oidc", "workspace_id": str(self.workspace.workspace_id)}
        )

    async def _api(self, request: web.Request) -> web.Response:
        query = request.query
        version = request.match_info["version"]
        base = f"{request.scheme}://{request.host}"
        return self._answer(
            request,
            {
                "runs/list": lambda: self._list_runs(query, version, base),
                "runs/get": lambda: self._get_run(query, version, base),
                "jobs/get": lambda: self._get_job(query, version),
                "jobs/list": lambda: self._list_jobs(query, version),
            },
        )

    async def _api_post(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = None
        return self._answer(request, {"runs/repair": lambda: self._repair_run(body)})

    def _answer(
        self, request: web.Request, handlers: dict[str, Callable[[], dict[str, Any]]]
    ) -> web.Response:
        """What every Jobs API call goes through: version, credentials, the workspace
        brought up to now, then the endpoint's handler."""
        version = request.match_info["version"]
        what = f"{request.method} {request.path}"
        if version not in VERSIONS:
            raise ApiProblem(404, "ENDPOINT_NOT_FOUND", f"No API found for '{what}'")
        self._authenticate(request)
        self.workspace.settle()
        handle = handlers.get(_endpoint(request))
        if handle is None:
            raise ApiProblem(404, "ENDPOINT_NOT_FOUND", f"No API found for '{what}'")
        try:
            return web.json_response(handle())
        except NotFoundError as exc:
            raise _invalid(str(exc.args[0])) from None

    def _render(
        self, run: SimRun, version: str, base: str, with_tasks: bool, with_history: bool = False
    ) -> dict[str, Any]:
        return run_json(
            run,
            now=self.workspace.now_ms(),
            version=version,
            base_url=base,
            workspace_id=self.workspace.workspace_id,
            with_tasks=with_tasks,
            with_history=with_history,
        )

    def _list_runs(self, query: Any, version: str, base: str) -> dict[str, Any]:
        max_limit = self.runs_limit_max[version]
        limit = _int(query, "limit", 20)
        if limit == 0:
            limit = max_limit
        if not 0 < limit <= max_limit:
            raise _invalid(f"Invalid limit {limit} - it has to be no more than {max_limit}.")
        offset = _int(query, "offset", 0)
        if offset < 0:
            raise _invalid(f"Invalid offset {offset}.")
        active_only = query.get("active_only") == "true"
        completed_only = query.get("completed_only") == "true"
        if active_only and completed_only:
            raise _invalid("active_only and completed_only cannot both be true.")
        job_id = _int(query, "job_id", None)
        if job_id is not None:
            self.workspace.get_job(job_id)
        run_type = query.get("run_type")
        newer = version != "2.0"
        start_from = _int(query, "start_time_from", None) if newer else None
        start_to = _int(query, "start_time_to", None) if newer else None
        now = self.workspace.now_ms()

        def wanted(run: SimRun) -> bool:
            if job_id is not None and run.job_id != job_id:
                return False
            if run_type is not None and run.run_type != run_type:
                return False
            if start_from is not None and run.start_ms < start_from:
                return False
            if start_to is not None and run.start_ms > start_to:
                return False
            return not (completed_only and not run.ended_by(now))

        by_end = completed_only and self.completed_order == "end_time"

        def key(run: SimRun) -> tuple[int, int]:
            return (run.end_ms or 0, run.run_id) if by_end else run.sort_key

        if active_only:
            candidates = iter(self.workspace.active_runs())
        elif by_end:
            done = self.workspace.runs_newest_first(start_from, start_to)
            candidates = iter(sorted((r for r in done if r.ended_by(now)), key=key, reverse=True))
        else:
            candidates = self.workspace.runs_newest_first(start_from, start_to)
        cursor = _decode_token(query.get("page_token")) if newer else None
        page: list[SimRun] = []
        skipped = 0
        for run in candidates:
            if not wanted(run):
                continue
            if cursor is not None:
                if key(run) >= cursor:
                    continue
            elif skipped < offset:
                skipped += 1
                continue
            page.append(run)
            if len(page) > limit:
                break
        has_more = len(page) > limit
        page = page[:limit]
        for hook in self.workspace.list_hooks:
            hook(self.workspace, page)
        if fault := self.faults.take("runs/list", frozenset({"delete_after_page"})):
            for run in [r for r in page if r.ended_by(now)][: fault.count]:
                self.workspace.delete_run(run.run_id)
        expand = newer and query.get("expand_tasks") == "true"
        body: dict[str, Any] = {}
        if page:
            body["runs"] = [self._render(r, version, base, expand) for r in page]
            if version == "2.2":
                for run_body in body["runs"]:
                    tasks = run_body.get("tasks", [])
                    if len(tasks) > TASK_PAGE:
                        run_body["tasks"] = tasks[:TASK_PAGE]
                        run_body["has_more"] = True
            body["runs"] = [
                poisoned(b, r.overrides) for b, r in zip(body["runs"], page, strict=True)
            ]
        if version != "2.2":
            body["has_more"] = has_more
        if newer and has_more:
            body["next_page_token"] = _encode_token(key(page[-1]))
        return body

    def _get_run(self, query: Any, version: str, base: str) -> dict[str, Any]:
        run_id = _int(query, "run_id", None)
        if run_id is None:
            raise _invalid("Missing required field: run_id")
        run = self.workspace.get_run(run_id)
        body = self._render(
            run,
            version,
            base,
            with_tasks=version != "2.0" or bool(run.tasks),
            with_history=query.get("include_history") == "true",
        )
        if version == "2.2":
            _page_tasks(body, "tasks", query.get("page_token"))
        return poisoned(body, run.overrides)

    def _repair_run(self, request: Any) -> dict[str, Any]:
        """runs/repair: the run must have ended, and a repeated repair must name the
        latest repair it follows (latest_repair_id), as Databricks checks."""
        if not isinstance(request, dict) or not isinstance(request.get("run_id"), int):
            raise _invalid("Missing required field: run_id")
        run = self.workspace.get_run(request["run_id"])
        rerun_tasks = request.get("rerun_tasks")
        if rerun_tasks is not None and request.get("rerun_all_failed_tasks"):
            raise _invalid("Only one of rerun_tasks and rerun_all_failed_tasks can be used.")
        if request.get("latest_repair_id") != run.repair_id:
            raise _invalid(
                f"latest_repair_id {request.get('latest_repair_id')} does not match the "
                f"latest repair {run.repair_id} of run {run.run_id}."
            )
        if rerun_tasks is not None and not (
            isinstance(rerun_tasks, list) and all(isinstance(k, str) for k in rerun_tasks)
        ):
            raise _invalid("rerun_tasks must be a list of task keys.")
        try:
            return {"repair_id": self.workspace.repair_run(run.run_id, rerun_tasks=rerun_tasks)}
        except InProgressError as exc:
            raise ApiProblem(400, "INVALID_STATE", str(exc)) from None
        except ValueError as exc:
            raise _invalid(str(exc)) from None

    def _get_job(self, query: Any, version: str) -> dict[str, Any]:
        job_id = _int(query, "job_id", None)
        if job_id is None:
            raise _invalid("Missing required field: job_id")
        job = self.workspace.get_job(job_id)
        body: dict[str, Any] = json.loads(json.dumps(job_json(job, version)))
        if version == "2.2":
            _page_tasks(body["settings"], "tasks", query.get("page_token"), holder=body)
        return poisoned(body, job.overrides)

    def _list_jobs(self, query: Any, version: str) -> dict[str, Any]:
        jobs = sorted(self.workspace.jobs.values(), key=lambda j: j.job_id)
        if name := query.get("name"):
            jobs = [j for j in jobs if j.settings.get("name") == name]
        if version == "2.0":
            listed = [poisoned(job_json(j, version), j.overrides) for j in jobs]
            return {"jobs": listed} if listed else {}
        limit = _int(query, "limit", 20)
        if not 0 < limit <= MAX_JOBS_LIMIT:
            raise _invalid(f"Invalid limit {limit} - it has to be no more than {MAX_JOBS_LIMIT}.")
        cursor = _decode_token(query.get("page_token"))
        if cursor is not None:
            jobs = [j for j in jobs if j.job_id > cursor[0]]
        else:
            offset = _int(query, "offset", 0)
            if offset > MAX_JOBS_OFFSET:
                raise _invalid(
                    f"The supplied offset {offset} has exceeded the value of {MAX_JOBS_OFFSET} "
                    "allowed for this parameter. Please use the page_token parameter to paginate"
                )
            jobs = jobs[offset:]
        page, has_more = jobs[:limit], len(jobs) > limit
        listed = [job_json(j, version) for j in page]
        if query.get("expand_tasks") != "true":
            for job in listed:  # 2.1+ lists tasks only when asked
                job["settings"] = {k: v for k, v in job["settings"].items() if k != "tasks"}
        listed = [poisoned(body, j.overrides) for body, j in zip(listed, page, strict=True)]
        body: dict[str, Any] = {"jobs": listed} if listed else {}
        if version == "2.1":
            body["has_more"] = has_more
        if has_more:
            body["next_page_token"] = _encode_token((page[-1].job_id, 0))
        return body

    # -- control API -----------------------------------------------------------------

    async def _ctl_create_job(self, request: web.Request) -> web.Response:
        spec = await _parse(request, JobSpec)
        fields = spec.model_dump(exclude_none=True, exclude={"plan", "periodic"})
        plan = RunPlan(**spec.plan.model_dump()) if spec.plan else None
        periodic = (spec.periodic.interval, spec.periodic.unit) if spec.periodic else None
        try:
            job_id = self.workspace.create_job(plan=plan, periodic=periodic, **fields)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"job_id": job_id})

    async def _ctl_job_action(self, request: web.Request) -> web.Response:
        """The scheduler of one job: pause, resume, skip_next_trigger, stop_continuous
        (body {"result": ...} optional), start_continuous."""
        ws = self.workspace
        action = request.match_info["action"]
        actions: dict[str, Callable[[int], None]] = {
            "pause": ws.pause_job,
            "resume": ws.resume_job,
            "skip_next_trigger": ws.skip_next_trigger,
            "start_continuous": ws.start_continuous,
        }
        if action == "stop_continuous":
            spec = await _parse(request, StopSpec) if await request.read() else StopSpec()
            actions[action] = lambda job_id: ws.stop_continuous(job_id, spec.result)
        act = actions.get(action)
        if act is None:
            raise web.HTTPNotFound(text=f"no job action {action!r}")
        try:
            act(int(request.match_info["job_id"]))
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        except ValueError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        return web.json_response({})

    async def _ctl_start_run(self, request: web.Request) -> web.Response:
        spec = await _parse(request, RunSpec)
        fields = spec.model_dump(exclude={"tasks"}, exclude_none=True)
        tasks = [TaskPlan(**t.model_dump()) for t in spec.tasks] if spec.tasks else None
        try:
            run_id = self.workspace.start_run(tasks=tasks, **fields)
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"run_id": run_id})

    async def _ctl_release(self, request: web.Request) -> web.Response:
        try:
            self.workspace.release(int(request.match_info["run_id"]))
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        except ValueError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        return web.json_response({})

    async def _ctl_repair(self, request: web.Request) -> web.Response:
        spec = await _parse(request, RepairSpec)
        try:
            repair_id = self.workspace.repair_run(
                int(request.match_info["run_id"]), **spec.model_dump()
            )
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        except InProgressError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response({"repair_id": repair_id})

    async def _ctl_poison_run(self, request: web.Request) -> web.Response:
        overrides = await _parse_object(request)
        try:
            self.workspace.poison_run(int(request.match_info["run_id"]), overrides)
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        return web.json_response({})

    async def _ctl_poison_job(self, request: web.Request) -> web.Response:
        overrides = await _parse_object(request)
        try:
            self.workspace.poison_job(int(request.match_info["job_id"]), overrides)
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        return web.json_response({})

    async def _ctl_force(self, request: web.Request) -> web.Response:
        spec = await _parse(request, ForceSpec)
        try:
            self.workspace.force(
                int(request.match_info["run_id"]), spec.life_cycle_state, spec.result_state
            )
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        except ValueError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        return web.json_response({})

    async def _ctl_delete_run(self, request: web.Request) -> web.Response:
        try:
            self.workspace.delete_run(int(request.match_info["run_id"]))
        except NotFoundError as exc:
            raise web.HTTPNotFound(text=str(exc.args[0])) from None
        return web.json_response({})

    async def _ctl_advance(self, request: web.Request) -> web.Response:
        spec = await _parse(request, AdvanceSpec)
        try:
            self.workspace.advance(spec.seconds)
        except TypeError as exc:
            raise web.HTTPConflict(text=str(exc)) from None
        return web.json_response({"now_ms": self.workspace.now_ms()})

    async def _ctl_add_fault(self, request: web.Request) -> web.Response:
        self.faults.add(await _parse(request, Fault))
        return web.json_response({"faults": len(self.faults)})

    async def _ctl_clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"faults": 0})

    async def _ctl_state(self, request: web.Request) -> web.Response:
        self.workspace.settle()
        return web.json_response(
            {
                "now_ms": self.workspace.now_ms(),
                "jobs": len(self.workspace.jobs),
                "runs": len(self.workspace.runs),
                "active_runs": len(self.workspace.active_runs()),
                "api_requests": len(self.requests),
            }
        )


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanSpec(_Spec):
    queue_s: float = Field(default=0, ge=0)
    setup_s: float = Field(default=10, ge=0)
    execution_s: float = Field(default=60, ge=0)
    cleanup_s: float = Field(default=5, ge=0)
    result: str | None = "SUCCESS"


class PeriodicSpec(_Spec):
    interval: int = Field(ge=1)
    unit: Literal["HOURS", "DAYS", "WEEKS"]


class JobSpec(_Spec):
    name: str
    tags: dict[str, str] | None = None
    duration_threshold_s: int | None = None
    max_retries: int = 0
    min_retry_interval_ms: int = 0
    task_keys: list[str] | None = None
    email_on_failure: list[str] | None = None
    webhook_on_failure: list[str] | None = None
    notification_settings: dict[str, bool] | None = None
    max_concurrent_runs: int | None = Field(default=None, ge=1)
    schedule: str | None = None
    """A Quartz cron expression the workspace fires the job on."""
    timezone_id: str = "UTC"
    pause_status: Literal["PAUSED", "UNPAUSED"] = "UNPAUSED"
    continuous: bool = False
    periodic: PeriodicSpec | None = None
    plan: PlanSpec | None = None
    """What the runs the workspace starts on its own do."""


class StopSpec(_Spec):
    result: str | None = "FAILED"


class TaskSpec(_Spec):
    task_key: str
    setup_ms: int = 0
    execution_ms: int = 60_000
    cleanup_ms: int = 0
    result: str = "SUCCESS"


class RunSpec(_Spec):
    job_id: int
    queue_s: float = 0
    setup_s: float = 10
    execution_s: float = 60
    cleanup_s: float = 5
    result: str | None = "SUCCESS"
    end_state: str = "TERMINATED"
    trigger: str = "PERIODIC"
    run_type: str = "JOB_RUN"
    tasks: list[TaskSpec] = Field(default_factory=list)
    retry_results: list[str] | None = None
    hold_state: str | None = None
    queue_reason: tuple[str, str] | None = None
    """(code, message) while QUEUED."""


class RepairSpec(_Spec):
    rerun_tasks: list[str] | None = None
    queue_s: float = 0.0
    setup_s: float = 10.0
    execution_s: float = 60.0
    cleanup_s: float = 5.0
    result: str = "SUCCESS"


class ForceSpec(_Spec):
    life_cycle_state: str
    result_state: str | None = None


class AdvanceSpec(_Spec):
    seconds: float = Field(ge=0)


_S = TypeVar("_S", bound=BaseModel)


async def _parse(request: web.Request, model: type[_S]) -> _S:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        raise web.HTTPBadRequest(text=exc.json()) from None


async def _parse_object(request: web.Request) -> dict[str, Any]:
    """A JSON object body, kept as sent (poison may hold anything JSON can)."""
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _endpoint(request: web.Request) -> str:
    """'runs/list' for /api/2.1/jobs/runs/list, 'jobs/list' for /api/2.1/jobs/list."""
    path = request.match_info.get("path", "")
    return path if path.startswith("runs/") or not path else f"jobs/{path}"


def _error(status: int, error_code: str, message: str) -> web.Response:
    return web.json_response({"error_code": error_code, "message": message}, status=status)


_CODES = {429: "REQUEST_LIMIT_EXCEEDED", 500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE"}


def _fault_response(fault: Fault) -> web.Response:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
    if fault.body is not None:
        return web.Response(text=fault.body, status=fault.status, headers=headers)
    code = _CODES.get(fault.status, "INVALID_STATE")
    body = {"error_code": code, "message": f"Injected fault: HTTP {fault.status}"}
    return web.json_response(body, status=fault.status, headers=headers)


def _int(query: Any, name: str, default: Any) -> Any:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _invalid(f"Invalid value for {name}: {raw!r}") from None


def _encode_token(key: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode()


def _decode_token(token: str | None) -> tuple[int, int] | None:
    if not token:
        return None
    try:
        first, second = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(first), int(second)
    except (ValueError, TypeError, binascii.Error):
        raise _invalid("Invalid page_token.") from None


def _page_tasks(
    body: dict[str, Any], field: str, token: str | None, holder: dict[str, Any] | None = None
) -> None:
    """API 2.2 pages tasks `TASK_PAGE` at a time with next_page_token on the top object."""
    cursor = _decode_token(token)
    start = cursor[0] if cursor else 0
    tasks = body.get(field, [])
    body[field] = tasks[start : start + TASK_PAGE]
    if start + TASK_PAGE < len(tasks):
        (holder or body)["next_page_token"] = _encode_token((start + TASK_PAGE, 0))
