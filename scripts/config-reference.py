"""Print the configuration reference (markdown) from the pydantic models.

docs/configuration.md embeds this output between markers; tests/test_docs.py fails when
the two differ. Regenerate with:

    .venv/bin/python scripts/config-reference.py --write
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from watcher.config import Config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED REFERENCE -->"
END = "<!-- END GENERATED REFERENCE -->"


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models(arg))
    return found


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType) and all(_models(a) for a in args):
        tags = [m.model_fields["type"].annotation.__args__[0] for a in args for m in _models(a)]  # type: ignore[union-attr]
        return "object, by `type`: " + ", ".join(f"`{t}`" for t in tags)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (optional)" if type(None) in args else ""
        )
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "object"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return ""
    text = str(value.value if hasattr(value, "value") else value)
    return f"`{text}`" if text not in ("", "[]", "{}") else ""


def _rows(model: type[BaseModel], prefix: str, out: list[str], seen: set[str]) -> None:
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        annotation = field.annotation
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        out.append(f"| `{path}` | {_type_name(annotation)} | {_default(field)} | {description} |")
        origin = typing.get_origin(annotation)
        inner = typing.get_args(annotation)
        if origin is list and inner:
            child_prefix, children = f"{path}[]", _models(inner[0])
        elif origin is dict and len(inner) == 2:
            child_prefix, children = f"{path}.<name>", _models(inner[1])
        else:
            child_prefix, children = path, _models(annotation)
        for child in children:
            tag = child.model_fields.get("type")
            label = child_prefix
            if tag is not None and len(children) > 1:
                label = f"{child_prefix} (type {tag.annotation.__args__[0]})"  # type: ignore[union-attr]
            if label in seen:
                continue
            seen.add(label)
            _rows(child, label, out, seen)


def render() -> str:
    out = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    _rows(Config, "", out, set())
    return "\n".join(out) + "\n"


def main() -> int:
    table = render()
    if "--write" in sys.argv:
        text = DOC.read_text(encoding="utf-8")
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
