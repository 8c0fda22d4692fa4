"""Configuration: one YAML file, `${ENV_VAR}` references, `*_file` secrets, validated by
pydantic before anything starts. Every error names the field path that is wrong."""

from __future__ import annotations

import fnmatch
import itertools
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from watcher.events import EventType
from watcher.notify.config import ChannelConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_PATH_KEYS = frozenset({"token_file"})  # kept as paths, not replaced by their contents
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; `errors` lists one line per problem, each naming
    the field path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- matching jobs -------------------------------------------------------------------


class JobMatch(_Config):
    """Selects jobs. Every given criterion must hold; an empty match selects every job."""

    job_ids: list[int] = Field(default_factory=list, description="Job ids, any of them.")
    names: list[str] = Field(
        default_factory=list,
        description="Glob patterns on the job name (`nightly-*`), any of them.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags the job must carry; value `*` matches any value."
    )

    def matches(self, job_id: int | None, name: str | None, tags: Mapping[str, str]) -> bool:
        if self.job_ids and job_id not in self.job_ids:
            return False
        if self.names and not any(fnmatch.fnmatchcase(name or "", p) for p in self.names):
            return False
        return all(
            key in tags and (value == "*" or tags[key] == value) for key, value in self.tags.items()
        )

    @property
    def is_empty(self) -> bool:
        return not (self.job_ids or self.names or self.tags)


class JobFilter(_Config):
    """Which jobs of a workspace are watched: included (all when `include` is empty) and
    not excluded."""

    include: JobMatch = Field(default_factory=JobMatch, description="Watch only these jobs.")
    exclude: JobMatch | None = Field(default=None, description="Never watch these jobs.")

    def allows(self, job_id: int | None, name: str | None, tags: Mapping[str, str]) -> bool:
        if not self.include.matches(job_id, name, tags):
            return False
        return self.exclude is None or not self.exclude.matches(job_id, name, tags)


# -- workspaces ----------------------------------------------------------------------


class TokenAuthConfig(_Config):
    """Personal access token, inline (`${ENV}`) or from a file re-read when it changes."""

    type: Literal["pat"] = Field(default="pat", description="Personal access token.")
    token: SecretStr | None = Field(default=None, description="The token; prefer `${ENV}`.")
    token_file: Path | None = Field(
        default=None, description="File holding the token; re-read whenever it changes."
    )

    @model_validator(mode="after")
    def _one_source(self) -> TokenAuthConfig:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("set exactly one of token or token_file")
        return self


class OAuthConfig(_Config):
    """OAuth machine-to-machine (service principal client credentials)."""

    type: Literal["oauth-m2m"] = Field(description="OAuth machine-to-machine.")
    client_id: str = Field(description="Service principal application id.")
    client_secret: SecretStr = Field(
        description="Client secret; use `${ENV}` or client_secret_file."
    )


AuthConfig = Annotated[TokenAuthConfig | OAuthConfig, Field(discriminator="type")]


class ReconcileConfig(_Config):
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


class WorkspaceConfig(_Config):
    name: str = Field(pattern=NAME_PATTERN, description="Short name, used in labels and event ids.")
    host: AnyHttpUrl = Field(
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
    ca_bundle: Path | None = Field(default=None, description="Extra CA bundle for TLS (PEM).")
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


# -- rules, startup, store, server, logging ------------------------------------------


class DurationRuleConfig(_Config):
    """A RUN_DURATION_SECONDS rule from the config, besides the jobs' own health rules."""

    name: str = Field(pattern=NAME_PATTERN, description="Rule name, part of the event id.")
    seconds: int = Field(gt=0, description="Breach when a run lasts longer than this.")
    match: JobMatch = Field(default_factory=JobMatch, description="Jobs the rule applies to.")


class HealthRulesConfig(_Config):
    default_seconds: int | None = Field(
        default=None, gt=0, description="Duration limit for every job without a rule of its own."
    )
    rules: list[DurationRuleConfig] = Field(
        default_factory=list, description="Per-job rules by id, name pattern or tag."
    )

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, value: list[DurationRuleConfig]) -> list[DurationRuleConfig]:
        # The name is part of the event id: two rules of one name would share their alerts.
        names = [rule.name for rule in value]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rule names must be unique: {', '.join(dupes)}")
        return value


class StartupConfig(_Config):
    lookback: float = Field(
        default=3600.0, ge=0, description="First start: seconds of finished runs recorded."
    )
    max_catchup: float = Field(
        default=86_400.0, gt=0, description="After downtime: at most this many seconds caught up."
    )
    alert_on_backfill: bool = Field(
        default=False, description="Alert for runs that finished before the first start."
    )


class StoreConfig(_Config):
    path: Path = Field(default=Path("data/watcher.db"), description="SQLite database file.")
    run_retention_days: float = Field(default=60.0, gt=0, description="Days run records are kept.")
    event_retention_days: float = Field(
        default=14.0, gt=0, description="Days delivered events are kept."
    )


class ServerConfig(_Config):
    host: str = Field(default="0.0.0.0", description="Bind address of /metrics and probes.")  # noqa: S104
    port: int = Field(default=9108, ge=0, le=65535, description="Port (0 picks a free one).")
    ready_after_missed_polls: int = Field(
        default=3, ge=1, description="/readyz fails when a workspace missed this many intervals."
    )


# From seconds to a day: short notebook jobs through nightly batch runs.
_RUN_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)


