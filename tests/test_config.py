"""Configuration: YAML, ${ENV} references, *_file secrets, errors that name the field,
and `watcher check-config` exit codes. check-config is a proof: what `run` would reject or
trip over, it rejects first (exit 2, the field named, never a traceback)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from watcher.cli import check_config
from watcher.config import (
    MAX_ERRORS,
    ConfigError,
    JobFilter,
    JobMatch,
    load_config,
    parse_config,
)
from watcher.events import EventType
from watcher.notify.templates import sample_events

CONFIG_DIR = Path(__file__).parent.parent / "config"
MINIMAL = """
workspaces:
  - name: prod
    host: https://adb-1.2.azuredatabricks.net
    auth: {type: pat, token: "${DATABRICKS_TOKEN}"}
"""
ENV = {"DATABRICKS_TOKEN": "dapi-fake"}
GOOD_SECRET = "whsec_" + base64.b64encode(b"k" * 24).decode()


def errors_of(text: str, base: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=ENV, base=base)
    return caught.value.errors


def assert_error(text: str, message: str, base: Path = Path(".")) -> None:
    errors = errors_of(text, base)
    assert any(message in line for line in errors), errors


def cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watcher", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DATABRICKS_TOKEN": "dapi-fake"},
    )


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
    text = MINIMAL + '    jobs: {include: {tags: {team: "${HOSTILE}"}}}\n'
    config = parse_config(text, env={**ENV, "HOSTILE": hostile})
    assert config.workspaces[0].jobs.include.tags == {"team": hostile}
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
    stays a path, resolved against the config's directory, so a rotated token is re-read."""
    (tmp_path / "secret").write_text("s3cr3t-for-tests\n")
    (tmp_path / "token").write_text("dapi-from-file\n")
    text = """
workspaces:
  - name: prod
    host: https://h.example.com
    auth: {type: oauth-m2m, client_id: abc, client_secret_file: secret}
  - name: dev
    host: https://d.example.com
    auth: {type: pat, token_file: token}
"""
    (tmp_path / "c.yaml").write_text(text)
    config = load_config(tmp_path / "c.yaml", env={})
    assert config.workspaces[0].auth.client_secret.get_secret_value() == "s3cr3t-for-tests"  # type: ignore[union-attr]
    assert config.workspaces[1].auth.token_file == tmp_path / "token"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL.replace("prod", "prod!"), "workspaces.0.name: String should match pattern"),
        (MINIMAL.replace("https://adb-1.2.azuredatabricks.net", "not a url"), "workspaces.0.host"),
        (MINIMAL + "    poll_interval: 0\n", "workspaces.0.poll_interval: Input should be greater"),
        (MINIMAL + "    api_version: '3.0'\n", "workspaces.0.api_version"),
        (MINIMAL + "    surprise: 1\n", "workspaces.0.surprise: unknown key"),
        (
            MINIMAL + "routes:\n  - channels: [nope]\n",
            "routes.0.channels.0: unknown channel 'nope'",
        ),
        (MINIMAL + MINIMAL.replace("workspaces:\n", ""), "workspace names must be unique: prod"),
        ("workspaces: []\n", "workspaces: List should have at least 1 item"),
        (
            MINIMAL
            + "health_rules:\n  rules:\n    - {name: slow, seconds: 60}\n"
            + "    - {name: slow, seconds: 600}\n",
            "health_rules.rules: rule names must be unique: slow",
        ),
        (MINIMAL + "    reconcile: {max_share: 0}\n", "workspaces.0.reconcile.max_share"),
        ("- just a list\n", "must be a mapping"),
        ("workspaces: [\n", "not valid YAML"),
        (
            MINIMAL.replace('token: "${DATABRICKS_TOKEN}"', f"token_file: {__file__}, token: y"),
            "workspaces.0.auth: set exactly one of token or token_file",
        ),
    ],
)
def test_invalid_configs_name_the_field(text: str, message: str) -> None:
    """Every validation error names the field path that is wrong."""
    assert_error(text, message)


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


