"""The kNN memory: instance embeddings with global class names, on a FAISS inner-product index.

Labels are kept as global class *names*, so tasks whose vocabularies share a name (``person`` in two datasets)
share entries. Embeddings are expected L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.errors import MemoryMismatchError
from bench.io import atomic_dir

FORMAT_VERSION = 1


class Memory:
    """Append-only database of ``(embedding, class name)`` entries; entry ids are 0..len-1 in insertion order."""

    def __init__(self, dim: int, embedder: str, index_kind: str = "flat-ip") -> None:
        import faiss

        if index_kind != "flat-ip":
            raise ValueError(f"unknown memory index kind {index_kind!r}; expected: flat-ip")
        self.dim, self.embedder, self.index_kind = dim, embedder, index_kind
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.names: list[str] = []  # global class-name table; labels are positions in it
        self._codes: dict[str, int] = {}
        self.labels = np.zeros(0, dtype=np.int64)
        self._selector_cache: dict[frozenset[int], tuple[object, int]] = {}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _code(self, name: str) -> int:
        if name not in self._codes:
            self._codes[name] = len(self.names)
            self.names.append(name)
        return self._codes[name]

    def add(self, embeddings: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Add float32 ``N×dim`` embeddings with their class names; returns their int64 ids ``[N]``."""
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"memory of dim {self.dim} got embeddings of shape {embeddings.shape}")
        if len(class_names) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(class_names)} class names")
        ids = np.arange(len(self), len(self) + len(embeddings), dtype=np.int64)
        codes = np.array([self._code(n) for n in class_names], dtype=np.int64)
        self.index.add_with_ids(embeddings, ids)
        self.labels = np.concatenate([self.labels, codes])
        self._selector_cache.clear()
        return ids

    def search(self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest entries of each query, among entries whose class is in ``allowed`` (all if None).

        queries: float32 ``Q×dim``. Returns float32 scores ``Q×k`` (cosine, descending) and int64 ids ``Q×k``;
        id -1 and score -inf where fewer than k entries qualify.
        """
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        params, available = None, len(self)
        if allowed is not None:
            codes = frozenset(self._codes[n] for n in allowed if n in self._codes)
            if len(codes) < len(self.names):
                selector, available = self._selector(codes)
                params = faiss.SearchParameters(sel=selector)
        if available == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        scores, ids = self.index.search(queries, k, params=params)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _selector(self, codes: frozenset[int]) -> tuple[object, int]:
        """A FAISS id selector for the entries of the given class codes, and how many there are (cached)."""
        import faiss

        if codes not in self._selector_cache:
            wanted = np.fromiter(codes, np.int64, len(codes))
            ids = np.flatnonzero(np.isin(self.labels, wanted)).astype(np.int64)
            selector = faiss.IDSelectorBatch(ids)
            self._selector_cache[codes] = (selector, len(ids))
        return self._selector_cache[codes]

    def class_names_of(self, ids: np.ndarray) -> list[list[str | None]]:
        """Class name of each id (None for -1)."""
        return [[self.names[self.labels[i]] if i >= 0 else None for i in row] for row in ids]

    def label_codes(self, ids: np.ndarray) -> np.ndarray:
        """Codes into :attr:`names` for int64 ids of any shape; -1 stays -1."""
        out = np.full(ids.shape, -1, dtype=np.int64)
        valid = ids >= 0
        out[valid] = self.labels[ids[valid]]
        return out

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write index, labels and metadata into directory ``path``, atomically."""
        import faiss

        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            np.save(tmp / "labels.npy", self.labels)
            meta = {"format": FORMAT_VERSION, "dim": self.dim, "embedder": self.embedder,
                    "index_kind": self.index_kind, "size": len(self), "names": self.names}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, embedder: str | None = None, dim: int | None = None) -> Memory:
        """Read a saved memory; if ``embedder``/``dim`` are given they must match what it was built with."""
        import faiss

        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise MemoryMismatchError(f"{meta_path}: not a saved memory ({e})") from e
        if embedder is not None and meta["embedder"] != embedder:
            raise MemoryMismatchError(f"{path}: memory was built with embedder {meta['embedder']!r} "
                                      f"(dim {meta['dim']}), but this run embeds with {embedder!r} (dim {dim})")
        if dim is not None and meta["dim"] != dim:
            raise MemoryMismatchError(f"{path}: memory has dim {meta['dim']} (embedder {meta['embedder']!r}), "
                                      f"but this run's embedder {embedder!r} has dim {dim}")
        memory = cls(meta["dim"], meta["embedder"], meta["index_kind"])
        memory.index = faiss.read_index(str(path / "index.faiss"))
        memory.labels = np.load(path / "labels.npy")
        for name in meta["names"]:
            memory._code(name)
        if memory.index.ntotal != len(memory.labels) or len(memory) != meta["size"]:
            raise MemoryMismatchError(f"{path}: index holds {memory.index.ntotal} entries, labels.npy "
                                      f"{len(memory.labels)}, meta.json {meta['size']}: the files disagree")
        return memory
