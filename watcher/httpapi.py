"""The status server's authenticated HTTP API: silences at run time, as `watcher silence`
adds, lists and expires them (docs/alerts.md, "Silences").

    GET    /api/v1/silences          those not over (`?all=1`: the expired ones too)
    POST   /api/v1/silences          add one (JSON body below); 201 and the silence
    DELETE /api/v1/silences/{id}     expire one now; 404 if none of that id is in force

    {"matchers": ["job=nightly-*", "workspace=prod"], "comment": "why",
     "created_by": "alice", "duration": "2h" | 7200, "ends_at": "ISO 8601",
     "starts_at": "ISO 8601", "recurring": {"cron": "0 0 2 ? * SAT",
     "timezone": "Europe/Berlin", "duration": "2h"}}

Without a configured token the API is off (403). Every request needs `Authorization:
Bearer <server.api.token>`, except reads where `server.api.open_reads` says so. A refused
request is logged (never with what it sent as a token)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import structlog
from aiohttp import web

from watcher.clock import Clock
from watcher.config.daemon import ApiConfig
from watcher.silences import InvalidSilence, new_silence, parse_duration, silence_json
from watcher.store.base import SilenceStore

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

_FIELDS = frozenset(
    {"matchers", "comment", "created_by", "duration", "ends_at", "starts_at", "recurring"}
)


class SilenceApi:
    def __init__(self, store: SilenceStore, clock: Clock, config: ApiConfig) -> None:
        self._store = store
        self._clock = clock
        token = config.token.get_secret_value().strip() if config.token else None
        self._token = token.encode() if token else None
        self._open_reads = config.open_reads

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/silences", self._list)
        app.router.add_post("/api/v1/silences", self._add)
        app.router.add_delete("/api/v1/silences/{id}", self._expire)

    def _authorize(self, request: web.Request, *, read: bool) -> None:
        """Raise the HTTP error that refuses `request`, unless it may go on."""
        if self._token is None:
            raise _error(web.HTTPForbidden, "the API is off: set server.api.token (token_file)")
        if read and self._open_reads:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Headers arrive decoded with surrogateescape: any byte sent compares, none raises.
        sent = given.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent, self._token):
            log.warning(
                "api_unauthorized",
                method=request.method,
                path=request.path,
                remote=request.remote,
                reason="no bearer token" if scheme.lower() != "bearer" else "wrong token",
            )
            raise _error(
                web.HTTPUnauthorized,
                "a valid bearer token is needed",
                headers={"WWW-Authenticate": 'Bearer realm="watcher"'},
            )

    async def _list(self, request: web.Request) -> web.Response:
        self._authorize(request, read=True)
        now = self._clock.time()
        ended = request.query.get("all", "") in ("1", "true", "yes")
        found = await _stored(self._store.silences(now=now, ended=ended))
        return web.json_response({"silences": [silence_json(s, now) for s in found]})

    async def _add(self, request: web.Request) -> web.Response:
        self._authorize(request, read=False)
        try:
            body = await request.json()
        except (ValueError, LookupError, RecursionError):
            # Not JSON, a charset nobody knows, or nested past any use.
            raise _error(web.HTTPBadRequest, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _error(web.HTTPBadRequest, "the body must be a JSON object")
        now = self._clock.time()
        try:
            silence = new_silence(now=now, **_arguments(body))
        except InvalidSilence as exc:
            raise _error(web.HTTPBadRequest, *exc.problems) from None
        await _stored(self._store.add_silence(silence))
        log.info(
            "silence_added",
            silence=silence.id,
            created_by=silence.created_by,
            remote=request.remote,
        )
        return web.json_response(silence_json(silence, now), status=201)

    async def _expire(self, request: web.Request) -> web.Response:
        self._authorize(request, read=False)
        now = self._clock.time()
        silence_id = request.match_info["id"]
        expired = await _stored(self._store.expire_silence(silence_id, now=now))
        if expired is None:
            raise _error(web.HTTPNotFound, f"no silence {silence_id!r} is in force")
        log.info("silence_expired", silence=silence_id, remote=request.remote)
        return web.json_response(silence_json(expired, now))


def _arguments(body: dict[str, Any]) -> dict[str, Any]:
    """`new_silence`'s keyword arguments from a request body; InvalidSilence naming each
    field that cannot be read."""
    problems = [f"{key}: unknown field" for key in sorted(body.keys() - _FIELDS)]
    matchers = body.get("matchers", [])
    if not isinstance(matchers, list) or not all(isinstance(m, str) for m in matchers):
        problems.append("matchers: a list of KEY=VALUE strings")
        matchers = []
    texts = {k: body.get(k) for k in ("comment", "created_by")}
    for key, value in texts.items():
        if value is not None and not isinstance(value, str):
            problems.append(f"{key}: a string")
    arguments: dict[str, Any] = {
        "matchers": matchers,
        "comment": texts["comment"] if isinstance(texts["comment"], str) else "",
        "created_by": texts["created_by"] if isinstance(texts["created_by"], str) else "api",
    }
    for key in ("starts_at", "ends_at"):
        value = body.get(key)
        try:
            arguments[key] = None if value is None else _moment(value)
        except (TypeError, ValueError):
            problems.append(f"{key}: an ISO 8601 time with a time zone")
    try:
        arguments["duration"] = _seconds(body.get("duration"))
        recurring = body.get("recurring")
        if recurring is not None and not isinstance(recurring, dict):
            raise InvalidSilence(["recurring: an object {cron, timezone, duration}"])
        if isinstance(recurring, dict) and "duration" in recurring:
            recurring = {**recurring, "duration": _seconds(recurring["duration"])}
        arguments["recurring"] = recurring
    except InvalidSilence as exc:
        problems += exc.problems
    if problems:
        raise InvalidSilence(problems)
    return arguments


def _moment(value: object) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    if moment is None or moment.tzinfo is None:
        raise ValueError(value)
    return moment


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer of 400 digits
            pass
    elif isinstance(value, str):
        return parse_duration(value)
    raise InvalidSilence(["duration: a number of seconds, or a text like 2h"])


async def _stored(operation: Awaitable[_T]) -> _T:
    """Await a store call; a store that cannot answer is a 503 (what failed is logged,
    not told: it names the database)."""
    try:
        return await operation
    except Exception as exc:
        log.error("api_store_failed", error_type=type(exc).__name__, error=str(exc))
        raise _error(
            web.HTTPServiceUnavailable, "the store cannot answer now (see the watcher's log)"
        ) from None


def _error(
    kind: type[web.HTTPError], *problems: str, headers: dict[str, str] | None = None
) -> web.HTTPError:
    return kind(
        text=web.json_response({"errors": list(problems)}).text,
        content_type="application/json",
        headers=headers,
    )