EXAMPLE_ENV = {
    "DATABRICKS_HOST": "https://adb-1.2.azuredatabricks.net",
    "DATABRICKS_TOKEN": "placeholder",
    "DATABRICKS_CLIENT_SECRET": "placeholder",
    "SMTP_PASSWORD": "placeholder",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.invalid/services/placeholder",
    "TEAMS_WEBHOOK_URL": "https://teams.invalid/workflows/placeholder",
    "PAGERDUTY_ROUTING_KEY": "placeholder",
    "WEBHOOK_SECRET": GOOD_SECRET,
}


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    """Every example in config/ passes check-config (with placeholder env values)."""
    check_config(path, env=EXAMPLE_ENV)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    """`watcher check-config` exits 0 on a valid file and 2 on an invalid one, printing
    each error with its field path."""
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL.replace("${DATABRICKS_TOKEN}", "dapi-fake"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("${DATABRICKS_TOKEN}", "dapi-fake") + "    poll_interval: -1\n")
    ok = cli(good)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout
    failed = cli(bad)
    assert failed.returncode == 2
    assert "workspaces.0.poll_interval" in failed.stderr
    assert "dapi-fake" not in failed.stderr + failed.stdout


# -- what `run` tripped over, now rejected by check-config ---------------------------


SILENCE = """
silences:
  - starts_at: {starts}
    ends_at: {ends}
"""


@pytest.mark.parametrize(
    ("starts", "ends", "message"),
    [
        ("'2026-12-24T00:00:00'", "'2026-12-27T00:00:00Z'", "silences.0.starts_at: Input should"),
        ("2026-12-24T00:00:00", "'2026-12-27T00:00:00Z'", "silences.0.starts_at"),
        ("2026-12-24", "'2026-12-27T00:00:00Z'", "silences.0.starts_at"),
        ("'2026-12-24T00:00:00Z'", "'2026-12-27'", "silences.0.ends_at"),
    ],
)
def test_a_silence_time_needs_a_time_zone(starts: str, ends: str, message: str) -> None:
    """A time without a zone, quoted or not, or a plain date, passed and then failed every
    cycle comparing naive and aware times: now an error with a hint."""
    errors = errors_of(MINIMAL + SILENCE.format(starts=starts, ends=ends))
    line = next(e for e in errors if message in e)
    assert "with a time zone, e.g. '2026-12-24T00:00:00Z'" in line


def test_a_silence_ends_after_it_starts() -> None:
    text = SILENCE.format(starts="'2026-12-27T00:00:00Z'", ends="'2026-12-24T00:00:00+01:00'")
    assert_error(MINIMAL + text, "silences.0.ends_at: must be after starts_at")


def test_silences_and_routes_name_existing_workspaces() -> None:
    """A silence or route for a workspace that does not exist would match nothing: every
    such name is an error at its own path, with a suggestion."""
    text = (
        MINIMAL
        + "channels: {c: {type: console}}\n"
        + "routes:\n  - {match: {workspaces: [prod, prdo]}, channels: [c]}\n"
        + SILENCE.format(starts="'2026-12-24T00:00:00Z'", ends="'2026-12-27T00:00:00Z'")
        + "    match: {workspaces: [staging]}\n"
    )
    errors = errors_of(text)
    assert "routes.0.match.workspaces.1: unknown workspace 'prdo'; did you mean `prod`?" in errors
    assert "silences.0.match.workspaces.0: unknown workspace 'staging' (known: prod)" in errors
    assert_error(
        MINIMAL + "channels: {c: {type: console}}\ndestinations: {abc: d}\n",
        "destinations.abc: unknown channel 'd'",
    )


def with_auth(auth: str) -> str:
    return MINIMAL.replace('{type: pat, token: "${DATABRICKS_TOKEN}"}', auth)


