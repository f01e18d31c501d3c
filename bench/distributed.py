"""The few facts about multi-process runs that the run flow needs, without importing Lightning.

A run with ``devices=n > 1`` is started once (``python -m bench run DEVICES=n``); Lightning's DDP launcher starts
the other ``n - 1`` processes by running the same command with ``LOCAL_RANK`` set, at the first Trainer call. Every
process runs the whole flow; only rank 0 writes files, logs and prints. The rank and world size are read in
:mod:`datamodules.sampling` (the data layer shards with them and may not import the engine).
"""

from __future__ import annotations

from typing import Any

from datamodules.sampling import process_group_initialized, rank, world_size

__all__ = ["all_gather", "barrier", "broadcast", "gather_in_shard_order", "interleave", "is_rank_zero", "rank",
           "world_size"]


def is_rank_zero() -> bool:
    return rank() == 0


def gather_in_shard_order(items: list[Any]) -> list[Any]:
    """Every rank's ``items`` on every rank, in the order of one process reading the whole dataset.

    Rank ``r`` of ``W`` holds, in order, the samples ``r, r + W, r + 2W, ...``
    (:class:`datamodules.sampling.ShardSampler`), so its k-th item is sample ``r + kW``; interleaving the ranks'
    lists restores ``0, 1, 2, ...``. With one process the list comes back unchanged.
    """
    return interleave(all_gather(list(items)))


def interleave(parts: list[list[Any]]) -> list[Any]:
    """``parts[r][k]`` is sample ``r + k·len(parts)``; returns the samples in order."""
    longest = max((len(p) for p in parts), default=0)
    return [p[k] for k in range(longest) for p in parts if k < len(p)]


def barrier() -> None:
    if process_group_initialized():
        import torch.distributed as dist

        dist.barrier()


def all_gather(item: Any) -> list[Any]:
    """Every rank's ``item`` (any picklable object), indexed by rank, on every rank; ``[item]`` with one process.

    A collective: every rank must call it, the same number of times and in the same order as its other
    collectives (the sharded memory, :mod:`bench.memory.sharded`, is built on it)."""
    if world_size() == 1:
        return [item]
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, item)
    return parts


def broadcast(item: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``item`` on every rank (what the others pass is ignored); a collective like :func:`all_gather`."""
    if world_size() == 1:
        return item
    import torch.distributed as dist

    box = [item if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
