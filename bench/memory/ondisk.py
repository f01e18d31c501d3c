"""Inverted lists on disk (``knn.on_disk=true``): an IVF memory whose entries live in a memory-mapped file.

An IVF index keeps two things: the coarse quantizer with its ``nlist`` centroids and a table of the lists (small,
in RAM), and the lists themselves: each entry's code and id (``4·dim + 8`` bytes for ivf-flat; the bulk). With
``on_disk`` the lists are a FAISS ``OnDiskInvertedLists``: a file mapped with ``mmap(MAP_SHARED)``. Adding writes
through the mapping (the file grows by doubling), searching reads the probed lists through it, so the kernel's page
cache holds what is in use and gives it back under pressure: anonymous resident memory (``RssAnon``) stays the
index's RAM part (:func:`bench.memory.index_bytes` of the index: centroids and list table), the labels (8 bytes
per entry) and per-call buffers, whatever the number of entries. ``benchmarks/perf_ondisk.py`` measures it.

Where the files are:

- **Working lists**, the file a live memory adds to, are in a private folder (:class:`ListsFolder`) made inside
  the ``lists_dir`` given to :class:`bench.memory.Memory` (a run passes its ``<run>/memory``) or, for a memory
  made without one (tests, benchmarks), inside ``$TMPDIR``. The folder is ``.lists-<pid>-<host>-<random>``,
  removed when the memory is garbage-collected or the process exits; in a ``lists_dir``, folders left by a killed
  process of the same host are removed by the next memory made there. If ``$TMPDIR`` is a tmpfs, the "disk" is
  RAM after all: pass ``lists_dir``.
- **Saved lists**: :meth:`Memory.save` writes a compact copy, ``lists.ivfdata`` (lists back to back, no free
  space), next to ``index.faiss`` (which holds the list table), both under the sha256 of ``meta.json``. A saved
  step is never written again: loading maps its lists read-only and copies them into a new working file, so
  adding after a resume from step t leaves step t as it was.

Two FAISS details decide the code. ``OnDiskInvertedLists.merge_from`` lays out lists compactly but leaves its
free-space table saying the whole file is free, so adding after it overwrites entries: merged files are only read
(saved copies); working files are filled with ``add_entries`` list by list. And FAISS's prefetch threads (32 per
search, meant for network disks) are turned off: on a local disk they only add thread starts to every search.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import weakref
from pathlib import Path
from typing import Any

from bench.errors import DamagedStateError

LISTS_FILE = "lists.ivfdata"
_FOLDER_PREFIX = ".lists-"


class ListsFolder:
    """The folder of one memory's working lists files: made on first use inside ``parent`` (``$TMPDIR`` when
    None), removed with everything in it when this object is garbage-collected or the process exits."""

    def __init__(self, parent: str | Path | None = None) -> None:
        self.parent = Path(parent) if parent is not None else None
        self._path: Path | None = None
        self._cleanup: Any = None

    @property
    def path(self) -> Path:
        if self._path is None:
            if self.parent is not None:
                self.parent.mkdir(parents=True, exist_ok=True)
                _remove_orphans(self.parent)
            prefix = f"{_FOLDER_PREFIX}{os.getpid()}-{socket.gethostname()}-"
            self._path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.parent))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self._path, ignore_errors=True)
        return self._path


def _remove_orphans(parent: Path) -> None:
    """Remove lists folders of this host whose process no longer runs (a killed run cannot clean up after
    itself). Folders of other hosts (ranks of a multi-node run sharing the run folder) are left alone."""
    host = socket.gethostname()
    for folder in parent.glob(f"{_FOLDER_PREFIX}*-*-*"):
        pid, _, rest = folder.name[len(_FOLDER_PREFIX):].partition("-")
        if (pid.isdigit() and rest.rpartition("-")[0] == host and int(pid) != os.getpid()
                and not _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _ivf(index: Any) -> Any:
    """The IVF inside ``index`` (through a PCA pre-transform), or None for other kinds."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        return None


def on_disk_lists(index: Any) -> Any:
    """The ``OnDiskInvertedLists`` of an IVF index, or None (in-RAM lists, or not an IVF)."""
    import faiss

    ivf = _ivf(index)
    if ivf is None:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def _copy_lists(source: Any, target: Any) -> None:
    """Append every list of ``source`` to the same list of ``target``, in order (so ids and the order FAISS scans
    a list in, hence ties, stay as they were). Both may be memory-mapped: nothing is copied into Python."""
    for list_no in range(source.nlist):
        n = source.list_size(list_no)
        if n:
            target.add_entries(list_no, n, source.get_ids(list_no), source.get_codes(list_no))


