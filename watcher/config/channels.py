"""Configuration of alert channels, one model per channel type (the `type` key decides).

Every channel shares the delivery policy of `BaseChannelConfig` (rate limit, concurrency,
timeout, retries); each type adds its target and its template overrides. Which event types
a channel can express is part of its configuration too (`accepts`): the router never sends
a channel an event it would have to drop.

`StrictModel` and the checked types below (`Secret`, `SecretUrl`, `Host`, `TokenFilePath`,
`CaBundle`) are shared with `watcher.config`: they hold the offline checks that make
`watcher check-config` reject what `watcher run` would trip over.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import functools
import ipaddress
import re
import ssl
import stat
import typing
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from watcher.events import EventType

Severity = Literal["critical", "error", "warning", "info"]
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
ADDRESS = re.compile(r"^[^\s@<>,;:\"()\[\]\\]+@[^\s@<>,;:\"()\[\]\\]+$")
"""One bare address (no display name, no list, no CR/LF)."""
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An unreadable run may be a failing run nobody would hear of: it pages like a failure.
_PAGING_EVENTS = [
    EventType.RUN_FAILED,
    EventType.RUN_DURATION_EXCEEDED,
    EventType.RUN_UNREADABLE,
    EventType.JOB_UNREADABLE,
]
SIGNING_KEY_MIN_BYTES = 24
"""The Standard Webhooks specification asks for random symmetric secrets of at least 24
bytes (192 bits); a shorter key is guessable offline from one signed delivery."""
_FILE_LIMIT = 64 * 1024  # a secret, a token or a CA bundle; more is a wrong path (a disk image)
_RELATIVE = "relative paths are resolved against the config file's directory"
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


class FieldErrors(ValueError):
    """Problems a model validator found, each at a path below the model (`sender`,
    `recipients.1`), so every problem is reported, each naming its own field."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {what}" for where, what in self.problems))


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


# -- files: secrets, tokens, CA bundles ------------------------------------------------


def _base(info: ValidationInfo) -> Path:
    # `load_config` passes the config file's directory; models built in code resolve
    # relative paths against the working directory, as open() would.
    context = info.context
    base = context.get("base") if isinstance(context, Mapping) else None
    return base if isinstance(base, Path) else Path(".")


def _resolve(value: Path, info: ValidationInfo) -> tuple[Path, str]:
    """The path to use and how to name it in a message."""
    try:
        path = value.expanduser()
    except RuntimeError:  # `~user` of an unknown user
        raise ValueError(f"{value}: no such home directory") from None
    if path.is_absolute():
        return path, str(path)
    path = _base(info) / path
    return path, f"{path} ({_RELATIVE})"


def _read_small(path: Path, shown: str) -> bytes:
    """The bytes of a small regular file, or ValueError saying why not (stat first: opening
    a FIFO would block, reading a device would never end)."""
    data: bytes | None = None
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode):
            with path.open("rb") as file:
                data = file.read(_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise ValueError(f"{shown} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    except ValueError:
        raise ValueError(f"{shown}: not a valid path") from None  # e.g. a NUL byte
    if data is None:
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"{shown} is {what}")
    if len(data) > _FILE_LIMIT:
        raise ValueError(f"{shown} is larger than {_FILE_LIMIT // 1024} KiB")
    return data


def _read_text(path: Path, shown: str) -> str:
    try:
        text = _read_small(path, shown).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{shown} is not UTF-8 text") from None
    if not text:
        raise ValueError(f"{shown} is empty")
    return text


def _token_file(value: Path, info: ValidationInfo) -> Path:
    # Read once here so that a missing or empty file fails the check, not every cycle; the
    # client re-reads it whenever it changes.
    path, shown = _resolve(value, info)
    _read_text(path, shown)
    return path


def _ca_bundle(value: Path, info: ValidationInfo) -> Path:
    path, shown = _resolve(value, info)
    _read_small(path, shown)
    try:
        # The call the clients make: what loads here loads there.
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ValueError(f"{shown} is not a PEM CA bundle ({exc.reason or exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot read {shown}: {exc.strerror or type(exc).__name__}") from None
    return path


TokenFilePath = Annotated[Path, AfterValidator(_token_file)]
"""A file holding a token: it must exist and hold one now; kept as a path (re-read)."""
CaBundle = Annotated[Path, AfterValidator(_ca_bundle)]
"""A readable PEM file of CA certificates."""


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in typing.get_args(annotation))


