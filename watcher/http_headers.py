"""HTTP header values the Databricks client and the alert channels share: our User-Agent,
and reading a Retry-After. Standard library only, so either side may import it."""

from __future__ import annotations

import email.utils
import math
from datetime import UTC

from watcher import __version__

USER_AGENT = f"databricks-run-watcher/{__version__}"


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header as seconds to wait: delay-seconds, or, when `now` (epoch
    seconds) is given, an HTTP date counted from `now`. None when it is missing or not
    understood."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    if now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None
