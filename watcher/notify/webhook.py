"""Generic webhook: a JSON POST of our payload or Databricks' notification body, signed
with Standard Webhooks headers when a secret is set (`webhook-id` is the event id, so a
receiver can drop the duplicates at-least-once delivery may produce)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping

from watcher.clock import Clock
from watcher.config.channels import WebhookChannelConfig, signing_key
from watcher.events import Event
from watcher.notify.base import Failed, Result, Sent
from watcher.notify.http import HttpPoster
from watcher.notify.payloads import databricks_payload, watcher_payload, workspace_id


def sign(key: bytes, *, msg_id: str, timestamp: int, body: str) -> str:
    """The Standard Webhooks `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of
    `id.timestamp.body`."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookChannel:
    def __init__(
        self,
        name: str,
        config: WebhookChannelConfig,
        *,
        clock: Clock,
        workspace_ids: Mapping[str, str] | None = None,
    ) -> None:
        self._name = name
        self._config = config
        self._clock = clock
        self._workspace_ids = dict(workspace_ids or {})
        self._key = signing_key(config.secret.get_secret_value()) if config.secret else None
        secrets = [
            s.get_secret_value()
            for s in (config.secret, config.bearer_token, config.basic_password)
            if s is not None
        ]
        self._http = HttpPoster(
            timeout=config.timeout, clock=clock, ca_bundle=config.ca_bundle, secrets=secrets
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> WebhookChannelConfig:
        return self._config

    def body(self, event: Event) -> str | None:
        """The JSON body for an event; None when the format has nothing to say about it."""
        if self._config.format == "databricks":
            payload = databricks_payload(event, workspace=workspace_id(event, self._workspace_ids))
            if payload is None:
                return None
        else:
            payload = watcher_payload(event)
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))

    async def send(self, event: Event, *, recipient: str | None = None) -> Result:
        if recipient is not None:
            return Failed("a webhook channel has no recipients")
        body = self.body(event)
        if body is None:
            return Sent(f"nothing to send: no Databricks notification for {event.type}")
        headers = dict(self._config.headers)
        headers["webhook-id"] = event.id
        if self._key is not None:
            timestamp = int(self._clock.time())
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = sign(
                self._key, msg_id=event.id, timestamp=timestamp, body=body
            )
        if self._config.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self._config.bearer_token.get_secret_value()}"
        elif self._config.basic_username is not None and self._config.basic_password is not None:
            credentials = f"{self._config.basic_username}:"
            credentials += self._config.basic_password.get_secret_value()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        return await self._http.post(str(self._config.url), body.encode(), headers=headers)

    async def close(self) -> None:
        await self._http.close()