def test_token_file_must_be_a_readable_file(tmp_path: Path) -> None:
    """A token file that is missing, a directory or empty failed every cycle at run: now
    check-config says so; a relative path is resolved against the config's directory and
    the message says that."""
    assert_error(
        with_auth(f"{{type: pat, token_file: {tmp_path}/missing}}"),
        f"workspaces.0.auth.token_file: {tmp_path}/missing does not exist",
    )
    assert_error(
        with_auth(f"{{type: pat, token_file: {tmp_path}}}"),
        f"workspaces.0.auth.token_file: {tmp_path} is a directory",
    )
    (tmp_path / "empty").write_text("\n")
    assert_error(with_auth("{type: pat, token_file: empty}"), "empty (relative", base=tmp_path)
    assert_error(with_auth("{type: pat, token_file: empty}"), ") is empty", base=tmp_path)
    errors = errors_of(with_auth("{type: pat, token_file: tok}"), base=tmp_path)
    assert errors == [
        f"workspaces.0.auth.token_file: {tmp_path}/tok (relative paths are resolved against "
        "the config file's directory) does not exist"
    ]


def test_relative_token_file_is_resolved_against_the_config_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "token").write_text("dapi-x\n")
    (tmp_path / "conf" / "c.yaml").write_text(with_auth("{type: pat, token_file: token}"))
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/c.yaml"), env={})
    assert config.workspaces[0].auth.token_file == tmp_path / "conf" / "token"  # type: ignore[union-attr]


def test_ca_bundle_must_exist_and_be_pem(tmp_path: Path) -> None:
    assert_error(
        MINIMAL + f"    ca_bundle: {tmp_path}/ca.pem\n",
        f"workspaces.0.ca_bundle: {tmp_path}/ca.pem does not exist",
    )
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    assert_error(
        MINIMAL + f"    ca_bundle: {tmp_path}/ca.pem\n",
        f"workspaces.0.ca_bundle: {tmp_path}/ca.pem is not a PEM CA bundle",
    )
    channel = "channels: {h: {type: webhook, url: 'https://x.example', ca_bundle: ca.pem}}\n"
    assert_error(MINIMAL + channel, "channels.h.ca_bundle: ", base=tmp_path)
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = parse_config(MINIMAL + "    ca_bundle: ca.pem\n" + channel, env=ENV, base=tmp_path)
    assert config.workspaces[0].ca_bundle == tmp_path / "ca.pem"


def test_unreadable_secret_files_name_the_key(tmp_path: Path) -> None:
    text = MINIMAL + "channels:\n  pd: {type: pagerduty, routing_key_file: rk}\n"
    assert_error(text, "channels.pd.routing_key_file: ", base=tmp_path)
    assert f"{tmp_path}/rk (relative paths" in errors_of(text, tmp_path)[0]
    (tmp_path / "rk").write_bytes(b"\xff\xfe")
    assert_error(text, "channels.pd.routing_key_file: ", base=tmp_path)
    assert "is not UTF-8 text" in errors_of(text, tmp_path)[0]
    (tmp_path / "rk").write_text("R0123456789abcdef\n")
    both = text.replace("routing_key_file: rk", "routing_key_file: rk, routing_key: x")
    assert_error(both, "channels.pd.routing_key_file: set routing_key or routing_key_file")
    config = parse_config(text, env=ENV, base=tmp_path)
    assert config.channels["pd"].routing_key.get_secret_value() == "R0123456789abcdef"  # type: ignore[union-attr]


def test_file_suffix_is_resolved_only_for_secret_fields(tmp_path: Path) -> None:
    """`_file` was stripped from any key anywhere: a job tag `cost_file: x` became `cost:
    <contents of x>`. Now only the schema's secret fields take `<key>_file`."""
    (tmp_path / "x").write_text("contents")
    config = parse_config(
        MINIMAL + "    jobs: {include: {tags: {cost_file: x}}}\n", env=ENV, base=tmp_path
    )
    assert config.workspaces[0].jobs.include.tags == {"cost_file": "x"}
    assert_error(
        MINIMAL + "channels: {c: {type: console, stream_file: x}}\n",
        "channels.c.stream_file: unknown key",
        base=tmp_path,
    )
    assert_error(
        with_auth("{type: oauth-m2m, client_id_file: x, client_secret: s}"),
        "workspaces.0.auth.client_id_file: unknown key",
        base=tmp_path,
    )


