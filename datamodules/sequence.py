"""Sequences: tasks in order, each a vocabulary with an adapt split and an eval split, defined by YAML files.

A sequence YAML (``tasks/<name>.yaml``)::

    name: synth
    description: ...
    defaults: {proposals: {kind: superpixel}}     # optional run-config defaults for this sequence
    tasks:
      - name: park
        format: synth                             # a registered reader
        root: "{cache}/synth-v1/park"             # relative to DATA_ROOT; {cache} = the suite's cache dir
        vocabulary: vocab/synth-park.txt          # relative to the YAML file
        adapt: {split: train, limit: 100}         # limit optional
        eval: {split: val}
        options: {scene_seed: 1}                  # passed to the reader
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules.contract import DataError, validate_sample
from datamodules.paths import expand_root
from datamodules.registry import get_reader
from datamodules.vocabulary import Vocabulary

TASKS_DIR = Path(os.environ.get("BENCH_TASKS", Path(__file__).resolve().parents[1] / "tasks"))


@dataclass(frozen=True)
class SplitSpec:
    split: str
    limit: int = 0  # 0 = all


@dataclass
class TaskSpec:
    name: str
    format: str
    root: str
    vocabulary: Vocabulary
    adapt: SplitSpec
    eval: SplitSpec
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SequenceSpec:
    name: str
    path: Path
    tasks: list[TaskSpec]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


def list_sequences(tasks_dir: Path = TASKS_DIR) -> list[str]:
    return sorted(p.stem for p in tasks_dir.glob("*.yaml"))


def _field(mapping: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in mapping:
        raise DataError(f"{where}: missing field {key!r}")
    if not isinstance(mapping[key], kind):
        raise DataError(f"{where}: field {key!r} must be {kind}, got {mapping[key]!r}")
    return mapping[key]


def _split(value: Any, where: str) -> SplitSpec:
    if isinstance(value, str):
        return SplitSpec(value)
    if not isinstance(value, dict) or "split" not in value:
        raise DataError(f"{where}: expected a split name or {{split: NAME, limit: N}}, got {value!r}")
    return SplitSpec(str(value["split"]), int(value.get("limit", 0) or 0))


def load_sequence(name_or_path: str, tasks_dir: Path = TASKS_DIR) -> SequenceSpec:
    """Find a sequence by name in ``tasks_dir`` or by path to a YAML file, and parse it."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = tasks_dir / f"{name_or_path}.yaml"
    if not path.is_file():
        raise DataError(f"unknown sequence {name_or_path!r}: no file {path}; known sequences: "
                        f"{', '.join(list_sequences(tasks_dir)) or '(none)'}, or a path to a YAML file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with 'tasks'")
    tasks = []
    for i, t in enumerate(_field(doc, "tasks", str(path), list)):
        where = f"{path}: tasks[{i}]"
        if not isinstance(t, dict):
            raise DataError(f"{where}: expected a mapping")
        name = _field(t, "name", where)
        vocab = Vocabulary.from_file(path.parent / _field(t, "vocabulary", where), name=name)
        tasks.append(TaskSpec(name=name, format=_field(t, "format", where), root=_field(t, "root", where),
                              vocabulary=vocab, adapt=_split(_field(t, "adapt", where, (str, dict)), where),
                              eval=_split(_field(t, "eval", where, (str, dict)), where),
                              options=dict(t.get("options") or {})))
    if not tasks:
        raise DataError(f"{path}: field 'tasks' is empty; a sequence needs at least one task")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: task names must be unique, got {names}")
    return SequenceSpec(name=str(doc.get("name", path.stem)), path=path, tasks=tasks,
                        description=str(doc.get("description", "")), defaults=dict(doc.get("defaults") or {}))


class TaskDataset(torch.utils.data.Dataset):
    """One split of one task: a reader, with every sample checked against the contract as it enters."""

    def __init__(self, task: TaskSpec, split: SplitSpec, data_root: str | Path, limit: int = 0) -> None:
        self.task, self.vocabulary = task, task.vocabulary
        root = expand_root(task.root, data_root)
        reader_cls = get_reader(task.format)
        self.reader = reader_cls(root=root, split=split.split, vocabulary=task.vocabulary, **task.options)
        limits = [n for n in (split.limit, limit) if n]
        self.length = min([len(self.reader), *limits])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return validate_sample(self.reader[index], len(self.vocabulary))


def collate_samples(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep samples as a list: images differ in size, and resizing belongs to the model's transform."""
    return samples


def _lightning_datamodule_base() -> type:
    import lightning as L

    return L.LightningDataModule


class SequenceDataModule(_lightning_datamodule_base()):
    """Streams the tasks of a sequence in order. ``set_step(t)`` selects what the loaders serve:
    ``predict_dataloader`` = the adapt split of task t, ``test_dataloader`` = the eval splits of tasks 0..t."""

    def __init__(self, spec: SequenceSpec, data_root: str | Path = "data", batch_size: int = 8,
                 num_workers: int = 0, adapt_limit: int = 0, eval_limit: int = 0) -> None:
        super().__init__()
        self.spec, self.data_root = spec, data_root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.adapt_limit, self.eval_limit = adapt_limit, eval_limit
        self.step = 0

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.spec.tasks

    def set_step(self, step: int) -> None:
        self.step = step

    def adapt_dataset(self, t: int) -> TaskDataset:
        task = self.tasks[t]
        return TaskDataset(task, task.adapt, self.data_root, self.adapt_limit)

    def eval_dataset(self, t: int) -> TaskDataset:
        task = self.tasks[t]
        return TaskDataset(task, task.eval, self.data_root, self.eval_limit)

    def _loader(self, dataset: TaskDataset) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                           num_workers=self.num_workers, collate_fn=collate_samples)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.adapt_dataset(self.step))

    def test_dataloader(self) -> list[torch.utils.data.DataLoader]:
        return [self._loader(self.eval_dataset(j)) for j in range(self.step + 1)]
