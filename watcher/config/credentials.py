"""From a workspace's `auth` section to the credentials the Jobs API client sends
(`watcher.databricks.auth`): the one mapping, for the composition root and `doctor`.

Not re-exported by `watcher.config`: the configuration models stay free of I/O (the pure
layers import them), and only what builds a client imports this module."""

from __future__ import annotations

from watcher.clock import Clock
from watcher.config.workspace import (
    AuthConfig,
    AzureSPConfig,
    Credentials,
    OAuthConfig,
    ProfileAuthConfig,
)
from watcher.databricks.auth import (
    Auth,
    AzureServicePrincipal,
    OAuthM2M,
    StaticToken,
    TokenFile,
)


def auth_from_config(auth: AuthConfig | Credentials, host: str, clock: Clock) -> Auth:
    """The Auth for `auth` of the workspace at `host` (where OAuth M2M asks for tokens); a
    profile's credentials were read when the configuration was loaded."""
    if isinstance(auth, ProfileAuthConfig):
        return auth_from_config(auth.credentials, host, clock)
    if isinstance(auth, OAuthConfig):
        return OAuthM2M(
            host=host, client_id=auth.client_id, client_secret=auth.client_secret, clock=clock
        )
    if isinstance(auth, AzureSPConfig):
        return AzureServicePrincipal(
            tenant_id=auth.tenant_id,
            client_id=auth.client_id,
            client_secret=auth.client_secret,
            authority=str(auth.authority),
            clock=clock,
        )
    if auth.token_file is not None:
        return TokenFile(auth.token_file)
    assert auth.token is not None  # the model holds exactly one of the two
    return StaticToken(auth.token)
