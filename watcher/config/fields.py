"""Checked field types: secrets, secret URLs, hosts, token files and CA bundles. They hold
the offline checks that make `watcher check-config` reject what `watcher run` would trip
over (a file that cannot be read, a host with a port in it, a secret with a line break)."""

from __future__ import annotations

import ipaddress
import re
import ssl
import stat
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)

_FILE_LIMIT = 64 * 1024  # a secret, a token or a CA bundle; more is a wrong path (a disk image)
_RELATIVE = "relative paths are resolved against the config file's directory"
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


# -- files: secrets, tokens, CA bundles ------------------------------------------------


def base_dir(info: ValidationInfo) -> Path:
    """The directory a relative path in the configuration is relative to."""
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
    path = base_dir(info) / path
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


def read_text_file(value: Path, info: ValidationInfo) -> str:
    """The stripped text of the small file at `value` (relative: to the config file's
    directory), or ValueError saying why it cannot be used."""
    return _read_text(*_resolve(value, info))


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
