"""Configuration of alert channels, one model per channel type (the `type` key decides).

Every channel shares the delivery policy of `BaseChannelConfig` (rate limit, concurrency,
timeout, retries); each type adds its target and its template overrides. Which event types
a channel can express is part of its configuration too (`accepts`): the router never sends
a channel an event it would have to drop.

The models share their base (`StrictModel`, `watcher.config.base`) and their checked
field types (`Secret`, `SecretUrl`, `Host`, `CaBundle`, `watcher.config.fields`) with the
rest of the configuration.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import re
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, Field, model_validator

from watcher.config.base import FieldErrors, StrictModel
from watcher.config.fields import CaBundle, Host, Secret, SecretUrl
from watcher.events import EventType

Severity = Literal["critical", "error", "warning", "info"]
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ADDRESS = re.compile(r"^[^\s@<>,;:\"()\[\]\\]+@[^\s@<>,;:\"()\[\]\\]+$")
"""One bare address (no display name, no list, no CR/LF)."""
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An unreadable run may be a failing run nobody would hear of: it pages like a failure.
# A stuck run pages like a duration breach (the same warning severity).
_PAGING_EVENTS = [
    EventType.RUN_FAILED,
    EventType.RUN_DURATION_EXCEEDED,
    EventType.RUN_UNREADABLE,
    EventType.JOB_UNREADABLE,
    EventType.RUN_STUCK,
    EventType.RUN_MISSED,
    EventType.JOB_NOT_RUNNING,
    EventType.JOB_STALE,
]
_RESOLVING_EVENTS = (EventType.JOB_RECOVERED, EventType.INCIDENT_RESOLVED)
"""What ends an incident: channels with incidents of their own (PagerDuty, Alertmanager)
always take them, whatever they trigger on."""
_NO_DATABRICKS_NOTIFICATION = (
    *_RESOLVING_EVENTS,
    EventType.RUN_STUCK,
    EventType.RUN_MISSED,
    EventType.JOB_NOT_RUNNING,
    EventType.JOB_STALE,
)
"""What Databricks' own webhook notifications have no event type for: a recovery (its
on_success already went out), an incident's end, a run stuck before running."""
SIGNING_KEY_MIN_BYTES = 24
"""The Standard Webhooks specification asks for random symmetric secrets of at least 24
bytes (192 bits); a shorter key is guessable offline from one signed delivery."""


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_` + base64)."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret: must be whsec_ followed by base64") from None
    if len(key) < SIGNING_KEY_MIN_BYTES:
        raise ValueError(
            f"secret: a {len(key)}-byte key; Standard Webhooks asks for at least "
            f"{SIGNING_KEY_MIN_BYTES} random bytes (e.g. whsec_$(openssl rand -base64 32))"
        )
    return key


# -- channels ----------------------------------------------------------------------------


class BaseChannelConfig(StrictModel):
    """Delivery policy common to every channel."""

    rate_per_second: float = Field(default=5.0, gt=0, description="Token-bucket refill rate.")
    burst: int = Field(default=10, ge=1, description="Token-bucket size.")
    concurrency: int = Field(default=4, ge=1, description="Deliveries in flight at once.")
    timeout: float = Field(default=30.0, gt=0, description="Seconds for one delivery attempt.")
    max_attempts: int | None = Field(
        default=None,
        ge=1,
        description="Attempts before dead-lettering (default: no limit; max_age decides).",
    )
    max_age: float = Field(
        default=86_400.0, gt=0, description="Seconds after which an undelivered alert is dead."
    )
    retry_base_delay: float = Field(
        default=2.0, gt=0, description="Back-off cap of the first retry, doubling per attempt."
    )
    retry_max_delay: float = Field(
        default=300.0, gt=0, description="Largest back-off between attempts (full jitter below)."
    )

    def accepts(self, event_type: EventType) -> bool:
        """Whether this channel has something to say about events of this type."""
        return True


class ConsoleChannelConfig(BaseChannelConfig):
    type: Literal["console"]
    stream: Literal["stdout", "stderr"] = Field(default="stdout", description="Where to print.")
    text_template: str | None = Field(default=None, description="Jinja2 template of one line.")


class EmailChannelConfig(BaseChannelConfig):
    type: Literal["email"]
    host: Host = Field(description="SMTP server (host name or IP address).")
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="`starttls` (required, not opportunistic), `tls` (implicit) or `none`.",
    )
    username: str | None = None
    password: Secret | None = Field(default=None, description="Use `${ENV}` or password_file.")
    sender: str = Field(description="From address.")
    recipients: list[str] = Field(default_factory=list, description="To addresses.")
    ca_bundle: CaBundle | None = Field(
        default=None, description="CA bundle (PEM) to verify the server."
    )
    job_notifications: bool = Field(
        default=False,
        description="Send the jobs' own email_notifications addresses through this channel "
        "(with honour_job_notifications; the first email channel when none is marked).",
    )
    subject_template: str | None = None
    text_template: str | None = None
    html_template: str | None = None

    @model_validator(mode="after")
    def _safe(self) -> EmailChannelConfig:
        problems = []
        if self.security == "none" and self.password is not None:
            problems.append(("password", "a password needs security starttls or tls, not none"))
        _, sender = email.utils.parseaddr(self.sender)
        if "\r" in self.sender or "\n" in self.sender or not ADDRESS.match(sender):
            problems.append(("sender", f"not an email address: {self.sender!r}"))
        for i, address in enumerate(self.recipients):
            if not ADDRESS.match(address):
                problems.append((f"recipients.{i}", f"not a bare email address: {address!r}"))
        if problems:
            raise FieldErrors(problems)
        return self


class WebhookChannelConfig(BaseChannelConfig):
    type: Literal["webhook"]
    url: AnyHttpUrl
    format: Literal["watcher", "databricks"] = Field(
        default="watcher", description="Our versioned payload, or the body Databricks sends."
    )
    secret: Secret | None = Field(
        default=None,
        description="Standard Webhooks signing secret: `whsec_` and the base64 of at least "
        f"{SIGNING_KEY_MIN_BYTES} random bytes.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    bearer_token: Secret | None = None
    basic_username: str | None = None
    basic_password: Secret | None = None
    ca_bundle: CaBundle | None = Field(
        default=None, description="CA bundle (PEM) to verify the server."
    )

    @model_validator(mode="after")
    def _one_auth(self) -> WebhookChannelConfig:
        problems = []
        if self.secret is not None:
            try:
                signing_key(self.secret.get_secret_value())
            except ValueError as exc:
                problems.append(("secret", str(exc).removeprefix("secret: ")))
        if self.bearer_token is not None and self.basic_username is not None:
            problems.append(
                ("bearer_token", "set bearer_token or basic_username/basic_password, not both")
            )
        if (self.basic_username is None) != (self.basic_password is None):
            problems.append(("basic_password", "basic_username and basic_password go together"))
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name) or "\r" in value or "\n" in value:
                problems.append((f"headers.{name}", "not a valid header name or value"))
        if problems:
            raise FieldErrors(problems)
        return self

    def accepts(self, event_type: EventType) -> bool:
        return self.format == "watcher" or event_type not in _NO_DATABRICKS_NOTIFICATION


class SlackChannelConfig(BaseChannelConfig):
    type: Literal["slack"]
    url: SecretUrl = Field(description="Incoming webhook URL (a secret: use `${ENV}` or url_file).")
    rate_per_second: float = Field(default=1.0, gt=0, description="Slack allows 1 message/s.")
    burst: int = Field(default=1, ge=1)
    text_template: str | None = Field(default=None, description="Jinja2 template (mrkdwn).")


class TeamsChannelConfig(BaseChannelConfig):
    type: Literal["teams"]
    url: SecretUrl = Field(description="Workflows webhook URL (a secret: `${ENV}` or url_file).")
    rate_per_second: float = Field(default=1.0, gt=0, description="Teams throttles bursts.")
    burst: int = Field(default=4, ge=1)
    text_template: str | None = Field(default=None, description="Jinja2 template (markdown).")


class PagerDutyChannelConfig(BaseChannelConfig):
    type: Literal["pagerduty"]
    routing_key: Secret = Field(description="Events API v2 integration key.")
    url: AnyHttpUrl = Field(default=AnyHttpUrl("https://events.pagerduty.com/v2/enqueue"))
    rate_per_second: float = Field(
        default=2.0, gt=0, description="PagerDuty accepts 120 events/min per routing key."
    )
    severity: Severity = "error"
    duration_severity: Severity = "warning"
    trigger_on: list[EventType] = Field(
        default_factory=lambda: list(_PAGING_EVENTS),
        description="Event types that trigger an incident; job_recovered and "
        "incident_resolved always resolve.",
    )
    summary_template: str | None = Field(default=None, description="Jinja2 template, one line.")

    def accepts(self, event_type: EventType) -> bool:
        return event_type in self.trigger_on or event_type in _RESOLVING_EVENTS


class AlertmanagerChannelConfig(BaseChannelConfig):
    type: Literal["alertmanager"]
    url: AnyHttpUrl = Field(description="Alertmanager base URL; alerts go to /api/v2/alerts.")
    resolve_after: float = Field(
        default=3600.0,
        gt=0,
        description="endsAt of a firing alert, seconds after it is sent (at least twice "
        "resend_interval).",
    )
    resend_interval: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between re-posts of an open incident's alert, which keep it firing.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra labels on every alert (e.g. team, env)."
    )
    severity: str = Field(default="critical", description="`severity` label of failures.")
    duration_severity: str = Field(
        default="warning", description="`severity` label of duration breaches."
    )
    trigger_on: list[EventType] = Field(
        default_factory=lambda: list(_PAGING_EVENTS),
        description="Event types that fire an alert; job_recovered and incident_resolved "
        "always resolve.",
    )
    ca_bundle: CaBundle | None = Field(
        default=None, description="CA bundle (PEM) to verify the server."
    )
    summary_template: str | None = Field(default=None, description="Jinja2 template, one line.")

    @model_validator(mode="after")
    def _valid(self) -> AlertmanagerChannelConfig:
        problems = [
            (f"labels.{name}", "not a valid Prometheus label name")
            for name in self.labels
            if not _LABEL_NAME.match(name)
        ]
        if self.resolve_after < 2 * self.resend_interval:
            # Else an open incident's alert expires (endsAt) before the next re-post.
            problems.append(
                (
                    "resolve_after",
                    f"{self.resolve_after:g}s is less than twice resend_interval "
                    f"({self.resend_interval:g}s): the alert would expire between re-posts",
                )
            )
        if problems:
            raise FieldErrors(problems)
        return self

    def accepts(self, event_type: EventType) -> bool:
        return event_type in self.trigger_on or event_type in _RESOLVING_EVENTS


ChannelConfig = Annotated[
    ConsoleChannelConfig
    | EmailChannelConfig
    | WebhookChannelConfig
    | SlackChannelConfig
    | TeamsChannelConfig
    | PagerDutyChannelConfig
    | AlertmanagerChannelConfig,
    Field(discriminator="type"),
]