def to_disk(index: Any, directory: str | Path) -> Any:
    """Move the inverted lists of a trained IVF ``index`` (entries already in it included) into a new file in
    ``directory``; returns ``index``, whose lists then live there. The file is removed when ``index`` is
    garbage-collected. An index whose lists are already on disk and writable, or that is not an IVF (the exact
    phase of kind ``auto``), is returned as it is."""
    import faiss

    ivf = _ivf(index)
    current = on_disk_lists(index)
    if ivf is None or (current is not None and not current.read_only):
        return index
    fd, name = tempfile.mkstemp(dir=directory, suffix=".ivfdata")
    os.close(fd)
    lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, name)
    lists.prefetch_nthread = 0
    _copy_lists(faiss.downcast_InvertedLists(ivf.invlists), lists)
    ivf.replace_invlists(lists, True)  # frees the lists it had (RAM, or a read-only mapping of a saved file)
    lists.this.disown()  # the index owns it now
    weakref.finalize(index, _unlink, name)
    return index


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _to_ram(index: Any) -> Any:
    import faiss

    ivf = _ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    _copy_lists(faiss.downcast_InvertedLists(ivf.invlists), lists)
    ivf.replace_invlists(lists, True)
    lists.this.disown()
    return index


def lists_bytes(index: Any) -> int:
    """Bytes of the lists' entries when on disk (what :func:`write_index` saves as ``lists.ivfdata``); 0 for an
    index whose lists are in RAM (:func:`bench.memory.index_bytes` counts those)."""
    lists = on_disk_lists(index)
    if lists is None:
        return 0
    entry = lists.code_size + 8  # code + int64 id
    return sum(lists.list_size(i) for i in range(lists.nlist)) * entry


def write_index(index: Any, file: Path) -> bool:
    """Write ``index`` to ``file``; an index with on-disk lists also gets a compact copy of them in
    ``file.parent / LISTS_FILE``, with the table in ``file`` describing the copy. Returns whether it did."""
    import faiss

    live = on_disk_lists(index)
    if live is None:
        faiss.write_index(index, str(file))
        return False
    ivf = _ivf(index)
    compact = faiss.OnDiskInvertedLists(live.nlist, live.code_size, str(file.parent / LISTS_FILE))
    if ivf.ntotal:
        compact.merge_from_1(live, False)  # read-only from now on (see the module docstring)
    else:
        Path(file.parent / LISTS_FILE).touch()
    # Serialise the index with the copy's table: swap the copy in for the write, then put the live lists back.
    ivf.own_invlists = False
    try:
        ivf.replace_invlists(compact, False)
        faiss.write_index(index, str(file))
    finally:
        ivf.replace_invlists(live, False)
        ivf.own_invlists = True
    del compact  # unmaps the copy
    return True


def read_index(file: Path, saved_on_disk: bool, keep_on_disk: bool) -> Any:
    """Read a saved index. ``saved_on_disk``: its lists are in ``file.parent / LISTS_FILE`` (see
    :func:`write_index`). With ``keep_on_disk`` the lists are mapped read-only from the saved files, ready for
    :func:`to_disk` to copy them into a working file (never read into RAM); without, they are read into RAM."""
    import faiss

    if not saved_on_disk:
        return faiss.read_index(str(file), faiss.IO_FLAG_MMAP if keep_on_disk else 0)
    index = faiss.read_index(str(file), faiss.IO_FLAG_SKIP_IVF_DATA)
    lists = on_disk_lists(index)
    if lists is None:
        raise DamagedStateError(file, f"holds no on-disk inverted lists, but meta.json says its lists are in "
                                f"{LISTS_FILE}")
    data = file.parent / LISTS_FILE
    try:
        size = data.stat().st_size
    except OSError as e:
        raise DamagedStateError(data, f"cannot be read: {e.strerror}") from e
    if size < lists.totsize:  # mapping past the end would crash on first access
        raise DamagedStateError(data, f"holds {size} bytes, {file.name} describes {lists.totsize}")
    lists.filename, lists.read_only, lists.prefetch_nthread = str(data), True, 0
    if lists.totsize:
        lists.do_mmap()
    return index if keep_on_disk else _to_ram(index)
