"""The daemon's own settings: duration rules, start-up and catching up, the store, the
HTTP server, metrics and logging."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from watcher.config.base import NAME_PATTERN, FieldErrors, Section, require_unique
from watcher.config.fields import Host, Secret
from watcher.config.jobs import JobFilter, JobMatch


class DurationRuleConfig(Section):
    """A RUN_DURATION_SECONDS rule from the config, besides the jobs' own health rules."""

    name: str = Field(pattern=NAME_PATTERN, description="Rule name, part of the event id.")
    seconds: int = Field(gt=0, description="Breach when a run lasts longer than this.")
    match: JobMatch = Field(default_factory=JobMatch, description="Jobs the rule applies to.")


class HealthRulesConfig(Section):
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
        require_unique([rule.name for rule in value], "rule names")
        return value


STUCK_TAG = "watcher.stuck_after"
"""A job tag that sets the job's stuck threshold: seconds, or a number with s, m, h or d."""


class StuckRuleConfig(Section):
    """A stuck threshold for some jobs, instead of the default."""

    name: str = Field(pattern=NAME_PATTERN, description="Rule name (unique).")
    seconds: int = Field(ge=0, description="Seconds in QUEUED, PENDING or BLOCKED; 0 = never.")
    match: JobMatch = Field(default_factory=JobMatch, description="Jobs the rule applies to.")


class StuckConfig(Section):
    """When a run that waits before running is stuck: `run_stuck` once per run and state."""

    seconds: int = Field(
        default=3600,
        ge=0,
        description="Seconds a run may stay QUEUED, PENDING or BLOCKED (0 = never stuck).",
    )
    rules: list[StuckRuleConfig] = Field(
        default_factory=list,
        description=f"Per-job thresholds, the first matching wins (the job tag {STUCK_TAG} "
        "wins over all).",
    )

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, value: list[StuckRuleConfig]) -> list[StuckRuleConfig]:
        require_unique([rule.name for rule in value], "rule names")
        return value

    def threshold(self, job_id: int | None, name: str | None, tags: Mapping[str, str]) -> int:
        """Seconds before a run of this job is stuck (0: never): the job's tag, else the
        first matching rule, else the default. An unreadable tag value is ignored."""
        tagged = parse_seconds(tags.get(STUCK_TAG, ""))
        if tagged is not None:
            return tagged
        for rule in self.rules:
            if rule.match.matches(job_id, name, tags):
                return rule.seconds
        return self.seconds


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_seconds(text: str) -> int | None:
    """`90`, `90s`, `15m`, `2h`, `1d` as whole seconds; None for anything else."""
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _UNITS else text
    if not (number.isascii() and number.isdigit()) or len(number) > 9:
        return None
    return int(number) * unit


SUCCESS_TAG = "watcher.expect_success_within"
"""A job tag that sets how often the job must succeed: seconds, or a number with s, m, h or d."""


class FreshnessRuleConfig(Section):
    """Jobs that must succeed at least this often (job_stale otherwise)."""

    name: str = Field(pattern=NAME_PATTERN, description="Rule name (unique).")
    seconds: int = Field(gt=0, description="A success at least every this many seconds.")
    match: JobMatch = Field(default_factory=JobMatch, description="Jobs the rule applies to.")


class ExpectationsConfig(Section):
    """What Databricks never reports: a scheduled run that never started, a continuous job
    with no run, a job that has not succeeded for too long."""

    missed_schedules: bool = Field(
        default=True, description="Report run_missed for scheduled (and periodic) jobs."
    )
    grace: int | None = Field(
        default=None,
        ge=0,
        description="Seconds after an expected trigger before it counts as missed (default: "
        "10% of the schedule's period, at least 600).",
    )
    not_running_after: int = Field(
        default=900,
        ge=0,
        description="Seconds a continuous job may have no active run (0: never reported).",
    )
    success_within: list[FreshnessRuleConfig] = Field(
        default_factory=list,
        description=f"Jobs that must succeed at least this often (the job tag {SUCCESS_TAG} "
        "wins); none by default.",
    )
    jobs_every: float = Field(
        default=300.0,
        gt=0,
        description="Seconds between reads of every job's settings (a jobs/list walk: one "
        "request per 100 jobs) for these checks.",
    )

    @field_validator("success_within")
    @classmethod
    def _unique_names(cls, value: list[FreshnessRuleConfig]) -> list[FreshnessRuleConfig]:
        require_unique([rule.name for rule in value], "rule names")
        return value

    def success_window(
        self, job_id: int | None, name: str | None, tags: Mapping[str, str]
    ) -> int | None:
        """Seconds within which the job must succeed, or None."""
        tagged = parse_seconds(tags.get(SUCCESS_TAG, ""))
        if tagged:
            return tagged
        for rule in self.success_within:
            if rule.match.matches(job_id, name, tags):
                return rule.seconds
        return None


