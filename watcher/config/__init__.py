"""Configuration: one YAML file, `${ENV_VAR}` references, `*_file` secrets, validated by
pydantic before anything starts. Every error names the field path that is wrong.

What `watcher run` would reject or trip over is rejected here first, offline: duplicate
keys, times without a time zone, names that refer to nothing, files that cannot be read,
hosts and URLs that cannot be used (`watcher check-config` adds the channels' templates).
What needs the network is `watcher doctor`'s."""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from watcher.config.channels import (
    CaBundle,
    ChannelConfig,
    FieldErrors,
    Host,
    Secret,
    StrictModel,
    TokenFilePath,
    secret_file_keys,
)
from watcher.events import EventType

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_ERRORS = 50
_FILE_LIMIT = 1024 * 1024  # a configuration is a few KiB; this is the wrong file
# Values in the file, aliases counted at every use: `&a [*b, *b, ...]` nests
# exponentially (a "billion laughs") and would hang the walks below.
_NODE_LIMIT = 100_000


class ConfigError(Exception):
    """The configuration cannot be used; `errors` lists one line per problem, each naming
    the field path (at most MAX_ERRORS of them, then how many more)."""

    def __init__(self, errors: list[str]) -> None:
        if len(errors) > MAX_ERRORS:
            errors = [*errors[:MAX_ERRORS], f"... and {len(errors) - MAX_ERRORS} more"]
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))


class _Config(StrictModel):
    model_config = ConfigDict(populate_by_name=True)


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


class OAuthConfig(_Config):
    """OAuth machine-to-machine (service principal client credentials)."""

    type: Literal["oauth-m2m"] = Field(description="OAuth machine-to-machine.")
    client_id: str = Field(description="Service principal application id.")
    client_secret: Secret = Field(description="Client secret; use `${ENV}` or client_secret_file.")


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


def _workspace_url(url: AnyHttpUrl) -> AnyHttpUrl:
    # The client appends /api/2.1/...: a query or fragment (a URL copied from the browser,
    # `?o=123#job/1`) would end up in the middle of every request's path.
    if url.query or url.fragment:
        raise ValueError("the workspace URL only, without ?query or #fragment")
    return url


class WorkspaceConfig(_Config):
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
    host: Host = Field(
        default="0.0.0.0",  # noqa: S104
        description="Bind address of /metrics and probes: an IP address or host name, no port.",
    )
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
    # Aware only: a naive time cannot be compared with the clock's (every cycle would fail).
    starts_at: AwareDatetime = Field(description="ISO 8601 start time, with a time zone.")
    ends_at: AwareDatetime = Field(description="ISO 8601 end time, with a time zone.")
    comment: str = Field(default="", description="Why, for the next on-call.")

    @model_validator(mode="after")
    def _ends_after_start(self) -> SilenceConfig:
        if self.ends_at <= self.starts_at:
            raise FieldErrors([("ends_at", "must be after starts_at (the silence is empty)")])
        return self


class RoutingConfig(_Config):
    """What notify needs of the configuration, and nothing else: the channels, where each
    event goes, and what is held back. In the file these are top-level keys."""

    channels: dict[str, ChannelConfig] = Field(default_factory=dict)
    destinations: dict[str, str] = Field(default_factory=dict)
    honour_job_notifications: bool = False
    routes: list[RouteConfig] = Field(default_factory=list)
    silences: list[SilenceConfig] = Field(default_factory=list)


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

    @property
    def routing(self) -> RoutingConfig:
        """The routing slice handed to notify."""
        return RoutingConfig.model_construct(
            channels=self.channels,
            destinations=self.destinations,
            honour_job_notifications=self.honour_job_notifications,
            routes=self.routes,
            silences=self.silences,
        )

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
    def _references_exist(self) -> Config:
        # A name that refers to nothing would silently route or silence nothing.
        problems: list[tuple[str, str]] = []
        workspaces = [w.name for w in self.workspaces]
        channels = list(self.channels)
        for i, route in enumerate(self.routes):
            for j, name in enumerate(route.channels):
                problems += _unknown("channel", name, channels, f"routes.{i}.channels.{j}")
        matches = [(f"routes.{i}", r.match) for i, r in enumerate(self.routes)]
        matches += [(f"silences.{i}", s.match) for i, s in enumerate(self.silences)]
        for where, match in matches:
            for j, name in enumerate(match.workspaces):
                problems += _unknown("workspace", name, workspaces, f"{where}.match.workspaces.{j}")
        for dest, name in self.destinations.items():
            problems += _unknown("channel", name, channels, f"destinations.{dest}")
        if problems:
            raise FieldErrors(problems)
        return self


def _unknown(kind: str, name: str, known: list[str], where: str) -> list[tuple[str, str]]:
    if name in known:
        return []
    return [(where, f"unknown {kind} {name!r}{_did_you_mean(name, known)}")]


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    if close:
        return f"; did you mean `{close[0]}`?"
    return f" (known: {', '.join(known)})" if known and len(known) <= 10 else ""


