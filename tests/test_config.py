"""Configuration: YAML, ${ENV} references, *_file secrets, errors that name the field,
and `watcher check-config` exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.config import ConfigError, JobFilter, JobMatch, load_config, parse_config

CONFIG_DIR = Path(__file__).parent.parent / "config"
MINIMAL = """
workspaces:
  - name: prod
    host: https://adb-1.2.azuredatabricks.net
    auth: {type: pat, token: "${DATABRICKS_TOKEN}"}
"""


def test_env_references_are_substituted_and_secret() -> None:
    """${VAR} is replaced from the environment; secrets never show in repr."""
    config = parse_config(MINIMAL, env={"DATABRICKS_TOKEN": "dapi-fake-for-tests"})
    auth = config.workspaces[0].auth
    assert auth.type == "pat"
    assert auth.token is not None
    assert auth.token.get_secret_value() == "dapi-fake-for-tests"
    assert "dapi-fake-for-tests" not in repr(config)
    assert config.workspaces[0].api_version == "2.1"


def test_env_values_cannot_inject_yaml() -> None:
    """Substitution happens after parsing: a value with newlines and YAML syntax stays
    one string."""
    hostile = 'x"\n    poll_interval: 0.1\nstore: {path: /etc/passwd}'
    config = parse_config(MINIMAL, env={"DATABRICKS_TOKEN": hostile})
    assert config.workspaces[0].auth.token.get_secret_value() == hostile  # type: ignore[union-attr]
    assert config.workspaces[0].poll_interval == 30
    assert str(config.store.path) == "data/watcher.db"


def test_missing_env_variable_is_named() -> None:
    """An unset variable without a default is an error naming it; `:-` gives a default."""
    with pytest.raises(
        ConfigError,
        match=r"workspaces\.0\.auth\.token: environment variable DATABRICKS_TOKEN is not set",
    ):
        parse_config(MINIMAL, env={})
    config = parse_config(MINIMAL.replace('}"', ':-fallback}"'), env={})
    assert config.workspaces[0].auth.token.get_secret_value() == "fallback"  # type: ignore[union-attr]


def test_file_keys_read_secrets_from_files(tmp_path: Path) -> None:
    """`<key>_file` reads the secret from a file (relative to the config); token_file
    stays a path so a rotated token is re-read."""
    (tmp_path / "secret").write_text("s3cr3t-for-tests\n")
    text = """
workspaces:
  - name: prod
    host: https://h.example.com
    auth: {type: oauth-m2m, client_id: abc, client_secret_file: secret}
  - name: dev
    host: https://d.example.com
    auth: {type: pat, token_file: /var/run/token}
"""
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml", env={})
    assert config.workspaces[0].auth.client_secret.get_secret_value() == "s3cr3t-for-tests"  # type: ignore[union-attr]
    assert str(config.workspaces[1].auth.token_file) == "/var/run/token"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL.replace("prod", "prod!"), "workspaces.0.name: String should match pattern"),
        (MINIMAL.replace("https://adb-1.2.azuredatabricks.net", "not a url"), "workspaces.0.host"),
        (MINIMAL + "    poll_interval: 0\n", "workspaces.0.poll_interval: Input should be greater"),
        (MINIMAL + "    api_version: '3.0'\n", "workspaces.0.api_version"),
        (MINIMAL + "    surprise: 1\n", "workspaces.0.surprise: Extra inputs are not permitted"),
        (MINIMAL + "routes:\n  - channels: [nope]\n", "routes.0.channels: unknown channel 'nope'"),
        (MINIMAL + MINIMAL.replace("workspaces:\n", ""), "workspace names must be unique: prod"),
        ("workspaces: []\n", "workspaces: List should have at least 1 item"),
        (
            MINIMAL
            + "health_rules:\n  rules:\n    - {name: slow, seconds: 60}\n"
            + "    - {name: slow, seconds: 600}\n",
            "health_rules.rules: Value error, rule names must be unique: slow",
        ),
        (MINIMAL + "    reconcile: {max_share: 0}\n", "workspaces.0.reconcile.max_share"),
        ("- just a list\n", "must be a mapping"),
        ("workspaces: [\n", "not valid YAML"),
        (
            MINIMAL.replace('token: "${DATABRICKS_TOKEN}"', "token_file: /x, token: y"),
            "set exactly one of token or token_file",
        ),
    ],
)
def test_invalid_configs_name_the_field(text: str, message: str) -> None:
    """Every validation error names the field path that is wrong."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={"DATABRICKS_TOKEN": "x"})
    assert any(message in line for line in caught.value.errors), caught.value.errors


def test_job_matching_and_filters() -> None:
    """Job matches combine ids, name globs and tags (`*` any value); filters include
    then exclude."""
    match = JobMatch(names=["nightly-*"], tags={"team": "*"})
    assert match.matches(1, "nightly-etl", {"team": "data"})
    assert not match.matches(1, "nightly-etl", {})
    assert not match.matches(1, "hourly", {"team": "data"})
    allow = JobFilter(include=JobMatch(job_ids=[1, 2]), exclude=JobMatch(tags={"watch": "no"}))
    assert allow.allows(1, None, {})
    assert not allow.allows(2, None, {"watch": "no"})
    assert not allow.allows(3, None, {})


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    """Every example in config/ passes validation (with placeholder env values)."""
    env = {
        name: "placeholder"
        for name in (
            "DATABRICKS_HOST",
            "DATABRICKS_TOKEN",
            "DATABRICKS_CLIENT_SECRET",
            "SMTP_PASSWORD",
            "SLACK_WEBHOOK_URL",
            "PAGERDUTY_ROUTING_KEY",
            "WEBHOOK_SECRET",
            "TEAMS_WEBHOOK_URL",
        )
    }
    env["DATABRICKS_HOST"] = "https://adb-1.2.azuredatabricks.net"
    env["WEBHOOK_SECRET"] = "whsec_cGxhY2Vob2xkZXItc2VjcmV0"
    load_config(path, env=env)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    """`watcher check-config` exits 0 on a valid file and 2 on an invalid one, printing
    each error with its field path."""
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL.replace("${DATABRICKS_TOKEN}", "dapi-fake"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("${DATABRICKS_TOKEN}", "dapi-fake") + "    poll_interval: -1\n")
    ok = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "-c", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    failed = subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "-c", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 2
    assert "workspaces.0.poll_interval" in failed.stderr
    assert "dapi-fake" not in failed.stderr + failed.stdout
