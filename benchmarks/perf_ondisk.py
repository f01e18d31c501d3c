"""Resident memory of an IVF memory with its lists in RAM and on disk (``knn.on_disk``), and equal search results.

Run: ``.venv/bin/python benchmarks/perf_ondisk.py [--n 500000] [--dim 384] [--out results/perf/ondisk.json]``.

Each variant (lists in RAM or on disk, at ``SMALL`` entries and at ``n``) runs in its own process, so one's
memory does not show in another's figures. It builds an ``ivf-flat`` memory of synthetic clustered embeddings
(``perf_memory.clustered``: 1000 classes), generated and added ``CHUNK`` at a time as adapt adds them (never all
in RAM at once), then searches it restricted to a 150-class vocabulary as evaluation does (k = 16, 64 queries per
image) and once unrestricted. A thread samples ``RssAnon`` (anonymous resident memory, /proc/self/status: the
heap, not the page cache holding the mapped lists file) every 2 ms: before adding (imports, queries, an empty
memory), the peak while adding, after adding, the peak while searching, after searching.

The bound for the on-disk memory of ``n`` entries, stated before measuring: what the on-disk memory of ``SMALL``
entries took (past training, so every transient of adding has happened once: the exact buffer of ``train_size``
vectors and its copies, batches, and whatever the allocator keeps of them), plus, per entry added beyond that,
what stays in RAM (``BYTES_PER_ENTRY``: the int64 label, and one vocabulary's selector, a bool mask and its
bitmap), plus the growth of the index's RAM part (``index_bytes``: with on-disk lists, centroids and list table),
plus ``MARGIN``. While adding, 8 more bytes per entry: ``Memory.add`` concatenates the labels. Neither grows with
the ``4·dim`` bytes per entry the vectors take. The script fails if the on-disk memory exceeds its bound or if
the two placements' ids and scores differ anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import perf_memory  # noqa: E402

from bench.io import atomic_write_json  # noqa: E402
from bench.memory import LABEL_BYTES, IndexSpec, Memory, index_bytes  # noqa: E402
from bench.memory.ondisk import on_disk_lists  # noqa: E402

# The run's ivf-flat setting (train at 65,536 entries, 8 lists probed) with 512 lists: below the 1024 from which
# FAISS finds lists through an HNSW graph, whose multi-threaded construction would differ between the processes
# and make comparing their results meaningless.
SPEC = IndexSpec("ivf-flat", nlist=512, train_size=65536, nprobe=8)
SMALL = 2 * SPEC.train_size  # the memory the bound is calibrated on
CHUNK = 16384  # entries generated and added at a time
K = perf_memory.K
QUERIES_PER_IMAGE = perf_memory.QUERIES_PER_IMAGE
BYTES_PER_ENTRY = LABEL_BYTES + 1.125  # in RAM with on-disk lists: label, selector mask and bitmap
ADD_BYTES_PER_ENTRY = BYTES_PER_ENTRY + LABEL_BYTES  # while adding: the labels' concatenation
MARGIN = 32 << 20  # Python objects, allocator arenas, per-call FAISS buffers
MiB = 1 << 20


def rss_anon() -> int:
    """Anonymous resident memory of this process, in bytes (/proc/self/status, RssAnon)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no RssAnon line (a Linux kernel of 4.5 or later is needed)")


class PeakSampler:
    """Highest :func:`rss_anon` seen since the last :meth:`reset`, sampled by a thread (FAISS releases the GIL)."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s, self.peak, self._stop = every_s, rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(self.every_s)

    def reset(self) -> int:
        self.peak = rss_anon()
        return self.peak

    def read(self) -> int:
        self.peak = max(self.peak, rss_anon())
        return self.peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (a tmpfs would keep the 'disk' lists in RAM after all)."""
    path, best, kind = path.resolve(), -1, "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fstype, *_ = line.split()
            if (path == Path(mount) or Path(mount) in path.parents) and len(mount) > best:
                best, kind = len(mount), fstype
    return kind


def variant(on_disk: bool, n: int, dim: int, images: int, work: Path) -> dict[str, Any]:
    """Build, search and measure one memory; writes its results (ids, scores) as npy files into ``work``."""
    syn = perf_memory.Synthetic()
    names = np.array(syn.names())
    allowed = syn.allowed()
    queries, _ = perf_memory.clustered(images * QUERIES_PER_IMAGE, dim, syn, seed=1, only_vocabulary=True)
    memory = Memory(dim, "synthetic", dataclasses.replace(SPEC, on_disk=on_disk),
                    lists_dir=work / "lists" if on_disk else None)
    sampler = PeakSampler()
    before = sampler.reset()

    start = time.perf_counter()
    for i, first in enumerate(range(0, n, CHUNK)):
        x, which = perf_memory.clustered(min(CHUNK, n - first), dim, syn, seed=1000 + i)
        memory.add(x, names[which % syn.classes].tolist())
        del x, which
    add_s = time.perf_counter() - start
    peak_add, after_add = sampler.read(), rss_anon()

    sampler.reset()
    memory.search(queries[:QUERIES_PER_IMAGE], K, allowed)  # warm-up: builds the vocabulary's selector
    start = time.perf_counter()
    found = [memory.search(queries[i:i + QUERIES_PER_IMAGE], K, allowed)
             for i in range(0, len(queries), QUERIES_PER_IMAGE)]
    search_ms = 1000 * (time.perf_counter() - start) / images
    unrestricted = memory.search(queries[:QUERIES_PER_IMAGE], K)
    peak_search, after_search = sampler.read(), rss_anon()
    sampler.close()

    np.save(work / "ids.npy", np.concatenate([f[1] for f in found] + [unrestricted[1]]))
    np.save(work / "scores.npy", np.concatenate([f[0] for f in found] + [unrestricted[0]]))
    result = {"on_disk": on_disk, "entries": len(memory), "add_s": add_s, "search_ms_per_image": search_ms,
              "rss_anon_before_mib": before / MiB, "rss_anon_peak_adding_mib": peak_add / MiB,
              "rss_anon_after_adding_mib": after_add / MiB, "rss_anon_peak_searching_mib": peak_search / MiB,
              "rss_anon_after_searching_mib": after_search / MiB,
              "index_ram_part_mib": index_bytes(memory.index) / MiB,  # on disk: centroids and list table only
              "memory_nbytes_mib": memory.nbytes / MiB}
    if on_disk:
        lists_file = Path(on_disk_lists(memory.index).filename)
        result.update({"lists_file_mib": lists_file.stat().st_size / MiB,
                       "lists_file_allocated_mib": lists_file.stat().st_blocks * 512 / MiB,
                       "lists_filesystem": filesystem_of(lists_file)})
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}