class StartupConfig(Section):
    lookback: float = Field(
        default=3600.0, ge=0, description="First start: seconds of finished runs recorded."
    )
    max_catchup: float = Field(
        default=86_400.0, gt=0, description="After downtime: at most this many seconds caught up."
    )
    alert_on_backfill: bool = Field(
        default=False, description="Alert for runs that finished before the first start."
    )


_DEFAULT_DB = Path("data/watcher.db")


class SQLiteConfig(Section):
    """The embedded default: one file, one replica."""

    path: Path = Field(default=_DEFAULT_DB, description="SQLite database file.")


class PostgresPoolConfig(Section):
    min_size: int = Field(default=1, ge=0, description="Connections kept open.")
    max_size: int = Field(default=10, ge=1, description="Connections at most.")

    @model_validator(mode="after")
    def _ordered(self) -> PostgresPoolConfig:
        if self.min_size > self.max_size:
            raise ValueError("min_size must not exceed max_size")
        return self


class PostgresConfig(Section):
    """PostgreSQL, shared by several replicas (deploy/overlays/ha-postgres)."""

    dsn: Secret = Field(
        description="libpq URI `postgresql://user:password@host:5432/db?sslmode=verify-full`; "
        "prefer `${ENV}` or dsn_file (a mounted Secret)."
    )
    schema_: str | None = Field(
        default=None,
        alias="schema",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Schema of the watcher's tables, created if missing (default: the "
        "user's search_path).",
    )
    pool: PostgresPoolConfig = Field(
        default_factory=PostgresPoolConfig, description="Connection pool per replica."
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to connect before the store is unavailable."
    )
    command_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds getting a pooled connection, and each statement, may take "
        "before the store call fails (a hung or unreachable server): no call waits for "
        "the database forever.",
    )
    stall_timeout: float = Field(
        default=2.0,
        ge=0.5,
        description="Seconds a transaction may sit idle before the server aborts it, so "
        "that a replica frozen mid-commit releases its workspace's lease row to the "
        "replica taking over: keep it well under ha.lease_seconds.",
    )