def test_every_secret_field_takes_a_file(tmp_path: Path) -> None:
    """The secret fields, all of them, read `<key>_file`."""
    (tmp_path / "url").write_text("https://hooks.slack.invalid/x\n")
    (tmp_path / "s").write_text("secret-value\n")
    (tmp_path / "whsec").write_text(GOOD_SECRET)
    text = with_auth("{type: oauth-m2m, client_id: a, client_secret_file: s}") + (
        "channels:\n"
        "  sl: {type: slack, url_file: url}\n"
        "  te: {type: teams, url_file: url}\n"
        "  pd: {type: pagerduty, routing_key_file: s}\n"
        "  em: {type: email, host: smtp.example.com, sender: a@example.com, password_file: s}\n"
        "  wh: {type: webhook, url: 'https://x.example', secret_file: whsec,"
        " bearer_token_file: s}\n"
        "  wb: {type: webhook, url: 'https://x.example', basic_username: u,"
        " basic_password_file: s}\n"
    )
    config = parse_config(text, env=ENV, base=tmp_path)
    assert config.channels["sl"].url.get_secret_value() == "https://hooks.slack.invalid/x"  # type: ignore[union-attr]
    assert config.channels["wb"].basic_password.get_secret_value() == "secret-value"  # type: ignore[union-attr]


TEMPLATE_CHANNEL = "channels:\n  c: {{type: {kind}, {field}: {template!r}{extra}}}\n"


@pytest.mark.parametrize(
    ("kind", "field", "template", "extra", "message"),
    [
        ("console", "text_template", "{{ job_name | nope }}", "", "No filter named 'nope'"),
        ("console", "text_template", "{{ nope }}", "", "'nope' is undefined"),
        # Only duration breaches carry a rule: renders the one sample run used to check.
        ("console", "text_template", "{{ rule.limit }}", "", "(rendering a run_started event)"),
        (
            "slack",
            "text_template",
            "{{ detail.x }}",
            ", url: 'https://h.invalid/x'",
            "no attribute 'x'",
        ),
        (
            "email",
            "html_template",
            "{% for t in failed_tasks %}{{ t.nope }}{% endfor %}",
            ", host: smtp.example.com, sender: a@example.com",
            "(rendering a run_failed event)",
        ),
        ("pagerduty", "summary_template", "{{ x", ", routing_key: k", "unexpected end"),
    ],
)
def test_templates_are_checked_against_every_event_type(
    tmp_path: Path, kind: str, field: str, template: str, extra: str, message: str
) -> None:
    """A configured template with an unknown filter or variable, or one that only some
    event types can render, is a check-config error naming the field."""
    path = tmp_path / "c.yaml"
    path.write_text(
        MINIMAL + TEMPLATE_CHANNEL.format(kind=kind, field=field, template=template, extra=extra)
    )
    load_config(path, env=ENV)  # the schema is fine: the template is what is wrong
    with pytest.raises(ConfigError) as caught:
        check_config(path, env=ENV)
    [line] = caught.value.errors
    assert line.startswith(f"channels.c.{field}: ")
    assert message in line


