"""Memory latency, recall and size against memory size and index kind, on synthetic clustered embeddings.

Part of ``benchmarks/perf.py``. The embeddings are unit vectors around ``clusters`` centres; the centres and most of
the spread lie in a ``dim/4``-dimensional subspace with a decaying spectrum (image embeddings are far from
isotropic), plus a little noise in every direction. Cluster ``c`` belongs to class ``c % classes``. Evaluation
searches the memory restricted to one vocabulary, so the queries here do too: they come from clusters of the first
``vocabulary`` classes and the search is restricted to those classes (about 15% of the entries).

Latency is per *image*: one search of ``QUERIES_PER_IMAGE`` queries (about what 64 superpixels give), restricted,
k = 16, after a warm-up search (the restriction's selector is built once per vocabulary and cached). Recall@16 is
against exact search (numpy, fp32) of the same restricted memory.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.memory import IndexSpec, Memory

K = 16
QUERIES_PER_IMAGE = 64
RECALL_QUERIES = 256
EXHAUSTIVE_QUERIES = 8  # exhaustive kinds on large memories: timed on this many queries, scaled to an image


@dataclass(frozen=True)
class Synthetic:
    clusters: int = 4000
    classes: int = 1000
    vocabulary: int = 150  # classes of the evaluated vocabulary (queries and restriction)
    spread: float = 0.6  # within-cluster spread in the subspace, relative to the unit-norm centres
    noise: float = 0.05  # isotropic noise, total norm
    seed: int = 0

    def names(self) -> list[str]:
        return [f"class{c:04d}" for c in range(self.classes)]

    def allowed(self) -> list[str]:
        return self.names()[: self.vocabulary]


def clustered(n: int, dim: int, syn: Synthetic, seed: int, only_vocabulary: bool = False,
              chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``n×dim`` unit vectors and their int64 cluster ids ``[n]``; same centres for every ``seed``."""
    g = np.random.default_rng(syn.seed)
    rank = dim // 4
    basis = np.linalg.qr(g.standard_normal((dim, rank)))[0].astype(np.float32)
    centers = g.standard_normal((syn.clusters, rank)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    scale = (np.arange(1, rank + 1) ** -0.5).astype(np.float32)
    scale *= syn.spread / np.linalg.norm(scale)
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(np.arange(syn.clusters) % syn.classes < syn.vocabulary) if only_vocabulary else None
    which = rng.choice(pool, n) if pool is not None else rng.integers(0, syn.clusters, n)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, chunk):
        w = which[i:i + chunk]
        x = (centers[w] + rng.standard_normal((len(w), rank), dtype=np.float32) * scale) @ basis.T
        x += rng.standard_normal(x.shape, dtype=np.float32) * (syn.noise / np.sqrt(dim))
        out[i:i + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, which


def embeddings(n: int, dim: int, syn: Synthetic) -> tuple[np.ndarray, np.ndarray]:
    """The memory's embeddings and their cluster ids (the same for the tables and the auto rows)."""
    return clustered(n, dim, syn, seed=syn.seed + 1)


def recall_queries(dim: int, syn: Synthetic) -> np.ndarray:
    """The queries recall and latency are measured on: from clusters of the evaluated vocabulary."""
    return clustered(RECALL_QUERIES, dim, syn, seed=syn.seed + 2, only_vocabulary=True)[0]


def exact_top_k(queries: np.ndarray, base: np.ndarray, k: int, chunk: int = 131072) -> np.ndarray:
    """int64 ``Q×k`` ids of the k largest inner products (unordered within the k), by chunks of the base."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(base), chunk):
        s = queries @ base[start:start + chunk].T
        s = np.concatenate([best_s, s], 1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + s.shape[1] - best_s.shape[1]),
                                                    (len(queries), s.shape[1] - best_s.shape[1]))], 1)
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids >= 0)."""
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
                          for f, t in zip(found, truth)]))


@dataclass
class Case:
    """One memory to build and measure: an index spec at a size and dim, and which search parameter to sweep."""

    name: str
    spec: IndexSpec
    sweep: tuple[str, tuple[int, ...]] | None = None


def ivf_lists(n: int) -> int:
    """Lists for an IVF memory of n entries: the power of two nearest n/256, at most 4096 (16 training vectors
    each at 65536): 32 at 10k, 512 at 100k, 4096 at 1M."""
    return min(4096, 2 ** round(math.log2(max(16, n / 256))))


