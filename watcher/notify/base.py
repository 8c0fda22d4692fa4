"""What a channel is and what one delivery attempt can come to.

Channels only report what happened (`Sent`, `Retry`, `Failed`); the dispatcher alone decides
the policy (back-off, dead-lettering), so every channel behaves the same under failure.
Error texts in results are shown to operators and logged: channels must keep secrets out.

Every HTTP channel posts through `watcher.notify.http.HttpPoster`, which never follows a
redirect (aiohttp would turn the POST into a GET whose 200 proves nothing) and asks the
channel whether a 2xx answer really came from its target (`Acceptance`): see
docs/alerts.md, "Delivery guarantees".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar
from urllib.parse import urljoin, urlsplit

from watcher.config.channels import BaseChannelConfig
from watcher.events import Event
from watcher.notify.templates import Flavour, Template
from watcher.store.base import DeliveryKey

Unconfirmed = Literal["redirect", "implausible"]
"""Why an answer that looked like success was not taken as a delivery: the target
redirected (3xx, never followed), or answered a 2xx it does not send (a proxy's page)."""


@dataclass(frozen=True, slots=True)
class Sent:
    """The target accepted the alert."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again, after `after` seconds when the target said so."""

    error: str
    after: float | None = None
    reason: Unconfirmed | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A permanent failure: retrying the same request cannot succeed."""

    error: str
    reason: Unconfirmed | None = None


Result = Sent | Retry | Failed


@dataclass(frozen=True, slots=True)
class Digest:
    """Several alerts of one group sent as one message (a route's `group_by`)."""

    id: str
    """Derived from the member event ids: the idempotency key of the message."""
    events: Sequence[Event]
    """The members, oldest first (at least two: a group of one is sent as its event)."""
    group: Mapping[str, str] = field(default_factory=dict)
    """The values the route groups by, e.g. {"workspace": "prod", "tag:team": "data"}."""


Acceptance = Callable[[int, str], str | None]
"""(2xx status, body) -> None when the answer proves the target accepted the alert, else
what the target answers instead (for the error text)."""


def accept_any(status: int, body: str) -> str | None:
    """Any 2xx: for receivers whose answer is not known (the generic webhook)."""
    return None


class Channel(Protocol):
    """One configured alert target."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> BaseChannelConfig: ...

    def target(self, key: DeliveryKey) -> Channel | None:
        """What delivers `key`: the channel itself for its own key; for a key with a
        recipient, the email channel sending to that address alone, and None from any
        other channel (it has no recipients)."""

    async def send(self, event: Event) -> Result:
        """Deliver one alert. Never raises for delivery problems: they are results."""

    async def send_digest(self, digest: Digest) -> Result:
        """Deliver several alerts of one group as one message."""

    async def close(self) -> None: ...


_C = TypeVar("_C", bound=BaseChannelConfig)


class ChannelBase(ABC, Generic[_C]):
    """What every channel has: its name, its configuration, templates overridable per
    channel, no recipients of its own, and nothing to close."""

    def __init__(self, name: str, config: _C) -> None:
        self._name = name
        self._config = config

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> _C:
        return self._config

    def template(self, default: str, *, flavour: Flavour, field: str) -> Template:
        """The default template `default`, or the one configured in `field` (checked now:
        `InvalidTemplate` names `channels.<name>.<field>`)."""
        override: str | None = getattr(self._config, field)
        return Template(
            default, flavour=flavour, override=override, field=f"channels.{self._name}.{field}"
        )

    def target(self, key: DeliveryKey) -> Channel | None:
        return None if key.recipient else self

    @abstractmethod
    async def send(self, event: Event) -> Result: ...

    async def send_digest(self, digest: Digest) -> Result:
        """The members one by one (`send_each`): for channels without a digest message
        of their own."""
        return await self.send_each(digest)

    async def send_each(self, digest: Digest) -> Result:
        """Send the members one by one, oldest first, stopping at the first that is not
        sent. A retry sends the digest again from its first member: right for targets
        that drop what they already have (PagerDuty's dedup_key, Alertmanager's labels,
        `webhook-id`)."""
        for event in digest.events:
            result = await self.send(event)
            if not isinstance(result, Sent):
                return result
        return Sent()

    async def close(self) -> None:
        return None


def http_result(
    status: int,
    *,
    body: str,
    retry_after: float | None,
    location: str | None = None,
    accept: Acceptance = accept_any,
) -> Result:
    """The meaning of an HTTP answer: a 2xx the target's `accept` recognises is sent, any
    other 2xx retried; every 3xx is permanent (redirects are not followed; `location` is
    the already sanitised Location); 429/503 retried after Retry-After; 408, 425 and
    other 5xx retried with back-off; every other status is permanent."""
    detail = f"HTTP {status}" + (f": {excerpt(body)}" if body.strip() else "")
    if 200 <= status < 300:
        expected = accept(status, body)
        if expected is None:
            return Sent(detail)
        got = excerpt(body) if body.strip() else "an empty body"
        error = f"HTTP {status} is no proof of delivery ({expected}): {got}"
        return Retry(error, reason="implausible")
    if 300 <= status < 400:
        where = f"redirect to {location}" if location else "redirect without a Location"
        error = f"HTTP {status} {where}: redirects are not followed, configure the final URL"
        return Failed(error, reason="redirect")
    if status in (429, 503):
        return Retry(detail, after=retry_after)
    if status in (408, 425) or status >= 500:
        return Retry(detail)
    return Failed(detail)


def location_text(location: str, *, base: str) -> str:
    """A Location header as `scheme://host[:port]/path` (relative to `base`): the query,
    fragment and user info, which may carry tokens, are left out."""
    try:
        parts = urlsplit(urljoin(base, location.strip()))
    except ValueError:
        return "an unreadable Location"
    host = parts.netloc.rpartition("@")[2]
    if not (parts.scheme and host):
        return "an unreadable Location"
    return excerpt(f"{parts.scheme}://{host}{parts.path}")


def url_secrets(url: str) -> list[str]:
    """The URL and its path and query, for channels whose whole URL is a secret: a
    Location or body echoing the path on another scheme or host stays redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    return [url, *(p for p in (parts.path, parts.query) if len(p) > 1)]


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
