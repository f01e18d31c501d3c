"""Evaluation sharding for DDP that never counts a sample twice.

torch's ``DistributedSampler`` pads the last round with repeated samples so every rank gets the same count;
for summed metrics that counts those samples twice. Here ranks may differ by one sample instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


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
