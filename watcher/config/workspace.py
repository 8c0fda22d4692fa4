"""A Databricks workspace to watch: where it is, how to authenticate, how hard to poll it,
which of its jobs to watch, and its reconciliation sweep.

Credentials may also come the way the Databricks CLI and SDKs read them (unified
authentication): a profile of `~/.databrickscfg` (`auth: {type: profile}`), read when the
configuration is loaded, whose keys (`host`, `token`, `client_id` / `client_secret`,
`azure_tenant_id` / `azure_client_id` / `azure_client_secret`) decide the credentials
(`credentials_from`, shared with the variables of `watcher.config.environment`)."""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BeforeValidator,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from watcher.config.base import NAME_PATTERN, FieldErrors, Section
from watcher.config.fields import CaBundle, Secret, TokenFilePath, base_dir, read_text_file
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


# As watcher.databricks.auth.ENTRA_ID (not imported: the configuration stays free of I/O).
ENTRA_ID = "https://login.microsoftonline.com"
_AZURE_CLOUDS = {
    "PUBLIC": ENTRA_ID,
    "USGOVERNMENT": "https://login.microsoftonline.us",
    "CHINA": "https://login.chinacloudapi.cn",
}
# Azure Databricks hosts outside the public cloud, as the SDKs tell the cloud by the host.
_AZURE_ZONES = {".databricks.azure.us": "USGOVERNMENT", ".databricks.azure.cn": "CHINA"}


class AzureSPConfig(Section):
    """A Microsoft Entra ID service principal (Azure): client credentials exchanged at
    Entra ID for a token of the AzureDatabricks application."""

    type: Literal["azure-sp"] = Field(description="Microsoft Entra ID service principal.")
    tenant_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$",
        description="Directory (tenant) id, or the tenant's domain name.",
    )
    client_id: str = Field(min_length=1, description="Application (client) id.")
    client_secret: Secret = Field(description="Client secret; use `${ENV}` or client_secret_file.")
    authority: AnyHttpUrl = Field(
        default=AnyHttpUrl(ENTRA_ID),
        description="Entra ID endpoint: https://login.microsoftonline.us for Azure "
        "Government, https://login.chinacloudapi.cn for Azure in China.",
    )


Credentials = TokenAuthConfig | OAuthConfig | AzureSPConfig
"""What a profile's (or the environment's) keys come down to."""

DATABRICKS_CONFIG = Path("~/.databrickscfg")
"""The Databricks CLI's configuration file, unless DATABRICKS_CONFIG_FILE names another."""
_SETTINGS = "__settings__"  # the CLI's own section: `default_profile`, not a profile
_NO_DEFAULTS = "\x00"  # ConfigParser's default section: none, [DEFAULT] is a profile like any
# How the CLI and SDKs name the kinds of credentials (`auth_type`), the keys of each, and
# the keys whose presence says the kind is meant (a tenant id alone is no credential).
_KINDS: dict[str, tuple[str, ...]] = {
    "pat": ("token",),
    "oauth-m2m": ("client_id", "client_secret"),
    "azure-client-secret": ("azure_tenant_id", "azure_client_id", "azure_client_secret"),
}
_MEANT: dict[str, tuple[str, ...]] = {
    "pat": ("token",),
    "oauth-m2m": ("client_id", "client_secret"),
    "azure-client-secret": ("azure_client_id", "azure_client_secret"),
}
_AZURE_FIELDS = {
    "tenant_id": "azure_tenant_id",
    "client_id": "azure_client_id",
    "client_secret": "azure_client_secret",
}
PROFILE_KEYS = (
    "host",
    "token",
    "client_id",
    "client_secret",
    "azure_tenant_id",
    "azure_client_id",
    "azure_client_secret",
    "azure_environment",
    "auth_type",
)
"""The keys of a profile the watcher reads (others, like `cluster_id`, are ignored)."""


def _workspace_url(url: AnyHttpUrl) -> AnyHttpUrl:
    # The client appends /api/2.1/...: a query or fragment (a URL copied from the browser,
    # `?o=123#job/1`) would end up in the middle of every request's path.
    if url.query or url.fragment:
        raise ValueError("the workspace URL only, without ?query or #fragment")
    return url


