"""The fields a sequence YAML may hold (see :mod:`datamodules.sequence` for what they mean), checked strictly
where the file is read.

A misspelt field is refused, not ignored (``clases:`` would otherwise leave the task on its whole vocabulary),
and every error is one line naming the file, the task and the field, with a suggestion for a near miss.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from datamodules.contract import DataError

# A sequence name is a folder of the run tree: one path component, no separator, not "." or "..".
SAFE_NAME = re.compile(r"\w[\w.+-]*")

# What a field must be, in the user's words (pydantic's messages say it in its own).
EXPECTED = {
    "limit": "an integer >= 0 (how many images to use; 0 = all)",
    "num_classes": "an integer > 0 (how many classes the vocabulary file holds)",
    "adapt": "a split name or {split: NAME, limit: N}",
    "eval": "a split name or {split: NAME, limit: N}",
    "split": "a split name (a non-empty string)",
    "options": "a mapping of reader options",
    "inference": "a mapping of inference settings (mode, short_side, max_long_side, crop, stride)",
    "defaults": "a mapping of run settings",
    "tasks": "a list of tasks",
    "protocol": "cross-dataset (each task scored with its own vocabulary) or class-incremental (after each step, "
                "one evaluation with every class seen so far)",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SplitModel(_Strict):
    split: str = Field(min_length=1)
    limit: int | None = Field(default=0, ge=0)


class TaskModel(_Strict):
    name: str = Field(min_length=1)
    about: str = ""
    format: str = Field(min_length=1)
    root: str = Field(min_length=1)
    vocabulary: str = Field(min_length=1)
    num_classes: int | None = Field(default=None, gt=0)
    classes: Any = None  # checked against the vocabulary by datamodules.sequence, which has it
    adapt: SplitModel
    eval: SplitModel
    options: dict[str, Any] | None = None
    # this task's inference protocol (mode, short_side, ...), over the run's; checked by the run config
    inference: dict[str, Any] | None = None

    @field_validator("adapt", "eval", mode="before")
    @classmethod
    def _split_name(cls, value: Any) -> Any:
        return {"split": value} if isinstance(value, str) else value


class SequenceModel(_Strict):
    name: str | None = None
    description: str = ""
    protocol: Literal["cross-dataset", "class-incremental"] = "cross-dataset"
    defaults: dict[str, Any] | None = None
    tasks: list[Any]  # each checked as a TaskModel, so that its errors can name the task


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _one_line(model: type[BaseModel], e: ValidationError, where: str) -> DataError:
    """The first error of ``e`` as one line; an unknown field is reported before what it made go missing."""
    errors = e.errors()
    first = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in first["loc"]]
    inside = "" if len(loc) == 1 else f"field {'.'.join(loc[:-1])!r}: "
    if first["type"] == "extra_forbidden":
        allowed = _fields(SplitModel if loc[0] in ("adapt", "eval") and len(loc) > 1 else model)
        near = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return DataError(f"{where}: {inside}unknown field {loc[-1]!r}{hint}; allowed: {', '.join(allowed)}")
    if first["type"] == "missing":
        return DataError(f"{where}: {inside}missing field {loc[-1]!r}")
    expected = EXPECTED.get(loc[-1], first["msg"][0].lower() + first["msg"][1:])
    return DataError(f"{where}: field {'.'.join(loc)!r} must be {expected}, got {first['input']!r}")


def parse_sequence(doc: Any, path: Path) -> tuple[SequenceModel, list[TaskModel]]:
    """The checked top level and tasks of a loaded sequence YAML; :class:`DataError` on the first problem."""
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with 'tasks', got {type(doc).__name__}")
    try:
        seq = SequenceModel.model_validate(doc)
    except ValidationError as e:
        raise _one_line(SequenceModel, e, str(path)) from None
    if seq.name is not None and not SAFE_NAME.fullmatch(seq.name):
        raise DataError(f"{path}: field 'name' must be a safe folder name (letters, digits, '.', '_', '+', '-'; "
                        f"no path separator, not starting with '.'), got {seq.name!r}; it names the run folder")
    if not seq.tasks:
        raise DataError(f"{path}: field 'tasks' is empty; a sequence needs at least one task")
    tasks = []
    for i, raw in enumerate(seq.tasks):
        name = raw.get("name") if isinstance(raw, dict) else None
        where = f"{path}: task {name!r}" if isinstance(name, str) and name else f"{path}: tasks[{i}]"
        if not isinstance(raw, dict):
            raise DataError(f"{where}: expected a mapping of task fields, got {raw!r}")
        try:
            tasks.append(TaskModel.model_validate(raw))
        except ValidationError as e:
            raise _one_line(TaskModel, e, where) from None
    return seq, tasks


def safe_folder_name(name: str) -> str:
    """``name`` with every character that is unsafe in one path component replaced by '-'."""
    out = re.sub(r"[^\w.+-]", "-", name)
    return out if SAFE_NAME.fullmatch(out) else f"_{out}"
