"""One HTTP POST as a delivery `Result`, for every webhook-style channel."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from watcher import __version__
from watcher.clock import Clock
from watcher.notify.base import (
    Acceptance,
    Result,
    Retry,
    accept_any,
    http_result,
    location_text,
    redact,
    retry_after_seconds,
)

USER_AGENT = f"databricks-run-watcher/{__version__}"
_BODY_LIMIT = 64 * 1024


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
                timeout=aiohttp.ClientTimeout(total=self._timeout),
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
        except TimeoutError:
            return Retry(f"timed out after {self._timeout:g}s")
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
