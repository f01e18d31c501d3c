"""Classifier heads: one image's proposals → a ``Q×C`` class distribution for a vocabulary.

A head is the part of a method that evaluation runs: :class:`ZeroShotHead` classifies pooled base features
against text embeddings, :class:`KnnHead` fuses that with retrieval from a memory, :class:`AdapterHead` passes
the pooled features through a trained adapter first. ``begin(vocabularies)`` prepares what a head needs per
vocabulary (text embeddings, memory lookup tables) before an evaluation pass; a head with an ``embedder`` is
given that backbone's dense features as well.
"""

from __future__ import annotations

from bench.heads.adapter import AdapterHead
from bench.heads.knn import KnnHead
from bench.heads.zeroshot import ZeroShotHead

__all__ = ["AdapterHead", "KnnHead", "ZeroShotHead"]
