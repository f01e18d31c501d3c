"""The files and bytes of a sharded memory (:class:`bench.memory.sharded.ShardedMemory`, whose thin ``save`` and
``load`` call these functions; this module does not import it, it is given the memory or its class).

**Saving.** Each rank writes its shard, ``<step>/shard-<r>-of-<W>/`` (a :class:`Memory` folder) and
``<step>/shard-<r>-of-<W>.ids.npy`` (its global ids, with a checksum sidecar); rank 0 writes ``shards.json``
(world size, entries, bytes). A sharded step resumes with the same number of processes only (a clear error
otherwise); :attr:`ShardedMemory.nbytes` (:func:`total_bytes`) is what one index holding every entry takes (each
shard's bytes, less the index header and shared quantizer each extra shard repeats), so records do not depend on
the process count.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import DamagedStateError, MemoryMismatchError
from bench.io import read_state_json
from bench.memory.spec import LABEL_BYTES, IndexSpec
from bench.memory.store import Memory

SHARDS_FILE = "shards.json"


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank}-of-{world}"


def is_sharded(path: str | Path) -> bool:
    """Whether a saved step folder holds a sharded memory."""
    return (Path(path) / SHARDS_FILE).exists()


def save(memory: Any, path: str | Path) -> None:
    """Write this rank's shard of ``memory`` (a :class:`ShardedMemory`) under step folder ``path``; rank 0 also
    writes ``shards.json``. A collective (the total bytes), so every rank calls it."""
    from bench.distributed import barrier
    from bench.io import atomic_write_json, make_dirs, write_state_bytes

    world, me = memory._layout()
    path = Path(path)
    total_bytes = memory.nbytes
    make_dirs(path)
    name = shard_name(me, world)
    memory.local.save(path / name)
    buffer = io.BytesIO()
    np.save(buffer, memory._mine)
    write_state_bytes(path / f"{name}.ids.npy", buffer.getvalue())
    if me == 0:
        shards = [shard_name(r, world) for r in range(world)]
        atomic_write_json(path / SHARDS_FILE, {"world": world, "entries": len(memory), "bytes": total_bytes,
                                               "shared_bytes": memory._shared_bytes, "names": memory.names,
                                               "shards": shards})
    barrier()


def load(cls: Any, path: str | Path, embedder: str | None, dim: int, spec: IndexSpec,
         lists_dir: str | Path | None = None) -> Any:
    """A saved sharded step as a ``cls`` (:class:`ShardedMemory`); this rank's shard is read at the first
    operation (when the rank is known)."""
    path = Path(path)
    meta = shards_meta(path)
    if embedder is None:
        raise ValueError("ShardedMemory.load needs the embedder identity")
    memory = cls(dim, embedder, spec, lists_dir=lists_dir)
    memory._saved = path
    memory._saved_entries = int(meta["entries"])
    memory._shared_bytes = int(meta.get("shared_bytes", memory._shared_bytes))
    for name in meta["names"]:
        memory._codes[name] = len(memory.names)
        memory.names.append(name)
    return memory


def read(memory: Any, path: Path, owner_dtype: Any) -> None:
    """Read this rank's shard of the step saved at ``path`` into ``memory`` (its rank and world size known), and
    every entry's label and owner (``owner_dtype``) from all the shards. A collective."""
    from bench.distributed import all_gather
    from bench.io import read_state_bytes

    meta = shards_meta(path)
    world, me = memory._world, memory._rank
    if meta["world"] != world:
        raise MemoryMismatchError(f"{path}: the memory was saved in {meta['world']} shards (knn.shard, "
                                  f"{meta['world']} processes) but this run has {world}: resume it with "
                                  f"devices x num_nodes = {meta['world']}")
    name = shard_name(me, world)
    memory.local = Memory.load(path / name, memory.embedder, memory.dim, memory.spec, lists_dir=memory._lists_dir)
    try:
        mine = np.load(io.BytesIO(read_state_bytes(path / f"{name}.ids.npy")))
    except ValueError as e:
        raise DamagedStateError(path / f"{name}.ids.npy", f"cannot be read: {e}") from e
    if len(mine) != len(memory.local) or memory.local.names != memory.names:
        raise DamagedStateError(path / name, f"holds {len(memory.local)} entries and {len(memory.local.names)} "
                                f"classes, {name}.ids.npy {len(mine)} ids and {SHARDS_FILE} "
                                f"{len(memory.names)} classes: the files disagree")
    parts = all_gather((mine, memory.local.labels))
    total = sum(len(m) for m, _ in parts)
    if total != meta["entries"]:
        raise DamagedStateError(path / SHARDS_FILE, f"says {meta['entries']} entries, the shards hold {total}")
    memory._labels = np.zeros(total, np.int64)
    memory.owner = np.zeros(total, owner_dtype)
    for r, (ids, labels) in enumerate(parts):
        memory._labels[ids], memory.owner[ids] = labels, r
    memory._mine = np.asarray(mine, np.int64)
    memory._saved = None


def shards_meta(path: Path) -> dict[str, Any]:
    return read_state_json(path / SHARDS_FILE, {"world", "entries", "names"}, "a sharded memory")


def total_bytes(memory: Any) -> int:
    """Bytes one index holding every entry of ``memory`` (a :class:`ShardedMemory`) would take, plus 8 bytes of
    label per entry: the shards' index bytes less ``W - 1`` copies of what every shard repeats (the serialised empty
    index: header, quantizer, PCA), with the table of list sizes counted as one index writes it. A collective."""
    from bench.distributed import all_gather

    world, _ = memory._layout()
    sizes = list_sizes(memory.local._cpu_index())
    own = memory.local.nbytes - LABEL_BYTES * len(memory.local)
    parts = all_gather((own - (sizes_bytes(sizes) if sizes is not None else 0), sizes))
    total = sum(p[0] for p in parts) - (world - 1) * memory._shared_bytes
    if sizes is not None:  # the empty index's table (counted in _shared_bytes) stands for the merged one
        total += (world - 1) * sizes_bytes(np.zeros(len(sizes), np.int64))
        total += sizes_bytes(np.sum([p[1] for p in parts], axis=0))
    return total + LABEL_BYTES * len(memory)


def list_sizes(index: Any) -> np.ndarray | None:
    """Entries per inverted list of an IVF index in RAM (None for other indexes)."""
    import faiss

    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    if not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.ArrayInvertedLists):
        return None
    return np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)


def sizes_bytes(sizes: np.ndarray) -> int:
    """Bytes FAISS writes for the table of list sizes (index_write.cpp: all sizes when more than half the lists
    hold entries, else (list, size) pairs of the others; a vector length first)."""
    filled = int((sizes > 0).sum())
    return 8 + (8 * len(sizes) if filled > len(sizes) // 2 else 16 * filled)
