"""Credentials for the Jobs API: a personal access token (inline or from a file that
Kubernetes may rotate) or OAuth machine-to-machine client credentials.

Secrets are held as pydantic SecretStr so that neither repr nor str reveal them, and no
error raised here quotes a token.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Protocol

import aiohttp
from pydantic import BaseModel, SecretStr, ValidationError

from watcher.clock import Clock
from watcher.databricks.errors import ApiError, DatabricksError, parse_error_body


class Auth(Protocol):
    async def header(self, session: aiohttp.ClientSession) -> str:
        """The value of the Authorization header for the next request."""

    def invalidate(self) -> None:
        """Called after a 401: forget any cached credential so the next call fetches anew."""


class StaticToken:
    def __init__(self, token: SecretStr) -> None:
        if not token.get_secret_value().strip():
            raise ValueError("the access token is empty")
        self._token = token

    async def header(self, session: aiohttp.ClientSession) -> str:
        return f"Bearer {self._token.get_secret_value().strip()}"

    def invalidate(self) -> None:
        pass

    def __repr__(self) -> str:
        return "StaticToken(**********)"


class TokenFile:
    """A token read from a file, re-read whenever the file changes (a rotated Kubernetes
    secret is swapped in place through a symlink, so mtime and inode both count)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = SecretStr("")

    async def header(self, session: aiohttp.ClientSession) -> str:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._token = SecretStr(self.path.read_text(encoding="utf-8").strip())
                self._stamp = stamp
        except OSError as exc:
            raise DatabricksError(f"cannot read token file {self.path}: {exc.strerror}") from None
        if not self._token.get_secret_value():
            raise DatabricksError(f"token file {self.path} is empty")
        return f"Bearer {self._token.get_secret_value()}"

    def invalidate(self) -> None:
        self._stamp = None

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"


class _TokenResponse(BaseModel):
    access_token: SecretStr
    token_type: str = "Bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int = 3600


class OAuthM2M:
    """Client-credentials flow against `{host}/oidc/v1/token` with scope `all-apis`.
    The token is refreshed `refresh_margin` seconds before it expires, or after a 401."""

    def __init__(
        self,
        *,
        host: str,
        client_id: str,
        client_secret: SecretStr,
        clock: Clock,
        refresh_margin: float = 60.0,
    ) -> None:
        self.token_url = f"{host.rstrip('/')}/oidc/v1/token"
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._margin = refresh_margin
        self._token: SecretStr | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def header(self, session: aiohttp.ClientSession) -> str:
        async with self._lock:
            if self._token is None or self._clock.time() >= self._expires_at - self._margin:
                await self._fetch(session)
            assert self._token is not None
            return f"Bearer {self._token.get_secret_value()}"

    def invalidate(self) -> None:
        self._token = None

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        self.fetches += 1
        pair = f"{self._client_id}:{self._client_secret.get_secret_value()}".encode()
        form = {"grant_type": "client_credentials", "scope": "all-apis"}
        headers = {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        async with session.post(self.token_url, data=form, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                code, message = parse_error_body(body, resp.status)
                raise ApiError(
                    endpoint="oidc/v1/token", status=resp.status, error_code=code, message=message
                )
        try:
            token = _TokenResponse.model_validate_json(body)
        except ValidationError:
            raise DatabricksError("oidc/v1/token: the token response is not valid") from None
        self._token = token.access_token
        self._expires_at = self._clock.time() + token.expires_in

    def __repr__(self) -> str:
        return f"OAuthM2M(client_id={self._client_id!r}, client_secret=**********)"