class StoreConfig(Section):
    path: Path = Field(
        default=_DEFAULT_DB, description="SQLite database file (same as sqlite.path)."
    )
    sqlite: SQLiteConfig | None = Field(default=None, description="SQLite (the default).")
    postgres: PostgresConfig | None = Field(
        default=None, description="PostgreSQL instead of SQLite: several replicas share it."
    )
    run_retention_days: float = Field(default=60.0, gt=0, description="Days run records are kept.")
    event_retention_days: float = Field(
        default=14.0, gt=0, description="Days delivered events are kept."
    )

    @model_validator(mode="after")
    def _one_backend(self) -> StoreConfig:
        chosen = [k for k in ("path", "sqlite", "postgres") if k in self.model_fields_set]
        if len(chosen) > 1:
            raise ValueError(f"set one of path, sqlite or postgres, not {' and '.join(chosen)}")
        return self

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (of `sqlite.path` or `path`); meaningless with `postgres`."""
        return self.sqlite.path if self.sqlite is not None else self.path


class HAConfig(Section):
    """Several replicas on one PostgreSQL store: each workspace is polled by the replica
    holding its lease (docs/deploy.md). With SQLite there is one replica, which holds
    every lease."""

    lease_seconds: float = Field(
        default=30.0,
        ge=3,
        le=600,
        description="A workspace's lease: renewed every third of it; a replica that dies or "
        "stalls is replaced after at most this long.",
    )


class ApiConfig(Section):
    """The authenticated HTTP API of the status server (`/api/v1/silences`)."""

    token: Secret | None = Field(
        default=None,
        description="Bearer token the API asks for (a secret: use token_file, a mounted "
        "Secret, or `${ENV}`); without one the API is off.",
    )
    open_reads: bool = Field(
        default=False,
        description="Let anyone who reaches the server list silences without the token "
        "(adding and expiring always need it; the status page at / shows them anyway).",
    )

    @model_validator(mode="after")
    def _token(self) -> ApiConfig:
        if self.token is not None and len(self.token.get_secret_value().strip()) < 16:
            raise FieldErrors([("token", "at least 16 characters: a short token is guessed")])
        if self.open_reads and self.token is None:
            raise FieldErrors([("open_reads", "the API is off without a token: set token too")])
        return self


class ServerConfig(Section):
    host: Host = Field(
        default="0.0.0.0",  # noqa: S104
        description="Bind address of /metrics and probes: an IP address or host name, no port.",
    )
    port: int = Field(default=9108, ge=0, le=65535, description="Port (0 picks a free one).")
    ready_after_missed_polls: int = Field(
        default=3, ge=1, description="/readyz fails when a workspace missed this many intervals."
    )
    api: ApiConfig = Field(
        default_factory=ApiConfig, description="The silences API (off without a token)."
    )


# From seconds to a day: short notebook jobs through nightly batch runs.
_RUN_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)
# Waiting in the queue and cleaning up take seconds to minutes, not hours.
_SHORT_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

PerJobFamily = Literal["durations", "phases", "counts"]
"""Run metric families that can be exported per job or per workspace (docs/metrics.md)."""
PER_JOB_FAMILIES: tuple[PerJobFamily, ...] = ("durations", "phases", "counts")
RunHistogram = Literal["queue", "setup", "execution", "cleanup", "duration"]
"""The run histograms, by the key of their buckets in `metrics.buckets`."""


def _check_buckets(value: list[float]) -> list[float]:
    if any(b <= a for a, b in itertools.pairwise(value)) or value[0] <= 0:
        raise ValueError("buckets must be positive and strictly increasing")
    return value


Buckets = Annotated[list[float], Field(min_length=1), AfterValidator(_check_buckets)]
"""Histogram bucket bounds, seconds: positive and strictly increasing (+Inf is implied)."""


def _short_buckets() -> list[float]:
    return [float(b) for b in _SHORT_BUCKETS]


class RunBucketsConfig(Section):
    """Buckets (seconds) of each run histogram; setup, execution and duration default to
    `metrics.run_buckets`."""

    queue: Buckets = Field(
        default_factory=_short_buckets,
        description="databricks_run_queue_duration_seconds: time queued.",
    )
    setup: Buckets | None = Field(
        default=None,
        description="databricks_run_setup_duration_seconds (default: `run_buckets`).",
    )
    execution: Buckets | None = Field(
        default=None,
        description="databricks_run_execution_duration_seconds (default: `run_buckets`).",
    )
    cleanup: Buckets = Field(
        default_factory=_short_buckets,
        description="databricks_run_cleanup_duration_seconds: cleanup time.",
    )
    duration: Buckets | None = Field(
        default=None,
        description="databricks_run_duration_seconds, the total (default: `run_buckets`).",
    )


class MetricsConfig(Section):
    run_buckets: Buckets = Field(
        default_factory=lambda: [float(b) for b in _RUN_BUCKETS],
        description="Histogram buckets (seconds) of the setup, execution and total run "
        "durations, unless `buckets` sets them.",
    )
    buckets: RunBucketsConfig = Field(
        default_factory=RunBucketsConfig,
        description="Buckets (seconds) per run histogram.",
    )
    per_job: list[PerJobFamily] = Field(
        default_factory=lambda: list(PER_JOB_FAMILIES),
        description="Run metric families exported per job (with `job_id`): `durations` (the "
        "total duration histogram), `phases` (queue, setup, execution, cleanup histograms), "
        "`counts` (runs started and finished); a family left out is exported per workspace, "
        "without `job_id`.",
    )
    result_state_label: bool = Field(
        default=True,
        description="Label finished-run counts and the duration histograms by `result_state` "
        "(false: one series for every result).",
    )
    jobs: JobFilter = Field(
        default_factory=JobFilter,
        description="Jobs that get per-job series (a cardinality guard for huge workspaces).",
    )

    @field_validator("per_job")
    @classmethod
    def _unique_families(cls, value: list[PerJobFamily]) -> list[PerJobFamily]:
        require_unique(list(value), "per_job families")
        return value

    def buckets_of(self, histogram: RunHistogram) -> list[float]:
        """The buckets of one run histogram: its own, else `run_buckets`."""
        own: list[float] | None = getattr(self.buckets, histogram)
        return self.run_buckets if own is None else own


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged."
    )
    format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`auto`: console on a TTY, JSON lines otherwise."
    )
