"""Credentials for the Jobs API: a personal access token (inline or from a file that
Kubernetes may rotate), OAuth machine-to-machine client credentials against the workspace,
or a Microsoft Entra ID service principal's client credentials (Azure).

Secrets are held as pydantic SecretStr so that neither repr nor str reveal them, and no
error raised here quotes a token.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

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
    # Entra ID's v1 endpoint sends a string ("3599"): lax validation takes both.
    expires_in: int = 3600


class _ClientCredentials:
    """A token from a client-credentials grant, cached and fetched again `refresh_margin`
    seconds before it expires (at the latest halfway through a short-lived one), or after
    a 401. Subclasses say where and how to ask (`_request`)."""

    endpoint = "token"
    """Named in errors (and never with a secret)."""

    def __init__(self, *, clock: Clock, refresh_margin: float) -> None:
        self._clock = clock
        self._margin = refresh_margin
        self._token: SecretStr | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def header(self, session: aiohttp.ClientSession) -> str:
        async with self._lock:
            if self._token is None or self._clock.time() >= self._refresh_at:
                await self._fetch(session)
            assert self._token is not None
            return f"Bearer {self._token.get_secret_value()}"

    def invalidate(self) -> None:
        self._token = None

    async def _request(self, session: aiohttp.ClientSession) -> tuple[int, bytes]:
        """POST the grant: (status, body)."""
        raise NotImplementedError

    def _redact(self, message: str) -> str:
        """`message` (from the server) without anything secret in it."""
        return message

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        self.fetches += 1
        status, body = await self._request(session)
        if status != 200:
            code, message = parse_error_body(body, status)
            raise ApiError(
                endpoint=self.endpoint,
                status=status,
                error_code=self._redact(code),
                message=self._redact(message),
            )
        try:
            token = _TokenResponse.model_validate_json(body)
        except ValidationError:
            raise DatabricksError(f"{self.endpoint}: the token response is not valid") from None
        lifetime = max(token.expires_in, 0)
        self._token = token.access_token
        self._refresh_at = self._clock.time() + max(lifetime - self._margin, lifetime / 2)


class OAuthM2M(_ClientCredentials):
    """Client-credentials flow against `{host}/oidc/v1/token` with scope `all-apis`.
    The token is refreshed `refresh_margin` seconds before it expires, or after a 401."""

    endpoint = "oidc/v1/token"

    def __init__(
        self,
        *,
        host: str,
        client_id: str,
        client_secret: SecretStr,
        clock: Clock,
        refresh_margin: float = 60.0,
    ) -> None:
        super().__init__(clock=clock, refresh_margin=refresh_margin)
        self.token_url = f"{host.rstrip('/')}/oidc/v1/token"
        self._client_id = client_id
        self._client_secret = client_secret

    async def _request(self, session: aiohttp.ClientSession) -> tuple[int, bytes]:
        pair = f"{self._client_id}:{self._client_secret.get_secret_value()}".encode()
        form = {"grant_type": "client_credentials", "scope": "all-apis"}
        headers = {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        async with session.post(self.token_url, data=form, headers=headers) as resp:
            return resp.status, await resp.read()

    def __repr__(self) -> str:
        return f"OAuthM2M(client_id={self._client_id!r}, client_secret=**********)"


ENTRA_ID = "https://login.microsoftonline.com"
"""Microsoft Entra ID of Azure's public cloud (login.microsoftonline.us: Azure Government,
login.chinacloudapi.cn: Azure operated by 21Vianet)."""
AZURE_DATABRICKS_APP_ID = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
"""The AzureDatabricks first-party application: its `/.default` scope is the one a token
for any Azure Databricks workspace is issued for."""


class AzureServicePrincipal(_ClientCredentials):
    """A Microsoft Entra ID service principal: client credentials (id and secret in the
    form) against `{authority}/{tenant_id}/oauth2/v2.0/token` with the scope
    `2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default` (AzureDatabricks); the Entra ID token
    is the workspace's bearer token. Cached and refreshed as OAuthM2M's is."""

    endpoint = "entra-id/oauth2/v2.0/token"

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: SecretStr,
        clock: Clock,
        authority: str = ENTRA_ID,
        refresh_margin: float = 60.0,
    ) -> None:
        super().__init__(clock=clock, refresh_margin=refresh_margin)
        self.token_url = f"{authority.rstrip('/')}/{quote(tenant_id, safe='')}/oauth2/v2.0/token"
        self._client_id = client_id
        self._client_secret = client_secret

    async def _request(self, session: aiohttp.ClientSession) -> tuple[int, bytes]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "scope": f"{AZURE_DATABRICKS_APP_ID}/.default",
        }
        async with session.post(self.token_url, data=form) as resp:
            return resp.status, await resp.read()

    def _redact(self, message: str) -> str:
        # Entra ID's descriptions name the client, not the secret; should one ever echo
        # the request, it still does not reach a log line.
        secret = self._client_secret.get_secret_value()
        return message.replace(secret, "**********") if secret else message

    def __repr__(self) -> str:
        return (
            f"AzureServicePrincipal(token_url={self.token_url!r}, "
            f"client_id={self._client_id!r}, client_secret=**********)"
        )
