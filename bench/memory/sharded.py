"""A memory split across the processes of a run (``knn.shard``): each keeps part of the entries, searches merge.

**Who keeps what.** Entry ids are global (``0..len-1``, insertion order, as in one process). Entry ``g`` is kept
by rank ``owner[g]``: ``g mod W`` when it is added (round robin, so each rank holds ``1/W`` of the entries); a
memory budget that removes entries (:mod:`bench.memory.budget`) renumbers ids but moves nothing, so a rank's
entries are always ascending global ids and its local ids are their positions. Every rank keeps the whole class
table and every entry's label (8 bytes) and owner (2 bytes), so a search restricted to a vocabulary selects the
same entries on every rank without asking the others; only the index (vectors, codes, lists) is split.

**Adding.** Every rank is given the same global batch (:class:`bench.methods.knn.MemoryWriter` gathers the
processes' segments in one-process order) and indexes its own rows. A trained kind (``ivf-flat``, ``ivf-pq``,
PCA) trains at the same add as one process, on the same entries (gathered), on rank 0; the trained empty index is
broadcast (``faiss.serialize_index``) and each rank adds its part, so every shard shares one coarse quantizer.
The ``auto`` kind runs the one-process policy (:mod:`bench.memory.policy`) on this object: its thresholds see the
global count, ``vectors`` gathers entries by global id, ``refill`` broadcasts rank 0's trained index and fills it
with the local part, and the probe tuning searches through the merged ``exact_search`` / ``probe_search``.

**Searching.** A merged search is a collective: each rank's shard is searched for every rank's queries and the
per-shard top-k are gathered and merged (descending score, ties by lower global id). Exact kinds give one
process's neighbours; IVF kinds too, since each shard probes the same lists (same quantizer, same ``nprobe``)
and a list's best entries are the best of its parts. ``hnsw`` is refused (a graph per shard finds other
neighbours than one graph). Under DDP ranks evaluate different images and may need a different number of
searches, so :meth:`ShardedMemory.search` is a *round*: ranks exchange their requests (queries, k, vocabulary),
every rank answers all of them, and a rank with no more images calls :meth:`finish_searches`, which keeps joining
rounds with no request until every rank has finished (the evaluation module calls it at the end of its epoch).

**Saving** and the byte accounting of :attr:`ShardedMemory.nbytes`: :mod:`bench.memory.shard_files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import ConfigError
from bench.memory import policy, shard_files
from bench.memory.budget import keep_entries
from bench.memory.kinds import build_index
from bench.memory.shard_files import is_sharded as is_sharded  # re-exported: bench.methods.knn imports it from here
from bench.memory.spec import IndexSpec
from bench.memory.store import Memory, index_bytes

OWNER_DTYPE = np.int16


def _serialize(index: Any) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def _deserialize(data: bytes) -> Any:
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


class ShardedMemory:
    """:class:`bench.memory.Memory`'s interface over ``W`` processes, each holding a local :class:`Memory` with its
    part of the entries (see the module docstring). With one process it is one shard and needs no process group.

    The rank and world size are read at the first operation (under Lightning the process group exists only from
    the first Trainer call)."""

    def __init__(self, dim: int, embedder: str, spec: IndexSpec, *, lists_dir: str | Path | None = None) -> None:
        if spec.kind == "hnsw":
            raise ConfigError("knn.shard=true splits the memory across processes and merges their searches, which "
                              "gives one process's neighbours only for flat, flat-fp16, ivf-flat, ivf-pq and auto: "
                              "an HNSW graph per shard finds other neighbours than one graph; choose one of those "
                              "kinds for knn.index, or set knn.shard=false")
        self.local = Memory(dim, embedder, spec, lists_dir=lists_dir)
        self.dim, self.embedder, self.spec = dim, embedder, spec
        self._lists_dir = lists_dir
        self.names: list[str] = []  # the global class table, identical on every rank (and in self.local)
        self._codes: dict[str, int] = {}
        self._labels = np.zeros(0, np.int64)  # every entry's class code, by global id
        self.owner = np.zeros(0, OWNER_DTYPE)  # every entry's rank, by global id
        self._mine = np.zeros(0, np.int64)  # global ids of this rank's entries, ascending (local id = position)
        self._masks: dict[frozenset[int], tuple[np.ndarray, int]] = {}
        self._world: int | None = None
        self._rank = 0
        self._saved: Path | None = None  # a saved step read at the first operation (needs the rank)
        self._saved_entries = 0
        # bytes every shard repeats: the serialised index while empty (header; once trained, quantizer and PCA)
        self._shared_bytes = index_bytes(self.local.index)

    # -- layout ---------------------------------------------------------------------------------------------------
    def _layout(self) -> tuple[int, int]:
        if self._world is None:
            from bench.distributed import rank, world_size

            self._world, self._rank = world_size(), rank()
            if self._world > np.iinfo(OWNER_DTYPE).max:
                raise ConfigError(f"knn.shard=true supports up to {np.iinfo(OWNER_DTYPE).max} processes")
            if self._saved is not None:
                shard_files.read(self, self._saved, OWNER_DTYPE)
        return self._world, self._rank

    @property
    def labels(self) -> np.ndarray:
        """int64 class code of every entry, by global id (the same on every rank)."""
        self._layout()
        return self._labels

    @property
    def auto(self) -> policy.AutoState | None:
        return self.local.auto  # the policy's state; the local memory's search parameters read the same object

    @property
    def trained(self) -> bool:
        return self.local.trained

    @property
    def resolved(self) -> dict[str, int]:
        return self.local.resolved

    @resolved.setter
    def resolved(self, value: dict[str, int]) -> None:
        self.local.resolved = value

    @property
    def index_kind(self) -> str:
        return self.spec.kind

    @property
    def searches_lists(self) -> bool:
        return self.local.searches_lists

    def __len__(self) -> int:
        if self._saved is not None and self._world is None:  # before the process group: as saved
            return self._saved_entries
        return int(self._labels.shape[0])

    def _code(self, name: str) -> int:
        if name not in self._codes:
            self._codes[name] = len(self.names)
            self.names.append(name)
        self.local._code(name)  # the same table, so local labels are global codes
        return self._codes[name]

    def _to_global(self, ids: np.ndarray) -> np.ndarray:
        out = np.full(ids.shape, -1, np.int64)
        valid = ids >= 0
        out[valid] = self._mine[ids[valid]]
        return out

    def _changed(self) -> None:
        self._masks.clear()
        self.local._selector_cache.clear()
        if self.auto is not None:
            self.auto.changed()

    # -- adding ---------------------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """Add a global batch (the same float32 ``N×dim`` embeddings and names on every rank, a collective); this
        rank indexes its rows. Returns the batch's global int64 ids ``[N]``."""
        world, me = self._layout()
        embeddings = self.local._vectors(embeddings)
        if len(class_names) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(class_names)} class names")
        start = len(self)
        ids = np.arange(start, start + len(embeddings), dtype=np.int64)
        codes = np.array([self._code(n) for n in class_names], dtype=np.int64)
        owner = (ids % world).astype(OWNER_DTYPE)
        mine = owner == me
        if not self.trained and start + len(embeddings) >= self.spec.train_size:
            self._train(np.concatenate([self.vectors(np.arange(start)), embeddings]), embeddings[mine])
        else:
            self.local.index.add(embeddings[mine])
        self.local.labels = np.concatenate([self.local.labels, codes[mine]])
        self._labels = np.concatenate([self._labels, codes])
        self.owner = np.concatenate([self.owner, owner])
        self._mine = np.concatenate([self._mine, ids[mine]])
        self._changed()
        if self.auto is not None:
            policy.grow(self)
        return ids

    def _train(self, train: np.ndarray, new_local: np.ndarray) -> None:
        """Rank 0 trains the index on every entry so far (as one process would); every rank gets it and moves its
        buffered entries and this batch's local rows into it."""
        from bench.distributed import broadcast

        if len(train) < self.spec.min_train():
            raise ValueError(f"memory index {self.spec.describe()} needs at least {self.spec.min_train()} "
                             f"training vectors, got {len(train)}")
        trained = None
        if self._rank == 0:
            index, resolved = build_index(self.spec, self.dim, len(train))
            index.train(train)
            trained = (_serialize(index), resolved)
        data, resolved = broadcast(trained)
        index, self._shared_bytes = _deserialize(data), len(data)
        index.add(np.concatenate([self.local._buffered(), new_local]))
        self.local.index, self.local.resolved, self.local.trained = self.local._place(index), resolved, True

    def keep(self, keep: np.ndarray) -> None:
        """Remove the entries where boolean ``keep`` (``[len]``, the same on every rank) is False; the others keep
        their order and owners and are renumbered (:func:`bench.memory.budget.keep_entries`)."""
        self._layout()
        if keep.all():
            return
        keep_entries(self.local, keep[self._mine])
        renumber = np.cumsum(keep) - 1
        self._mine = renumber[self._mine[keep[self._mine]]]
        self._labels, self.owner = self._labels[keep], self.owner[keep]
        self._changed()

    # -- what the policy reads and changes, collectively ------------------------------------------------------
    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 vectors of global ``ids`` (the same on every rank), gathered from their owners."""
        from bench.distributed import all_gather

        _, me = self._layout()
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.flatnonzero(self.owner[ids] == me)
        local = np.searchsorted(self._mine, ids[rows])
        part = self.local.vectors(local) if len(rows) else np.zeros((0, self.dim), np.float32)
        out = np.zeros((len(ids), self.dim), np.float32)
        for rows_r, part_r in all_gather((rows, part)):
            out[rows_r] = part_r
        return out

    def refill(self, index: Any) -> None:
        """Rank 0's trained empty ``index`` (the policy trains the same one everywhere; rank 0's is taken so every
        shard has the very same lists) filled with this rank's entries."""
        from bench.distributed import broadcast

        self._layout()
        data = broadcast(_serialize(index) if self._rank == 0 else None)
        self._shared_bytes = len(data)
        self.local.refill(_deserialize(data))

    def exact_search(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact k nearest among the entries global ``mask`` selects (all if None), merged over the shards."""
        self._layout()
        local = self.local.exact_search(queries, k, mask[self._mine] if mask is not None else None)
        return self._merged(local, k)

    def probe_search(self, queries: np.ndarray, k: int, codes: frozenset[int] | None, nprobe: int
                     ) -> tuple[np.ndarray, np.ndarray]:
        """IVF search at ``nprobe`` restricted to class ``codes`` (None: unrestricted), merged over the shards."""
        self._layout()
        return self._merged(self.local.probe_search(queries, k, codes, nprobe), k)

    def _merged(self, local: tuple[np.ndarray, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        from bench.distributed import all_gather

        return _merge(all_gather((local[0], self._to_global(local[1]))), k)

    # -- search ---------------------------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, allowed: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`bench.memory.Memory.search` over every shard: one round, a collective (see the module
        docstring; a rank with nothing more to search calls :meth:`finish_searches`)."""
        _, me = self._layout()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self._round((queries, k, None if allowed is None else list(allowed)))[me]

    def finish_searches(self) -> None:
        """Join other ranks' search rounds with no request of its own until every rank has finished."""
        self._layout()
        while True:
            if self._round(None) is None:
                return

    def _round(self, request: tuple[np.ndarray, int, list[str] | None] | None
               ) -> list[tuple[np.ndarray, np.ndarray] | None] | None:
        """Exchange requests, answer every rank's; returns the answers by rank (None when no rank asked)."""
        from bench.distributed import all_gather

        world, me = self._layout()
        requests = all_gather(request)
        if all(r is None for r in requests):
            return None
        plans = [self._plan(r[0], r[1], r[2]) if r is not None else None for r in requests]  # lockstep
        local = [self._local_search(r[0], r[1], p) if p is not None and p[0] == "merge" else None
                 for r, p in zip(requests, plans)]
        gathered = all_gather(local)
        answers: list[tuple[np.ndarray, np.ndarray] | None] = [None] * world
        queries, k, _ = requests[me] if requests[me] is not None else (None, 0, None)
        plan = plans[me]
        if plan is None:
            return answers
        if plan[0] == "empty":
            answers[me] = (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
        elif plan[0] == "subset":
            answers[me] = policy.search_subset(self, plan[1], plan[2], queries, k)
        else:
            answers[me] = _merge([g[me] for g in gathered], k)
        scores, ids = answers[me]
        scores[ids < 0] = -np.inf
        return answers

    def _plan(self, queries: np.ndarray, k: int, allowed: list[str] | None) -> tuple[Any, ...]:
        """How one request is answered, decided identically on every rank: ``("empty",)``, ``("subset", codes,
        mask)`` (auto: exact over a gathered copy of few allowed entries) or ``("merge", codes, nprobe)``."""
        codes, mask, available = None, None, len(self)
        if allowed is not None:
            wanted = frozenset(self._codes[n] for n in allowed if n in self._codes)
            if len(wanted) < len(self.names):
                codes = wanted
                mask, available = self._mask(codes)
        if available == 0:
            return ("empty",)
        auto = self.auto
        if codes is not None and auto is not None and policy.exact_subset(self, available):
            policy.search_subset(self, codes, mask, queries[:0], k)  # gathers the subset once, on every rank
            return ("subset", codes, mask)
        nprobe = None
        if auto is not None and auto.trained_at:
            nprobe = policy.nprobe_for(self, codes, mask, k, self.spec.target_recall)
        return ("merge", codes, nprobe)

    def _local_search(self, queries: np.ndarray, k: int, plan: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray]:
        """This shard's k best for a request, with global ids."""
        _, codes, nprobe = plan
        local = self.local
        if local._gpu is not None and local.trained:
            mask, available = None, len(local)
            if codes is not None:
                _, mask, available = local._selector(codes)
            if available == 0:
                return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
            scores, ids = local._search_gpu(queries, k, mask, available)
        else:
            scores, ids = local.probe_search(queries, k, codes, nprobe)
        return scores, self._to_global(ids)

    def _mask(self, codes: frozenset[int]) -> tuple[np.ndarray, int]:
        if codes not in self._masks:
            mask = np.isin(self._labels, np.fromiter(codes, np.int64, len(codes)))
            self._masks[codes] = (mask, int(mask.sum()))
        return self._masks[codes]

    # -- labels and reports ---------------------------------------------------------------------------------------
    def class_names_of(self, ids: np.ndarray) -> list[list[str | None]]:
        return [[self.names[self._labels[i]] if i >= 0 else None for i in row] for row in ids]

    def label_codes(self, ids: np.ndarray) -> np.ndarray:
        self._layout()
        out = np.full(ids.shape, -1, dtype=np.int64)
        valid = ids >= 0
        out[valid] = self._labels[ids[valid]]
        return out

    def index_report(self) -> dict[str, Any]:
        """As one process's :meth:`Memory.index_report` (global entries; the policy's state is the same on every
        rank)."""
        self._layout()
        return policy.report(self)

    # -- size (a collective) --------------------------------------------------------------------------------------
    def shard_bytes(self) -> int:
        """Bytes of this rank's shard as saved: its index and 8 bytes of label per local entry."""
        self._layout()
        return self.local.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes one index holding every entry would take, plus 8 bytes of label per entry
        (:func:`bench.memory.shard_files.total_bytes`). A collective."""
        return shard_files.total_bytes(self)

    def bytes_per_entry(self) -> float:
        return self.nbytes / max(1, len(self))

    # -- persistence (bench.memory.shard_files) -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write this rank's shard and, on rank 0, ``shards.json`` (:func:`bench.memory.shard_files.save`)."""
        shard_files.save(self, path)

    @classmethod
    def load(cls, path: str | Path, embedder: str | None, dim: int, spec: IndexSpec,
             lists_dir: str | Path | None = None) -> ShardedMemory:
        """A saved sharded step (:func:`bench.memory.shard_files.load`)."""
        return shard_files.load(cls, path, embedder, dim, spec, lists_dir)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of per-shard results (``Q×k`` scores and global ids each): descending score, ties by lower id."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    ids = np.where(ids < 0, np.iinfo(np.int64).max, ids)  # padding sorts last among equal (-inf) scores
    best_s, best_i = policy.top_k(scores, ids, k)
    best_i[(best_i == np.iinfo(np.int64).max) | ~np.isfinite(best_s)] = -1
    return best_s, best_i
