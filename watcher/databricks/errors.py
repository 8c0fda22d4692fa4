"""Typed errors of the Jobs API client, and the parsing of Databricks error bodies."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from typing import Literal

_PLAIN_ERROR = re.compile(r"^([A-Z][A-Z0-9_]+):\s*(.*)$", re.DOTALL)
_HTML_PRE = re.compile(r"<pre>(.*?)</pre>", re.DOTALL | re.IGNORECASE)
_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.DOTALL | re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_MAX_MESSAGE = 500


class DatabricksError(Exception):
    """Base of everything the client raises."""


class ApiError(DatabricksError):
    """A non-retryable (or finally given-up) HTTP error answer from the API."""

    def __init__(self, *, endpoint: str, status: int, error_code: str, message: str) -> None:
        self.endpoint = endpoint
        self.status = status
        self.error_code = error_code
        self.message = message
        super().__init__(f"{endpoint}: HTTP {status} {error_code}: {message}")

    @property
    def is_not_found(self) -> bool:
        """The Jobs API's own word that a job or run does not exist: 400
        INVALID_PARAMETER_VALUE "... does not exist." (newer endpoints: 404
        RESOURCE_DOES_NOT_EXIST). A bare 404 (a proxy, a wrong path) is not: closing a
        run on it could hide its failure."""
        if self.error_code == "RESOURCE_DOES_NOT_EXIST":
            return True
        return (
            self.status == 400
            and self.error_code == "INVALID_PARAMETER_VALUE"
            and "does not exist" in self.message
        )


class RetryBudgetExceeded(DatabricksError):
    """Retryable failures went on longer than the call's retry budget allows."""

    def __init__(self, *, endpoint: str, attempts: int, last_error: str) -> None:
        self.endpoint = endpoint
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(f"{endpoint}: gave up after {attempts} attempts: {last_error}")


class MalformedResponse(DatabricksError):
    """A 2xx answer whose body is not the JSON the API documents."""

    def __init__(self, *, endpoint: str, detail: str) -> None:
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: malformed response: {detail[:_MAX_MESSAGE]}")


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """A run or job of a 2xx answer that failed validation and was left out."""

    endpoint: str
    kind: Literal["run", "job"]
    item_id: int | None
    """Its run_id (kind "run") or job_id (kind "job"), when the raw object has an int one."""
    job_id: int | None
    """The job it belongs to (a job's own id), when readable."""
    detail: str
    """Field paths and pydantic error types only: values can hold secrets or hostile text."""


class ItemRejected(DatabricksError):
    """runs/get or jobs/get answered an object that fails validation. Not retried: the
    workspace would send the same object again."""

    def __init__(self, item: RejectedItem) -> None:
        self.item = item
        which = f"{item.kind} {item.item_id}" if item.item_id is not None else f"a {item.kind}"
        super().__init__(f"{item.endpoint}: {which} failed validation: {item.detail}")


def parse_error_body(body: bytes, status: int) -> tuple[str, str]:
    """(error_code, message) from a JSON, `CODE: message` plain-text or HTML error body.

    Whatever the body, the result is short and single-line enough to log."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        code = data.get("error_code") or data.get("error") or f"HTTP_{status}"
        message = data.get("message") or data.get("error_description") or ""
        return _clean(str(code)), _clean(str(message))
    if match := _PLAIN_ERROR.match(text):
        return match.group(1), _clean(match.group(2))
    if "<" in text and (match := _HTML_PRE.search(text) or _HTML_TITLE.search(text)):
        return f"HTTP_{status}", _clean(html.unescape(_TAGS.sub("", match.group(1))))
    return f"HTTP_{status}", _clean(_TAGS.sub("", text))


def _clean(text: str) -> str:
    return " ".join(text.split())[:_MAX_MESSAGE]