WorkspaceUrl = Annotated[AnyHttpUrl, AfterValidator(_workspace_url)]
_WORKSPACE_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(WorkspaceUrl)


def databricks_host(value: str) -> AnyHttpUrl:
    """A `host` of a profile or DATABRICKS_HOST as a workspace URL: like the SDKs, a bare
    host name means https. Raises ValueError saying what is wrong."""
    text = value.strip()
    if "://" not in text:
        text = f"https://{text}"
    try:
        return _WORKSPACE_URL.validate_python(text)
    except ValidationError as exc:
        raise ValueError(_first_message(exc)) from None


def _first_message(exc: ValidationError) -> str:
    # The message only: pydantic's str() would quote the input.
    return str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")


def _azure_authority(values: Mapping[str, str], names: Mapping[str, str]) -> str:
    cloud = values.get("azure_environment", "").upper()
    # Older SDKs took AzurePublicCloud, AzureChinaCloud...
    cloud = cloud.removeprefix("AZURE").removesuffix("CLOUD")
    if not cloud:
        host = values.get("host", "")
        zone = next((z for z in _AZURE_ZONES if host.rstrip("/").endswith(z)), None)
        cloud = _AZURE_ZONES[zone] if zone else "PUBLIC"
    if cloud not in _AZURE_CLOUDS:
        known = ", ".join(_AZURE_CLOUDS)
        raise ValueError(f"{names['azure_environment']}: not an Azure cloud (one of {known})")
    return _AZURE_CLOUDS[cloud]


def credentials_from(values: Mapping[str, str], names: Mapping[str, str]) -> Credentials:
    """The credentials given by `values` (keys as a .databrickscfg profile spells them:
    token, client_id, client_secret, azure_tenant_id, azure_client_id, azure_client_secret,
    azure_environment, auth_type, host), chosen as the Databricks SDKs choose: `auth_type`
    if set, else the one kind present. Raises ValueError naming the keys as `names` does
    (a profile's keys, or environment variables), never quoting a value."""
    chosen = values.get("auth_type")
    present = [kind for kind, keys in _MEANT.items() if any(k in values for k in keys)]
    if chosen is not None and chosen not in _KINDS:
        hint = " (a user's login: use a PAT or a service principal)" if "cli" in chosen else ""
        raise ValueError(
            f"{names['auth_type']} {chosen!r} is not supported{hint}; "
            f"the watcher authenticates with {', '.join(_KINDS)}"
        )
    if chosen is None and len(present) > 1:
        kinds = " and ".join(
            "/".join(names[k] for k in _MEANT[kind] if k in values) for kind in present
        )
        raise ValueError(
            f"more than one kind of credentials ({kinds}): keep one, or choose with "
            f"{names['auth_type']}"
        )
    if chosen is None and not present:
        raise ValueError(
            f"no credentials: set {names['token']}, or {names['client_id']} and "
            f"{names['client_secret']}, or {names['azure_tenant_id']}, "
            f"{names['azure_client_id']} and {names['azure_client_secret']}"
        )
    kind = chosen or present[0]
    missing = [names[k] for k in _KINDS[kind] if k not in values]
    if missing:
        raise ValueError(f"{kind}: {', '.join(missing)} not set")
    data: dict[str, Any]
    model: type[Credentials]
    fields: Mapping[str, str] = {}
    if kind == "pat":
        model, data = TokenAuthConfig, {"type": "pat", "token": values["token"]}
    elif kind == "oauth-m2m":
        model = OAuthConfig
        data = {k: values[k] for k in _KINDS[kind]} | {"type": "oauth-m2m"}
    else:
        model, fields = AzureSPConfig, _AZURE_FIELDS
        data = {f: values[k] for f, k in fields.items()}
        data |= {"type": "azure-sp", "authority": _azure_authority(values, names)}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            key = fields.get(field, field)
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{names.get(key, key)}: {message}")
        raise ValueError("; ".join(problems)) from None


