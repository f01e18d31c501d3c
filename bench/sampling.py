"""Evaluation sharding for DDP that never counts a sample twice: :class:`ShardSampler` lives with the data
(:mod:`datamodules.sampling`, which the DataModule uses and which may not import the engine); this name stays for
the engine and its tests."""

from datamodules.sampling import ShardSampler

__all__ = ["ShardSampler"]