def run_variant(on_disk: bool, n: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / f"{'disk' if on_disk else 'ram'}-{n}"
    folder.mkdir()
    command = [sys.executable, __file__, "--variant", "disk" if on_disk else "ram", "--n", str(n),
               "--dim", str(args.dim), "--images", str(args.images), "--work", str(folder)]
    print(f"[perf_ondisk] lists {'on disk' if on_disk else 'in RAM'}: {n} entries, dim {args.dim}", flush=True)
    # FAISS prints every growth of the lists file on stdout: keep that out of the way (stderr still shows)
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True, cwd=REPO)
    result = json.loads((folder / "result.json").read_text())
    result["ids"], result["scores"] = np.load(folder / "ids.npy"), np.load(folder / "scores.npy")
    return result


def bounds(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    """The stated bound (MiB) of the on-disk memory of ``large`` entries, calibrated on the ``small`` one."""
    added = large["entries"] - small["entries"]
    index_growth = large["index_ram_part_mib"] - small["index_ram_part_mib"]
    margin = MARGIN / MiB
    return {"searching": small["rss_anon_peak_searching_mib"] + BYTES_PER_ENTRY * added / MiB + index_growth + margin,
            "adding": small["rss_anon_peak_adding_mib"] + ADD_BYTES_PER_ENTRY * added / MiB + index_growth + margin}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500_000, help="entries in the memory")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--images", type=int, default=100, help="restricted searches of 64 queries")
    parser.add_argument("--out", default="results/perf/ondisk.json")
    parser.add_argument("--work", help="folder for the lists and results (default: a temporary one)")
    parser.add_argument("--variant", choices=["ram", "disk"], help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args(argv)
    if args.variant:
        result = variant(args.variant == "disk", args.n, args.dim, args.images, Path(args.work))
        (Path(args.work) / "result.json").write_text(json.dumps(result))
        return 0

    if args.n <= SMALL:
        parser.error(f"--n must exceed {SMALL} (the memory the bound is calibrated on)")
    with tempfile.TemporaryDirectory(prefix="perf-ondisk-", dir=args.work) as tmp:
        runs = {(on_disk, n): run_variant(on_disk, n, args, Path(tmp)) for n in (SMALL, args.n)
                for on_disk in (False, True)}
    equal = {n: {"ids": bool(np.array_equal(runs[False, n].pop("ids"), runs[True, n].pop("ids"))),
                 "scores": bool(np.array_equal(runs[False, n].pop("scores"), runs[True, n].pop("scores")))}
             for n in (SMALL, args.n)}
    small, large = runs[True, SMALL], runs[True, args.n]
    bound = bounds(small, large)
    within = {"searching": large["rss_anon_peak_searching_mib"] <= bound["searching"],
              "adding": large["rss_anon_peak_adding_mib"] <= bound["adding"]}
    added = args.n - SMALL
    growth = {("disk" if on_disk else "ram"): round((runs[on_disk, args.n]["rss_anon_peak_searching_mib"]
                                                     - runs[on_disk, SMALL]["rss_anon_peak_searching_mib"])
                                                    * MiB / added, 1) for on_disk in (False, True)}
    result = {
        "what": "RssAnon of an ivf-flat memory with its inverted lists in RAM and on disk (knn.on_disk=true), and "
                "their search results compared (benchmarks/perf_ondisk.py)",
        "index": {k: v for k, v in dataclasses.asdict(SPEC).items() if k != "on_disk"},
        "entries": args.n, "calibrated_on_entries": SMALL, "dim": args.dim,
        "chunk": CHUNK, "k": K, "queries_per_image": QUERIES_PER_IMAGE, "images": args.images,
        "vectors_mib": round(args.n * args.dim * 4 / MiB, 1),
        "bound": "on disk, n entries: peak RssAnon of the on-disk memory of calibrated_on_entries + "
                 f"{BYTES_PER_ENTRY} bytes per added entry (searching; {ADD_BYTES_PER_ENTRY} while adding) + "
                 f"growth of the index's RAM part + {MARGIN // MiB} MiB",
        "bound_mib": {k: round(v, 1) for k, v in bound.items()}, "within_bound": within,
        "rss_anon_bytes_per_added_entry_searching": growth, "bytes_per_entry_vectors": 4 * args.dim + 8,
        "equal_results": {str(n): v for n, v in equal.items()},
        "variants": {f"{'disk' if d else 'ram'}-{n}": v for (d, n), v in runs.items()},
        "machine": {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()],
                    "platform": platform.platform(), "python": platform.python_version()},
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    failed = [f"search results differ at {n} entries" for n, v in equal.items() if not all(v.values())]
    failed += [f"RssAnon while {phase} exceeded the bound" for phase, ok in within.items() if not ok]
    for line in failed:
        print(f"[perf_ondisk] FAIL: {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