# -- loading -------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping, at any depth: plain
    YAML lets the last one silently win (a second `slack:` channel replacing the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given explicitly override merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} (first on line {first + 1})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(exc: Exception, text: str) -> str:
    # Position and problem only: the snippet PyYAML adds would print a line of the file,
    # which may hold a secret.
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return (
            f"not valid YAML: line {line}: character U+{exc.character:04X} is not allowed "
            "(write control characters as escapes in a double-quoted string)"
        )
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"not valid YAML: {where}: {exc.problem}{context}"
    if isinstance(exc, RecursionError):
        return "not valid YAML: nested too deeply"
    return f"not valid YAML: {exc}"


def _too_big(node: Any) -> bool:
    """Whether the document has more than _NODE_LIMIT values once its aliases are
    expanded (or is recursive: `&a [*a]`)."""
    stack, count = [node], 0
    while stack:
        count += 1
        if count > _NODE_LIMIT:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


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


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [
                f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} (a binary file, "
                "or text in another encoding such as Latin-1: save it as UTF-8)"
            ]
        ) from None


def parse_config(text: str | bytes, *, env: Mapping[str, str], base: Path = Path(".")) -> Config:
    """The configuration in `text`; relative paths in it are resolved against `base` (the
    config file's directory). Raises ConfigError, and nothing else, for any input."""
    if isinstance(text, bytes):
        text = _decode(text)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    # Constructors raise ValueError too: `2026-02-30` (a date), a 5000-digit int.
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError([_yaml_error(exc, text)]) from None
    if raw is None:
        raise ConfigError(["the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a mapping of top-level keys"])
    if _too_big(raw):
        raise ConfigError([f"more than {_NODE_LIMIT} values (aliases expanded): not a config"])
    errors: list[str] = []
    raw = substitute_env(raw, env, "", errors)
    if errors:
        raise ConfigError(errors)
    try:
        return Config.model_validate(raw, context={"base": base})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except RecursionError:
        raise ConfigError(["nested too deeply"]) from None


def load_config(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    try:
        with path.open("rb") as file:
            data = file.read(_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or type(exc).__name__}"]) from None
    if len(data) > _FILE_LIMIT:
        raise ConfigError([f"{path} is larger than {_FILE_LIMIT // 1024} KiB: not a config"])
    # Absolute, so messages name the file a relative `token_file: token` really means.
    base = path.parent.absolute()
    return parse_config(data, env=os.environ if env is None else env, base=base)


# -- describing errors -----------------------------------------------------------------

_DATETIME_ERRORS = frozenset(
    {"timezone_aware", "datetime_type", "datetime_parsing", "datetime_from_date_parsing"}
)


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        parts, _ = _walk(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldErrors):
            lines += [f"{'.'.join([*parts, sub])}: {what}" for sub, what in cause.problems]
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{'.'.join(parts) or '(top level)'}: {message}{_hint(error)}")
    return lines


def _hint(error: Any) -> str:
    """What the usual cause of this error is, where there is a usual one."""
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        _, model = _walk(error["loc"][:-1])
        models = _models(model)
        known = [k for m in models for k in _keys(m)]
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        return f"; did you mean `{close[0]}`?" if close else ""
    if kind == "literal_error" and isinstance(value, int | float) and not isinstance(value, bool):
        # `api_version: 2.1` is a float to YAML, and 2.10 would be 2.1.
        expected = error.get("ctx", {}).get("expected", "")
        if f"'{value}'" in expected:
            return f"; quote it: '{value}'"
        return "; YAML reads an unquoted number as a number: quote it"
    if kind == "string_type" and isinstance(value, bool):
        return "; YAML reads unquoted yes/no/on/off/true/false as a boolean: quote it"
    if kind == "string_type" and isinstance(value, int | float):
        return "; YAML reads an unquoted number as a number: quote it"
    if kind in _DATETIME_ERRORS:
        return "; give an ISO 8601 time with a time zone, e.g. '2026-12-24T00:00:00Z'"
    return ""


def _walk(loc: tuple[int | str, ...]) -> tuple[list[str], Any]:
    """The location as the file spells it, and the schema type found there. Pydantic puts
    the `type` of a tagged union (`channels.x.slack.url`) in the location; the file has
    no such level, so it is dropped."""
    node: Any = Config
    parts: list[str] = []
    for part in loc:
        tagged = {_tag(m): m for m in _models(node)}
        if len(tagged) > 1 and part in tagged:
            node = tagged[part]
            continue
        parts.append(str(part))
        node = _child(node, part)
    return parts, node


def _child(node: Any, part: int | str) -> Any:
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    args = typing.get_args(node)
    if typing.get_origin(node) is list and args:
        return args[0]
    if typing.get_origin(node) is dict and len(args) == 2:
        return args[1]
    return None


def _unwrap(node: Any) -> Any:
    """`X` of `Annotated[X, ...]` and of `X | None`."""
    while True:
        origin, args = typing.get_origin(node), typing.get_args(node)
        if origin is Annotated:
            node = args[0]
        elif origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
            node = next(a for a in args if a is not type(None))
        else:
            return node


def _models(node: Any) -> list[type[BaseModel]]:
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [node]
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(node) for m in _models(a)]
    return []


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if args else None


def _keys(model: type[BaseModel]) -> list[str]:
    fields = [field.alias or name for name, field in model.model_fields.items()]
    return [*fields, *secret_file_keys(model)]
