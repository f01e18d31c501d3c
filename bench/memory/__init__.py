"""The kNN memory: instance embeddings with global class names, on a FAISS inner-product index.

Labels are kept as global class *names*, so tasks whose vocabularies share a name (``person`` in two datasets)
share entries. Embeddings are expected L2-normalised, so inner product is cosine similarity.

Index kinds (:class:`IndexSpec`; registered in :mod:`bench.memory.kinds`, a new kind is one more entry there),
all inner product, all behind the same :class:`Memory` interface:

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

from bench.memory.kinds import auto_pq_m
from bench.memory.spec import INDEX_KINDS, LABEL_BYTES, RUN_INDEX, IndexSpec
from bench.memory.store import Memory, index_bytes

__all__ = ["INDEX_KINDS", "LABEL_BYTES", "RUN_INDEX", "IndexSpec", "Memory", "auto_pq_m", "index_bytes"]