def test_sample_events_cover_every_event_type() -> None:
    # One of every type first; then other shapes (a reminder, a recovery without incident).
    assert [e.type for e in sample_events()][: len(EventType)] == list(EventType)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("'127.0.0.1:9108'", "server.host: a host only: set the port with `port: 9108`"),
        ("'http://0.0.0.0'", "server.host: a host name or IP address, without a scheme"),
        ("'[::1]'", "server.host: an IPv6 address goes without brackets"),
        ("'not a host'", "server.host: not a host name or IP address"),
        ("''", "server.host: not a host name or IP address"),
    ],
)
def test_server_host_is_a_host(host: str, message: str) -> None:
    """`127.0.0.1:9108` passed, then `run` died with a traceback and hung."""
    assert_error(MINIMAL + f"server: {{host: {host}}}\n", message)


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "127.0.0.1", "'::'", "localhost", "metrics.svc."],  # noqa: S104
)
def test_server_host_accepts_addresses_and_names(host: str) -> None:
    parse_config(MINIMAL + f"server: {{host: {host}}}\n", env=ENV)


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        ("{type: slack, url: not a url}", "channels.c.url: not an http(s) URL"),
        ("{type: slack, url: 'ftp://hooks.example/x'}", "channels.c.url: not an http(s) URL"),
        ("{type: teams, url: 'https://'}", "channels.c.url: not an http(s) URL"),
        ("{type: webhook, url: 'ftp://x.example'}", "channels.c.url: URL scheme should be"),
        ("{type: alertmanager, url: x}", "channels.c.url: "),
        ("{type: pagerduty, routing_key: k, url: 'gopher://x'}", "channels.c.url: "),
        ("{type: email, host: 'smtp://mail', sender: a@b.example}", "channels.c.host: "),
        ("{type: email, host: 'mail:25', sender: a@b.example}", "channels.c.host: a host only"),
    ],
)
def test_channel_urls_and_hosts_are_checked(channel: str, message: str) -> None:
    """A Slack url `not a url` or `ftp://...` was retried for a day; a secret URL is never
    echoed in the message."""
    errors = errors_of(MINIMAL + f"channels:\n  c: {channel}\n")
    assert any(message in e for e in errors), errors
    assert not any("hooks.example" in e for e in errors)


def test_workspace_host_without_query() -> None:
    host = "https://adb-1.2.azuredatabricks.net/?o=1#job/2"
    assert_error(
        MINIMAL.replace("https://adb-1.2.azuredatabricks.net", host),
        "workspaces.0.host: the workspace URL only",
    )


@pytest.mark.parametrize(
    "text",
    [
        # a channel name given twice: the second replaced the first
        MINIMAL + "channels:\n  c: {type: console}\n  c: {type: console, stream: stderr}\n",
        # at any depth
        MINIMAL + "    poll_interval: 10\n    poll_interval: 20\n",
        MINIMAL.replace("workspaces:", "workspaces:\nworkspaces:"),
        MINIMAL + "    jobs: {include: {tags: {a: x, a: y}}}\n",
    ],
)
def test_duplicate_keys_are_errors_with_their_line(text: str) -> None:
    [line] = errors_of(text)
    assert "duplicate key" in line
    assert "line " in line
    assert "(first on line " in line


