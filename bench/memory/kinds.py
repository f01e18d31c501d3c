"""The index kinds a memory can use, each a registry entry building an empty FAISS inner-product index."""

from __future__ import annotations

from typing import Any

from bench.memory.spec import (
    HNSW_QUANTIZER_FROM,
    INDEX_KINDS,
    KMEANS_ITERATIONS,
    KMEANS_MAX_POINTS,
    PQ_BITS,
    PQ_MAX_BYTES,
    TRAIN_PER_LIST,
    IndexKind,
    IndexSpec,
)


def auto_pq_m(width: int) -> int:
    """The largest divisor of ``width`` up to 64: 64-byte codes for dims 64 to 768 (6 dims per byte at 384)."""
    return max(m for m in range(1, min(width, PQ_MAX_BYTES) + 1) if width % m == 0)


def _flat(spec: IndexSpec, width: int, n_train: int) -> tuple[Any, dict[str, int]]:
    import faiss

    return faiss.IndexFlatIP(width), {}


def _flat_fp16(spec: IndexSpec, width: int, n_train: int) -> tuple[Any, dict[str, int]]:
    import faiss

    return faiss.IndexScalarQuantizer(width, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT), {}


def _hnsw(spec: IndexSpec, width: int, n_train: int) -> tuple[Any, dict[str, int]]:
    import faiss

    index = faiss.IndexHNSWFlat(width, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = spec.ef_construction
    return index, {}


def _ivf(spec: IndexSpec, width: int, n_train: int) -> tuple[Any, dict[str, int]]:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    nlist = spec.nlist or max(1, n_train // TRAIN_PER_LIST)
    resolved = {"nlist": nlist}
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
        quick_kmeans(inner.pq.cp)
    quick_kmeans(inner.cp)
    return inner, resolved


def quick_kmeans(cp: Any) -> None:
    """Fewer k-means iterations and samples than FAISS's defaults (25, 256 per centroid): list assignment and
    codebooks hardly change after 10, and training stays within minutes for a million entries on two cores.
    ``min_points_per_centroid`` only silences FAISS's notice; ``IndexSpec.check`` guards the training size."""
    cp.niter = KMEANS_ITERATIONS
    cp.max_points_per_centroid = KMEANS_MAX_POINTS
    cp.min_points_per_centroid = 1


INDEX_KINDS.register("flat", "exact search over fp32 vectors (4·dim bytes per entry)")(IndexKind(_flat))
INDEX_KINDS.register("flat-fp16", "exact scan over fp16 vectors (2·dim bytes per entry)")(IndexKind(_flat_fp16))
INDEX_KINDS.register("ivf-flat", "k-means lists of fp32 vectors; nprobe lists scanned per query")(
    IndexKind(_ivf, ivf=True, structural=("nlist",), trained=True, min_train=lambda s: s.nlist))
INDEX_KINDS.register("ivf-pq", "k-means lists of product-quantised residuals, pq_m bytes per entry")(
    IndexKind(_ivf, ivf=True, structural=("nlist", "pq_m"), trained=True,
              min_train=lambda s: max(s.nlist, 2 ** PQ_BITS)))
# The default: exact, then IVF lists that follow the memory's size and probes tuned to a recall target
# (bench.memory.policy). It starts as a flat index; Memory drives the rest.
INDEX_KINDS.register("auto", "exact, then IVF lists following the memory size, nprobe tuned to knn.target_recall")(
    IndexKind(_flat))
INDEX_KINDS.register("hnsw", "an HNSW graph over fp32 vectors; ef_search trades speed for recall")(
    IndexKind(_hnsw, structural=("hnsw_m", "ef_construction")))


def build_index(spec: IndexSpec, dim: int, n_train: int) -> tuple[Any, dict[str, int]]:
    """An empty (untrained) FAISS index for the spec, and the parameters it resolved (nlist, pq_m)."""
    import faiss

    width = spec.pca_dim or dim
    inner, resolved = spec.kind_info.build(spec, width, n_train)
    if not spec.pca_dim:
        return inner, resolved
    index = faiss.IndexPreTransform(inner)
    index.prepend_transform(faiss.NormalizationTransform(width, 2.0))
    # PCA orders dims by variance; a rotation after it spreads the variance evenly over the PQ sub-quantizers.
    index.prepend_transform(faiss.PCAMatrix(dim, width, 0.0, spec.kind == "ivf-pq"))
    return index, resolved
