"""`ConfigError`, and pydantic's validation errors as its lines: each names the field path
as the file spells it, and the usual cause where there is one (a typo, an unquoted
number, a time without a time zone)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError

from watcher.config.base import FieldErrors, secret_file_keys

MAX_ERRORS = 50


class ConfigError(Exception):
    """The configuration cannot be used; `errors` lists one line per problem, each naming
    the field path (at most MAX_ERRORS of them, then how many more)."""

    def __init__(self, errors: list[str]) -> None:
        if len(errors) > MAX_ERRORS:
            errors = [*errors[:MAX_ERRORS], f"... and {len(errors) - MAX_ERRORS} more"]
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  {e}" for e in errors))


_DATETIME_ERRORS = frozenset(
    {"timezone_aware", "datetime_type", "datetime_parsing", "datetime_from_date_parsing"}
)


def describe(exc: ValidationError, root: type[BaseModel]) -> list[str]:
    """One line per error of validating `root`, each naming its field path."""
    lines = []
    for error in exc.errors(include_url=False):
        parts, _ = _walk(root, error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldErrors):
            lines += [f"{'.'.join([*parts, sub])}: {what}" for sub, what in cause.problems]
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{'.'.join(parts) or '(top level)'}: {message}{_hint(root, error)}")
    return lines


def _hint(root: type[BaseModel], error: Any) -> str:
    """What the usual cause of this error is, where there is a usual one."""
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        _, model = _walk(root, error["loc"][:-1])
        models = _models(model)
        known = [k for m in models for k in _keys(m)]
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        return f"; did you mean `{close[0]}`?" if close else ""
    if kind == "literal_error" and isinstance(value, int | float) and not isinstance(value, bool):
        # `api_version: 2.1` is a float to YAML, and 2.10 would be 2.1.
        expected = error.get("ctx", {}).get("expected", "")
        if f"'{value}'" in expected:
            return f"; quote it: '{value}'"
        return "; YAML reads an unquoted number as a number: quote it"
    if kind == "string_type" and isinstance(value, bool):
        return "; YAML reads unquoted yes/no/on/off/true/false as a boolean: quote it"
    if kind == "string_type" and isinstance(value, int | float):
        return "; YAML reads an unquoted number as a number: quote it"
    if kind in _DATETIME_ERRORS:
        return "; give an ISO 8601 time with a time zone, e.g. '2026-12-24T00:00:00Z'"
    return ""


def _walk(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[list[str], Any]:
    """The location as the file spells it, and the schema type found there. Pydantic puts
    the `type` of a tagged union (`channels.x.slack.url`) in the location; the file has
    no such level, so it is dropped."""
    node: Any = root
    parts: list[str] = []
    for part in loc:
        tagged = {_tag(m): m for m in _models(node)}
        if len(tagged) > 1 and part in tagged:
            node = tagged[part]
            continue
        parts.append(str(part))
        node = _child(node, part)
    return parts, node


def _child(node: Any, part: int | str) -> Any:
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        for name, field in node.model_fields.items():
            if part in (name, field.alias):
                return field.annotation
        return None
    args = typing.get_args(node)
    if typing.get_origin(node) is list and args:
        return args[0]
    if typing.get_origin(node) is dict and len(args) == 2:
        return args[1]
    return None


def _unwrap(node: Any) -> Any:
    """`X` of `Annotated[X, ...]` and of `X | None`."""
    while True:
        origin, args = typing.get_origin(node), typing.get_args(node)
        if origin is Annotated:
            node = args[0]
        elif origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
            node = next(a for a in args if a is not type(None))
        else:
            return node


def _models(node: Any) -> list[type[BaseModel]]:
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return [node]
    if typing.get_origin(node) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(node) for m in _models(a)]
    return []


def _tag(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    args = typing.get_args(field.annotation) if field else ()
    return args[0] if args else None


def _keys(model: type[BaseModel]) -> list[str]:
    fields = [field.alias or name for name, field in model.model_fields.items()]
    return [*fields, *secret_file_keys(model)]
