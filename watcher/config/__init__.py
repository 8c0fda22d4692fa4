"""Configuration: one YAML file, `${ENV_VAR}` references, `*_file` secrets, validated by
pydantic before anything starts. Every error names the field path that is wrong.

What `watcher run` would reject or trip over is rejected here first, offline: duplicate
keys, times without a time zone, names that refer to nothing, files that cannot be read,
hosts and URLs that cannot be used (`watcher check-config` adds the channels' templates).
What needs the network is `watcher doctor`'s.

The package, from the bottom up: `fields` (checked field types: secrets, files, hosts),
`base` (the strict base model, FieldErrors), `jobs` (selecting jobs), `channels`,
`workspace`, `routing` and `daemon` (the sections), `model` (`Config`, the whole file),
`errors` (ConfigError, validation errors as lines) and `loading` (YAML, `${ENV}`, files).
Every name is re-exported here: import from `watcher.config` (or `watcher.config.channels`
for the channel models)."""

from __future__ import annotations

from watcher.config.base import NAME_PATTERN, FieldErrors, Section, StrictModel, secret_file_keys
from watcher.config.channels import ChannelConfig
from watcher.config.daemon import (
    DurationRuleConfig,
    ExpectationsConfig,
    FreshnessRuleConfig,
    HAConfig,
    HealthRulesConfig,
    LoggingConfig,
    MetricsConfig,
    PostgresConfig,
    ServerConfig,
    SQLiteConfig,
    StartupConfig,
    StoreConfig,
    StuckConfig,
    StuckRuleConfig,
)
from watcher.config.environment import config_from_environment
from watcher.config.errors import MAX_ERRORS, ConfigError
from watcher.config.fields import CaBundle, Host, Secret, SecretUrl, TokenFilePath
from watcher.config.jobs import JobFilter, JobMatch
from watcher.config.loading import load_config, parse_config, substitute_env
from watcher.config.model import Config
from watcher.config.routing import RouteConfig, RouteMatch, RoutingConfig, SilenceConfig
from watcher.config.workspace import (
    AuthConfig,
    AzureSPConfig,
    OAuthConfig,
    ProfileAuthConfig,
    ReconcileConfig,
    TokenAuthConfig,
    WorkspaceConfig,
)

__all__ = [
    "MAX_ERRORS",
    "NAME_PATTERN",
    "AuthConfig",
    "AzureSPConfig",
    "CaBundle",
    "ChannelConfig",
    "Config",
    "ConfigError",
    "DurationRuleConfig",
    "ExpectationsConfig",
    "FieldErrors",
    "FreshnessRuleConfig",
    "HAConfig",
    "HealthRulesConfig",
    "Host",
    "JobFilter",
    "JobMatch",
    "LoggingConfig",
    "MetricsConfig",
    "OAuthConfig",
    "PostgresConfig",
    "ProfileAuthConfig",
    "ReconcileConfig",
    "RouteConfig",
    "RouteMatch",
    "RoutingConfig",
    "SQLiteConfig",
    "Secret",
    "SecretUrl",
    "Section",
    "ServerConfig",
    "SilenceConfig",
    "StartupConfig",
    "StoreConfig",
    "StrictModel",
    "StuckConfig",
    "StuckRuleConfig",
    "TokenAuthConfig",
    "TokenFilePath",
    "WorkspaceConfig",
    "config_from_environment",
    "load_config",
    "parse_config",
    "secret_file_keys",
    "substitute_env",
]
