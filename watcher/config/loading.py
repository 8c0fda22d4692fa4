"""Reading a configuration: bytes to UTF-8 text, YAML (safe, no duplicate keys, bounded),
`${ENV_VAR}` references, then validation into `Config`. Whatever the input, the only
exception is ConfigError."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from watcher.config.errors import ConfigError, describe
from watcher.config.model import Config

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FILE_LIMIT = 1024 * 1024  # a configuration is a few KiB; this is the wrong file
# Values in the file, aliases counted at every use: `&a [*b, *b, ...]` nests
# exponentially (a "billion laughs") and would hang the walks below.
_NODE_LIMIT = 100_000


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping, at any depth: plain
    YAML lets the last one silently win (a second `slack:` channel replacing the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults`: keys given explicitly override merged ones
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} (first on line {first + 1})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _yaml_error(exc: Exception, text: str) -> str:
    # Position and problem only: the snippet PyYAML adds would print a line of the file,
    # which may hold a secret.
    if isinstance(exc, yaml.reader.ReaderError):
        line = text[: exc.position].count("\n") + 1
        return (
            f"not valid YAML: line {line}: character U+{exc.character:04X} is not allowed "
            "(write control characters as escapes in a double-quoted string)"
        )
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"not valid YAML: {where}: {exc.problem}{context}"
    if isinstance(exc, RecursionError):
        return "not valid YAML: nested too deeply"
    return f"not valid YAML: {exc}"


def _too_big(node: Any) -> bool:
    """Whether the document has more than _NODE_LIMIT values once its aliases are
    expanded (or is recursive: `&a [*a]`)."""
    stack, count = [node], 0
    while stack:
        count += 1
        if count > _NODE_LIMIT:
            return True
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def substitute_env(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Replace `${NAME}` (or `${NAME:-default}`) in every string value with the
    environment's value. Done after parsing, so a value can never inject YAML; an unset
    variable without a default is an error naming the variable and the field."""
    if isinstance(node, list):
        return [substitute_env(v, env, f"{path}.{i}", errors) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {
            k: substitute_env(v, env, f"{path}.{k}" if path else str(k), errors)
            for k, v in node.items()
        }
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        errors.append(f"{path or '(top level)'}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(replace, node)


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            [
                f"not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line} (a binary file, "
                "or text in another encoding such as Latin-1: save it as UTF-8)"
            ]
        ) from None


def parse_config(text: str | bytes, *, env: Mapping[str, str], base: Path = Path(".")) -> Config:
    """The configuration in `text`; relative paths in it are resolved against `base` (the
    config file's directory). Raises ConfigError, and nothing else, for any input."""
    if isinstance(text, bytes):
        text = _decode(text)
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    # Constructors raise ValueError too: `2026-02-30` (a date), a 5000-digit int.
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        raise ConfigError([_yaml_error(exc, text)]) from None
    if raw is None:
        raise ConfigError(["the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a mapping of top-level keys"])
    if _too_big(raw):
        raise ConfigError([f"more than {_NODE_LIMIT} values (aliases expanded): not a config"])
    errors: list[str] = []
    raw = substitute_env(raw, env, "", errors)
    if errors:
        raise ConfigError(errors)
    try:
        # The environment too: a Databricks CLI profile (`auth.type: profile`) is found
        # through DATABRICKS_CONFIG_FILE and DATABRICKS_CONFIG_PROFILE, as the CLI finds it.
        return Config.model_validate(raw, context={"base": base, "env": env})
    except ValidationError as exc:
        raise ConfigError(describe(exc, Config)) from None
    except RecursionError:
        raise ConfigError(["nested too deeply"]) from None


def load_config(path: Path, *, env: Mapping[str, str] | None = None) -> Config:
    try:
        with path.open("rb") as file:
            data = file.read(_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or type(exc).__name__}"]) from None
    if len(data) > _FILE_LIMIT:
        raise ConfigError([f"{path} is larger than {_FILE_LIMIT // 1024} KiB: not a config"])
    # Absolute, so messages name the file a relative `token_file: token` really means.
    base = path.parent.absolute()
    return parse_config(data, env=os.environ if env is None else env, base=base)
