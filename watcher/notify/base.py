"""What a channel is and what one delivery attempt can come to.

Channels only report what happened (`Sent`, `Retry`, `Failed`); the dispatcher alone decides
the policy (back-off, dead-lettering), so every channel behaves the same under failure.
Error texts in results are shown to operators and logged: channels must keep secrets out.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from watcher.events import Event
from watcher.notify.config import BaseChannelConfig


@dataclass(frozen=True, slots=True)
class Sent:
    """The target accepted the alert."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again, after `after` seconds when the target said so."""

    error: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: retrying the same request cannot succeed."""

    error: str


Result = Sent | Retry | Failed


class Channel(Protocol):
    """One configured alert target."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> BaseChannelConfig: ...

    async def send(self, event: Event, *, recipient: str | None = None) -> Result:
        """Deliver one alert. `recipient` (email only) replaces the configured recipients.
        Never raises for delivery problems: they are results."""

    async def close(self) -> None: ...


def retry_after_seconds(value: str | None, *, now: float) -> float | None:
    """A Retry-After header (delay seconds or an HTTP date) as seconds from `now`."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def http_result(status: int, *, body: str, retry_after: float | None) -> Result:
    """The meaning of an HTTP answer: 2xx sent; 429/503 retried after Retry-After; 408, 425
    and other 5xx retried with back-off; every other status is permanent."""
    detail = f"HTTP {status}" + (f": {excerpt(body)}" if body.strip() else "")
    if 200 <= status < 300:
        return Sent(detail)
    if status in (429, 503):
        return Retry(detail, after=retry_after)
    if status in (408, 425) or status >= 500:
        return Retry(detail)
    return Failed(detail)


def excerpt(text: str, limit: int = 200) -> str:
    """A short single-line piece of a response body for error messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every non-empty secret replaced, for errors that might echo one."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as every receiver parses it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
