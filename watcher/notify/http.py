"""One HTTP POST as a delivery `Result`, and the base of every webhook-style channel."""

from __future__ import annotations

import json
import ssl
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp

from watcher.clock import Clock
from watcher.config.channels import BaseChannelConfig, SlackChannelConfig, TeamsChannelConfig
from watcher.events import Event
from watcher.http_headers import USER_AGENT, retry_after_seconds
from watcher.notify.base import (
    Acceptance,
    ChannelBase,
    Result,
    Retry,
    Sent,
    accept_any,
    http_result,
    location_text,
    redact,
    url_secrets,
)
from watcher.notify.templates import Flavour

_BODY_LIMIT = 64 * 1024
_C = TypeVar("_C", bound=BaseChannelConfig)


class HttpPoster:
    """JSON POSTs for every webhook-style channel: a lazily opened aiohttp session with
    verified TLS (optionally against a CA bundle) that never follows redirects, and
    answers judged by the channel's `accept`.

    Error texts never carry the URL (Slack and Teams URLs are secrets) nor any configured
    secret: only the status, a short body excerpt, a Location without its query, or the
    exception's type and the host."""

    def __init__(
        self,
        *,
        timeout: float,
        clock: Clock,
        ca_bundle: Path | None = None,
        secrets: list[str] | None = None,
        accept: Acceptance = accept_any,
    ) -> None:
        self._timeout = timeout
        self._clock = clock
        self._ca_bundle = ca_bundle
        # Longest first: a URL is redacted whole before its path is.
        self._secrets = sorted((s for s in (secrets or []) if s), key=len, reverse=True)
        self._accept = accept
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context = ssl.create_default_context(
                cafile=str(self._ca_bundle) if self._ca_bundle else None
            )
            self._session = aiohttp.ClientSession(
                # The attempt as a whole is limited on the caller's clock (the dispatcher's
                # `watcher.aio.within`); the session bounds only connecting.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                connector=aiohttp.TCPConnector(ssl=context),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def post(
        self, url: str, data: bytes, *, headers: Mapping[str, str] | None = None
    ) -> Result:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            async with self._open().post(
                url, data=data, headers=all_headers, allow_redirects=False
            ) as resp:
                body = (await resp.content.read(_BODY_LIMIT)).decode(errors="replace")
                after = retry_after_seconds(resp.headers.get("Retry-After"), now=self._clock.time())
                location = resp.headers.get("Location")
                return http_result(
                    resp.status,
                    body=redact(body, self._secrets),
                    retry_after=after,
                    location=redact(location_text(location, base=url), self._secrets)
                    if location
                    else None,
                    accept=self._accept,
                )
        except TimeoutError:  # connecting: the attempt's own limit is the caller's
            return Retry(f"could not connect within {self._timeout:g}s")
        except aiohttp.ClientConnectorCertificateError as exc:
            return Retry(f"TLS certificate of {exc.host} not trusted")
        except aiohttp.ClientConnectorError as exc:
            return Retry(f"cannot connect to {exc.host}:{exc.port}")
        except (aiohttp.ClientError, OSError) as exc:
            # str(exc) of some aiohttp errors contains the URL: name the type only.
            return Retry(f"request failed: {type(exc).__name__}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpChannel(ChannelBase[_C]):
    """A channel that POSTs one JSON document per alert to one URL. Each channel supplies
    the document (`payload`, None when it has nothing to say about the event) and any
    headers; this base owns the `HttpPoster`, `send` and `close`.

    `secrets` are redacted from error texts; `accepts` judges a 2xx answer."""

    skipped: ClassVar[str] = "nothing to send: {type}"
    """The detail of the `Sent` when `payload` is None (`{type}` is the event type)."""
    separators: ClassVar[tuple[str, str] | None] = None
    """`json.dumps` separators of the body (None: its defaults)."""

    def __init__(
        self,
        name: str,
        config: _C,
        *,
        url: str,
        clock: Clock,
        ca_bundle: Path | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        super().__init__(name, config)
        self._url = url
        self._clock = clock
        self._http = HttpPoster(
            timeout=config.timeout,
            clock=clock,
            ca_bundle=ca_bundle,
            secrets=list(secrets),
            accept=self.accepts,
        )

    @abstractmethod
    def payload(self, event: Event) -> Any:
        """The JSON document to post for `event`; None to send nothing."""

    def accepts(self, status: int, body: str) -> str | None:
        """Whether a 2xx answer came from the target (`watcher.notify.base.Acceptance`)."""
        return accept_any(status, body)

    def headers(self, event: Event, body: bytes) -> dict[str, str]:
        """Headers besides Content-Type and User-Agent."""
        return {}

    def body(self, event: Event) -> bytes | None:
        """The request body for `event`; None when there is nothing to send."""
        payload = self.payload(event)
        return None if payload is None else self.encode(payload)

    def encode(self, payload: Any) -> bytes:
        return json.dumps(payload, ensure_ascii=False, separators=self.separators).encode()

    async def send(self, event: Event) -> Result:
        body = self.body(event)
        if body is None:
            return Sent(self.skipped.format(type=event.type))
        return await self.post(body, self.headers(event, body))

    async def post(self, body: bytes, headers: Mapping[str, str] | None = None) -> Result:
        """POST `body` (e.g. a digest's document) to the channel's URL."""
        return await self._http.post(self._url, body, headers=headers)

    async def close(self) -> None:
        await self._http.close()


_Chat = TypeVar("_Chat", bound=SlackChannelConfig | TeamsChannelConfig)


class ChatChannel(HttpChannel[_Chat]):
    """An incoming webhook of a chat (Slack, Teams): the whole URL is a secret (never in
    an error text), and `text_template` renders the details in the chat's markup."""

    details: ClassVar[tuple[str, Flavour]]
    """The default template of the details and its flavour."""

    def __init__(self, name: str, config: _Chat, *, clock: Clock) -> None:
        url = config.url.get_secret_value()
        super().__init__(name, config, url=url, clock=clock, secrets=url_secrets(url))
        default, flavour = self.details
        self._details = self.template(default, flavour=flavour, field="text_template")
