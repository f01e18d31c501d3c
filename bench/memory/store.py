"""The memory itself: entries, training, restricted search, size and persistence (see :mod:`bench.memory`)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import ConfigError, DamagedStateError, MemoryMismatchError
from bench.io import atomic_dir, sha256_file
from bench.memory.kinds import build_index
from bench.memory.spec import GPU_MAX_K, HNSW_QUANTIZER_FROM, LABEL_BYTES, LEGACY_KINDS, IndexSpec

FORMAT_VERSION = 2
STATE_FILES = ("index.faiss", "labels.npy")  # their sha256 is in meta.json


def index_bytes(index: Any) -> int:
    """Length of the index as :func:`faiss.serialize_index` writes it, counted without holding a copy."""
    import faiss

    total = 0

    def count(chunk: bytes) -> int:
        nonlocal total
        total += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index, writer)
    del writer  # flushes the last chunk
    return total


def _gpu_resources() -> Any:
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        raise ConfigError(f"knn.gpu=true, but the installed faiss {faiss.__version__} is a CPU-only build "
                          "(faiss-cpu): install a GPU build (pip install faiss-gpu-cu12, or conda install -c "
                          "pytorch faiss-gpu) or set knn.gpu=false")
    if faiss.get_num_gpus() == 0:
        raise ConfigError(f"knn.gpu=true, but faiss {faiss.__version__} sees no GPU (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); set knn.gpu=false to search on CPU")
    return faiss.StandardGpuResources()


class Memory:
    """Append-only database of ``(embedding, class name)`` entries; entry ids are 0..len-1 in insertion order.

    ``Memory(dim, embedder)`` is an exact fp32 index; ``Memory(dim, embedder, "ivf-pq", pq_m=48)`` or
    ``Memory(dim, embedder, IndexSpec(...))`` any other kind.
    """

    def __init__(self, dim: int, embedder: str, index: str | IndexSpec = "flat", **params: Any) -> None:
        import faiss

        spec = index if isinstance(index, IndexSpec) else IndexSpec(kind=LEGACY_KINDS.get(index, index))
        spec = dataclasses.replace(spec, **params) if params else spec
        spec.check(dim)
        self.dim, self.embedder, self.spec = dim, embedder, spec
        self._gpu = _gpu_resources() if spec.gpu else None
        self.trained = not spec.needs_training
        self.resolved: dict[str, int] = {}
        if self.trained:
            index_, self.resolved = build_index(spec, dim, 0)
            self.index = self._place(index_)
        else:
            self.index = faiss.IndexFlatIP(dim)  # the exact buffer until train_size entries have arrived
        self.names: list[str] = []  # global class-name table; labels are positions in it
        self._codes: dict[str, int] = {}
        self.labels = np.zeros(0, dtype=np.int64)
        self._selector_cache: dict[frozenset[int], tuple[Any, np.ndarray, int]] = {}

    @property
    def index_kind(self) -> str:
        return self.spec.kind

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _code(self, name: str) -> int:
        if name not in self._codes:
            self._codes[name] = len(self.names)
            self.names.append(name)
        return self._codes[name]

    def _place(self, index: Any) -> Any:
        """The index on the configured device: GPU 0 when ``gpu`` (a clear error where that cannot be done)."""
        import faiss

        if self._gpu is None:
            return index
        try:
            return faiss.index_cpu_to_gpu(self._gpu, 0, index)
        except RuntimeError as e:
            raise ConfigError(f"memory index {self.spec.describe()} cannot be moved to GPU by faiss "
                              f"{faiss.__version__} ({e}); choose another knn.index or set knn.gpu=false") from e

    def _cpu_index(self) -> Any:
        import faiss

        return faiss.index_gpu_to_cpu(self.index) if self._gpu is not None and self.trained else self.index

    def _vectors(self, embeddings: np.ndarray) -> np.ndarray:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"memory of dim {self.dim} got embeddings of shape {embeddings.shape}")
        return embeddings

    # -- adding and training --------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Add float32 ``N×dim`` embeddings with their class names; returns their int64 ids ``[N]``.

        For a trained kind, the add that brings the memory to ``train_size`` entries trains the index first.
        """
        embeddings = self._vectors(embeddings)
        if len(class_names) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(class_names)} class names")
        ids = np.arange(len(self), len(self) + len(embeddings), dtype=np.int64)
        codes = np.array([self._code(n) for n in class_names], dtype=np.int64)
        if not self.trained and len(self) + len(embeddings) >= self.spec.train_size:
            everything = np.concatenate([self._buffered(), embeddings])
            self._train(everything, everything)
        else:
            self.index.add(embeddings)
        self.labels = np.concatenate([self.labels, codes])
        self._selector_cache.clear()
        return ids

    def train(self, vectors: np.ndarray) -> None:
        """Train the index on float32 ``N×dim`` vectors (not added), then move any buffered entries into it."""
        if self.trained:
            raise RuntimeError(f"memory index {self.spec.describe()} is already trained")
        self._train(self._vectors(vectors), self._buffered())
        self._selector_cache.clear()

    def _buffered(self) -> np.ndarray:
        return self.index.reconstruct_n(0, self.index.ntotal) if self.index.ntotal else np.zeros((0, self.dim),
                                                                                                 np.float32)

    def _train(self, train: np.ndarray, entries: np.ndarray) -> None:
        if len(train) < self.spec.min_train():
            raise ValueError(f"memory index {self.spec.describe()} needs at least {self.spec.min_train()} "
                             f"training vectors, got {len(train)}")
        index, resolved = build_index(self.spec, self.dim, len(train))
        index.train(train)
        index.add(entries)
        self.index, self.resolved, self.trained = self._place(index), resolved, True

    # -- search ---------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest entries of each query, among entries whose class is in ``allowed`` (all if None).

        queries: float32 ``Q×dim``. Returns float32 scores ``Q×k`` (cosine, descending) and int64 ids ``Q×k``;
        id -1 and score -inf where fewer than k entries qualify (or, for approximate kinds, were found).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        selector, mask, available = None, None, len(self)
        if allowed is not None:
            codes = frozenset(self._codes[n] for n in allowed if n in self._codes)
            if len(codes) < len(self.names):
                selector, mask, available = self._selector(codes)
        if available == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        if self._gpu is not None and self.trained:
            scores, ids = self._search_gpu(queries, k, mask, available)
        else:
            scores, ids = self.index.search(queries, k, params=self._params(selector))
        scores[ids < 0] = -np.inf
        return scores, ids

    def _params(self, selector: Any) -> Any:
        import faiss

        if self.trained and self.spec.is_ivf:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.spec.nprobe)
            if self.resolved.get("nlist", 0) >= HNSW_QUANTIZER_FROM:
                graph = faiss.SearchParametersHNSW(efSearch=max(64, 2 * self.spec.nprobe))
                params.quantizer_params, params.referenced_graph_params = graph, graph  # keep it alive
            return params
        if self.trained and self.spec.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.spec.ef_search)
        return faiss.SearchParameters(sel=selector)

    def _search_gpu(self, queries: np.ndarray, k: int, mask: np.ndarray | None, available: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """GPU indexes ignore id selectors, so restricted search fetches more neighbours and keeps allowed ones.

        Exact for ``flat`` whenever a query's first ``GPU_MAX_K`` neighbours hold ``k`` allowed entries; rows
        that do not are padded with -1.
        """
        params = self._params(None)
        if mask is None:
            return self.index.search(queries, k, params=params)
        limit = min(len(self), GPU_MAX_K)
        fetch = min(limit, 4 * k)
        while True:
            scores, ids = self.index.search(queries, fetch, params=params)
            keep = (ids >= 0) & mask[np.maximum(ids, 0)]
            if fetch >= limit or (keep.sum(1) >= min(k, available)).all():
                break
            fetch = min(limit, 4 * fetch)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # allowed first, in score order
        kept = np.take_along_axis(keep, order, 1)
        out_ids = np.where(kept, np.take_along_axis(ids, order, 1), -1)
        out_scores = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf).astype(np.float32)
        if out_ids.shape[1] < k:
            pad = k - out_ids.shape[1]
            out_ids = np.pad(out_ids, ((0, 0), (0, pad)), constant_values=-1)
            out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return out_scores, out_ids

    def _selector(self, codes: frozenset[int]) -> tuple[Any, np.ndarray, int]:
        """A FAISS id selector (a bitmap over entry ids) for the given class codes, the boolean mask it encodes
        and how many entries it selects (cached until the next add)."""
        import faiss

        if codes not in self._selector_cache:
            mask = np.isin(self.labels, np.fromiter(codes, np.int64, len(codes)))
            bits = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
            selector.referenced_bits = bits  # the selector reads this buffer; keep it alive with it
            self._selector_cache[codes] = (selector, mask, int(mask.sum()))
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

    # -- size -----------------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the memory takes as saved: the serialised index plus 8 bytes of label per entry."""
        return index_bytes(self._cpu_index()) + LABEL_BYTES * len(self)

    def bytes_per_entry(self) -> float:
        """:attr:`nbytes` over the entries (codebooks and centroids included, so it falls as the memory grows)."""
        return self.nbytes / max(1, len(self))

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write index, labels and metadata into directory ``path``, atomically (a GPU index is saved from CPU).

        meta.json holds the sha256 of index.faiss and labels.npy, checked by :meth:`load`."""
        import faiss

        with atomic_dir(path) as tmp:
            try:
                faiss.write_index(self._cpu_index(), str(tmp / "index.faiss"))
            except RuntimeError as e:  # faiss reports a failed write (a full disk) as a RuntimeError
                raise OSError(errno.EIO, f"faiss could not write the index ({_last_line(e)})",
                              str(Path(path) / "index.faiss")) from e
            np.save(tmp / "labels.npy", self.labels)
            size = os.path.getsize(tmp / "index.faiss") + LABEL_BYTES * len(self)
            meta = {"format": FORMAT_VERSION, "dim": self.dim, "embedder": self.embedder,
                    "index_kind": self.spec.kind, "index": self.spec.structure(),
                    "search": {k: getattr(self.spec, k) for k in IndexSpec.SEARCH_FIELDS},
                    "trained": self.trained, "resolved": self.resolved, "size": len(self),
                    "bytes_per_entry": size / max(1, len(self)), "names": self.names,
                    "sha256": {name: sha256_file(tmp / name) for name in STATE_FILES}}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, embedder: str | None = None, dim: int | None = None,
             spec: IndexSpec | None = None) -> Memory:
        """Read a saved memory. If ``embedder``/``dim``/``spec`` are given they must match what it was built
        with (for ``spec``: its structural fields; search fields such as ``nprobe`` come from ``spec``)."""
        import faiss

        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError as e:
            raise DamagedStateError(meta_path, "cannot be read: it is missing") from e
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DamagedStateError(meta_path, f"cannot be read: {e}") from e
        if not isinstance(meta, dict) or not {"dim", "embedder", "names", "size", "index_kind"} <= set(meta):
            raise DamagedStateError(meta_path, "cannot be read: not the metadata of a saved memory")
        _verify(path, meta.get("sha256", {}))
        if embedder is not None and meta["embedder"] != embedder:
            raise MemoryMismatchError(f"{path}: memory was built with embedder {meta['embedder']!r} "
                                      f"(dim {meta['dim']}), but this run embeds with {embedder!r} (dim {dim})")
        if dim is not None and meta["dim"] != dim:
            raise MemoryMismatchError(f"{path}: memory has dim {meta['dim']} (embedder {meta['embedder']!r}), "
                                      f"but this run's embedder {embedder!r} has dim {dim}")
        saved = _saved_spec(meta)
        trained = bool(meta.get("trained", True))
        if spec is not None and _stored(spec, trained) != _stored(saved, trained):
            raise MemoryMismatchError(f"{path}: memory was saved with index {saved.describe()}, but this run "
                                      f"is configured for index {spec.describe()}")
        memory = cls(meta["dim"], meta["embedder"], spec or saved)
        try:
            index = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as e:
            raise DamagedStateError(path / "index.faiss", f"cannot be read: {_last_line(e)}") from e
        memory.trained = trained
        memory.resolved = dict(meta.get("resolved", {}))
        memory.index = memory._place(index) if memory.trained else index
        try:
            memory.labels = np.load(path / "labels.npy")
        except (OSError, ValueError, EOFError) as e:
            raise DamagedStateError(path / "labels.npy", f"cannot be read: {e}") from e
        for name in meta["names"]:
            memory._code(name)
        if index.ntotal != len(memory.labels) or len(memory) != meta["size"]:
            raise DamagedStateError(path, f"index.faiss holds {index.ntotal} entries, labels.npy "
                                    f"{len(memory.labels)}, meta.json {meta['size']}: the files disagree")
        return memory


def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def _verify(path: Path, digests: dict[str, str]) -> None:
    """Check the saved files against the sha256 in meta.json (memories saved before format 2's checksums have
    none and are read as they are; a damaged one then fails when read)."""
    for name in STATE_FILES:
        if name in digests:
            file = path / name
            try:
                found = sha256_file(file)
            except OSError as e:
                raise DamagedStateError(file, f"cannot be read: {e.strerror}") from e
            if found != digests[name]:
                raise DamagedStateError(file, "checksum mismatch")


def _saved_spec(meta: dict[str, Any]) -> IndexSpec:
    """The spec a memory was saved with; format 1 knew only the exact flat index."""
    kind = LEGACY_KINDS.get(meta["index_kind"], meta["index_kind"])
    search = {k: v for k, v in meta.get("search", {}).items() if k != "gpu"}  # placement is this run's choice
    return IndexSpec(**{**meta.get("index", {}), **search, "kind": kind})


def _stored(spec: IndexSpec, trained: bool) -> dict[str, Any]:
    """What must agree between a saved memory and a run's spec: once trained, train_size no longer matters."""
    return {k: v for k, v in spec.structure().items() if not (trained and k == "train_size")}
