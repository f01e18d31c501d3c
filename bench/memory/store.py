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
from bench.io import atomic_dir, read_state_json, sha256_file
from bench.memory import gpu, ondisk, policy
from bench.memory.kinds import build_index
from bench.memory.spec import HNSW_QUANTIZER_FROM, LABEL_BYTES, LEGACY_KINDS, IndexSpec

FORMAT_VERSION = 2
STATE_FILES = ("index.faiss", "labels.npy")  # their sha256 is in meta.json
LISTS_FILE = ondisk.LISTS_FILE  # with on_disk: the inverted lists, also under a sha256 in meta.json


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


class Memory:
    """Append-only database of ``(embedding, class name)`` entries; entry ids are 0..len-1 in insertion order.

    ``Memory(dim, embedder)`` is an exact fp32 index; ``Memory(dim, embedder, "ivf-pq", pq_m=48)`` or
    ``Memory(dim, embedder, IndexSpec(...))`` any other kind.
    """

    def __init__(self, dim: int, embedder: str, index: str | IndexSpec = "flat", *,
                 lists_dir: str | Path | None = None, **params: Any) -> None:
        import faiss

        spec = index if isinstance(index, IndexSpec) else IndexSpec(kind=LEGACY_KINDS.get(index, index))
        spec = dataclasses.replace(spec, **params) if params else spec
        spec.check(dim)
        self.dim, self.embedder, self.spec = dim, embedder, spec
        if spec.kind == "auto" and (spec.gpu or spec.pca_dim):
            raise ConfigError(f"knn.index=auto runs on the CPU without PCA (it retrains IVF lists as the memory "
                              f"grows); got {'knn.gpu=true' if spec.gpu else f'knn.pca_dim={spec.pca_dim}'}: "
                              "choose a fixed kind (flat, ivf-flat, ivf-pq) for that")
        self._gpu = gpu.resources() if spec.gpu else None
        # on_disk: where the working lists files go (bench.memory.ondisk; $TMPDIR when lists_dir is None)
        self._lists = ondisk.ListsFolder(lists_dir) if spec.on_disk else None
        self.auto = policy.AutoState() if spec.kind == "auto" else None
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
        """The index on the configured device: GPU 0 when ``gpu`` (a clear error where that cannot be done); with
        ``on_disk``, an IVF's lists moved into a file of this memory's lists folder."""
        import faiss

        if self._lists is not None:
            return ondisk.to_disk(index, self._lists.path)
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
        if self.auto is not None:
            self.auto.changed()
            policy.grow(self)
        return ids

    # -- what the auto kind's policy reads and changes (bench.memory.policy); a sharded memory merges these ----
    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors of entries ``ids`` (an exact index, or the auto kind's IVF, which keeps a direct map)."""
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def refill(self, index: Any) -> None:
        """Move every entry, in id order, into a trained empty ``index``, which becomes this memory's (placed
        first, so that with ``on_disk`` the entries go straight into lists on disk)."""
        index = self._place(index)
        for start in range(0, len(self), policy.CHUNK):
            index.add(self.vectors(np.arange(start, min(len(self), start + policy.CHUNK))))
        self.index = index

    def exact_search(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest entries among those ``mask`` selects (all if None), by fp32 inner products computed
        here, ties by lower id (the ground truth of the auto kind's tuning)."""
        allowed = np.flatnonzero(mask) if mask is not None else np.arange(len(self))
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        for start in range(0, len(allowed), policy.CHUNK):
            ids = allowed[start:start + policy.CHUNK]
            s, i = policy.top_k(queries @ self.vectors(ids).T, ids, k)
            best_s, best_i = policy.top_k(np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1), k)
        return best_s, best_i

    def probe_search(self, queries: np.ndarray, k: int, codes: frozenset[int] | None, nprobe: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """IVF search at ``nprobe`` restricted to class ``codes`` (None: unrestricted)."""
        selector = self._selector(codes)[0] if codes is not None else None
        return self.index.search(queries, k, params=self.search_params(selector, nprobe))

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
        if self._lists is not None:  # lists on disk before the entries go in, so they never fill RAM lists
            index = self._place(index)
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
        selector, mask, available, codes = None, None, len(self), None
        if allowed is not None:
            codes = frozenset(self._codes[n] for n in allowed if n in self._codes)
            if len(codes) < len(self.names):
                selector, mask, available = self._selector(codes)
        if available == 0:
            return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
        if self._gpu is not None and self.trained:
            scores, ids = self._search_gpu(queries, k, mask, available)
        elif selector is not None and self.auto is not None and policy.exact_subset(self, available):
            scores, ids = policy.search_subset(self, codes, mask, queries, k)
        else:
            nprobe = None
            if self.auto is not None and self.auto.trained_at:
                nprobe = policy.nprobe_for(self, codes if selector is not None else None, mask, k,
                                           self.spec.target_recall)
            scores, ids = self.index.search(queries, k, params=self.search_params(selector, nprobe))
        scores[ids < 0] = -np.inf
        return scores, ids

    @property
    def searches_lists(self) -> bool:
        """Whether the index is an IVF now (a trained IVF kind, or the auto kind past its exact phase)."""
        return (self.trained and self.spec.is_ivf) or (self.auto is not None and self.auto.trained_at > 0)

    def search_params(self, selector: Any, nprobe: int | None = None) -> Any:
        """FAISS search parameters with the id selector (None: none) and, for IVF, ``nprobe`` (default the spec's)."""
        import faiss

        if self.searches_lists:
            nprobe = nprobe or self.spec.nprobe
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            if self.resolved.get("nlist", 0) >= HNSW_QUANTIZER_FROM:
                graph = faiss.SearchParametersHNSW(efSearch=max(64, 2 * nprobe))
                params.quantizer_params, params.referenced_graph_params = graph, graph  # keep it alive
            return params
        if self.trained and self.spec.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.spec.ef_search)
        return faiss.SearchParameters(sel=selector)

    def _search_gpu(self, queries: np.ndarray, k: int, mask: np.ndarray | None, available: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        return gpu.search(self.index, queries, k, mask, available, self.search_params(None))

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

    def index_report(self) -> dict[str, Any]:
        """What the index is and did, for the run record (:func:`bench.memory.policy.report`)."""
        return policy.report(self)

    # -- size -----------------------------------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes the memory takes as saved: the serialised index plus 8 bytes of label per entry."""
        return index_bytes(self._cpu_index()) + ondisk.lists_bytes(self.index) + LABEL_BYTES * len(self)

    def bytes_per_entry(self) -> float:
        """:attr:`nbytes` over the entries (codebooks and centroids included, so it falls as the memory grows)."""
        return self.nbytes / max(1, len(self))

    # -- persistence ----------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write index, labels and metadata into directory ``path``, atomically (a GPU index is saved from CPU).

        meta.json holds the sha256 of index.faiss and labels.npy (and lists.ivfdata, the compact copy of on-disk
        lists), checked by :meth:`load`."""
        with atomic_dir(path) as tmp:
            try:
                on_disk = ondisk.write_index(self._cpu_index(), tmp / "index.faiss")
            except RuntimeError as e:  # faiss reports a failed write (a full disk) as a RuntimeError
                raise OSError(errno.EIO, f"faiss could not write the index ({_last_line(e)})",
                              str(Path(path) / "index.faiss")) from e
            np.save(tmp / "labels.npy", self.labels)
            files = (*STATE_FILES, LISTS_FILE) if on_disk else STATE_FILES
            size = sum(os.path.getsize(tmp / name) for name in files if name != "labels.npy") + LABEL_BYTES * len(self)
            meta = {"format": FORMAT_VERSION, "dim": self.dim, "embedder": self.embedder,
                    "index_kind": self.spec.kind, "index": self.spec.structure(),
                    "search": {k: getattr(self.spec, k) for k in IndexSpec.SEARCH_FIELDS},
                    "trained": self.trained, "resolved": self.resolved, "size": len(self),
                    "bytes_per_entry": size / max(1, len(self)), "names": self.names,
                    "sha256": {name: sha256_file(tmp / name) for name in files}}
            if on_disk:
                meta["on_disk"] = True
            if self.auto is not None:
                meta["auto"] = self.auto.saved()
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, embedder: str | None = None, dim: int | None = None,
             spec: IndexSpec | None = None, lists_dir: str | Path | None = None) -> Memory:
        """Read a saved memory. If ``embedder``/``dim``/``spec`` are given they must match what it was built
        with (for ``spec``: its structural fields; search fields such as ``nprobe`` come from ``spec``). Whether
        the lists are on disk is ``spec.on_disk`` (without ``spec``: as saved); on disk, the saved lists are copied
        into a working file under ``lists_dir`` (see :class:`Memory`), so the saved step never changes."""
        path = Path(path)
        meta = read_state_json(path / "meta.json", {"dim", "embedder", "names", "size", "index_kind"},
                               "a saved memory")
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
        if spec is None and meta.get("on_disk"):
            saved = dataclasses.replace(saved, on_disk=True)  # as it was saved; a run's spec chooses for itself
        memory = cls(meta["dim"], meta["embedder"], spec or saved, lists_dir=lists_dir)
        try:
            index = ondisk.read_index(path / "index.faiss", bool(meta.get("on_disk")), memory._lists is not None)
        except DamagedStateError:  # the lists file, already named
            raise
        except RuntimeError as e:
            raise DamagedStateError(path / "index.faiss", f"cannot be read: {_last_line(e)}") from e
        memory.trained = trained
        memory.resolved = dict(meta.get("resolved", {}))
        if memory.auto is not None:
            memory.auto = policy.AutoState.from_saved(meta.get("auto", {}))
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
    for name in (*STATE_FILES, LISTS_FILE):
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
