"""The Lightning DataModule of a sequence, apart from :mod:`datamodules.sequence` so that only a run imports
Lightning (underscored: the reader registry's discovery skips it). Import it as
``from datamodules import SequenceDataModule`` (loaded on first use)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from datamodules.registry import Reader
from datamodules.sampling import shard_sampler
from datamodules.sequence import ReaderKey, SequenceSpec, TaskDataset, TaskSpec, collate_samples


class SequenceDataModule(L.LightningDataModule):
    """Streams the tasks of a sequence in order. ``set_step(t)`` selects what the loaders serve:
    ``predict_dataloader`` = the adapt split of task t, ``test_dataloader`` = the eval splits of tasks 0..t.

    Each task's datasets are built once, on first use, and kept for the run: steps after the first read the
    same ones again; tasks on the same dataset split share its reader (one json parse per run).
    """

    def __init__(self, spec: SequenceSpec, data_root: str | Path = "data", batch_size: int = 8,
                 num_workers: int = 0, adapt_limit: int = 0, eval_limit: int = 0,
                 readers: dict[ReaderKey, Reader] | None = None) -> None:
        """``readers``: a reader cache to share (see :func:`datamodules.sequence.open_reader`), e.g. the one a
        preflight check filled, so no annotation file is parsed twice."""
        super().__init__()
        self.spec, self.data_root = spec, data_root
        self.batch_size, self.num_workers = batch_size, num_workers
        self.adapt_limit, self.eval_limit = adapt_limit, eval_limit
        self.step = 0
        self._datasets: dict[tuple[int, str], TaskDataset] = {}
        self._readers: dict[ReaderKey, Reader] = {} if readers is None else readers

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.spec.tasks

    def set_step(self, step: int) -> None:
        self.step = step

    def _dataset(self, t: int, role: str) -> TaskDataset:
        if (t, role) not in self._datasets:
            task = self.tasks[t]
            split, limit = (task.adapt, self.adapt_limit) if role == "adapt" else (task.eval, self.eval_limit)
            self._datasets[t, role] = TaskDataset(task, split, self.data_root, limit, self._readers)
        return self._datasets[t, role]

    def adapt_dataset(self, t: int) -> TaskDataset:
        return self._dataset(t, "adapt")

    def eval_dataset(self, t: int) -> TaskDataset:
        return self._dataset(t, "eval")

    def _loader(self, dataset: TaskDataset) -> torch.utils.data.DataLoader:
        # Under DDP each rank reads every W-th sample, no padding (so no sample is counted twice); the Trainer is
        # built with use_distributed_sampler=False so Lightning does not put its padding sampler in front.
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                           sampler=shard_sampler(len(dataset)), num_workers=self.num_workers,
                                           collate_fn=collate_samples)

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.adapt_dataset(self.step))

    def test_dataloader(self) -> list[torch.utils.data.DataLoader]:
        return [self._loader(self.eval_dataset(j)) for j in range(self.step + 1)]
