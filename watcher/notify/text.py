"""Making untrusted text (job names, state messages, tags) safe and short for each target."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime

MARKER = "… [truncated]"

_SLACK = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
# What the Adaptive Card Markdown subset interprets (bold/italic, links, lists); see
# `markdown_escape`.
_MD_ALWAYS = re.compile(r"([\\*\[\]])")
_MD_UNDERSCORES = re.compile(r"_+")
_MD_LIST = re.compile(r"^(\s*)(?:([-+])|(\d{1,9})([.)]))(?=\s|$)", re.MULTILINE)


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


def _underscores(match: re.Match[str]) -> str:
    # CommonMark: an underscore run between two alphanumerics (`my_job`, `a__b`) can
    # neither open nor close emphasis, so it stays as typed; any other one is escaped.
    text, start, end = match.string, match.start(), match.end()
    inner = start > 0 and end < len(text) and text[start - 1].isalnum() and text[end].isalnum()
    return match.group() if inner else "\\_" * len(match.group())


def _list_marker(match: re.Match[str]) -> str:
    indent, bullet, number, delimiter = match.groups()
    return f"{indent}\\{bullet}" if bullet else f"{indent}{number}\\{delimiter}"


def markdown_escape(text: str) -> str:
    """Backslash-escape what the Adaptive Card Markdown subset (Teams) interprets, so a
    name renders as the literal text: backslashes, `*` (emphasis, even within a word),
    `_` where it could open or close emphasis, `[` and `]` (links), and list markers
    (`-`, `+`, `1.`, `1)`) at the start of a line. Everything else (`my_job`,
    `nightly-etl`, `v1.2`, parentheses) is left as typed: Teams shows a backslash
    before characters its subset does not know."""
    escaped = _MD_ALWAYS.sub(r"\\\1", text)
    escaped = _MD_UNDERSCORES.sub(_underscores, escaped)
    return _MD_LIST.sub(_list_marker, escaped)


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


def ordinal(n: int) -> str:
    """`1` -> `1st`, `2` -> `2nd`, `13` -> `13th`, `22` -> `22nd`."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 failure`, `3 failures` (or `many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def hm_utc(moment: datetime, *, since: datetime | None = None) -> str:
    """`02:10 UTC`, with the date in front (`2024-01-01 02:10 UTC`) when `moment` is not
    on the same UTC day as `since`: a time alone would read as today's."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%H:%M UTC")
    if since is not None and since.astimezone(UTC).date() != utc.date():
        text = utc.strftime("%Y-%m-%d ") + text
    return text


def iso(moment: datetime, *, timespec: str = "auto") -> str:
    """RFC 3339 in UTC with a `Z`, as every receiver parses it."""
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def ms_seconds(ms: int | None) -> float | None:
    """Milliseconds (a Databricks duration) as seconds; None stays None."""
    return None if ms is None else ms / 1000


def ms_iso(ms: int | None, *, timespec: str = "auto") -> str | None:
    """Epoch milliseconds (a Databricks time) as `iso`; None for None or 0 (not set)."""
    return iso(datetime.fromtimestamp(ms / 1000, UTC), timespec=timespec) if ms else None
