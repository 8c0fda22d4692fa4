"""Configuration of alert channels, one model per channel type (the `type` key decides)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, SecretStr


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_second: float = Field(default=5.0, gt=0, description="Token-bucket refill rate.")
    burst: int = Field(default=10, ge=1, description="Token-bucket size.")
    concurrency: int = Field(default=4, ge=1, description="Deliveries in flight at once.")
    timeout: float = Field(default=30.0, gt=0, description="Seconds for one delivery attempt.")
    max_attempts: int = Field(default=12, ge=1, description="Attempts before dead-lettering.")
    max_age: float = Field(
        default=86_400.0, gt=0, description="Seconds after which an undelivered alert is dead."
    )


class ConsoleChannelConfig(_Channel):
    type: Literal["console"]


class EmailChannelConfig(_Channel):
    type: Literal["email"]
    host: str = Field(description="SMTP server.")
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="`starttls` (required, not opportunistic), `tls` (implicit) or `none`.",
    )
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="Use `${ENV}` or password_file.")
    sender: str = Field(description="From address.")
    recipients: list[str] = Field(default_factory=list, description="To addresses.")
    ca_bundle: Path | None = Field(default=None, description="CA bundle to verify the server.")
    subject_template: str | None = None
    text_template: str | None = None
    html_template: str | None = None


class WebhookChannelConfig(_Channel):
    type: Literal["webhook"]
    url: AnyHttpUrl
    format: Literal["watcher", "databricks"] = Field(
        default="watcher", description="Our versioned payload, or the body Databricks sends."
    )
    secret: SecretStr | None = Field(
        default=None, description="Standard Webhooks signing secret (`whsec_...`)."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    bearer_token: SecretStr | None = None
    basic_username: str | None = None
    basic_password: SecretStr | None = None


class SlackChannelConfig(_Channel):
    type: Literal["slack"]
    url: SecretStr = Field(description="Incoming webhook URL (a secret: use `${ENV}` or url_file).")
    rate_per_second: float = Field(default=1.0, gt=0, description="Slack allows 1 message/s.")
    burst: int = Field(default=1, ge=1)
    text_template: str | None = None


class TeamsChannelConfig(_Channel):
    type: Literal["teams"]
    url: SecretStr = Field(description="Workflows webhook URL (a secret).")
    text_template: str | None = None


class PagerDutyChannelConfig(_Channel):
    type: Literal["pagerduty"]
    routing_key: SecretStr = Field(description="Events API v2 integration key.")
    url: AnyHttpUrl = Field(default=AnyHttpUrl("https://events.pagerduty.com/v2/enqueue"))
    severity: Literal["critical", "error", "warning", "info"] = "error"
    duration_severity: Literal["critical", "error", "warning", "info"] = "warning"


class AlertmanagerChannelConfig(_Channel):
    type: Literal["alertmanager"]
    url: AnyHttpUrl = Field(description="Alertmanager base URL; alerts go to /api/v2/alerts.")
    resolve_after: float = Field(
        default=3600.0, gt=0, description="endsAt of a firing alert, seconds after it fired."
    )


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
