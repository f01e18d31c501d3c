"""Reading annotation json files with errors that name the file and say what was expected."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.contract import DataError


def load_json(path: Path, lists: Sequence[str], what: str) -> dict[str, Any]:
    """The parsed json object at ``path``; each key in ``lists`` must hold a list."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file missing; expected {what}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}); "
                        "the file may be truncated") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation file ({e})") from e
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with {', '.join(map(repr, lists))} ({what})")
    for key in lists:
        if not isinstance(doc.get(key), list):
            raise DataError(f"{path}: field {key!r} missing or not a list; expected {what}")
    return doc
