"""The ``auto`` index kind: a memory that keeps restricted-search recall at a target at every size, untouched.

What it does, as the memory grows (entry counts are the whole memory's):

- **Exact** (a flat fp32 index) below ``EXACT_UNTIL`` entries, where a restricted exact scan costs a few
  milliseconds per image (results/perf/latest.json: 7.7 ms at 10k entries, d = 384, two cores).
- **IVF** (``ivf-flat``) from then on, trained when the memory reaches ``EXACT_UNTIL · GROWTH^j`` entries
  (16,384; 65,536; 262,144; 1,048,576; ...) on the entries that have arrived by then (never on later ones), with
  ``nlist`` = the largest power of two up to ``LISTS_PER_ROOT · √N`` (512 lists at 16,384 entries, 4096 at 2^20).
  Each retraining rebuilds the lists from every entry, in id order, so ids stay insertion order.
- **Probe count tuned per vocabulary**: the first search restricted to a vocabulary after the memory changed
  tunes ``nprobe`` for it, leave-one-out on the memory itself: up to ``TUNE_QUERIES`` entries of the allowed
  classes (a seeded sample, the same for the same memory) are searched for ``k + 1`` neighbours among the allowed
  entries, themselves dropped; recall@k is measured against exact search of the same entries (numpy, fp32) for
  ``nprobe`` = 1, 2, 4, ... and the smallest value reaching the *tuning target* is kept (cached until the next
  add). Leave-one-out runs a little above what new queries see (0.953 against 0.935 on the perf harness's
  embeddings at 300k entries, d = 384), so the tuning target halves the allowed misses: 0.975 for
  ``target_recall`` 0.95. A restricted search needs more lists than an unrestricted one (the
  allowed entries are a fraction of each list), which is why the tuning is done under the restriction that is
  searched. Exactly as evaluation searches: the same k, the same allowed classes. The queries are entries of the
  allowed classes, standing for the proposals of a densely labelled dataset's images, which depict its own
  classes; a query of a class outside the searched vocabulary has its restricted neighbours spread over many
  lists, and sees a lower recall than the target at the tuned probes.

Everything is deterministic: FAISS's k-means runs with its fixed seed, samples come from generators seeded by the
memory size, and a saved memory holds its trained index and the policy's state (``AutoState``), so a resumed run
searches exactly what an uninterrupted one would. :meth:`bench.memory.Memory.index_report` says what the index
did (phase, lists, retrainings, per vocabulary the probes and the measured recall); runs put it in the record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from bench.memory.kinds import quick_kmeans
from bench.memory.spec import HNSW_QUANTIZER_FROM

EXACT_UNTIL = 16_384
# A restricted search whose allowed entries times dim is at most this is exact, over a copy of those entries
# (one matrix product: 2 GFLOP for an image's 64 queries); beyond it the IVF is searched with tuned probes. At
# 2^23 the perf harness's 100k-entry memory at d = 768 (15k allowed entries) took the IVF, which needed 512 of
# its 1024 lists for the target: 83 ms per image against the product's few tens.
SUBSET_WORK = 2 ** 24
GROWTH = 4
LISTS_PER_ROOT = 4
TUNE_QUERIES = 256
CHUNK = 65_536  # entries moved or scanned at a time (bounded extra memory while retraining or tuning)


class Memory(Protocol):
    """What the policy reads and changes of a memory (bench.memory.Memory; a sharded memory answers the same
    calls for all its processes together, so every process makes the same decisions as one would)."""

    auto: AutoState
    dim: int
    names: list[str]
    resolved: dict[str, int]

    def __len__(self) -> int: ...

    def vectors(self, ids: np.ndarray) -> np.ndarray: ...

    def refill(self, index: Any) -> None: ...

    def exact_search(self, queries: np.ndarray, k: int, mask: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray]: ...

    def probe_search(self, queries: np.ndarray, k: int, codes: frozenset[int] | None, nprobe: int
                     ) -> tuple[np.ndarray, np.ndarray]: ...


def auto_nlist(n: int) -> int:
    """Lists for an IVF trained at ``n`` entries: the largest power of two up to 4·√n."""
    return 2 ** math.floor(math.log2(max(1.0, LISTS_PER_ROOT * math.sqrt(n))))


def next_training(trained_at: int) -> int:
    """Entry count at which the index is (re)trained next: EXACT_UNTIL, then each GROWTH-fold."""
    return EXACT_UNTIL if trained_at == 0 else trained_at * GROWTH


@dataclass
class Tuned:
    nprobe: int
    recall: float  # leave-one-out recall@k at that nprobe, against exact search
    queries: int
    classes: int  # allowed classes (the whole memory's when unrestricted)
    entries: int  # allowed entries
    k: int


@dataclass
class AutoState:
    trained_at: int = 0  # entries the current IVF was trained on; 0 = still exact
    nlist: int = 0
    trainings: list[int] = field(default_factory=list)  # entry counts at each (re)training
    tuned: dict[Any, Tuned] = field(default_factory=dict)  # (class codes, k) -> tuning; cleared on add
    subsets: dict[Any, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # codes -> (ids, vectors)

    def changed(self) -> None:
        """Entries were added: tunings and subsets are recomputed on the next search."""
        self.tuned.clear()
        self.subsets.clear()

    @property
    def phase(self) -> str:
        return "ivf-flat" if self.trained_at else "flat"

    def saved(self) -> dict[str, Any]:
        return {"trained_at": self.trained_at, "nlist": self.nlist, "trainings": list(self.trainings)}

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> AutoState:
        return cls(int(d.get("trained_at", 0)), int(d.get("nlist", 0)), [int(n) for n in d.get("trainings", [])])


def grow(memory: Memory) -> None:
    """After an add: train (or retrain) when the memory has reached the next training size."""
    state = memory.auto
    if len(memory) >= next_training(state.trained_at):
        retrain(memory)


def retrain(memory: Memory) -> None:
    """A new ivf-flat index trained on (a sample of) every entry so far, the entries moved into it in id order.

    Reads the memory only through ``vectors`` (by global id) and ``refill``, so a sharded memory (each process
    holding part of the entries) trains the same lists from the same sample and refills its own part."""
    import faiss

    state, n, dim = memory.auto, len(memory), memory.dim
    nlist = auto_nlist(n)
    ip = faiss.METRIC_INNER_PRODUCT
    quantizer = faiss.IndexHNSWFlat(dim, 32, ip) if nlist >= HNSW_QUANTIZER_FROM else faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    quick_kmeans(index.cp)
    sample = min(n, index.cp.max_points_per_centroid * nlist)
    ids = np.sort(np.random.default_rng(n).choice(n, sample, replace=False)) if sample < n else np.arange(n)
    index.train(memory.vectors(ids))
    index.make_direct_map(True)  # reconstruct by id: the tuning's queries and the next retraining's entries
    memory.refill(index)
    memory.resolved = {"nlist": nlist}
    state.trained_at, state.nlist = n, nlist
    state.trainings.append(n)
    state.changed()


def exact_subset(memory: Memory, available: int) -> bool:
    """Whether a search restricted to ``available`` entries is done exactly over a copy of them."""
    return memory.auto.trained_at > 0 and available * memory.dim <= SUBSET_WORK


def search_subset(memory: Memory, codes: frozenset[int], mask: np.ndarray, queries: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact restricted search over a cached copy of the allowed entries (one matrix product)."""
    state = memory.auto
    if codes not in state.subsets:
        ids = np.flatnonzero(mask)
        state.subsets[codes] = (ids, memory.vectors(ids))
    ids, vectors = state.subsets[codes]
    return top_k(queries @ vectors.T, ids, k)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of ``Q×M`` scores over entries ``ids`` (``[M]``, or ``Q×M``): descending scores, ties by lower
    id; padded with -inf / -1 where M < k."""
    take = min(k, scores.shape[1])
    out_s = np.full((len(scores), k), -np.inf, np.float32)
    out_i = np.full((len(scores), k), -1, np.int64)
    if take == 0:
        return out_s, out_i
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < scores.shape[1] else \
        np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    every = np.broadcast_to(ids, scores.shape) if ids.ndim == 1 else ids
    top_scores, top_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(every, top, 1)
    order = np.lexsort((top_ids, -top_scores), axis=1)
    out_s[:, :take] = np.take_along_axis(top_scores, order, 1)
    out_i[:, :take] = np.take_along_axis(top_ids, order, 1)
    return out_s, out_i


def nprobe_for(memory: Memory, codes: frozenset[int] | None, mask: np.ndarray | None, k: int, target: float) -> int:
    """The tuned probe count for searches restricted to ``codes`` (None: unrestricted) with ``k`` neighbours."""
    state = memory.auto
    key = (codes, k)
    if key not in state.tuned:
        state.tuned[key] = tune(memory, codes, mask, k, target,
                                classes=len(codes) if codes is not None else len(memory.names))
    return state.tuned[key].nprobe


def tuning_target(target: float) -> float:
    """The leave-one-out recall tuned for: half the misses ``target`` allows (see the module docstring)."""
    return 1.0 - (1.0 - target) / 2


def tune(memory: Memory, codes: frozenset[int] | None, mask: np.ndarray | None, k: int, target: float,
         classes: int) -> Tuned:
    """Smallest power-of-two nprobe whose leave-one-out recall@k on a sample of the allowed entries reaches the
    tuning target for ``target`` (nlist, i.e. every list, at worst, which is exact).

    Uses the memory's ``vectors``, ``exact_search`` and ``probe_search`` (a sharded memory merges them across
    processes, so every process tunes the same value)."""
    nlist = memory.auto.nlist
    allowed = np.flatnonzero(mask) if mask is not None else np.arange(len(memory))
    rng = np.random.default_rng(len(memory))
    qids = np.sort(rng.choice(allowed, min(TUNE_QUERIES, len(allowed)), replace=False))
    queries = memory.vectors(qids)
    truth = memory.exact_search(queries, k + 1, mask)[1]
    truth = _drop_self(truth, qids, k)
    nprobe, found_recall = nlist, 1.0
    probe = 1
    while probe < nlist:
        _, ids = memory.probe_search(queries, k + 1, codes, probe)
        got = _recall(_drop_self(ids, qids, k), truth)
        if got >= tuning_target(target):
            nprobe, found_recall = probe, got
            break
        probe *= 2
    return Tuned(nprobe, round(found_recall, 4), len(qids), classes, len(allowed), k)


def _drop_self(ids: np.ndarray, qids: np.ndarray, k: int) -> np.ndarray:
    out = np.full((len(ids), k), -1, np.int64)
    for row, (found, self_id) in enumerate(zip(ids, qids)):
        kept = found[(found != self_id) & (found >= 0)][:k]
        out[row, :len(kept)] = kept
    return out


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids >= 0; queries with an empty truth count as 1)."""
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, int((t >= 0).sum())) if (t >= 0).any() else 1.0
            for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0


def report(memory: Any) -> dict[str, Any]:
    """What a memory's index is and did, for the run record: its kind and resolved parameters (nprobe for an
    IVF); for the auto kind its phase, lists, trainings and, per vocabulary searched since the last add, the
    probes tuned and the recall measured."""
    state = memory.auto
    if state is None:
        out: dict[str, Any] = {"kind": memory.spec.kind, "entries": len(memory), **memory.resolved}
        if memory.searches_lists:
            out["nprobe"] = memory.spec.nprobe
        return out
    tuned = sorted((asdict(t) for t in state.tuned.values()), key=lambda t: (t["classes"], t["entries"], t["k"]))
    exact = sorted(({"classes": len(codes), "entries": len(ids)} for codes, (ids, _) in state.subsets.items()),
                   key=lambda e: (e["classes"], e["entries"]))
    return {"kind": "auto", "phase": state.phase, "entries": len(memory), "nlist": state.nlist,
            "trained_at": state.trained_at, "trainings": list(state.trainings),
            "next_training": next_training(state.trained_at), "tuned": tuned, "exact_subsets": exact}
