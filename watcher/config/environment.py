"""A configuration without a file: one workspace from the variables the Databricks CLI and
SDKs read (unified authentication), a console channel, defaults for everything else.

- `DATABRICKS_HOST` with credentials in the environment: `DATABRICKS_TOKEN` (a PAT),
  `DATABRICKS_CLIENT_ID` and `DATABRICKS_CLIENT_SECRET` (OAuth M2M), or `ARM_TENANT_ID`,
  `ARM_CLIENT_ID` and `ARM_CLIENT_SECRET` (an Entra ID service principal; `ARM_ENVIRONMENT`
  for another Azure cloud); `DATABRICKS_AUTH_TYPE` chooses when several are set.
- Otherwise a profile of the Databricks CLI's file: `DATABRICKS_CONFIG_PROFILE` (else the
  file's default profile, else `DEFAULT`) of `DATABRICKS_CONFIG_FILE` (else
  ~/.databrickscfg), with `DATABRICKS_HOST`, when set, in place of the profile's host.

The workspace is named after the host's first label (`adb-123.4.azuredatabricks.net`:
`adb-123`). Every problem is a ConfigError naming the variables (or the profile)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from watcher.config.errors import ConfigError, describe
from watcher.config.model import Config
from watcher.config.workspace import (
    DATABRICKS_CONFIG,
    ProfileAuthConfig,
    credentials_from,
    databricks_host,
)

ENV_KEYS: Mapping[str, str] = {
    "host": "DATABRICKS_HOST",
    "token": "DATABRICKS_TOKEN",
    "client_id": "DATABRICKS_CLIENT_ID",
    "client_secret": "DATABRICKS_CLIENT_SECRET",
    "azure_tenant_id": "ARM_TENANT_ID",
    "azure_client_id": "ARM_CLIENT_ID",
    "azure_client_secret": "ARM_CLIENT_SECRET",
    "azure_environment": "ARM_ENVIRONMENT",
    "auth_type": "DATABRICKS_AUTH_TYPE",
}
"""A profile's key -> the variable that gives it, as the SDKs name them."""

# The variables whose presence means credentials are given in the environment (a tenant
# id alone is not: Azure tools set ARM_TENANT_ID for their own logins).
_CREDENTIAL_KEYS = (
    "token",
    "client_id",
    "client_secret",
    "azure_client_id",
    "azure_client_secret",
)
_CONSOLE = "console"
_CREDENTIALS = (
    "set DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth "
    "M2M), or ARM_TENANT_ID, ARM_CLIENT_ID and ARM_CLIENT_SECRET (an Entra ID service "
    "principal), or name a profile of ~/.databrickscfg with DATABRICKS_CONFIG_PROFILE "
    "(another file: DATABRICKS_CONFIG_FILE)"
)
_NOTHING = (
    "no workspace in the environment: set DATABRICKS_HOST with DATABRICKS_TOKEN, or with "
    "DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth M2M), or with ARM_TENANT_ID, "
    "ARM_CLIENT_ID and ARM_CLIENT_SECRET (an Entra ID service principal); or name a profile "
    "of ~/.databrickscfg with DATABRICKS_CONFIG_PROFILE (another file: DATABRICKS_CONFIG_FILE)"
)


def workspace_name(host: str) -> str:
    """A workspace name from its URL: the host's first label, cut to what a name may hold
    (`https://adb-123.4.azuredatabricks.net` -> `adb-123`)."""
    hostname = urlsplit(host).hostname or ""
    label = re.sub(r"[^A-Za-z0-9_.-]", "-", hostname.split(".")[0])
    label = re.sub(r"^[^A-Za-z0-9]+", "", label)[:63]
    return label or "databricks"


def _default_file_exists() -> bool:
    try:
        return DATABRICKS_CONFIG.expanduser().is_file()
    except (OSError, RuntimeError):  # no home directory
        return False


def config_from_environment(env: Mapping[str, str]) -> Config:
    """The one-workspace configuration the environment `env` describes (see the module);
    ConfigError naming the variables when it describes none, or one that cannot be used."""
    values = {key: env[var] for key, var in ENV_KEYS.items() if env.get(var)}
    context = {"env": env}
    host_value = values.get("host")
    auth: Any
    if any(key in values for key in _CREDENTIAL_KEYS):
        try:
            auth = credentials_from(values, ENV_KEYS)
        except ValueError as exc:
            raise ConfigError([f"environment: {exc}"]) from None
        if host_value is None:
            given = ", ".join(ENV_KEYS[k] for k in _CREDENTIAL_KEYS if k in values)
            raise ConfigError([f"DATABRICKS_HOST: not set (the workspace of {given})"])
    elif (
        env.get("DATABRICKS_CONFIG_PROFILE")
        or env.get("DATABRICKS_CONFIG_FILE")
        or _default_file_exists()
    ):
        try:
            auth = ProfileAuthConfig.model_validate({"type": "profile"}, context=context)
        except ValidationError as exc:
            # `profile: ...`, `config_file: ...`: fields only a file has; the message
            # names the variables.
            lines = [line.split(": ", 1)[-1] for line in describe(exc, ProfileAuthConfig)]
            raise ConfigError([f"environment: {line}" for line in lines]) from None
        if host_value is None and auth.host is None:
            raise ConfigError([f"DATABRICKS_HOST: not set, and {auth.source} has no host either"])
    elif host_value is not None:
        raise ConfigError([f"DATABRICKS_HOST is set, but no credentials: {_CREDENTIALS}"])
    else:
        raise ConfigError([_NOTHING])
    if host_value is not None:
        try:
            host = str(databricks_host(host_value))
        except ValueError as exc:
            raise ConfigError([f"DATABRICKS_HOST: {exc}"]) from None
    else:
        host = str(auth.host)
    raw = {
        "workspaces": [{"name": workspace_name(host), "host": host, "auth": auth}],
        "channels": {_CONSOLE: {"type": "console"}},
    }
    try:
        return Config.model_validate(raw, context=context)
    except ValidationError as exc:
        raise ConfigError([f"environment: {line}" for line in describe(exc, Config)]) from None
