"""Making untrusted text (job names, state messages, tags) safe and short for each target."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

MARKER = "… [truncated]"

_SLACK = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>])")


def one_line(text: str) -> str:
    """Control characters (CR, LF, tabs, NUL...) and line/paragraph separators become
    spaces: a name can never start a new header, log line or console line."""
    return "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text
    ).strip()


def truncate(text: str, limit: int, marker: str = MARKER) -> str:
    """`text` cut to at most `limit` characters, ending with a visible marker when cut."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return marker[:limit]
    return text[: limit - len(marker)] + marker


def truncate_bytes(text: str, limit: int, marker: str = MARKER) -> str:
    """Like `truncate`, for limits counted in UTF-8 bytes."""
    if len(text.encode()) <= limit:
        return text
    room = limit - len(marker.encode())
    cut = text.encode()[: max(0, room)].decode(errors="ignore")
    return cut + marker


def slack_escape(text: str) -> str:
    """Slack's required escaping: `&`, `<` and `>` only, so no `<!channel>` or link can be
    smuggled in through a job name."""
    return text.translate(_SLACK)


def markdown_escape(text: str) -> str:
    """Backslash-escape markdown syntax so a name renders as the literal text."""
    return _MARKDOWN.sub(r"\\\1", text)


def human_seconds(seconds: float | None) -> str:
    """`3725` -> `1h 2m 5s`; `None` -> `-`."""
    if seconds is None:
        return "-"
    total = round(seconds)
    if total < 60:
        return f"{total}s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = ([f"{hours}h"] if hours else []) + [f"{minutes}m", f"{secs}s"]
    return " ".join(parts)


def iso(moment: datetime, *, timespec: str = "auto") -> str:
    """RFC 3339 in UTC with a `Z`, as every receiver parses it."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def ms_seconds(ms: int | None) -> float | None:
    """Milliseconds (a Databricks duration) as seconds; None stays None."""
    return None if ms is None else ms / 1000


def ms_iso(ms: int | None, *, timespec: str = "auto") -> str | None:
    """Epoch milliseconds (a Databricks time) as `iso`; None for None or 0 (not set)."""
    return iso(datetime.fromtimestamp(ms / 1000, UTC), timespec=timespec) if ms else None