@functools.cache
def secret_file_keys(model: type[BaseModel]) -> Mapping[str, str]:
    """`<key>_file` -> `<key>` for every secret field of `model` (a field that is itself
    named `<key>_file`, like `token_file`, is a path of its own and stays one)."""
    return {
        f"{name}_file": name
        for name, field in model.model_fields.items()
        if _is_secret(field.annotation) and f"{name}_file" not in model.model_fields
    }


class StrictModel(BaseModel):
    """Base of every configuration model: unknown keys are errors (a typo never silently
    does nothing), values are frozen and finite (`.inf` seconds overflow where they become
    milliseconds), and each secret `<key>` may instead be read from `<key>_file: PATH`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        keys = secret_file_keys(cls)
        if not isinstance(data, dict) or not keys.keys() & data.keys():
            return data
        data = dict(data)
        problems: list[tuple[str, str]] = []
        for key, target in keys.items():
            if key not in data:
                continue
            value = data.pop(key)
            if target in data:
                problems.append((key, f"set {target} or {key}, not both"))
            elif not isinstance(value, str):
                problems.append((key, "must be a file path"))
            else:
                try:
                    data[target] = _read_text(*_resolve(Path(value), info))
                except ValueError as exc:
                    problems.append((key, str(exc)))
        if problems:
            raise FieldErrors(problems)
        return data


# -- values ------------------------------------------------------------------------------


def _secret(value: SecretStr) -> SecretStr:
    text = value.get_secret_value()
    if not text.strip():
        raise ValueError("is empty")
    if any(unicodedata.category(c) == "Cc" for c in text):
        # Headers cannot carry them; usually a trailing newline from `echo > file` or a
        # Kubernetes secret made from a file.
        raise ValueError("contains a line break or control character")
    return value


def _secret_url(value: SecretStr) -> SecretStr:
    text = _secret(value).get_secret_value()
    try:
        _HTTP_URL.validate_python(text)
    except ValidationError:
        try:
            scheme = urlsplit(text).scheme
        except ValueError:
            scheme = ""
        # The URL is a secret (it is the credential): say what is wrong, never what it is.
        found = f" (scheme {scheme!r})" if scheme and scheme not in ("http", "https") else ""
        raise ValueError(f"not an http(s) URL{found}; the value is a secret, not shown") from None
    return value


def _host(value: str) -> str:
    """A host name or IP address: what a socket binds or connects to, nothing more."""
    if "://" in value:
        raise ValueError("a host name or IP address, without a scheme (drop the `...://`)")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if value.startswith("[") and value.endswith("]"):
        raise ValueError("an IPv6 address goes without brackets")
    name, _, port = value.rpartition(":")
    if name and port.isdigit():
        raise ValueError(f"a host only: set the port with `port: {port}`, not here")
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError("not a host name or IP address")
    return value


Secret = Annotated[SecretStr, AfterValidator(_secret)]
"""A non-empty secret without line breaks; `<key>_file` reads it from a file."""
SecretUrl = Annotated[SecretStr, AfterValidator(_secret_url)]
"""An http(s) URL that is itself a credential (Slack, Teams): checked, never echoed."""
Host = Annotated[str, AfterValidator(_host)]
"""A host name or IP address: no scheme, no port, no path."""


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
        # Databricks has no notification for a recovery; its on_success already went out.
        return self.format == "watcher" or event_type != EventType.JOB_RECOVERED


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
        description="Event types that trigger an incident; job_recovered always resolves.",
    )
    summary_template: str | None = Field(default=None, description="Jinja2 template, one line.")

    def accepts(self, event_type: EventType) -> bool:
        return event_type in self.trigger_on or event_type == EventType.JOB_RECOVERED


class AlertmanagerChannelConfig(BaseChannelConfig):
    type: Literal["alertmanager"]
    url: AnyHttpUrl = Field(description="Alertmanager base URL; alerts go to /api/v2/alerts.")
    resolve_after: float = Field(
        default=3600.0, gt=0, description="endsAt of a firing alert, seconds after it is sent."
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
        description="Event types that fire an alert; job_recovered always resolves.",
    )
    ca_bundle: CaBundle | None = Field(
        default=None, description="CA bundle (PEM) to verify the server."
    )
    summary_template: str | None = Field(default=None, description="Jinja2 template, one line.")

    @model_validator(mode="after")
    def _label_names(self) -> AlertmanagerChannelConfig:
        bad = [name for name in self.labels if not _LABEL_NAME.match(name)]
        if bad:
            raise FieldErrors([(f"labels.{n}", "not a valid Prometheus label name") for n in bad])
        return self

    def accepts(self, event_type: EventType) -> bool:
        return event_type in self.trigger_on or event_type == EventType.JOB_RECOVERED


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
