"""Reading annotation json files with errors that name the file and say what was expected."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from datamodules.contract import DataError

T = TypeVar("T")


def read_json(path: Path, what: str, layout: str | None = None) -> Any:
    """The parsed json value at ``path`` (any type); ``layout``, when given, replaces ``expected {what}`` in the
    message for a missing file."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file missing; {layout or f'expected {what}'}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}); "
                        "the file may be truncated") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation file ({e})") from e


def load_json(path: Path, lists: Sequence[str], what: str, layout: str | None = None) -> dict[str, Any]:
    """The parsed json object at ``path``; each key in ``lists`` must hold a list."""
    doc = read_json(path, what, layout)
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with {', '.join(map(repr, lists))} ({what})")
    for key in lists:
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: field {key!r} missing or not a list; expected {what}")
    return doc


def index_entries(path: Path, index: Callable[[], list[T]], what: str, limit: int | None = None,
                  errors: tuple[type[Exception], ...] = (KeyError, TypeError)) -> list[T]:
    """``index()``, the records built from the entries of the json at ``path``, cut to the first ``limit``
    (None or 0 = all); one of ``errors`` met on the way, a missing or wrong field, becomes a :class:`DataError`
    naming the file and saying what was expected."""
    try:
        records = index()
    except DataError:  # already names the file and the field (DataError is a ValueError too)
        raise
    except errors as e:
        raise DataError(f"{path}: malformed entry (missing or wrong field {e}); expected {what}") from e
    return records[:limit] if limit else records