def _environment(info: ValidationInfo) -> Mapping[str, str]:
    # `load_config` passes the environment it substitutes `${ENV}` from; models built in
    # code read the process's, as the Databricks CLI would.
    context = info.context
    env = context.get("env") if isinstance(context, Mapping) else None
    return env if isinstance(env, Mapping) else os.environ


def parse_profiles(text: str, shown: str) -> dict[str, dict[str, str]]:
    """The sections of a .databrickscfg as the SDKs read it: a profile inherits nothing
    from [DEFAULT], keys are case-insensitive, `%` is literal. Raises ValueError naming
    the line, never quoting it (it may hold a token)."""
    parser = configparser.ConfigParser(default_section=_NO_DEFAULTS, interpolation=None)
    try:
        parser.read_string(text, source=shown)
    except configparser.MissingSectionHeaderError as exc:
        raise ValueError(f"{shown}: line {exc.lineno}: a key before the first [profile]") from None
    except configparser.DuplicateSectionError as exc:
        raise ValueError(f"{shown}: line {exc.lineno}: [{exc.section}] given twice") from None
    except configparser.DuplicateOptionError as exc:
        raise ValueError(
            f"{shown}: line {exc.lineno}: `{exc.option}` given twice in [{exc.section}]"
        ) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(str(number) for number, _ in exc.errors)
        raise ValueError(f"{shown}: line {lines}: not `key = value`") from None
    except configparser.Error:
        raise ValueError(f"{shown}: not an INI file") from None
    return {name: dict(parser[name]) for name in parser.sections()}


class ProfileAuthConfig(Section):
    """A profile of the Databricks CLI's configuration file (`~/.databrickscfg`), read
    when the configuration is loaded: its `host` (unless the workspace sets one) and its
    credentials, a PAT, OAuth M2M or an Entra ID service principal."""

    type: Literal["profile"] = Field(description="A profile of ~/.databrickscfg.")
    profile: str | None = Field(
        default=None,
        min_length=1,
        description="Profile name; default: `$DATABRICKS_CONFIG_PROFILE`, else the file's "
        "`[__settings__] default_profile`, else `DEFAULT`.",
    )
    config_file: Path | None = Field(
        default=None,
        description="The file; default: `$DATABRICKS_CONFIG_FILE`, else ~/.databrickscfg "
        "(relative: to the config file's directory).",
    )
    _source: str = PrivateAttr(default="")
    _host: AnyHttpUrl | None = PrivateAttr(default=None)
    _credentials: Credentials | None = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        """`profile 'NAME' of PATH`, for messages."""
        return self._source

    @property
    def host(self) -> AnyHttpUrl | None:
        """The profile's `host`, if it has one."""
        return self._host

    @property
    def credentials(self) -> Credentials:
        """What the profile's keys come down to."""
        if self._credentials is None:
            raise ValueError("the profile was not read (built without validation)")
        return self._credentials

    def _file(self, info: ValidationInfo, env: Mapping[str, str]) -> tuple[Path, str, str, str]:
        """The file to read (as read_text_file takes it), how to name it, the field a
        problem with it belongs to, and where its name came from (for messages)."""
        path, field, origin = DATABRICKS_CONFIG, "profile", ""
        if self.config_file is not None:
            path, field = self.config_file, "config_file"
        elif value := env.get("DATABRICKS_CONFIG_FILE"):
            # The variable is relative to the working directory, not to the config file.
            path = Path(value) if value.startswith("~") else Path(value).absolute()
            origin = " (DATABRICKS_CONFIG_FILE)"
        try:
            shown = path.expanduser()
        except RuntimeError:  # `~user` of an unknown user: read_text_file says so
            shown = path
        if not shown.is_absolute():
            shown = base_dir(info) / shown
        return path, str(shown), field, origin

    @model_validator(mode="after")
    def _read_profile(self, info: ValidationInfo) -> ProfileAuthConfig:
        env = _environment(info)
        path, shown, field, origin = self._file(info, env)
        try:
            profiles = parse_profiles(read_text_file(path, info), shown)
        except ValueError as exc:
            raise FieldErrors([(field, f"{exc}{origin}")]) from None
        settings = profiles.pop(_SETTINGS, {})
        name = (
            self.profile
            or env.get("DATABRICKS_CONFIG_PROFILE")
            or settings.get("default_profile", "").strip()
            or "DEFAULT"
        )
        if name not in profiles:
            chosen = (
                " (DATABRICKS_CONFIG_PROFILE)"
                if not self.profile and env.get("DATABRICKS_CONFIG_PROFILE")
                else ""
            )
            known = f"it has {', '.join(profiles)}" if profiles else "it has none"
            raise FieldErrors(
                [("profile", f"no profile [{name}]{chosen} in {shown}{origin} ({known})")]
            )
        self._source = f"profile {name!r} of {shown}"
        values = {k: v.strip() for k, v in profiles[name].items() if v.strip()}
        problems: list[tuple[str, str]] = []
        if "host" in values:
            try:
                self._host = databricks_host(values["host"])
            except ValueError as exc:
                problems.append(("profile", f"{self._source}: host: {exc}"))
        try:
            self._credentials = credentials_from(values, {k: k for k in PROFILE_KEYS})
        except ValueError as exc:
            problems.append(("profile", f"{self._source}: {exc}"))
        if problems:
            raise FieldErrors(problems)
        return self


