"""A Databricks workspace to watch: where it is, how to authenticate, how hard to poll it,
which of its jobs to watch, and its reconciliation sweep."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, AnyHttpUrl, Field, model_validator

from watcher.config.base import NAME_PATTERN, Section
from watcher.config.fields import CaBundle, Secret, TokenFilePath
from watcher.config.jobs import JobFilter


class TokenAuthConfig(Section):
    """Personal access token, inline (`${ENV}`) or from a file re-read when it changes."""

    type: Literal["pat"] = Field(default="pat", description="Personal access token.")
    token: Secret | None = Field(default=None, description="The token; prefer `${ENV}`.")
    token_file: TokenFilePath | None = Field(
        default=None,
        description="File holding the token (relative: to the config file's directory); "
        "must exist, re-read whenever it changes.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> TokenAuthConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token or token_file")
        return self


class OAuthConfig(Section):
    """OAuth machine-to-machine (service principal client credentials)."""

    type: Literal["oauth-m2m"] = Field(description="OAuth machine-to-machine.")
    client_id: str = Field(description="Service principal application id.")
    client_secret: Secret = Field(description="Client secret; use `${ENV}` or client_secret_file.")


AuthConfig = Annotated[TokenAuthConfig | OAuthConfig, Field(discriminator="type")]


class ReconcileConfig(Section):
    """The reconciliation sweep: besides each cheap cycle, a walk of every run completed
    within `lookback`, read a few pages per cycle, that finds what the cheap cycle cannot
    see (a run born BLOCKED or WAITING_FOR_RETRY that ended long after it started, a short
    repair of an old run, runs finished while the watcher was down). See docs/alerts.md."""

    enabled: bool = Field(default=True, description="Run the sweep.")
    interval: float = Field(
        default=600.0, gt=0, description="Seconds between the starts of two sweeps (at least)."
    )
    lookback: float = Field(
        default=86_400.0, gt=0, description="Seconds of run start times a sweep reaches back."
    )
    max_share: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Pages a cycle may read: this share of the cycle's other requests...",
    )
    min_pages: int = Field(
        default=5, ge=1, description="...or at least this many (a sweep ends early when done)."
    )


def _workspace_url(url: AnyHttpUrl) -> AnyHttpUrl:
    # The client appends /api/2.1/...: a query or fragment (a URL copied from the browser,
    # `?o=123#job/1`) would end up in the middle of every request's path.
    if url.query or url.fragment:
        raise ValueError("the workspace URL only, without ?query or #fragment")
    return url


class WorkspaceConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Short name, used in labels and event ids.")
    host: Annotated[AnyHttpUrl, AfterValidator(_workspace_url)] = Field(
        description="Workspace URL, e.g. https://adb-123.4.azuredatabricks.net"
    )
    api_version: Literal["2.0", "2.1", "2.2"] = Field(
        default="2.1", description="Jobs API version."
    )
    auth: AuthConfig = Field(description="Credentials: a PAT or OAuth M2M.")
    poll_interval: float = Field(
        default=30.0, ge=0.1, description="Seconds between poll cycles (10 or more in production)."
    )
    requests_per_second: float = Field(default=10.0, gt=0, description="Client-side rate limit.")
    ca_bundle: CaBundle | None = Field(default=None, description="Extra CA bundle for TLS (PEM).")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to connect.")
    request_timeout: float = Field(default=60.0, gt=0, description="Seconds for one request.")
    retry_budget: float = Field(
        default=120.0, ge=0, description="Seconds one API call may spend retrying."
    )
    completed_overlap: float = Field(
        default=300.0,
        ge=0,
        description="Seconds the completed-runs walk reaches back past the watermark.",
    )
    job_settings_ttl: float = Field(
        default=600.0, ge=0, description="Seconds job settings (rules, notifications) are cached."
    )
    runs_get_concurrency: int = Field(
        default=8, ge=1, le=64, description="Parallel runs/get calls for vanished active runs."
    )
    jobs: JobFilter = Field(default_factory=JobFilter, description="Which jobs to watch.")
    reconcile: ReconcileConfig = Field(
        default_factory=ReconcileConfig, description="The reconciliation sweep."
    )
    report_unreadable_after: int = Field(
        default=3,
        ge=1,
        description="Cycles a run or job may fail validation before it is reported (once).",
    )
