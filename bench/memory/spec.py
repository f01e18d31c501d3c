"""How a memory indexes its embeddings: :class:`IndexSpec`, the index-kind registry, and the run's defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from bench.errors import ConfigError
from datamodules.registry import Registry

LEGACY_KINDS = {"flat-ip": "flat"}  # names written by format 1
LABEL_BYTES = 8  # int64 class code per entry, kept next to the index
PQ_BITS = 8
PQ_MAX_BYTES = 64  # automatic pq_m: the largest divisor of the dim up to this many one-byte sub-quantizers
TRAIN_PER_LIST = 64  # automatic nlist: one list per this many training vectors
HNSW_QUANTIZER_FROM = 1024  # IVF with this many lists or more finds its lists with an HNSW graph
KMEANS_ITERATIONS, KMEANS_MAX_POINTS = 10, 64
GPU_MAX_K = 2048  # the largest k FAISS GPU indexes search
# The least value of each index knob: the one definition, checked by IndexSpec.check and up front by the run's
# config (bench.config.KnnConfig) before anything runs. 0 means "automatic" or "off" for the first three.
KNOB_MIN = {"pca_dim": 0, "nlist": 0, "pq_m": 0, "hnsw_m": 1, "ef_construction": 1, "train_size": 1, "nprobe": 1,
            "ef_search": 1}

# Index kinds: name -> builder(spec, width, n_train) -> (empty FAISS index, resolved parameters). Registered in
# bench.memory.kinds; ``IndexKind`` says what a kind needs (training, IVF search parameters).
INDEX_KINDS: Registry[Any] = Registry("memory index kind", "knn.index", ["bench.memory"], ConfigError)


@dataclass(frozen=True)
class IndexKind:
    build: Any  # callable(spec, width, n_train) -> (faiss index, dict of resolved parameters)
    ivf: bool = False  # inverted lists: trained, searched with nprobe
    structural: tuple[str, ...] = ()  # spec fields that decide what a saved index of this kind holds
    trained: bool = False
    min_train: Any = None  # callable(spec) -> fewest training vectors, beyond PCA's


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
    target_recall: float = 0.95  # kind auto: recall@k the probe count is tuned to reach
    # IVF kinds: inverted lists in a memory-mapped file (bench.memory.ondisk); where the lists live, not what they
    # hold, so neither structural nor a search field
    on_disk: bool = False

    SEARCH_FIELDS: ClassVar[tuple[str, ...]] = ("nprobe", "ef_search", "gpu", "target_recall")

    @classmethod
    def from_config(cls, knn: Any) -> IndexSpec:
        """From a :class:`bench.config.KnnConfig`: its ``index`` field is the kind, every other field of the spec
        has a field of the same name there (a missing one is an error, never dropped)."""
        values = {f.name: getattr(knn, f.name) for f in dataclasses.fields(cls) if f.name != "kind"}
        return cls(**values, kind=knn.index)

    @property
    def kind_info(self) -> IndexKind:
        return INDEX_KINDS.get(self.kind)

    @property
    def is_ivf(self) -> bool:
        return self.kind_info.ivf

    @property
    def needs_training(self) -> bool:
        return self.kind_info.trained or self.pca_dim > 0

    def min_train(self) -> int:
        """Fewest training vectors this spec can learn from."""
        extra = self.kind_info.min_train
        return max(1, self.pca_dim, extra(self) if extra else 0)

    def structure(self) -> dict[str, Any]:
        """The fields that decide what a saved index holds, for this kind only (compared on load)."""
        keys = ["kind", "pca_dim", *self.kind_info.structural]
        if self.needs_training:
            keys.append("train_size")
        return {k: getattr(self, k) for k in keys}

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.structure().items() if k != "kind")
        return f"{self.kind}({params})"

    def check(self, dim: int) -> None:
        """Raise :class:`ConfigError` naming the field when the spec cannot index ``dim``-dim embeddings."""
        INDEX_KINDS.get(self.kind)  # an unknown kind: a ConfigError naming knn.index and the known kinds
        for name, least in KNOB_MIN.items():
            value = getattr(self, name)
            if value < least:
                raise ConfigError(f"knn.{name} must be >= {least}, got {value}")
        # auto starts exact and becomes an ivf-flat (bench.memory.policy): its lists go to disk from then on
        if self.on_disk and not (self.is_ivf or self.kind == "auto"):
            raise ConfigError(f"knn.on_disk=true keeps IVF inverted lists on disk, but knn.index={self.kind} has "
                              "none: use ivf-flat, ivf-pq or auto, or set knn.on_disk=false")
        if self.on_disk and self.gpu:
            raise ConfigError("knn.on_disk=true and knn.gpu=true exclude each other (a GPU index keeps its lists "
                              "in GPU memory): set one of them to false")
        if self.kind == "auto":
            for name in AUTO_CHOOSES:
                value = getattr(self, name)
                if value not in (getattr(IndexSpec, name), getattr(RUN_INDEX, name)):
                    raise ConfigError(f"knn.{name}={value} has no effect with knn.index=auto, which chooses its "
                                      "lists and training sizes and tunes nprobe to knn.target_recall; set "
                                      f"knn.index=ivf-flat to fix {name} yourself")
        if self.pca_dim > dim:
            raise ConfigError(f"knn.pca_dim {self.pca_dim} exceeds the embedding dim {dim}")
        width = self.pca_dim or dim
        if self.kind == "ivf-pq" and self.pq_m and width % self.pq_m:
            raise ConfigError(f"knn.pq_m {self.pq_m} must divide the indexed dim {width} "
                              f"({'knn.pca_dim' if self.pca_dim else 'embedding dim'})")
        if self.needs_training and self.train_size < self.min_train():
            raise ConfigError(f"knn.train_size {self.train_size} is too small for index {self.describe()}: "
                              f"it needs at least {self.min_train()} training vectors")


# The run's index (bench.config.KnnConfig takes its defaults from here): ``auto`` (bench.memory.policy: exact,
# then IVF lists that follow the memory's size, probes tuned to knn.target_recall; recall@16 by memory size in
# results/perf/latest.json). The knobs below are what a fixed IVF kind gets by default (knn.index=ivf-flat: exact
# until 65,536 entries, then 4096 lists trained on those, 8 probed, the suite's default before auto). The library's
# own defaults (IndexSpec()) stay a flat index.
RUN_INDEX = IndexSpec("auto", nlist=4096, train_size=65536, nprobe=8)
AUTO_CHOOSES = ("nlist", "train_size", "nprobe")  # knobs the auto kind sets itself (setting them is an error)
