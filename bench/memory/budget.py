"""A memory budget while adapting (``knn.max_per_class``, ``knn.max_entries``): a deterministic reservoir.

Every candidate entry (a ground-truth segment of a task's adapt split, in the order one process reads the split)
gets a *priority* drawn from a generator seeded by ``(run seed, step)`` at its position in the step's stream, so
the draw depends only on the global stream, never on how many processes embedded it. The memory keeps, per class,
the ``max_per_class`` entries with the lowest priorities, and of those at most ``max_entries`` in all (again the
lowest). Since priorities are independent uniforms, the kept entries of a class are a uniform sample without
replacement of every entry of that class seen so far: the sample a classic reservoir (Vitter's algorithm R) keeps,
drawn in a way that makes the kept set a pure function of the stream and the seed.

When it is applied: once per step, after the adapt pass and before anything of the step enters the memory. Old
entries that lose their place are removed first, then the step's winners are added in stream order, so the
memory never holds more than the budget, and entry ids stay ``0..len-1`` in insertion order. Removing costs one
pass over the index (:func:`keep_entries`: flat kinds compact their code array, IVF kinds rebuild their lists
without the dropped entries, codes copied, nothing re-encoded), done only in a step that drops old entries; the
step's candidates are held until the end of its adapt pass, as a multi-process run already does.

The replay baseline's exemplar buffer (``finetune.replay_per_class``) bounds its memory per class the same way;
``knn.max_per_class`` makes kNN-CLIP comparable with it at the same number of stored examples.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.errors import ConfigError

if TYPE_CHECKING:
    from bench.memory.store import Memory

RESERVOIR_FILE = "reservoir.npz"  # next to a saved step's memory: the kept entries' priorities, the dropped count


def priorities(seed: int, step: int, n: int) -> np.ndarray:
    """float64 ``[n]`` priorities of step ``step``'s ``n`` candidates, in stream order."""
    return np.random.default_rng([seed, step]).random(n)


def select(labels: np.ndarray, keys: np.ndarray, max_per_class: int, max_entries: int) -> np.ndarray:
    """Boolean ``[N]``: which entries the budget keeps (per class the lowest keys, then overall; ties by position).

    labels: int64 ``[N]`` class codes; keys: float64 ``[N]``; 0 means no bound."""
    n = len(labels)
    keep = np.ones(n, dtype=bool)
    position = np.arange(n)
    if max_per_class and n:
        order = np.lexsort((position, keys, labels))
        grouped = labels[order]
        rank_in_class = position - np.searchsorted(grouped, grouped, side="left")
        keep[order[rank_in_class >= max_per_class]] = False
    if max_entries and keep.sum() > max_entries:
        kept = np.flatnonzero(keep)
        keep[kept[np.lexsort((kept, keys[kept]))][max_entries:]] = False
    return keep


