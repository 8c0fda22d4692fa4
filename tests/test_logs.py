"""Logging: JSON lines by default, and secrets redacted wherever they appear."""

from __future__ import annotations

import io
import json

import structlog

from watcher.logs import REDACTED, configure_logging

PAT = "dapi0123456789abcdef0123456789abcdef"  # shaped like a PAT, not a real one
SLACK = "https://hooks.slack.com/services/T000/B000/notarealsecret"


def _lines(**kwargs: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    try:
        log = structlog.get_logger("test")
        log.info("with_secrets", **kwargs)
        log.debug("below_level")
        try:
            raise RuntimeError(f"request failed with Authorization: Bearer {PAT}")
        except RuntimeError:
            log.exception("failure")
    finally:
        structlog.reset_defaults()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_secrets_are_redacted_by_key_and_by_shape() -> None:
    """Values of secret-named keys, PAT-shaped strings, bearer tokens, webhook secrets and
    Slack/Teams webhook URLs never reach the output, even inside messages, nested values
    and tracebacks; the rest of the line is kept."""
    lines = _lines(
        token="anything-at-all",
        client_secret="s3cr3t-value",
        headers={"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
        error=f"HTTP 403 for token {PAT}",
        channel_url=SLACK,
        attempts=[f"Bearer {PAT}", "ok"],
        workspace="prod",
    )
    text = json.dumps(lines)
    for secret in (
        PAT,
        "anything-at-all",
        "s3cr3t-value",
        "dXNlcjpwYXNzd29yZA==",
        "notarealsecret",
    ):
        assert secret not in text
    first = lines[0]
    assert first["token"] == REDACTED
    assert first["workspace"] == "prod"
    assert first["error"] == f"HTTP 403 for token {REDACTED}"
    assert first["event"] == "with_secrets"
    assert first["level"] == "info"


def test_level_filters_and_json_is_the_default_off_a_tty() -> None:
    """Below-level events are dropped; each line is one JSON object with a timestamp."""
    lines = _lines()
    assert [line["event"] for line in lines] == ["with_secrets", "failure"]
    assert all("timestamp" in line for line in lines)
    assert "RuntimeError" in str(lines[1]["exception"])