AuthConfig = Annotated[
    TokenAuthConfig | OAuthConfig | AzureSPConfig | ProfileAuthConfig,
    Field(discriminator="type"),
]


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


_UNREAD_PROFILE = "https://profile-not-read.invalid"


class _NoHost:
    """Stands in for the host of a workspace whose profile gives none either: validating
    it fails with the reason, beside every other problem of the workspace."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _no_host(value: Any) -> Any:
    if isinstance(value, _NoHost):
        raise ValueError(value.reason)
    return value


class WorkspaceConfig(Section):
    name: str = Field(pattern=NAME_PATTERN, description="Short name, used in labels and event ids.")
    host: Annotated[AnyHttpUrl, BeforeValidator(_no_host), AfterValidator(_workspace_url)] = Field(
        description="Workspace URL, e.g. https://adb-123.4.azuredatabricks.net (with "
        "`auth.type: profile`: the profile's `host` when not set here)"
    )
    api_version: Literal["2.0", "2.1", "2.2"] = Field(
        default="2.1", description="Jobs API version."
    )
    auth: AuthConfig = Field(
        description="Credentials: a PAT, OAuth M2M, an Entra ID service principal, or a "
        "profile of ~/.databrickscfg."
    )
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
        description="Seconds the completed-runs walk reaches back past the watermark, "
        "whichever order the server lists finished runs in (by start time, the reference: "
        "what started since; by end time: what ended since): the margin for a slow answer "
        "or a skewed clock.",
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

    @model_validator(mode="before")
    @classmethod
    def _host_from_profile(cls, data: Any, info: ValidationInfo) -> Any:
        """Without a `host`, a workspace authenticating with a profile takes the
        profile's (read once, here: the validated profile replaces the raw one)."""
        if not isinstance(data, dict) or data.get("host") is not None:
            return data
        auth = data.get("auth")
        if isinstance(auth, dict) and auth.get("type") == "profile":
            try:
                auth = ProfileAuthConfig.model_validate(auth, context=info.context)
            except ValidationError:
                # Reported at `auth` when it is validated; the profile may well have a
                # host, so no word on it (the stand-in cannot outlive the failure).
                return {**data, "host": _UNREAD_PROFILE}
        if not isinstance(auth, ProfileAuthConfig):
            return data
        if auth.host is None:
            reason = f"required: neither the workspace nor {auth.source} gives a host"
            return {**data, "host": _NoHost(reason), "auth": auth}
        return {**data, "host": auth.host, "auth": auth}

    @model_validator(mode="after")
    def _profile_was_read(self) -> WorkspaceConfig:
        # Only if the profile failed at first and was read at the second go: it changed.
        if self.host.host == urlsplit(_UNREAD_PROFILE).hostname:
            raise ValueError("the profile changed while it was read: load the configuration again")
        return self
