"""check-config never crashes: generated mutations of config/example.yaml (keys deleted or
misspelled, values replaced by other types, unicode, huge numbers, nested junk; duplicate
keys, binary bytes, truncation in the text) go through the function every command loads
the configuration with, which returns a Config or raises ConfigError and nothing else.

Derandomized with explicit limits, so CI runs the same few hundred examples every time."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_config import EXAMPLE_ENV
from watcher.cli import check_config
from watcher.config import Config, ConfigError

EXAMPLE = (Path(__file__).parent.parent / "config" / "example.yaml").read_text(encoding="utf-8")
TREE = yaml.safe_load(EXAMPLE)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["${UNSET}", "${X:-}", "~", "/", ".", "0", "2.1", "whsec_", "{{ x }}"])
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


PATHS = [p for p in _paths(TREE) if p]


def _mutate(tree: Any, path: tuple[Any, ...], action: str, junk: Any) -> Any:
    """`tree` with the node at `path` deleted, replaced, or its key renamed."""
    if not path:
        return junk
    head, *rest = path
    if isinstance(tree, dict) and head in tree:
        out = dict(tree)
        if rest:
            out[head] = _mutate(tree[head], tuple(rest), action, junk)
        elif action == "delete":
            del out[head]
        elif action == "rename":
            out[str(junk)[:20]] = out.pop(head)
        else:
            out[head] = junk
        return out
    if isinstance(tree, list) and isinstance(head, int) and head < len(tree):
        items = list(tree)
        if rest:
            items[head] = _mutate(tree[head], tuple(rest), action, junk)
        elif action == "delete":
            del items[head]
        else:
            items[head] = junk
        return items
    return tree


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    tree = TREE
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        action = draw(st.sampled_from(["delete", "replace", "rename"]))
        tree = _mutate(tree, path, action, draw(JUNK))
    text = yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)
    data = text.encode("utf-8")
    lines = data.splitlines(keepends=True)
    kind = draw(st.sampled_from(["as-is", "duplicate-line", "bytes", "truncate", "unicode"]))
    if kind == "duplicate-line" and lines:
        # Repeats a `key: value` line: a duplicate key at that line's depth.
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        lines.insert(i, lines[i])
        data = b"".join(lines)
    elif kind == "bytes":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    elif kind == "truncate":
        data = data[: draw(st.integers(min_value=0, max_value=len(data)))]
    elif kind == "unicode":
        at = draw(st.integers(min_value=0, max_value=len(text)))
        data = (text[:at] + draw(st.text(min_size=1, max_size=8)) + text[at:]).encode(
            "utf-8", "surrogatepass"
        )
    return data


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Module-scoped: hypothesis runs every example inside one test call.
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def test_the_unmutated_example_is_valid(workdir: Path) -> None:
    path = workdir / "example.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert isinstance(check_config(path, env=EXAMPLE_ENV), Config)


@settings(
    max_examples=300,
    deadline=2000,  # ms per example; one takes a few
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(document=documents())
def test_check_config_returns_a_config_or_raises_config_error(
    workdir: Path, document: bytes
) -> None:
    path = workdir / "config.yaml"
    path.write_bytes(document)
    errors: list[str] = []
    try:
        result: Config | None = check_config(path, env=EXAMPLE_ENV)
    except ConfigError as exc:
        result, errors = None, exc.errors
    # Anything else escaped above and fails the test.
    if result is None:
        # One line per problem, as check-config prints them.
        assert errors
        assert all(isinstance(e, str) and e and "\n" not in e for e in errors)
    else:
        assert isinstance(result, Config)
