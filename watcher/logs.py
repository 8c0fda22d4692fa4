"""structlog setup: JSON lines in production, a console renderer on a TTY, and a processor
that redacts secrets wherever they appear, keys or values."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|routing[_-]?key|webhook[_-]?url)",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"(dapi[0-9a-f]{16,}(-\d+)?"  # Databricks personal access tokens
    r"|(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}"
    r"|(?<=Basic )[A-Za-z0-9+/=]{8,}"
    r"|whsec_[A-Za-z0-9+/=]{8,}"
    r"|https://hooks\.slack\.com/\S+"
    r"|https://[\w.-]*\.logic\.azure\.com\S*"
    r"|https://[\w.-]*webhook\.office\.com\S*)"
)
REDACTED = "**redacted**"


def redact_value(value: str) -> str:
    return _SECRET_VALUE.sub(REDACTED, value)


def _redact(node: Any, key: str = "") -> Any:
    if key and _SECRET_KEY.search(key) and isinstance(node, str | bytes) and node:
        return REDACTED
    if isinstance(node, str):
        return redact_value(node)
    if isinstance(node, dict):
        return {k: _redact(v, str(k)) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return type(node)(_redact(v) for v in node)
    return node


def redact_secrets(
    logger: object, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace secret-looking values (and values of secret-named keys) before rendering."""
    for key in list(event_dict):
        event_dict[key] = _redact(event_dict[key], key if key != "event" else "")
    return event_dict


def configure_logging(
    *, level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        # Plain tracebacks: rich's show_locals would print secrets held in stack frames.
        structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
