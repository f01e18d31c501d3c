"""The Lightning DataModule of a sequence, apart from :mod:`datamodules.sequence` so that only a run imports
Lightning (underscored: the reader registry's discovery skips it). Import it as
``from datamodules import SequenceDataModule`` (loaded on first use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.registry import Reader
from datamodules.sampling import shard_sampler
from datamodules.sequence import ReaderKey, SequenceSpec, TaskDataset, TaskSpec, collate_samples

Transform = Callable[[dict[str, Any]], dict[str, Any]]


class Transformed(torch.utils.data.Dataset):
    """A dataset whose samples pass through ``transform`` where they are read (in the DataLoader's workers)."""

    def __init__(self, dataset: TaskDataset, transform: Transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.transform(self.dataset[index])


class SequenceDataModule(L.LightningDataModule):
    """Streams the tasks of a sequence in order. ``set_step(t)`` selects what the loaders serve:
    ``predict_dataloader`` = the adapt split of task t, ``test_dataloader`` = the eval splits of tasks 0..t.

    Each task's datasets are built once, on first use, and kept for the run: steps after the first read the
    same ones again; tasks on the same dataset split share its reader (one json parse per run).
    """

    def __init__(self, spec: SequenceSpec, data_root: str | Path = "data", batch_size: int = 8,
                 num_workers: int = 0, adapt_limit: int = 0, eval_limit: int = 0,
                 readers: dict[ReaderKey, Reader] | None = None, eval_transform: Transform | None = None,
                 pin_memory: bool = False) -> None:
        """``readers``: a reader cache to share (see :func:`datamodules.sequence.open_reader`), e.g. the one a
        preflight check filled, so no annotation file is parsed twice. ``eval_transform``: applied to every eval
        sample where it is read, in the loader's workers (a run adds CPU proposals there); a top-level callable
        (a class or ``functools.partial``, not a lambda) so that spawned workers can unpickle it.
        ``pin_memory``: page-locked batches, for a run on GPUs."""
        super().__init__()
        self.spec, self.data_root = spec, data_root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_transform, self.pin_memory = eval_transform, pin_memory
        # Applied to every adapt sample in the workers; a method sets it around its adapt pass (knn: the memory
        # embedder's inputs, resized and normalised there: bench.inputs.PreparedInputs).
        self.adapt_transform: Transform | None = None
        self.adapt_limit, self.eval_limit = adapt_limit, eval_limit
        self.step = 0
        self.eval_tasks: list[TaskSpec] | None = None  # what test_dataloader serves; None = tasks 0..step
        self._datasets: dict[tuple[str, str], TaskDataset] = {}
        self._readers: dict[ReaderKey, Reader] = {} if readers is None else readers

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.spec.tasks

    def set_step(self, step: int, eval_tasks: list[TaskSpec] | None = None) -> None:
        """Serve task ``step``'s adapt split, and the eval splits of ``eval_tasks`` (default: tasks 0..step; a
        run may ask for every task, or for the evaluation task of a class-incremental step)."""
        self.step, self.eval_tasks = step, eval_tasks

    def evaluated(self) -> list[TaskSpec]:
        """The tasks whose eval splits ``test_dataloader`` serves, in loader order."""
        return self.tasks[: self.step + 1] if self.eval_tasks is None else list(self.eval_tasks)

    def _dataset(self, task: TaskSpec, role: str) -> TaskDataset:
        if (task.name, role) not in self._datasets:
            split, limit = (task.adapt, self.adapt_limit) if role == "adapt" else (task.eval, self.eval_limit)
            self._datasets[task.name, role] = TaskDataset(task, split, self.data_root, limit, self._readers)
        return self._datasets[task.name, role]

    def adapt_dataset(self, t: int) -> TaskDataset:
        return self._dataset(self.tasks[t], "adapt")

    def eval_dataset(self, t: int | TaskSpec) -> TaskDataset:
        """The eval split of task ``t`` (an index into the sequence, or a task such as a class-incremental
        step's evaluation task)."""
        return self._dataset(self.tasks[t] if isinstance(t, int) else t, "eval")

    def _loader(self, dataset: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
        # Under DDP each rank reads every W-th sample, no padding (so no sample is counted twice); the Trainer is
        # built with use_distributed_sampler=False so Lightning does not put its padding sampler in front.
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                           sampler=shard_sampler(len(dataset)), num_workers=self.num_workers,
                                           collate_fn=collate_samples, pin_memory=self.pin_memory)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        dataset: torch.utils.data.Dataset = self.adapt_dataset(self.step)
        if self.adapt_transform is not None:
            dataset = Transformed(dataset, self.adapt_transform)
        return self._loader(dataset)

    def test_dataloader(self) -> list[torch.utils.data.DataLoader]:
        datasets: list[torch.utils.data.Dataset] = [self.eval_dataset(task) for task in self.evaluated()]
        if self.eval_transform is not None:
            datasets = [Transformed(d, self.eval_transform) for d in datasets]
        return [self._loader(d) for d in datasets]
