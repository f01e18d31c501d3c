"""The run record (``record.json``) as one typed, versioned model that the run writes and every consumer reads.

:class:`RunRecord` is a pydantic model: fields are declared once here, a record is validated when it is read,
and read access by key (``record["matrix"]``, ``record.get("summary")``) stays available for scripts and for the
report code that also accepts plain dicts. Older records and reference files are brought to
:data:`RECORD_VERSION` by one chain of migrations (``MIGRATIONS[v]`` turns version ``v`` into ``v + 1``); a
record of an unknown newer version is refused with a message naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

RECORD_VERSION = 3

Cell = float | None


class KeyAccess:
    """Read a model's fields by key as well as by attribute (``record["tasks"]`` is ``record.tasks``)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in type(self).model_fields or key in (self.model_extra or {}))

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self else default

    def __iter__(self) -> Any:  # iterate keys, as a mapping does (pydantic's own iterates (key, value) pairs)
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        return [*type(self).model_fields, *(self.model_extra or {})]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]


class _Model(KeyAccess, BaseModel):
    # Extra keys are kept (a later issue's field read by an older consumer survives a round trip).
    model_config = ConfigDict(extra="allow")


class ModelInfo(_Model):
    name: str
    pretrained: str = ""
    identity: str | None = None
    weights: str = ""


class Summary(_Model):
    """Continual summary of one metric after the last finished step (percent; None where undefined)."""

    final_average: Cell = None
    average_incremental: Cell = None
    forgetting: list[Cell] = []
    mean_forgetting: Cell = None
    bwt: Cell = None
    forward_transfer: Cell = None  # with eval_future: mean over tasks j > 0 of R[j-1][j] - R0[j] (bench.continual)


class RunRecord(_Model):
    record_version: int = RECORD_VERSION
    sequence: str
    method: str
    model: ModelInfo
    base: str = "maskclip"  # the base segmenter kind (base.kind)
    proposer: str = ""  # the proposal generator kind (proposals.kind)
    embedder: str | None = None  # identity of the memory embedder (knn)
    tasks: list[str]
    vocabulary_sizes: list[int] = []
    steps_done: int = 0
    complete: bool = False
    matrix: dict[str, list[list[Cell]]]  # metric -> R[t][j]
    summary: dict[str, Summary] = {}
    per_class_iou: list[dict[str, dict[str, Cell]]] = []  # per step: task -> class -> IoU
    state_size: list[dict[str, int]] = []  # per step: what the method keeps
    config: dict[str, Any] = {}
    config_hash: str | None = None
    # The sequence content the run was made from (datamodules.sequence: SequenceSpec.content_hash, per task
    # TaskSpec.content), so that a run folder is never resumed with other classes, splits or tasks.
    sequence_hash: str | None = None
    sequence_content: dict[str, dict[str, str]] | None = None
    # Version 3: the continual protocols (bench.protocols).
    protocol: str = "cross-dataset"  # or "class-incremental" (the sequence YAML's protocol)
    # class-incremental: metric -> per step {"old", "new", "all"} of the one evaluation with every class seen so far
    cumulative: dict[str, list[dict[str, Cell]]] = {}
    initial: dict[str, list[Cell]] = {}  # eval_future: metric -> each task's score before step 1 (the base alone)
    memory_classes: list[list[str]] = []  # per step: the classes the method's memory holds entries of (knn)
    # per step, after its evaluation: what the memory's index is and did (knn; bench.memory.Memory.index_report:
    # kind, lists, for knn.index=auto its trainings and the probes tuned per vocabulary with the recall measured)
    memory_index: list[dict[str, Any]] = []
    intervals: dict[str, dict[str, list[float] | None]] = {}  # metric -> summary -> 95 % bootstrap [low, high]
    class_groups: dict[str, dict[str, list[str]]] = {}  # task -> group (LVIS rare / common / frequent) -> classes
    seed: int | None = None
    versions: dict[str, str] = {}
    git_commit: str | None = None
    timings: dict[str, Any] = {}

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
    """Version 2 names the base and the proposer at the top level (version 1 had one base, MaskCLIP); the first
    version-1 records kept memory entries per step as ``memory_size: [n, ...]`` before ``state_size``."""
    if "memory_size" in d and not d.get("state_size"):
        d["state_size"] = [{"memory_entries": int(n)} for n in d.pop("memory_size")]
    config = d.get("config") or {}
    d.setdefault("base", (config.get("base") or {}).get("kind", "maskclip"))
    d.setdefault("proposer", (config.get("proposals") or {}).get("kind", ""))
    return d


def _v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
    """Version 3 names the sequence's protocol; every sequence before it was scored as cross-dataset (each task
    with its own vocabulary), and none evaluated future tasks, kept intervals or memory classes."""
    d.setdefault("protocol", "cross-dataset")
    return d


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2, 2: _v2_to_v3}


def migrate(d: dict[str, Any], source: str = "record") -> dict[str, Any]:
    """Bring a record (or reference) dict to :data:`RECORD_VERSION`; files without a version are version 1."""
    version = int(d.get("record_version", 1))
    if version > RECORD_VERSION:
        raise ValueError(f"{source}: record_version {version} is newer than this suite reads ({RECORD_VERSION}); "
                         "update the suite")
    d = dict(d)
    while version < RECORD_VERSION:
        d = MIGRATIONS[version](d)
        version += 1
        d["record_version"] = version
    return d


def parse_record(d: dict[str, Any], source: str = "record") -> RunRecord:
    try:
        return RunRecord.model_validate(migrate(d, source))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{source}: field {where!r}: {first['msg']}") from None


def load_record(path: str | Path) -> RunRecord:
    """Read ``record.json`` (or a run folder holding one), migrated to the current version."""
    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read run record ({e})") from e
    return parse_record(data, str(path))


def load_reference(path: str | Path) -> dict[str, Any]:
    """A regression reference (a trimmed record, see :mod:`bench.regress`), migrated like a record but kept as a
    dict: it holds only some of the record's fields."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read reference ({e})") from e
    return migrate(data, str(path))