def test_yaml_merge_keys_still_override() -> None:
    """`<<: *defaults` then a key of its own is YAML's way to override, not a duplicate."""
    text = MINIMAL.replace("workspaces:", "x-defaults: &d {poll_interval: 10}\nworkspaces:")
    assert_error(text, "x-defaults: unknown key")  # the merge itself was accepted
    text = MINIMAL + "    <<: {poll_interval: 10, api_version: '2.0'}\n    poll_interval: 20\n"
    config = parse_config(text, env=ENV)
    assert (config.workspaces[0].poll_interval, config.workspaces[0].api_version) == (20, "2.0")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "not UTF-8 text"),
        ("workspaces:\n  - name: café\n".encode("latin-1"), "not UTF-8 text: byte 0xe9 on line 2"),
        (b"workspaces:\x00\n", "not valid YAML"),
        (b"", "the file is empty"),
    ],
)
def test_binary_and_latin1_files_are_clear_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    """A binary or Latin-1 file was a Python traceback with exit 1."""
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    result = cli(path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_signing_secret_needs_24_bytes() -> None:
    """The Standard Webhooks specification asks for at least 24 random bytes."""
    channel = "channels:\n  w: {{type: webhook, url: 'https://x.example', secret: {secret}}}\n"
    short = "whsec_" + base64.b64encode(b"k" * 23).decode()
    assert_error(MINIMAL + channel.format(secret="whsec_AQ=="), "channels.w.secret: a 1-byte key")
    assert_error(MINIMAL + channel.format(secret=short), "channels.w.secret: a 23-byte key")
    parse_config(MINIMAL + channel.format(secret=GOOD_SECRET), env=ENV)


@pytest.mark.parametrize(
    ("value", "message"),
    [("''", "workspaces.0.auth.token: is empty"), ('"dapi\\n"', "line break or control")],
)
def test_secrets_are_usable(value: str, message: str) -> None:
    assert_error(with_auth(f"{{type: pat, token: {value}}}"), message)


def test_misspelled_keys_get_a_suggestion() -> None:
    errors = errors_of(MINIMAL + "chanels: {}\n")
    assert "chanels: unknown key; did you mean `channels`?" in errors
    errors = errors_of(MINIMAL + "    poll_intervall: 10\n")
    assert "workspaces.0.poll_intervall: unknown key; did you mean `poll_interval`?" in errors
    errors = errors_of(MINIMAL + "channels: {s: {type: slack, url_fil: x}}\n")
    assert "channels.s.url_fil: unknown key; did you mean `url_file`?" in errors


def test_unquoted_numbers_and_booleans_get_a_hint() -> None:
    assert_error(MINIMAL + "    api_version: 2.1\n", "workspaces.0.api_version: Input should be")
    assert any(
        e.endswith("; quote it: '2.1'") for e in errors_of(MINIMAL + "    api_version: 2.1\n")
    )
    errors = errors_of(MINIMAL + "    jobs: {exclude: {tags: {watch: no, tier: 1}}}\n")
    assert any("tags.watch" in e and "as a boolean: quote it" in e for e in errors), errors
    assert any("tags.tier" in e and "as a number: quote it" in e for e in errors), errors


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (MINIMAL + "    poll_interval: .inf\n", "workspaces.0.poll_interval"),
        (MINIMAL + "startup: {lookback: .inf}\n", "startup.lookback"),
    ],
)
def test_numbers_are_finite(text: str, field: str) -> None:
    """`.inf` seconds overflow where they become milliseconds (`int(inf * 1000)`)."""
    assert_error(text, f"{field}: Input should be a finite number")


def test_the_error_list_is_capped() -> None:
    tags = ", ".join(f"t{i}: {i}" for i in range(MAX_ERRORS + 10))
    errors = errors_of(MINIMAL + f"    jobs: {{include: {{tags: {{{tags}}}}}}}\n")
    assert len(errors) == MAX_ERRORS + 1
    assert errors[-1] == "... and 10 more"


@pytest.mark.parametrize(
    "text",
    [
        "a: &a [*a]\n",  # recursive
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),  # a billion laughs
        "[" * 5000 + "]" * 5000,
        "x: 2026-02-30\n",  # a YAML date that is no date
        "x: " + "9" * 5000 + "\n",  # more digits than Python converts
    ],
    ids=["recursive", "billion-laughs", "deep", "bad-date", "huge-int"],
)
def test_hostile_yaml_is_an_error_not_a_crash(text: str) -> None:
    errors_of(text)


def test_check_config_rejects_what_run_tripped_over(tmp_path: Path) -> None:
    """Through the real CLI: each exits 2 with the field named, never a traceback."""
    cases = {
        "silence": MINIMAL
        + SILENCE.format(starts="'2026-12-24T00:00:00'", ends="'2026-12-27T00:00:00Z'"),
        "host": MINIMAL + "server: {host: '127.0.0.1:9108'}\n",
        "template": MINIMAL + "channels: {c: {type: console, text_template: '{{ x | nope }}'}}\n",
        "token": with_auth("{type: pat, token_file: missing}"),
    }
    fields = {
        "silence": "silences.0.starts_at",
        "host": "server.host",
        "template": "channels.c.text_template",
        "token": "workspaces.0.auth.token_file",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        result = cli(path)
        assert result.returncode == 2, (name, result.stderr)
        assert f"  {fields[name]}: " in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr
