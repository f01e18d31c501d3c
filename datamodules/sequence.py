"""Sequences: tasks in order, each a vocabulary with an adapt split and an eval split, defined by YAML files.

``SEQ=`` takes a name (``tasks/<name>.yaml``) or the path of any YAML file, so a sequence over one's own data in a
supported format needs no code. A sequence YAML::

    name: ade-100-10                  # optional; default: the file name. One folder name (letters, digits,
                                      #   . _ + -), since it names the run folder
    description: ...                  # optional, shown by `bench list`
    defaults: {proposals: {kind: superpixel}}   # optional run-config defaults for this sequence
    tasks:                            # in the order they are adapted to
      - name: ade-base                # unique within the sequence
        about: "the first 100 classes"  # optional: what the task tests (shown by the report)
        format: ade20k                # a registered reader (see below)
        root: ADEChallengeData2016    # relative to DATA_ROOT (or absolute); "{cache}" = the suite's cache dir
        vocabulary: vocab/ade150.txt  # the dataset's full label space, relative to the YAML file:
                                      #   one class per line, "name<TAB>thing|stuff", in label order
        num_classes: 150              # optional: the vocabulary file must have exactly this many classes
        classes: {start: 0, stop: 100}   # optional class subset of the vocabulary (see below)
        adapt: {split: train, limit: 100}  # a split name, or {split, limit}; limit 0 / absent = all
        eval: val
        options: {}                   # passed to the reader (folder templates, variant, ...)

``classes`` selects the task's label space from the dataset vocabulary: ``{start: i, stop: j}`` (the slice
``[i, j)`` in vocabulary order), a list of class names, or a list of vocabulary indices. The task's local class
ids follow that order; pixels of every other class become ignore (-1) and their segments are dropped. Without
``classes`` the task uses the whole vocabulary. Every image of the split is still read (an image without any of
the task's classes yields an all-ignore sample, which adds nothing to the memory or to the metrics).

Formats: ``coco_panoptic``, ``synth``, ``ade20k``, ``ade20k_full``, ``pascal_context``, ``cityscapes``, ``lvis``,
``voc``, ``mapillary``, ``hf``, ``hf_parquet`` and the generic ``label_map`` (images + single-channel label images
paired by name); each reader's module docstring gives the layout it expects and its options.
``python -m bench data check SEQ=...`` reports what is present and missing for every task, the layout found, and
reads the first sample of every split.

No other field is accepted: a misspelt one (``clases:``) is an error with a suggestion, not a silent default,
and every error names the file, the task and the field (:mod:`datamodules.sequence_schema`). A run's folder
is named by a hash of the config and of the sequence's content (:meth:`SequenceSpec.content_hash`), so editing
a task's classes, splits, limits, options or vocabulary, or adding a task, starts another run.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules.contract import IGNORE_INDEX, DataError, validate_sample
from datamodules.paths import expand_root
from datamodules.registry import Reader, get_reader
from datamodules.sequence_schema import TaskModel, parse_sequence, safe_folder_name
from datamodules.vocabulary import Vocabulary

TASKS_DIR = Path(os.environ.get("BENCH_TASKS", Path(__file__).resolve().parents[1] / "tasks"))


@dataclass(frozen=True)
class SplitSpec:
    split: str
    limit: int = 0  # 0 = all


@dataclass
class TaskSpec:
    """One task. ``vocabulary`` is the task's label space (local class ids); ``dataset_vocabulary`` is the
    full vocabulary its reader labels with, and ``class_ids[i]`` the dataset index of local class ``i``
    (None when the task uses the whole vocabulary)."""

    name: str
    format: str
    root: str
    vocabulary: Vocabulary
    adapt: SplitSpec
    eval: SplitSpec
    options: dict[str, Any] = field(default_factory=dict)
    dataset_vocabulary: Vocabulary | None = None
    class_ids: tuple[int, ...] | None = None
    inference: dict[str, Any] = field(default_factory=dict)  # the task's own inference settings (run config keys)

    @property
    def reader_vocabulary(self) -> Vocabulary:
        return self.dataset_vocabulary or self.vocabulary

    def content(self) -> dict[str, str]:
        """What decides this task's data and labels, one short string per field: the values as written in the
        YAML (``root`` unexpanded, so the same on every machine) or a digest (the vocabulary's classes and
        thing/stuff flags in order, the class subset, long options). ``about`` and the name are left out."""
        vocab = self.reader_vocabulary
        options = json.dumps(self.options, sort_keys=True, default=repr)
        return {"format": self.format, "root": self.root, "vocabulary": _digest([vocab.classes, vocab.is_thing]),
                "classes": "all" if self.class_ids is None else _digest(self.class_ids),
                "adapt": _split_text(self.adapt), "eval": _split_text(self.eval),
                "options": options if len(options) <= 80 else _digest(options),
                **({"inference": json.dumps(self.inference, sort_keys=True)} if self.inference else {})}


@dataclass
class SequenceSpec:
    name: str
    path: Path
    tasks: list[TaskSpec]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    protocol: str = "cross-dataset"  # or "class-incremental" (datamodules.protocols)

    def content(self) -> dict[str, dict[str, str]]:
        """Task name -> :meth:`TaskSpec.content`, in sequence order."""
        return {t.name: t.content() for t in self.tasks}

    def content_hash(self) -> str:
        """A digest of the tasks, in order, and of everything that decides their data and labels; a run made
        from other content is another run. ``name``, ``description``, ``about`` and ``defaults`` (which reach
        the run config and its own hash) are not part of it; the protocol is, when it is not the default."""
        items: list[Any] = list(self.content().items())
        if self.protocol != "cross-dataset":
            items.append(["protocol", self.protocol])
        return _digest(items)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _split_text(split: SplitSpec) -> str:
    return f"{split.split} (limit {split.limit})" if split.limit else split.split


def list_sequences(tasks_dir: Path = TASKS_DIR) -> list[str]:
    return sorted(p.stem for p in tasks_dir.glob("*.yaml"))


def _class_subset(value: Any, vocab: Vocabulary, vocab_path: Path, where: str) -> tuple[int, ...] | None:
    """Dataset indices of a task's classes from its ``classes`` field (None: the whole vocabulary)."""
    if value is None:
        return None
    n = len(vocab)
    if isinstance(value, dict):
        if set(value) - {"start", "stop"}:
            raise DataError(f"{where}: a slice is {{start: i, stop: j}}, got keys {sorted(value)}")
        start, stop = value.get("start", 0), value.get("stop", n)
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= n):
            raise DataError(f"{where}: slice [{start}, {stop}) must satisfy 0 <= start < stop <= {n} "
                            f"(the vocabulary has {n} classes)")
        return tuple(range(start, stop))
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        unknown = [v for v in value if v not in vocab.classes]
        if unknown:
            near = difflib.get_close_matches(unknown[0], vocab.classes, n=1, cutoff=0.6)
            raise DataError(f"{where}: class {unknown[0]!r} is not in the vocabulary file {vocab_path} "
                            f"({n} classes)" + (f"; did you mean {near[0]!r}?" if near else ""))
        ids = tuple(vocab.index(v) for v in value)
    elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        bad = [v for v in value if not 0 <= v < n]
        if bad:
            raise DataError(f"{where}: class index {bad[0]} is outside 0..{n - 1}")
        ids = tuple(value)
    else:
        raise DataError(f"{where}: expected {{start: i, stop: j}}, a list of class names or a list of class "
                        f"indices, got {value!r}")
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: a class is listed twice")
    return ids


def load_sequence(name_or_path: str, tasks_dir: Path = TASKS_DIR) -> SequenceSpec:
    """Find a sequence by name in ``tasks_dir`` or by path to a YAML file, parse it and check every field
    (:mod:`datamodules.sequence_schema`); a problem raises :class:`DataError` naming the file, task and field."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = tasks_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise DataError(f"unknown sequence {name_or_path!r}: no file {path}; known sequences: "
                        f"{', '.join(list_sequences(tasks_dir)) or '(none)'}, or a path to a YAML file")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    seq, models = parse_sequence(doc, path)
    tasks = [_task(m, path) for m in models]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: task names must be unique, got {names}")
    spec = SequenceSpec(name=seq.name or safe_folder_name(path.stem), path=path, tasks=tasks,
                        description=seq.description, defaults=dict(seq.defaults or {}), protocol=seq.protocol)
    if spec.protocol == "class-incremental":
        check_class_incremental(spec)
    return spec


_SAME_DATASET = ("format", "root", "options")


def check_class_incremental(spec: SequenceSpec) -> None:
    """Every task on the same dataset, eval split and vocabulary file, each a class subset, no class twice."""
    first = spec.tasks[0]
    seen: dict[int, str] = {}
    for task in spec.tasks:
        where = f"{spec.path}: task {task.name!r}"
        for name in _SAME_DATASET:
            if getattr(task, name) != getattr(first, name):
                raise DataError(f"{where}: field {name!r} differs from task {first.name!r}; a class-incremental "
                                "sequence has one dataset, every task a class subset of it")
        vocab, first_vocab = task.reader_vocabulary, first.reader_vocabulary
        if task.eval.split != first.eval.split or (vocab.classes, vocab.is_thing) != (first_vocab.classes,
                                                                                    first_vocab.is_thing):
            raise DataError(f"{where}: eval split or vocabulary differs from task {first.name!r}; a "
                            "class-incremental sequence evaluates every step on one eval split")
        if task.class_ids is None:
            raise DataError(f"{where}: a class-incremental task needs its 'classes' (the step's new classes)")
        for c in task.class_ids:
            if c in seen:
                raise DataError(f"{where}: class {task.reader_vocabulary.classes[c]!r} was already new in task "
                                f"{seen[c]!r}; the steps of a class-incremental sequence are disjoint")
            seen[c] = task.name


def _task(m: TaskModel, path: Path) -> TaskSpec:
    where = f"{path}: task {m.name!r}"
    vocab_path = path.parent / m.vocabulary
    try:
        full = Vocabulary.from_file(vocab_path, name=m.name)
    except DataError as e:
        raise DataError(f"{where}: field 'vocabulary': {e}") from e
    if m.num_classes is not None and len(full) != m.num_classes:
        raise DataError(f"{vocab_path}: {len(full)} classes, but {where} expects num_classes: "
                        f"{m.num_classes}; the vocabulary file is incomplete or the wrong one")
    class_ids = _class_subset(m.classes, full, vocab_path, f"{where}: field 'classes'")
    vocab = full if class_ids is None else full.subset([full.classes[i] for i in class_ids], name=m.name)
    return TaskSpec(name=m.name, format=m.format, root=m.root, vocabulary=vocab,
                    adapt=SplitSpec(m.adapt.split, m.adapt.limit or 0), eval=SplitSpec(m.eval.split, m.eval.limit or 0),
                    options=dict(m.options or {}), dataset_vocabulary=None if class_ids is None else full,
                    class_ids=class_ids, inference=dict(m.inference or {}))


def content_changes(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> list[str]:
    """What differs between two :meth:`SequenceSpec.content` summaries, in words (empty: the same content)."""
    changes = [f"task {name!r} {'added' if name in after else 'removed'}"
               for name in [*before, *after] if (name in before) != (name in after)]
    for name in (n for n in after if n in before):
        fields = [k for k in sorted({*before[name], *after[name]}) if before[name].get(k) != after[name].get(k)]
        if fields:
            changes.append(f"task {name!r}: {', '.join(fields)} changed")
    shared = [n for n in before if n in after]
    if shared != [n for n in after if n in before]:
        changes.append(f"task order {' -> '.join(before)} became {' -> '.join(after)}")
    return changes


def restrict_sample(sample: dict[str, Any], class_ids: tuple[int, ...], num_dataset_classes: int) -> dict[str, Any]:
    """A sample labelled with the dataset vocabulary, relabelled to the class subset ``class_ids``.

    Pixels of other classes become ignore; their segments are dropped and the rest renumbered in order.
    """
    lut = torch.full((num_dataset_classes,), IGNORE_INDEX, dtype=torch.int64)
    lut[torch.tensor(class_ids, dtype=torch.int64)] = torch.arange(len(class_ids))
    semantic = sample["semantic"]
    out = torch.where(semantic == IGNORE_INDEX, IGNORE_INDEX, lut[semantic.clamp(0, num_dataset_classes - 1)])
    sample = {**sample, "semantic": out}
    if sample.get("segments") is not None:
        seg_classes = lut[sample["segment_classes"]]
        keep = seg_classes != IGNORE_INDEX
        renumber = torch.zeros(len(keep) + 1, dtype=torch.int64)
        renumber[1:][keep] = torch.arange(1, int(keep.sum()) + 1)
        sample.update(segments=renumber[sample["segments"]], segment_classes=seg_classes[keep],
                      segment_iscrowd=sample["segment_iscrowd"][keep])
    return sample


ReaderKey = tuple[Any, ...]


def open_reader(task: TaskSpec, split: SplitSpec, data_root: str | Path,
                cache: dict[ReaderKey, Reader] | None = None) -> Reader:
    """The reader of one split of a task's dataset.

    With ``cache``, tasks that read the same dataset split (same format, root, split, dataset vocabulary and
    options: the steps of a class-incremental sequence) share one reader, so its annotation json is parsed once.
    """
    root = expand_root(task.root, data_root)
    vocab = task.reader_vocabulary
    # The vocabulary's name (the task's) is left out: readers label by class, whatever the task is called.
    key = (task.format, str(root), split.split, vocab.classes, vocab.is_thing,
           json.dumps(task.options, sort_keys=True, default=repr))
    if cache is not None and key in cache:
        return cache[key]
    reader = get_reader(task.format)(root=root, split=split.split, vocabulary=vocab, **task.options)
    if cache is not None:
        cache[key] = reader
    return reader


class TaskDataset(torch.utils.data.Dataset):
    """One split of one task: a reader, with every sample checked against the contract as it enters.

    The reader labels with the dataset vocabulary; for a class subset, samples are relabelled to the task's.
    ``readers``: a cache shared with other datasets (see :func:`open_reader`).
    """

    def __init__(self, task: TaskSpec, split: SplitSpec, data_root: str | Path, limit: int = 0,
                 readers: dict[ReaderKey, Reader] | None = None) -> None:
        self.task, self.vocabulary = task, task.vocabulary
        self.reader = open_reader(task, split, data_root, readers)
        self.panoptic = bool(getattr(self.reader, "panoptic", False))
        limits = [n for n in (split.limit, limit) if n]
        self.length = min([len(self.reader), *limits])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.reader[index]
        if self.task.class_ids is not None:
            n = len(self.task.reader_vocabulary)
            sample = restrict_sample(validate_sample(sample, n), self.task.class_ids, n)
        return validate_sample(sample, len(self.vocabulary))


def collate_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep samples as a list: images differ in size, and resizing belongs to the model's transform."""
    return samples

