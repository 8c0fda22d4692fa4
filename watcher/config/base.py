"""The base of every configuration model (`StrictModel`, `Section`) and the error a model
validator raises to report several problems, each at its own field (`FieldErrors`)."""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationInfo, model_validator

from watcher.config.fields import read_text_file

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
"""Names of workspaces, rules and channels: they end up in labels, event ids, outbox keys."""


class FieldErrors(ValueError):
    """Problems a model validator found, each at a path below the model (`sender`,
    `recipients.1`), so every problem is reported, each naming its own field."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {what}" for where, what in self.problems))


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or any(_is_secret(a) for a in typing.get_args(annotation))


@functools.cache
def secret_file_keys(model: type[BaseModel]) -> Mapping[str, str]:
    """`<key>_file` -> `<key>` for every secret field of `model` (a field that is itself
    named `<key>_file`, like `token_file`, is a path of its own and stays one)."""
    return {
        f"{name}_file": name
        for name, field in model.model_fields.items()
        if _is_secret(field.annotation) and f"{name}_file" not in model.model_fields
    }


class StrictModel(BaseModel):
    """Base of every configuration model: unknown keys are errors (a typo never silently
    does nothing), values are frozen and finite (`.inf` seconds overflow where they become
    milliseconds), and each secret `<key>` may instead be read from `<key>_file: PATH`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        keys = secret_file_keys(cls)
        if not isinstance(data, dict) or not keys.keys() & data.keys():
            return data
        data = dict(data)
        problems: list[tuple[str, str]] = []
        for key, target in keys.items():
            if key not in data:
                continue
            value = data.pop(key)
            if target in data:
                problems.append((key, f"set {target} or {key}, not both"))
            elif not isinstance(value, str):
                problems.append((key, "must be a file path"))
            else:
                try:
                    data[target] = read_text_file(Path(value), info)
                except ValueError as exc:
                    problems.append((key, str(exc)))
        if problems:
            raise FieldErrors(problems)
        return data


class Section(StrictModel):
    """Base of the watcher's own sections (the channels use StrictModel): a key the file
    spells differently from its field (`continue`, `continue_`) may be set by either name
    in code."""

    model_config = ConfigDict(populate_by_name=True)


def require_unique(names: list[str], what: str) -> None:
    """Raise naming every duplicate (a validator's error): `what` names the things."""
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"{what} must be unique: {', '.join(dupes)}")