@dataclass
class Reservoir:
    """The budget's state: the priority of every entry the memory holds (insertion order) and the count dropped."""

    seed: int
    max_per_class: int = 0
    max_entries: int = 0
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    dropped: int = 0  # candidates never added plus entries removed, over every step so far

    def plan(self, step: int, memory_names: list[str], memory_labels: np.ndarray, names: list[str]
             ) -> tuple[np.ndarray, np.ndarray]:
        """Which old entries stay and which of step ``step``'s candidates (class ``names``, stream order) enter:
        boolean ``[len(memory)]`` and ``[len(names)]``. Updates the kept priorities and the dropped count."""
        if len(memory_labels) != len(self.keys):
            raise ValueError(f"the reservoir holds {len(self.keys)} priorities but the memory {len(memory_labels)} "
                             "entries")
        codes = {n: i for i, n in enumerate(memory_names)}
        new = np.array([codes.setdefault(n, len(codes)) for n in names], dtype=np.int64)
        fresh = priorities(self.seed, step, len(names))
        keys = np.concatenate([self.keys, fresh])
        keep = select(np.concatenate([memory_labels.astype(np.int64), new]), keys, self.max_per_class,
                      self.max_entries)
        self.keys = keys[keep]
        self.dropped += int((~keep).sum())
        return keep[:len(memory_labels)], keep[len(memory_labels):]

    def save(self, folder: str | Path) -> None:
        from bench.io import write_state_bytes

        buffer = io.BytesIO()
        np.savez(buffer, keys=self.keys, dropped=np.int64(self.dropped))
        write_state_bytes(Path(folder) / RESERVOIR_FILE, buffer.getvalue())

    @classmethod
    def load(cls, folder: str | Path, seed: int, max_per_class: int, max_entries: int, entries: int) -> Reservoir:
        """The reservoir saved with a step whose memory holds ``entries`` entries (a run's budget is part of its
        identity, so a step of a budgeted run always has one; an empty memory needs none)."""
        from bench.errors import DamagedStateError
        from bench.io import read_state_bytes

        file = Path(folder) / RESERVOIR_FILE
        if entries == 0 and not file.exists():
            return cls(seed, max_per_class, max_entries)
        try:
            data = np.load(io.BytesIO(read_state_bytes(file)))
            out = cls(seed, max_per_class, max_entries, np.asarray(data["keys"], np.float64), int(data["dropped"]))
        except (KeyError, ValueError, OSError) as e:
            raise DamagedStateError(file, f"cannot be read: {e}") from e
        if len(out.keys) != entries:
            raise DamagedStateError(file, f"holds {len(out.keys)} priorities, the memory beside it {entries} entries")
        return out


def keep_entries(memory: Memory, keep: np.ndarray) -> None:
    """Remove the entries of ``memory`` where ``keep`` (boolean ``[len(memory)]``) is False; the others keep their
    order and are renumbered ``0..kept-1``."""
    if len(keep) != len(memory):
        raise ValueError(f"keep mask of {len(keep)} entries for a memory of {len(memory)}")
    if keep.all():
        return
    index = compact_index(memory._cpu_index(), keep, memory.spec.kind)
    memory.index = memory._place(index) if memory.trained else index
    memory.labels = memory.labels[keep]
    memory._selector_cache.clear()
    if memory.auto is not None:
        memory.auto.changed()


def compact_index(index: Any, keep: np.ndarray, kind: str) -> Any:
    """The FAISS ``index`` without the entries where ``keep`` is False, the rest renumbered in order (in place)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is None:
        drop = np.flatnonzero(~keep).astype(np.int64)
        try:
            index.remove_ids(faiss.IDSelectorBatch(len(drop), faiss.swig_ptr(drop)))
        except RuntimeError as e:
            raise ConfigError(f"knn.max_per_class / knn.max_entries drop entries from the memory, which "
                              f"knn.index={kind} cannot do (faiss: {str(e).strip().splitlines()[-1]}); use flat, "
                              "flat-fp16, ivf-flat, ivf-pq or auto") from e
        return index
    renumber = np.cumsum(keep) - 1
    old, size = ivf.invlists, ivf.code_size
    lists = faiss.ArrayInvertedLists(ivf.nlist, size)
    for list_no in range(ivf.nlist):
        n = old.list_size(list_no)
        if n == 0:
            continue
        ids = faiss.rev_swig_ptr(old.get_ids(list_no), n).copy()
        codes = faiss.rev_swig_ptr(old.get_codes(list_no), n * size).copy().reshape(n, size)
        stays = keep[ids]
        if stays.any():
            new_ids = np.ascontiguousarray(renumber[ids[stays]], dtype=np.int64)
            new_codes = np.ascontiguousarray(codes[stays])
            lists.add_entries(list_no, len(new_ids), faiss.swig_ptr(new_ids), faiss.swig_ptr(new_codes))
    direct = ivf.direct_map.type != faiss.DirectMap.NoMap
    if direct:
        ivf.make_direct_map(False)
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    ivf.ntotal = int(keep.sum())
    index.ntotal = ivf.ntotal
    if direct:
        ivf.make_direct_map(True)
    return index
