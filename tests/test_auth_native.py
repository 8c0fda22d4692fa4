"""Databricks-native credentials: the variables and `.databrickscfg` profiles the Databricks
CLI and SDKs read, and Microsoft Entra ID service principals (`azure-sp`).

Each way in polls the simulator over real HTTP through the daemon as `watcher run` builds
it; the Entra ID token endpoint is a small real aiohttp server here. No secret here is
real, and none may appear in an error."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from tests.conftest import TOKEN, ClientFactory
from tests.notify_fixtures import serve
from tests.wiring import daemon
from watcher.app import run_once
from watcher.clock import ManualClock
from watcher.config import (
    AzureSPConfig,
    Config,
    ConfigError,
    OAuthConfig,
    ProfileAuthConfig,
    ServerConfig,
    StoreConfig,
    TokenAuthConfig,
    config_from_environment,
    load_config,
    parse_config,
)
from watcher.config.credentials import auth_from_config
from watcher.config.environment import ENV_KEYS, workspace_name
from watcher.config.workspace import PROFILE_KEYS
from watcher.databricks import (
    AZURE_DATABRICKS_APP_ID,
    ApiError,
    AzureServicePrincipal,
    OAuthM2M,
    StaticToken,
)
from watcher.simulator import Fault, Simulator

CLIENT_ID = "sp-client-id-not-real"
CLIENT_SECRET = "not-a-real-secret-m2m"
TENANT = "00000000-0000-0000-0000-00000000beef"
AZURE_CLIENT = "11111111-2222-3333-4444-555555555555"
AZURE_SECRET = "not-a-real-secret-azure"


@pytest.fixture(autouse=True)
def _no_home_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """~ is the test's own directory: the real ~/.databrickscfg never takes part."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in [*ENV_KEYS.values(), "DATABRICKS_CONFIG_FILE", "DATABRICKS_CONFIG_PROFILE"]:
        monkeypatch.delenv(name, raising=False)


def _cfg(tmp_path: Path, text: str, name: str = "databrickscfg") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _local(config: Config, tmp_path: Path) -> Config:
    """`config` with its store in the test's directory, the server on a free port of
    localhost and the client unthrottled (its throttle waits in real time)."""
    workspaces = [w.model_copy(update={"requests_per_second": 1000.0}) for w in config.workspaces]
    return config.model_copy(
        update={
            "workspaces": workspaces,
            "store": StoreConfig(path=tmp_path / "watcher.db"),
            "server": ServerConfig(host="127.0.0.1", port=0),
        }
    )


async def _poll_once(config: Config, sim: Simulator, clock: ManualClock, tmp_path: Path) -> None:
    """One cycle of the daemon built from `config` over `sim`, which enforces credentials:
    every request it answered was authenticated."""
    job = sim.workspace.create_job("nightly")
    sim.workspace.start_run(job, execution_s=600)
    async with daemon(_local(config, tmp_path), clock, console=io.StringIO()) as built:
        clock.advance(30)
        await run_once(built)  # raises if the cycle failed
    assert any(r.endpoint.endswith("runs/list") for r in sim.requests)
    assert [r.status for r in sim.requests if r.status != 200] == []


# -- the environment ---------------------------------------------------------------------


async def test_environment_with_a_pat_polls_the_workspace(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    """DATABRICKS_HOST and DATABRICKS_TOKEN alone make a configuration: one workspace
    named after the host, a console channel, defaults for the rest."""
    config = config_from_environment({"DATABRICKS_HOST": sim.url, "DATABRICKS_TOKEN": TOKEN})
    workspace = config.workspaces[0]
    assert (workspace.name, str(workspace.host).rstrip("/")) == ("127", sim.url)
    assert isinstance(workspace.auth, TokenAuthConfig)
    assert [c.type for c in config.channels.values()] == ["console"]
    await _poll_once(config, sim, clock, tmp_path)


async def test_environment_with_client_credentials_polls_the_workspace(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    """DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET: OAuth M2M at the workspace's
    /oidc/v1/token, one token for the cycle."""
    sim.oauth_clients = {CLIENT_ID: CLIENT_SECRET}
    env = {
        "DATABRICKS_HOST": sim.url,
        "DATABRICKS_CLIENT_ID": CLIENT_ID,
        "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
    }
    config = config_from_environment(env)
    assert isinstance(config.workspaces[0].auth, OAuthConfig)
    await _poll_once(config, sim, clock, tmp_path)
    assert sim.oauth_issued == 1


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("https://adb-1234567890123456.7.azuredatabricks.net", "adb-1234567890123456"),
        ("dbc-a1b2c3d4-e5f6.cloud.databricks.com", "dbc-a1b2c3d4-e5f6"),
        ("http://127.0.0.1:8080", "127"),
    ],
)
def test_the_workspace_is_named_after_the_host(host: str, name: str) -> None:
    """The host's first label, cut to what a workspace name may hold; a bare host name
    means https, as in the SDKs."""
    config = config_from_environment({"DATABRICKS_HOST": host, "DATABRICKS_TOKEN": "dapi-not-real"})
    assert config.workspaces[0].name == name
    assert workspace_name(str(config.workspaces[0].host)) == name
    assert str(config.workspaces[0].host).startswith(("https://", "http://127"))


