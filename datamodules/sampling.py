"""Sharding a split over the processes of a run, without padding and without importing Lightning.

torch's ``DistributedSampler`` pads the last round with repeated samples so every rank gets the same count;
for summed metrics that counts those samples twice. Here ranks may differ by one sample instead. The rank and
world size come from the process group once it exists (the engine's :mod:`bench.distributed` builds on these).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from torch.utils.data import Sampler


def process_group_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank: from the process group once it exists, else from the launcher's environment (Lightning's and
    torchrun's set WORLD_SIZE next to the rank; a lone process under some other scheduler's RANK stays rank 0)."""
    if process_group_initialized():
        import torch.distributed as dist

        return dist.get_rank()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        for key in ("RANK", "LOCAL_RANK"):
            if os.environ.get(key, "").isdigit():
                return int(os.environ[key])
    return 0


def world_size() -> int:
    if process_group_initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return 1


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + num_replicas, rank + 2·num_replicas, ...`` below ``num_samples``.

    No padding and no shuffling: over all ranks every index in ``[0, num_samples)`` appears exactly once.
    """

    def __init__(self, num_samples: int, num_replicas: int, rank: int) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank

    def _indices(self) -> range:
        return range(self.rank, self.num_samples, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def shard_sampler(num_samples: int) -> ShardSampler | None:
    """This process's shard of ``num_samples`` under DDP; None in a single-process run."""
    return ShardSampler(num_samples, world_size(), rank()) if world_size() > 1 else None
