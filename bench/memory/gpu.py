"""A memory on GPU 0 (``knn.gpu=true``): FAISS's GPU resources, and restricted search for GPU indexes, which
ignore id selectors."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from bench.errors import ConfigError
from bench.memory.spec import GPU_MAX_K


def resources() -> Any:
    """FAISS GPU resources; a clear error where the faiss build or the machine has no GPU (never a CPU fallback)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        raise ConfigError(f"knn.gpu=true, but the installed faiss {faiss.__version__} is a CPU-only build "
                          "(faiss-cpu): install a GPU build (pip install faiss-gpu-cu12, or conda install -c "
                          "pytorch faiss-gpu) or set knn.gpu=false")
    if faiss.get_num_gpus() == 0:
        raise ConfigError(f"knn.gpu=true, but faiss {faiss.__version__} sees no GPU (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); set knn.gpu=false to search on CPU")
    return faiss.StandardGpuResources()


def search(index: Any, queries: np.ndarray, k: int, mask: np.ndarray | None, available: int, params: Any
           ) -> tuple[np.ndarray, np.ndarray]:
    """Restricted search on a GPU index: fetch more neighbours than k and keep the allowed ones (``mask`` over
    entry ids; None = unrestricted; ``available`` = how many entries it allows).

    Exact for ``flat`` whenever a query's first ``GPU_MAX_K`` neighbours hold ``k`` allowed entries; rows that do
    not are padded with -1.
    """
    if mask is None:
        return index.search(queries, k, params=params)
    limit = min(index.ntotal, GPU_MAX_K)
    fetch = min(limit, 4 * k)
    while True:
        scores, ids = index.search(queries, fetch, params=params)
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