@pytest.mark.parametrize(
    ("host", "name"),
    [("https://_odd+label.example.com", "odd-label"), ("https://x", "x"), ("", "databricks")],
)
def test_odd_hosts_still_give_a_valid_name(host: str, name: str) -> None:
    assert workspace_name(host) == name


def test_an_empty_environment_names_the_variables_to_set() -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_environment({"PATH": "/usr/bin"})
    (line,) = caught.value.errors
    for name in [
        "DATABRICKS_HOST",
        "DATABRICKS_TOKEN",
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "DATABRICKS_CONFIG_PROFILE",
    ]:
        assert name in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABRICKS_TOKEN": "dapi-not-real"}, "DATABRICKS_HOST: not set"),
        ({"DATABRICKS_HOST": "https://h.example.com"}, "no credentials: set DATABRICKS_TOKEN"),
        (
            {"DATABRICKS_HOST": "h.example.com", "DATABRICKS_CLIENT_ID": CLIENT_ID},
            "DATABRICKS_CLIENT_SECRET not set",
        ),
        (
            {
                "DATABRICKS_HOST": "h.example.com",
                "DATABRICKS_TOKEN": "dapi-not-real",
                "DATABRICKS_CLIENT_ID": CLIENT_ID,
                "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
            },
            "more than one kind of credentials (DATABRICKS_TOKEN and DATABRICKS_CLIENT_ID/"
            "DATABRICKS_CLIENT_SECRET): keep one, or choose with DATABRICKS_AUTH_TYPE",
        ),
        (
            {"DATABRICKS_HOST": "h.example.com", "DATABRICKS_TOKEN": "dapi-not-real\n"},
            "DATABRICKS_TOKEN: contains a line break",
        ),
        (
            {"DATABRICKS_HOST": "https://h.example.com/?o=1", "DATABRICKS_TOKEN": "dapi-not-real"},
            "DATABRICKS_HOST: the workspace URL only",
        ),
        (
            {"DATABRICKS_CONFIG_PROFILE": "prod"},
            "home/.databrickscfg does not exist",
        ),
    ],
)
def test_an_unusable_environment_is_a_config_error_naming_the_variables(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_environment(env)
    text = "\n".join(caught.value.errors)
    assert expected in text
    for secret in ["dapi-not-real", CLIENT_SECRET]:
        assert secret not in text


def test_the_auth_type_variable_chooses_between_credentials() -> None:
    env = {
        "DATABRICKS_HOST": "h.example.com",
        "DATABRICKS_TOKEN": "dapi-not-real",
        "DATABRICKS_CLIENT_ID": CLIENT_ID,
        "DATABRICKS_CLIENT_SECRET": CLIENT_SECRET,
        "DATABRICKS_AUTH_TYPE": "oauth-m2m",
    }
    assert isinstance(config_from_environment(env).workspaces[0].auth, OAuthConfig)


def test_every_profile_key_has_its_variable() -> None:
    assert set(ENV_KEYS) == set(PROFILE_KEYS)


# -- .databrickscfg profiles --------------------------------------------------------------


async def test_a_profile_with_a_token_polls_the_workspace(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    """`auth: {type: profile, profile: NAME}` in the YAML, the file found through
    DATABRICKS_CONFIG_FILE: the workspace takes the profile's host and token; no profile
    inherits from [DEFAULT] (as in the SDKs)."""
    cfg = _cfg(
        tmp_path,
        "[DEFAULT]\nhost = https://elsewhere.example.com\ntoken = dapi-not-real-default\n\n"
        f"[ci]\nhost = {sim.url}\ntoken = {TOKEN}\ncluster_id = ignored\n",
    )
    text = "workspaces:\n  - name: ci\n    auth: {type: profile, profile: ci}\n"
    config = parse_config(text, env={"DATABRICKS_CONFIG_FILE": str(cfg)})
    workspace = config.workspaces[0]
    assert str(workspace.host).rstrip("/") == sim.url
    assert isinstance(workspace.auth, ProfileAuthConfig)
    assert isinstance(workspace.auth.credentials, TokenAuthConfig)
    assert isinstance(auth_from_config(workspace.auth, sim.url, clock), StaticToken)
    assert TOKEN not in repr(config)
    await _poll_once(config, sim, clock, tmp_path)


async def test_the_default_profile_with_client_credentials_polls_the_workspace(
    sim: Simulator, clock: ManualClock, tmp_path: Path
) -> None:
    """Zero configuration: no credential variables, DATABRICKS_CONFIG_FILE names the
    file and its [DEFAULT] profile holds client credentials (OAuth M2M)."""
    sim.oauth_clients = {CLIENT_ID: CLIENT_SECRET}
    cfg = _cfg(
        tmp_path,
        f"[DEFAULT]\nhost = {sim.url}\nclient_id = {CLIENT_ID}\nclient_secret = {CLIENT_SECRET}\n"
        "\n[other]\ntoken = dapi-not-real\n",
    )
    config = config_from_environment({"DATABRICKS_CONFIG_FILE": str(cfg)})
    workspace = config.workspaces[0]
    assert workspace.name == "127"
    assert isinstance(workspace.auth, ProfileAuthConfig)
    assert isinstance(workspace.auth.credentials, OAuthConfig)
    assert isinstance(auth_from_config(workspace.auth, sim.url, clock), OAuthM2M)
    await _poll_once(config, sim, clock, tmp_path)
    assert sim.oauth_issued == 1


def test_the_default_file_is_in_the_home_directory(tmp_path: Path) -> None:
    """Without DATABRICKS_CONFIG_FILE: ~/.databrickscfg; DATABRICKS_CONFIG_PROFILE picks
    the profile, else the file's [__settings__] default_profile, else DEFAULT."""
    _cfg(
        tmp_path / "home",
        "[__settings__]\ndefault_profile = dev\n\n"
        "[dev]\nhost = dev.example.com\ntoken = dapi-not-real\n\n"
        "[prod]\nhost = prod.example.com\ntoken = dapi-not-real\n",
        name=".databrickscfg",
    )
    assert config_from_environment({}).workspaces[0].name == "dev"
    env = {"DATABRICKS_CONFIG_PROFILE": "prod"}
    assert config_from_environment(env).workspaces[0].name == "prod"
    text = "workspaces:\n  - name: w\n    auth: {type: profile}\n"
    assert str(parse_config(text, env={}).workspaces[0].host) == "https://dev.example.com/"


def test_the_workspace_host_wins_over_the_profile_host(tmp_path: Path) -> None:
    """A workspace's own host (or DATABRICKS_HOST) is used; a relative config_file is
    relative to the configuration file."""
    conf = tmp_path / "conf"
    conf.mkdir()
    _cfg(conf, "[p]\nhost = https://profile.example.com\ntoken = dapi-not-real\n", "dbcfg")
    (conf / "watcher.yaml").write_text(
        "workspaces:\n  - name: w\n    host: https://mine.example.com\n"
        "    auth: {type: profile, profile: p, config_file: dbcfg}\n",
        encoding="utf-8",
    )
    config = load_config(conf / "watcher.yaml", env={})
    assert str(config.workspaces[0].host) == "https://mine.example.com/"
    env = {
        "DATABRICKS_CONFIG_FILE": str(conf / "dbcfg"),
        "DATABRICKS_CONFIG_PROFILE": "p",
        "DATABRICKS_HOST": "https://env.example.com",
    }
    assert str(config_from_environment(env).workspaces[0].host) == "https://env.example.com/"


def _errors(text: str, env: Mapping[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env)
    return caught.value.errors


def _profile_yaml(**auth: str) -> str:
    keys = "".join(f", {k}: {v}" for k, v in auth.items())
    return f"workspaces:\n  - name: w\n    auth: {{type: profile{keys}}}\n"


def test_a_missing_profile_is_an_error_naming_the_field(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[dev]\nhost = dev.example.com\ntoken = dapi-not-real\n")
    errors = _errors(_profile_yaml(profile="prod"), {"DATABRICKS_CONFIG_FILE": str(cfg)})
    assert errors == [
        f"workspaces.0.auth.profile: no profile [prod] in {cfg} (DATABRICKS_CONFIG_FILE) "
        "(it has dev)"
    ]


def test_a_missing_file_is_an_error_naming_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "nope.cfg"
    errors = _errors(_profile_yaml(config_file=str(missing)), {})
    assert errors == [f"workspaces.0.auth.config_file: {missing} does not exist"]
    errors = _errors(_profile_yaml(), {"DATABRICKS_CONFIG_FILE": str(missing)})
    assert errors == [
        f"workspaces.0.auth.profile: {missing} does not exist (DATABRICKS_CONFIG_FILE)"
    ]
    home = tmp_path / "home" / ".databrickscfg"
    assert _errors(_profile_yaml(), {}) == [f"workspaces.0.auth.profile: {home} does not exist"]


def test_a_profile_without_credentials_is_an_error_naming_the_field(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[bare]\nhost = https://bare.example.com\ncluster_id = 0101\n")
    errors = _errors(_profile_yaml(profile="bare"), {"DATABRICKS_CONFIG_FILE": str(cfg)})
    assert errors == [
        f"workspaces.0.auth.profile: profile 'bare' of {cfg}: no credentials: set token, or "
        "client_id and client_secret, or azure_tenant_id, azure_client_id and "
        "azure_client_secret"
    ]


def test_a_workspace_without_a_host_anywhere_names_the_host(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[nohost]\ntoken = dapi-not-real\n")
    errors = _errors(_profile_yaml(profile="nohost"), {"DATABRICKS_CONFIG_FILE": str(cfg)})
    assert errors == [
        f"workspaces.0.host: required: neither the workspace nor profile 'nohost' of {cfg} "
        "gives a host"
    ]
    # Other types still need their own host.
    assert _errors("workspaces:\n  - name: w\n    auth: {type: pat, token: x}\n", {}) == [
        "workspaces.0.host: Field required"
    ]


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (
            "[p]\nhost = h.example.com\ntoken = dapi-not-real\nclient_id = x\n"
            "client_secret = not-a-real-secret\n",
            "more than one kind of credentials (token and client_id/client_secret)",
        ),
        ("[p]\nhost = h.example.com\nclient_id = x\n", "oauth-m2m: client_secret not set"),
        (
            "[p]\nhost = h.example.com\nauth_type = databricks-cli\n",
            "auth_type 'databricks-cli' is not supported (a user's login",
        ),
        (
            "[p]\nhost = h.example.com\ntoken = dapi-not-real\n  not-a-real-secret\n",
            "token: contains a line break",
        ),
        ("token = dapi-not-real\n[p]\n", "line 1: a key before the first [profile]"),
        ("[p]\ntoken = dapi-not-real\nnot-a-real-secret\n", "line 3: not `key = value`"),
        ("[p]\ntoken = dapi-not-real\ntoken = not-a-real-secret\n", "`token` given twice in [p]"),
        (
            "[p]\nhost = h.example.com?o=1\ntoken = dapi-not-real\n",
            "host: the workspace URL only",
        ),
        (
            "[p]\nhost = h.example.com\nazure_client_id = a\nazure_client_secret = "
            "not-a-real-secret\nazure_tenant_id = t/../x\n",
            "azure_tenant_id: String should match pattern",
        ),
        (
            "[p]\nhost = h.example.com\nazure_client_id = a\nazure_client_secret = "
            "not-a-real-secret\nazure_tenant_id = t\nazure_environment = MARS\n",
            "azure_environment: not an Azure cloud",
        ),
    ],
)
def test_profile_problems_name_the_field_and_never_quote_a_secret(
    tmp_path: Path, profile: str, expected: str
) -> None:
    cfg = _cfg(tmp_path, profile)
    errors = _errors(_profile_yaml(profile="p"), {"DATABRICKS_CONFIG_FILE": str(cfg)})
    assert all(e.startswith("workspaces.0.auth.profile: ") for e in errors), errors
    assert expected in "\n".join(errors)
    for secret in ["dapi-not-real", "not-a-real-secret"]:
        assert secret not in "\n".join(errors)


@pytest.mark.parametrize(
    ("host", "environment", "authority"),
    [
        ("adb-1.2.azuredatabricks.net", None, "https://login.microsoftonline.com"),
        ("adb-1.2.databricks.azure.us", None, "https://login.microsoftonline.us"),
        ("adb-1.2.databricks.azure.cn", None, "https://login.chinacloudapi.cn"),
        ("adb-1.2.azuredatabricks.net", "AzureChinaCloud", "https://login.chinacloudapi.cn"),
    ],
)
def test_a_profile_with_azure_keys_is_an_entra_id_service_principal(
    tmp_path: Path, clock: ManualClock, host: str, environment: str | None, authority: str
) -> None:
    """azure_tenant_id, azure_client_id and azure_client_secret: Entra ID of the host's
    Azure cloud (or azure_environment's), as the SDKs choose it."""
    extra = f"azure_environment = {environment}\n" if environment else ""
    cfg = _cfg(
        tmp_path,
        f"[az]\nhost = {host}\nazure_tenant_id = {TENANT}\nazure_client_id = {AZURE_CLIENT}\n"
        f"azure_client_secret = {AZURE_SECRET}\n{extra}",
    )
    config = parse_config(_profile_yaml(profile="az"), env={"DATABRICKS_CONFIG_FILE": str(cfg)})
    auth = config.workspaces[0].auth
    assert isinstance(auth, ProfileAuthConfig)
    assert isinstance(auth.credentials, AzureSPConfig)
    built = auth_from_config(auth, str(config.workspaces[0].host), clock)
    assert isinstance(built, AzureServicePrincipal)
    assert built.token_url == f"{authority}/{TENANT}/oauth2/v2.0/token"
    assert AZURE_SECRET not in repr(built) + repr(config)


# -- Entra ID service principals ------------------------------------------------------------


@dataclass
class TokenRequest:
    path: str
    content_type: str
    authorization: str | None
    form: dict[str, str]


@dataclass
class FakeEntraId:
    """Microsoft Entra ID's token endpoint, as far as a client-credentials grant goes;
    each token it issues is one the simulated workspace accepts."""

    sim: Simulator
    url: str = ""
    ttl: int = 3599
    error: tuple[int, dict[str, Any]] | None = None
    requests: list[TokenRequest] = field(default_factory=list)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(
            TokenRequest(
                path=request.path,
                content_type=request.content_type,
                authorization=request.headers.get("Authorization"),
                form={k: str(v) for k, v in form.items()},
            )
        )
        if self.error is not None:
            return web.json_response(self.error[1], status=self.error[0])
        token = f"entra-token-not-real-{len(self.requests)}"
        self.sim.tokens.add(token)
        # The v2.0 endpoint's answer (ext_expires_in included).
        body = {
            "token_type": "Bearer",
            "expires_in": self.ttl,
            "ext_expires_in": self.ttl,
            "access_token": token,
        }
        return web.json_response(body)


@pytest.fixture
async def entra(sim: Simulator) -> AsyncIterator[FakeEntraId]:
    fake = FakeEntraId(sim)
    app = web.Application()
    app.router.add_post("/{tenant}/oauth2/v2.0/token", fake.token)
    runner, fake.url = await serve(app)
    yield fake
    await runner.cleanup()


def _azure(
    entra: FakeEntraId, clock: ManualClock, secret: str = AZURE_SECRET
) -> AzureServicePrincipal:
    return AzureServicePrincipal(
        tenant_id=TENANT,
        client_id=AZURE_CLIENT,
        client_secret=SecretStr(secret),
        clock=clock,
        authority=entra.url,
    )


async def test_azure_sp_asks_entra_id_for_an_azure_databricks_token(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, entra: FakeEntraId
) -> None:
    """A client-credentials grant at {authority}/{tenant}/oauth2/v2.0/token, id and
    secret in the form, for the AzureDatabricks application's `.default` scope; the
    token it gets is the workspace's bearer token."""
    job = sim.workspace.create_job("j")
    await make_client(auth=_azure(entra, clock)).get_job(job)
    (seen,) = entra.requests
    assert seen.path == f"/{TENANT}/oauth2/v2.0/token"
    assert seen.content_type == "application/x-www-form-urlencoded"
    assert seen.authorization is None
    assert seen.form == {
        "grant_type": "client_credentials",
        "client_id": AZURE_CLIENT,
        "client_secret": AZURE_SECRET,
        "scope": "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d/.default",
    }
    assert AZURE_DATABRICKS_APP_ID == "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"
    assert [r.status for r in sim.requests] == [200]


async def test_azure_sp_token_is_cached_until_shortly_before_expiry(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, entra: FakeEntraId
) -> None:
    entra.ttl = 600
    job = sim.workspace.create_job("j")
    client = make_client(auth=_azure(entra, clock))
    for _ in range(5):  # 0 .. 400 s
        await client.get_job(job)
        clock.advance(100)
    await client.get_job(job)  # 500 s
    assert len(entra.requests) == 1
    clock.advance(50)  # 550 s: inside the 60 s refresh margin
    await client.get_job(job)
    assert len(entra.requests) == 2
    assert all(r.status == 200 for r in sim.requests)


async def test_azure_sp_token_rejected_by_the_workspace_is_fetched_again(
    sim: Simulator, clock: ManualClock, make_client: ClientFactory, entra: FakeEntraId
) -> None:
    job = sim.workspace.create_job("j")
    client = make_client(auth=_azure(entra, clock))
    await client.get_job(job)
    sim.faults.add(Fault(kind="status", status=401, body='{"error_code":"UNAUTHENTICATED"}'))
    await client.get_job(job)
    assert len(entra.requests) == 2
    assert [r.status for r in sim.requests] == [200, 401, 200]


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (
            401,
            {
                "error": "invalid_client",
                "error_description": "AADSTS7000215: Invalid client secret provided "
                f"({AZURE_SECRET}).\r\nTrace ID: 0\r\nCorrelation ID: 0",
                "error_codes": [7000215],
            },
            "invalid_client",
        ),
        (
            400,
            {
                "error": "invalid_request",
                "error_description": f"AADSTS90002: Tenant '{TENANT}' not found.",
                "error_codes": [90002],
            },
            "invalid_request",
        ),
    ],
)
async def test_azure_sp_rejected_credentials_are_a_clear_error_without_the_secret(
    sim: Simulator,
    clock: ManualClock,
    make_client: ClientFactory,
    entra: FakeEntraId,
    status: int,
    body: dict[str, Any],
    code: str,
) -> None:
    """Entra ID's refusal is an ApiError naming the endpoint, its error and its AADSTS
    description, at once (not retried), the secret nowhere, even were it echoed."""
    entra.error = (status, body)
    auth = _azure(entra, clock)
    with pytest.raises(ApiError) as caught:
        await make_client(auth=auth).get_job(1)
    error = caught.value
    assert (error.endpoint, error.status, error.error_code) == (
        "entra-id/oauth2/v2.0/token",
        status,
        code,
    )
    assert "AADSTS" in error.message
    assert AZURE_SECRET not in str(error) + repr(error) + repr(auth)
    assert len(entra.requests) == 1
    assert sim.requests == []


async def test_an_azure_sp_workspace_polls_the_simulator(
    sim: Simulator, clock: ManualClock, tmp_path: Path, entra: FakeEntraId
) -> None:
    """`auth: {type: azure-sp}` in the YAML, the secret from client_secret_file, Entra
    ID at `authority`: the daemon's cycle runs on an Entra ID token."""
    (tmp_path / "azure-secret").write_text(AZURE_SECRET + "\n", encoding="utf-8")
    text = (
        f"workspaces:\n  - name: az\n    host: {sim.url}\n    auth:\n      type: azure-sp\n"
        f"      tenant_id: {TENANT}\n      client_id: {AZURE_CLIENT}\n"
        f"      client_secret_file: azure-secret\n      authority: {entra.url}\n"
    )
    config = parse_config(text, env={}, base=tmp_path)
    auth = config.workspaces[0].auth
    assert isinstance(auth, AzureSPConfig)
    assert auth.client_secret.get_secret_value() == AZURE_SECRET
    await _poll_once(config, sim, clock, tmp_path)
    assert len(entra.requests) == 1
    assert entra.requests[0].form["client_secret"] == AZURE_SECRET