def cases(n: int, dim: int, quick: bool) -> Iterator[Case | str]:
    """The index kinds measured at size n and dim; a string says what is skipped and why. Trained kinds train on
    the first min(n, 65536) entries, as a memory filled by adapt would."""
    train = min(n, 65536)
    ivf = {"nlist": ivf_lists(n), "train_size": train}
    yield Case("flat", IndexSpec("flat"))
    yield Case("flat-fp16", IndexSpec("flat-fp16"))
    yield Case("ivf-flat", IndexSpec("ivf-flat", **ivf), ("nprobe", (1, 2, 4, 8, 16, 32, 64)))
    if n < 1_000_000 or dim <= 384:
        yield Case("ivf-pq", IndexSpec("ivf-pq", **ivf), ("nprobe", (4, 8, 16, 32)))
    else:
        yield "ivf-pq: at 1M entries measured at d=384 only (building it at d=768 takes minutes here)"
    if dim <= 384 and n <= (10_000 if quick else 100_000):
        yield Case(f"pca{dim // 2}-ivf-pq", IndexSpec("ivf-pq", pca_dim=dim // 2, **ivf), ("nprobe", (4, 8, 16, 32)))
        yield Case("hnsw", IndexSpec("hnsw"), ("ef_search", (16, 32, 64, 128)))
    elif n <= 10_000:
        yield Case("hnsw", IndexSpec("hnsw"), ("ef_search", (16, 32, 64, 128)))
    else:
        yield (f"hnsw, pca-ivf-pq: not built at N={n}, d={dim} (HNSW takes about a minute per 100k entries at "
               "d=384 on two cores, so about 15 minutes at 1M; see build_s at 100k)")


def build(spec: IndexSpec, dim: int, x: np.ndarray, names: list[str], chunk: int = 65536) -> tuple[Memory, float]:
    """A memory filled in chunks as adapt would (a trained kind trains on reaching train_size); seconds taken."""
    start = time.perf_counter()
    memory = Memory(dim, "synthetic", spec)
    for i in range(0, len(x), chunk):
        memory.add(x[i:i + chunk], names[i:i + chunk])
    return memory, time.perf_counter() - start


def latency_ms(memory: Memory, queries: np.ndarray, allowed: list[str], min_s: float = 0.5,
               max_batches: int = 8) -> tuple[float, int]:
    """Median milliseconds of one image's restricted search, and the queries timed. Queries beyond one batch
    are timed in batches of QUERIES_PER_IMAGE; fewer (exhaustive kinds) are scaled up linearly."""
    batch = min(len(queries), QUERIES_PER_IMAGE)
    memory.search(queries[:batch], K, allowed=allowed)  # warm-up: builds and caches the selector
    times, spent, i = [], 0.0, 0
    while i < max_batches and (spent < min_s or len(times) < 2):
        q = queries[(i * batch) % len(queries):][:batch]
        tick = time.perf_counter()
        memory.search(q, K, allowed=allowed)
        times.append(time.perf_counter() - tick)
        spent, i = spent + times[-1], i + 1
    return 1000 * float(np.median(times)) * QUERIES_PER_IMAGE / batch, batch * len(times)


def measure(case: Case, memory: Memory, queries: np.ndarray, truth: np.ndarray, truth_all: np.ndarray,
            allowed: list[str], exhaustive_cut: int) -> dict[str, Any]:
    """Latency and recall of a built memory, at its spec and at each value of the case's sweep."""
    n_q = EXHAUSTIVE_QUERIES if case.spec.kind.startswith("flat") and len(memory) >= exhaustive_cut \
        else len(queries)
    row: dict[str, Any] = {"bytes_per_entry": round(memory.bytes_per_entry(), 2), "resolved": memory.resolved}
    tick = time.perf_counter()
    memory.search(queries[:QUERIES_PER_IMAGE], K, allowed=allowed)
    row["first_search_ms"] = round(1000 * (time.perf_counter() - tick), 2)  # builds the vocabulary's selector
    settings = [None] if case.sweep is None else list(case.sweep[1])
    row["sweep"] = []
    for value in settings:
        if value is not None:
            memory.spec = dataclasses.replace(memory.spec, **{case.sweep[0]: value})
        ms, timed = latency_ms(memory, queries[:n_q], allowed)
        found = memory.search(queries[:n_q], K, allowed=allowed)[1]
        point = {"ms_per_image": round(ms, 3), "queries_timed": timed,
                 "recall_at_16": round(recall(found, truth[:n_q]), 4), "recall_queries": n_q}
        if value is not None:
            point = {case.sweep[0]: value, **point}
        row["sweep"].append(point)
    # Unrestricted recall at the last setting, for reference (evaluation always restricts to a vocabulary).
    row["recall_at_16_unrestricted"] = round(recall(memory.search(queries[:n_q], K)[1], truth_all[:n_q]), 4)
    return row


def auto_rows(sizes: list[int], dim: int, syn: Synthetic, x: np.ndarray, which: np.ndarray, queries: np.ndarray,
              log: Any = print, chunk: int = 65536) -> tuple[list[dict[str, Any]], Memory]:
    """The default index (``auto``) as a run fills it: one memory grown through ``sizes`` in chunks, as adapt adds
    them, measured at each size (restricted recall@16 against exact search, latency per image, what the index
    did). Returns the rows and the memory at the largest size."""
    memory = Memory(dim, "synthetic", IndexSpec("auto"))
    names = np.array(syn.names(), dtype=object)[which % syn.classes].tolist()
    allowed, in_vocabulary = syn.allowed(), which % syn.classes < syn.vocabulary
    rows, done, build_s = [], 0, 0.0
    for n in sizes:
        tick = time.perf_counter()
        for i in range(done, n, chunk):
            memory.add(x[i:min(n, i + chunk)], names[i:min(n, i + chunk)])
        build_s, done = build_s + time.perf_counter() - tick, n
        subset = np.flatnonzero(in_vocabulary[:n])
        truth = subset[exact_top_k(queries, x[subset], K)]
        tick = time.perf_counter()
        memory.search(queries[:QUERIES_PER_IMAGE], K, allowed=allowed)  # tunes the probes for this vocabulary
        first_ms = 1000 * (time.perf_counter() - tick)
        ms, timed = latency_ms(memory, queries, allowed)
        found = memory.search(queries, K, allowed=allowed)[1]
        row = {"dim": dim, "n": n, "recall_at_16": round(recall(found, truth), 4), "recall_queries": len(queries),
               "ms_per_image": round(ms, 3), "queries_timed": timed, "first_search_ms": round(first_ms, 1),
               "build_s_so_far": round(build_s, 1), "bytes_per_entry": round(memory.bytes_per_entry(), 2),
               "index": memory.index_report()}
        rows.append(row)
        log(f"  d={dim} N={n} auto ({row['index']['phase']}): recall {row['recall_at_16']:.3f} at "
            f"{ms:.1f} ms/image, built {build_s:.0f}s so far")
    return rows, memory


def table(sizes: list[int], dim: int, syn: Synthetic, quick: bool, exhaustive_cut: int = 1_000_000,
          keep: tuple[str, int, dict[str, Any]] | None = None, log: Any = print,
          data: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[list[dict[str, Any]], Memory | None]:
    """Rows for every (size, case) at one dim. ``keep = (case name, size, search params)``: that memory is
    returned (set to those params) instead of freed, for the pipeline timing. ``data``: the embeddings and their
    clusters (:func:`embeddings`), else made here."""
    tick = time.perf_counter()
    x, which = data if data is not None else embeddings(max(sizes), dim, syn)
    names_of = np.array(syn.names(), dtype=object)
    names = names_of[which % syn.classes].tolist()
    queries = recall_queries(dim, syn)
    log(f"  d={dim}: {max(sizes)} embeddings ready in {time.perf_counter() - tick:.1f}s")
    allowed = syn.allowed()
    in_vocabulary = which % syn.classes < syn.vocabulary
    rows, kept = [], None
    for n in sizes:
        tick = time.perf_counter()
        subset = np.flatnonzero(in_vocabulary[:n])
        truth = subset[exact_top_k(queries, x[subset], K)]
        truth_all = exact_top_k(queries, x[:n], K)
        log(f"  d={dim} N={n}: exact neighbours in {time.perf_counter() - tick:.1f}s")
        for case in cases(n, dim, quick):
            if isinstance(case, str):
                rows.append({"dim": dim, "n": n, "skipped": case})
                continue
            memory, build_s = build(case.spec, dim, x[:n], names[:n])
            row = {"dim": dim, "n": n, "kind": case.name, "spec": case.spec.structure(),
                   "build_s": round(build_s, 2), **measure(case, memory, queries, truth, truth_all, allowed,
                                                           exhaustive_cut)}
            rows.append(row)
            best = max(row["sweep"], key=lambda p: p["recall_at_16"])
            log(f"  d={dim} N={n} {case.name}: build {build_s:.1f}s, {row['bytes_per_entry']:.0f} B/entry, "
                f"best recall {best['recall_at_16']:.3f} at {best['ms_per_image']:.1f} ms/image")
            if keep is not None and (case.name, n) == keep[:2]:
                memory.spec = dataclasses.replace(memory.spec, **keep[2])
                kept = memory
            del memory
            gc.collect()
    return rows, kept