class MetricsConfig(_Config):
    run_buckets: list[float] = Field(
        default_factory=lambda: [float(b) for b in _RUN_BUCKETS],
        min_length=1,
        description="Histogram buckets (seconds) of the run duration metrics.",
    )
    jobs: JobFilter = Field(
        default_factory=JobFilter,
        description="Jobs that get per-job series (a cardinality guard for huge workspaces).",
    )

    @field_validator("run_buckets")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
            raise ValueError("buckets must be positive and strictly increasing")
        return value


class LoggingConfig(_Config):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`auto`: console on a TTY, JSON lines otherwise."
    )


# -- routing -------------------------------------------------------------------------


class RouteMatch(JobMatch):
    workspaces: list[str] = Field(default_factory=list, description="Workspace names, any of them.")
    event_types: list[EventType] = Field(default_factory=list, description="Event types, any.")
    triggers: list[str] = Field(default_factory=list, description="Run triggers (PERIODIC, ...).")
    run_types: list[str] = Field(default_factory=list, description="Run types (JOB_RUN, ...).")


class RouteConfig(_Config):
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="Events this route takes (empty: all)."
    )
    channels: list[str] = Field(min_length=1, description="Channel names to deliver to.")
    continue_: bool = Field(
        default=False,
        alias="continue",
        description="Also try the routes after this one when it matches.",
    )


class SilenceConfig(_Config):
    match: RouteMatch = Field(
        default_factory=RouteMatch, description="Events the silence holds back (empty: all)."
    )
    starts_at: datetime = Field(description="ISO 8601 start time, with a time zone.")
    ends_at: datetime = Field(description="ISO 8601 end time, with a time zone.")
    comment: str = Field(default="", description="Why, for the next on-call.")


class Config(_Config):
    workspaces: list[WorkspaceConfig] = Field(
        min_length=1, description="The Databricks workspaces to watch, each polled on its own."
    )
    store: StoreConfig = Field(default_factory=StoreConfig, description="Durable state.")
    server: ServerConfig = Field(
        default_factory=ServerConfig, description="/metrics, /healthz, /readyz, /status."
    )
    health_rules: HealthRulesConfig = Field(
        default_factory=HealthRulesConfig,
        description="RUN_DURATION_SECONDS rules besides the jobs' own health rules.",
    )
    channels: dict[str, ChannelConfig] = Field(
        default_factory=dict, description="Alert channels by name (see docs/alerts.md)."
    )
    destinations: dict[str, str] = Field(
        default_factory=dict,
        description="Databricks notification-destination id -> channel name.",
    )
    honour_job_notifications: bool = Field(
        default=False,
        description="Also deliver to the jobs' own email_notifications / webhook_notifications.",
    )
    routes: list[RouteConfig] = Field(
        default_factory=list, description="Which events go to which channels, in order."
    )
    silences: list[SilenceConfig] = Field(
        default_factory=list, description="Time windows in which matching alerts are held back."
    )
    startup: StartupConfig = Field(
        default_factory=StartupConfig, description="First start and catching up after downtime."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics (see docs/metrics.md)."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Log output.")

    @field_validator("workspaces")
    @classmethod
    def _unique_workspaces(cls, value: list[WorkspaceConfig]) -> list[WorkspaceConfig]:
        names = [w.name for w in value]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"workspace names must be unique: {', '.join(dupes)}")
        return value

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        # ':' separates a channel from an address in outbox keys: keep names plain.
        bad = [name for name in value if not re.match(NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"channel names must match {NAME_PATTERN}: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _channels_exist(self) -> Config:
        for i, route in enumerate(self.routes):
            for name in route.channels:
                if name not in self.channels:
                    raise ValueError(f"routes.{i}.channels: unknown channel {name!r}")
        for dest, name in self.destinations.items():
            if name not in self.channels:
                raise ValueError(f"destinations.{dest}: unknown channel {name!r}")
        return self


# -- loading -------------------------------------------------------------------------


def substitute_env(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Replace `${NAME}` (or `${NAME:-default}`) in every string value with the
    environment's value. Done after parsing, so a value can never inject YAML; an unset
    variable without a default is an error naming the variable and the field."""
    if isinstance(node, list):
        return [substitute_env(v, env, f"{path}.{i}", errors) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: substitute_env(v, env, f"{path}.{k}" if path else str(k), errors)
            for k, v in node.items()
        }
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        errors.append(f"{path or '(top level)'}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(replace, node)


def _resolve_files(node: Any, path: str, base: Path, errors: list[str]) -> Any:
    """`<key>_file: PATH` becomes `<key>: <file contents>` (token_file stays a path: the
    client re-reads it on rotation)."""
    if isinstance(node, list):
        return [_resolve_files(v, f"{path}.{i}", base, errors) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and key.endswith("_file") and key not in _PATH_KEYS:
            target = key.removesuffix("_file")
            if target in node:
                errors.append(f"{where}: set {target} or {key}, not both")
                continue
            file = (base / str(value)).expanduser()
            try:
                out[target] = file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                errors.append(f"{where}: cannot read {file}: {exc.strerror}")
            continue
        out[key] = _resolve_files(value, where, base, errors)
    return out


def parse_config(text: str, *, env: Mapping[str, str], base: Path = Path(".")) -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a mapping of top-level keys"])
    errors: list[str] = []
    raw = substitute_env(raw, env, "", errors)
    raw = _resolve_files(raw, "", base, errors)
    if errors:
        raise ConfigError(errors)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from None
    return parse_config(text, env=os.environ if env is None else env, base=path.parent)


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"{where}: {error['msg']}")
    return lines
