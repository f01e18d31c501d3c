"""The kNN memory: instance embeddings with global class names, on a FAISS inner-product index.

Labels are kept as global class *names*, so tasks whose vocabularies share a name (``person`` in two datasets)
share entries. Embeddings are expected L2-normalised, so inner product is cosine similarity.

Index kinds (:class:`IndexSpec`), all inner product, all behind the same :class:`Memory` interface:

- ``flat``: exact search over fp32 vectors (``4·dim`` bytes per entry; also the buffer of the trained kinds).
- ``flat-fp16``: exact scan over fp16 vectors (``2·dim`` bytes); scores differ from fp32 by about 1e-3.
- ``ivf-flat``: ``nlist`` k-means lists of fp32 vectors; a query scans the ``nprobe`` nearest lists.
- ``ivf-pq``: the same lists holding product-quantised residuals, ``pq_m`` bytes per entry.
- ``hnsw``: an HNSW graph (``hnsw_m`` links per node) over fp32 vectors; ``ef_search`` trades speed for recall.

``pca_dim > 0`` puts a PCA in front of any kind (embeddings re-normalised after the projection, so scores stay
cosines in the projected space). Entry ids are ``0..len-1`` in insertion order, which is also the order every
index kind numbers its vectors, so no id map is needed and restricted search selects ids directly.

Training. IVF, PQ and PCA learn from data. A memory of such a kind starts as an exact fp32 *buffer*: entries
added before ``train_size`` of them have arrived are kept and searched exactly. The ``add`` that reaches
``train_size`` trains the index on everything buffered so far, moves it in, and from then on new entries are
encoded with what was learned then. In a continual run the index is thus trained on the first task(s), never on
the future; :meth:`Memory.train` trains on given vectors instead. Buffering rather than an error keeps small
memories (the embedded sequence) exact until there is enough data to learn from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bench.errors import ConfigError, MemoryMismatchError
from bench.io import atomic_dir

FORMAT_VERSION = 2
INDEX_KINDS = ("flat", "flat-fp16", "ivf-flat", "ivf-pq", "hnsw")
LEGACY_KINDS = {"flat-ip": "flat"}  # names written by format 1
LABEL_BYTES = 8  # int64 class code per entry, kept next to the index
PQ_BITS = 8
PQ_MAX_BYTES = 64  # automatic pq_m: the largest divisor of the dim up to this many one-byte sub-quantizers
TRAIN_PER_LIST = 64  # automatic nlist: one list per this many training vectors
HNSW_QUANTIZER_FROM = 1024  # IVF with this many lists or more finds its lists with an HNSW graph
KMEANS_ITERATIONS, KMEANS_MAX_POINTS = 10, 64
GPU_MAX_K = 2048  # the largest k FAISS GPU indexes search


@dataclass(frozen=True)
class IndexSpec:
    """How the memory indexes its embeddings. Structural fields fix what is stored; search fields do not."""

    kind: str = "flat"
    pca_dim: int = 0  # 0 = no PCA; else project to this many dims (trained) and re-normalise
    nlist: int = 0  # IVF lists; 0 = one per 64 training vectors
    pq_m: int = 0  # PQ bytes per entry (8-bit sub-quantizers); 0 = the largest divisor of the dim up to 64
    hnsw_m: int = 32  # HNSW links per node
    ef_construction: int = 40  # HNSW candidate list while building
    train_size: int = 1024  # entries buffered (searched exactly) before a trained kind is trained
    nprobe: int = 16  # IVF lists scanned per query
    ef_search: int = 64  # HNSW candidate list while searching
    gpu: bool = False  # move the index to GPU 0 (needs a GPU build of faiss; never falls back to CPU)

    SEARCH_FIELDS: ClassVar[tuple[str, ...]] = ("nprobe", "ef_search", "gpu")

    @classmethod
    def from_config(cls, knn: Any) -> IndexSpec:
        """From a :class:`bench.config.KnnConfig` (its ``index`` field is the kind)."""
        values = {f.name: getattr(knn, f.name) for f in dataclasses.fields(cls) if hasattr(knn, f.name)}
        return cls(**{**values, "kind": knn.index})

    @property
    def is_ivf(self) -> bool:
        return self.kind in ("ivf-flat", "ivf-pq")

    @property
    def needs_training(self) -> bool:
        return self.is_ivf or self.pca_dim > 0

    def min_train(self) -> int:
        """Fewest training vectors this spec can learn from."""
        need = [1, self.pca_dim]
        if self.is_ivf:
            need.append(self.nlist)
        if self.kind == "ivf-pq":
            need.append(2 ** PQ_BITS)
        return max(need)

    def structure(self) -> dict[str, Any]:
        """The fields that decide what a saved index holds, for this kind only (compared on load)."""
        keys = ["kind", "pca_dim"]
        keys += {"ivf-flat": ["nlist"], "ivf-pq": ["nlist", "pq_m"], "hnsw": ["hnsw_m", "ef_construction"]}.get(
            self.kind, [])
        if self.needs_training:
            keys.append("train_size")
        return {k: getattr(self, k) for k in keys}

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.structure().items() if k != "kind")
        return f"{self.kind}({params})"

    def check(self, dim: int) -> None:
        """Raise :class:`ConfigError` naming the field when the spec cannot index ``dim``-dim embeddings."""
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"unknown memory index kind {self.kind!r} (knn.index); expected one of: "
                              f"{', '.join(INDEX_KINDS)}")
        positive = ("hnsw_m", "ef_construction", "train_size", "nprobe", "ef_search")
        for name in ("pca_dim", "nlist", "pq_m", *positive):
            value = getattr(self, name)
            if value < (1 if name in positive else 0):
                raise ConfigError(f"knn.{name} must be {'> 0' if name in positive else '>= 0'}, got {value}")
        if self.pca_dim > dim:
            raise ConfigError(f"knn.pca_dim {self.pca_dim} exceeds the embedding dim {dim}")
        width = self.pca_dim or dim
        if self.kind == "ivf-pq" and self.pq_m and width % self.pq_m:
            raise ConfigError(f"knn.pq_m {self.pq_m} must divide the indexed dim {width} "
                              f"({'knn.pca_dim' if self.pca_dim else 'embedding dim'})")
        if self.needs_training and self.train_size < self.min_train():
            raise ConfigError(f"knn.train_size {self.train_size} is too small for index {self.describe()}: "
                              f"it needs at least {self.min_train()} training vectors")


def auto_pq_m(width: int) -> int:
    """The largest divisor of ``width`` up to 64: 64-byte codes for dims 64 to 768 (6 dims per byte at 384)."""
    return max(m for m in range(1, min(width, PQ_MAX_BYTES) + 1) if width % m == 0)


def _build_index(spec: IndexSpec, dim: int, n_train: int) -> tuple[Any, dict[str, int]]:
    """An empty (untrained) FAISS index for the spec, and the parameters it resolved (nlist, pq_m)."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    width = spec.pca_dim or dim
    resolved: dict[str, int] = {}
    if spec.kind == "flat":
        inner = faiss.IndexFlatIP(width)
    elif spec.kind == "flat-fp16":
        inner = faiss.IndexScalarQuantizer(width, faiss.ScalarQuantizer.QT_fp16, ip)
    elif spec.kind == "hnsw":
        inner = faiss.IndexHNSWFlat(width, spec.hnsw_m, ip)
        inner.hnsw.efConstruction = spec.ef_construction
    else:
        nlist = spec.nlist or max(1, n_train // TRAIN_PER_LIST)
        resolved["nlist"] = nlist
        if nlist >= HNSW_QUANTIZER_FROM:
            # Assigning to thousands of lists exactly costs more than scanning them; a graph over the centroids
            # finds the nearest lists in a few hundred distance computations.
            quantizer = faiss.IndexHNSWFlat(width, 32, ip)
        else:
            quantizer = faiss.IndexFlatIP(width)
        if spec.kind == "ivf-flat":
            inner = faiss.IndexIVFFlat(quantizer, width, nlist, ip)
        else:
            m = spec.pq_m or auto_pq_m(width)
            resolved["pq_m"] = m
            inner = faiss.IndexIVFPQ(quantizer, width, nlist, m, PQ_BITS, ip)
            _quick_kmeans(inner.pq.cp)
        _quick_kmeans(inner.cp)
    if not spec.pca_dim:
        return inner, resolved
    index = faiss.IndexPreTransform(inner)
    index.prepend_transform(faiss.NormalizationTransform(width, 2.0))
    # PCA orders dims by variance; a rotation after it spreads the variance evenly over the PQ sub-quantizers.
    index.prepend_transform(faiss.PCAMatrix(dim, width, 0.0, spec.kind == "ivf-pq"))
    return index, resolved


def _quick_kmeans(cp: Any) -> None:
    """Fewer k-means iterations and samples than FAISS's defaults (25, 256 per centroid): list assignment and
    codebooks hardly change after 10, and training stays within minutes for a million entries on two cores.
    ``min_points_per_centroid`` only silences FAISS's notice; ``IndexSpec.check`` guards the training size."""
    cp.niter = KMEANS_ITERATIONS
    cp.max_points_per_centroid = KMEANS_MAX_POINTS
    cp.min_points_per_centroid = 1


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
            index_, self.resolved = _build_index(spec, dim, 0)
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
        index, resolved = _build_index(self.spec, self.dim, len(train))
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
        """Write index, labels and metadata into directory ``path``, atomically (a GPU index is saved from CPU)."""
        import faiss

        with atomic_dir(path) as tmp:
            faiss.write_index(self._cpu_index(), str(tmp / "index.faiss"))
            np.save(tmp / "labels.npy", self.labels)
            size = os.path.getsize(tmp / "index.faiss") + LABEL_BYTES * len(self)
            meta = {"format": FORMAT_VERSION, "dim": self.dim, "embedder": self.embedder,
                    "index_kind": self.spec.kind, "index": self.spec.structure(),
                    "search": {k: getattr(self.spec, k) for k in IndexSpec.SEARCH_FIELDS},
                    "trained": self.trained, "resolved": self.resolved, "size": len(self),
                    "bytes_per_entry": size / max(1, len(self)), "names": self.names}
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
        except (OSError, json.JSONDecodeError) as e:
            raise MemoryMismatchError(f"{meta_path}: not a saved memory ({e})") from e
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
        index = faiss.read_index(str(path / "index.faiss"))
        memory.trained = trained
        memory.resolved = dict(meta.get("resolved", {}))
        memory.index = memory._place(index) if memory.trained else index
        memory.labels = np.load(path / "labels.npy")
        for name in meta["names"]:
            memory._code(name)
        if index.ntotal != len(memory.labels) or len(memory) != meta["size"]:
            raise MemoryMismatchError(f"{path}: index holds {index.ntotal} entries, labels.npy "
                                      f"{len(memory.labels)}, meta.json {meta['size']}: the files disagree")
        return memory


def _saved_spec(meta: dict[str, Any]) -> IndexSpec:
    """The spec a memory was saved with; format 1 knew only the exact flat index."""
    kind = LEGACY_KINDS.get(meta["index_kind"], meta["index_kind"])
    search = {k: v for k, v in meta.get("search", {}).items() if k != "gpu"}  # placement is this run's choice
    return IndexSpec(**{**meta.get("index", {}), **search, "kind": kind})


def _stored(spec: IndexSpec, trained: bool) -> dict[str, Any]:
    """What must agree between a saved memory and a run's spec: once trained, train_size no longer matters."""
    return {k: v for k, v in spec.structure().items() if not (trained and k == "train_size")}
