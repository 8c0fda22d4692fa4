"""Generic webhook: a JSON POST of our payload or Databricks' notification body, signed
with Standard Webhooks headers when a secret is set (`webhook-id` is the event id, so a
receiver can drop the duplicates at-least-once delivery may produce).

A digest is one POST of `payloads.digest_payload` with `webhook-id` = the digest id, in
the `watcher` format; the `databricks` format has no digests, so its members are posted
one by one, each as Databricks would send it."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from watcher.clock import Clock
from watcher.config.channels import WebhookChannelConfig, signing_key
from watcher.events import Event
from watcher.notify.base import Digest, Result
from watcher.notify.http import HttpChannel
from watcher.notify.payloads import (
    databricks_payload,
    digest_payload,
    watcher_payload,
    workspace_id,
)


def sign(key: bytes, *, msg_id: str, timestamp: int, body: str) -> str:
    """The Standard Webhooks `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of
    `id.timestamp.body`."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookChannel(HttpChannel[WebhookChannelConfig]):
    skipped = "nothing to send: no Databricks notification for {type}"
    separators = (",", ":")

    def __init__(
        self,
        name: str,
        config: WebhookChannelConfig,
        *,
        clock: Clock,
        workspace_ids: Mapping[str, str] | None = None,
    ) -> None:
        url = urlsplit(str(config.url))
        secrets = [
            s.get_secret_value()
            for s in (config.secret, config.bearer_token, config.basic_password)
            if s is not None
        ]
        # A token in the URL (`?apiKey=...`, `user:token@`) that an error echoes.
        # Values long enough to be tokens: `?format=json` must not hide every "json".
        query = [value for _, value in parse_qsl(url.query) if len(value) >= 8]
        secrets += [p for p in (url.query, url.password, *query) if p]
        super().__init__(
            name,
            config,
            url=str(config.url),
            clock=clock,
            ca_bundle=config.ca_bundle,
            secrets=secrets,
        )
        self._workspace_ids = dict(workspace_ids or {})
        self._key = signing_key(config.secret.get_secret_value()) if config.secret else None

    def payload(self, event: Event) -> dict[str, Any] | None:
        """Our payload, or Databricks' body (None when Databricks has nothing to say)."""
        if self._config.format == "databricks":
            return databricks_payload(event, workspace=workspace_id(event, self._workspace_ids))
        return watcher_payload(event)

    def headers(self, event: Event, body: bytes) -> dict[str, str]:
        return self.message_headers(event.id, body)

    async def send_digest(self, digest: Digest) -> Result:
        """One POST of the whole digest; each member on its own in the `databricks`
        format (see the module docstring)."""
        if self._config.format == "databricks":
            return await self.send_each(digest)
        body = self.encode(digest_payload(digest.id, digest.group, digest.events))
        return await self.post(body, self.message_headers(digest.id, body))

    def message_headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """The configured headers, `webhook-id`, the signature when a secret is set, and
        the configured authorization."""
        headers = dict(self._config.headers)
        headers["webhook-id"] = msg_id
        if self._key is not None:
            timestamp = int(self._clock.time())
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(
                self._key, msg_id=msg_id, timestamp=timestamp, body=body.decode()
            )
        if self._config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self._config.bearer_token.get_secret_value()}"
        elif self._config.basic_username is not None and self._config.basic_password is not None:
            credentials = f"{self._config.basic_username}:"
            credentials += self._config.basic_password.get_secret_value()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        return headers
