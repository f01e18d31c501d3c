"""Peak memory per process of a memory held whole by one process against one sharded over two (``knn.shard``).

Run: ``.venv/bin/python benchmarks/perf_shard.py [--n 1000000] [--dim 384] [--kind flat]
[--out results/perf/shard.json]``.

Each variant runs in fresh processes: ``one`` (one process, a whole :class:`bench.memory.Memory`) and ``two``
(two processes over gloo on this machine, a :class:`bench.memory.sharded.ShardedMemory` each). Every process
generates the same global stream of synthetic clustered embeddings (``perf_memory.clustered``, 1000 classes),
``CHUNK`` entries at a time as adapt adds them, and adds each chunk (a sharded memory indexes its half); then it
searches ``SEARCHES`` images' worth of queries restricted to a 150-class vocabulary (k = 16), as evaluation does.
Measured per process from /proc/self/status: ``VmHWM`` (peak resident set) and ``RssAnon`` after adding, before
adding (imports: torch, FAISS) and at the end, and the bytes of the process's index as serialised
(:attr:`Memory.nbytes` of its local part). The script fails if the two variants' neighbours differ anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402
import perf_memory  # noqa: E402

from bench.io import atomic_write_json  # noqa: E402

CHUNK = 32768
SEARCHES = 8
MiB = 1 << 20


def _status() -> dict[str, int]:
    """VmHWM and RssAnon of this process, bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "VmRSS"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _process(rank: int, world: int, port: int, n: int, dim: int, kind: str, out: Path) -> None:
    from bench.memory import IndexSpec, Memory
    from bench.memory.sharded import ShardedMemory

    syn = perf_memory.Synthetic()
    names = syn.names()
    queries = perf_memory.recall_queries(dim, syn)[: perf_memory.QUERIES_PER_IMAGE]
    spec = IndexSpec(kind)
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        memory: Any = ShardedMemory(dim, "synthetic", spec)
    else:
        memory = Memory(dim, "synthetic", spec)
    before = _status()
    tick = time.perf_counter()
    for i, start in enumerate(range(0, n, CHUNK)):
        x, which = perf_memory.clustered(min(CHUNK, n - start), dim, syn, seed=1000 + i)
        memory.add(x, [names[c % syn.classes] for c in which])
        del x, which
    add_s = time.perf_counter() - tick
    added = _status()
    tick = time.perf_counter()
    found = [memory.search(queries, perf_memory.K, syn.allowed())[1] for _ in range(SEARCHES)]
    if world > 1:
        memory.finish_searches()
    search_s = time.perf_counter() - tick
    local = memory.local if world > 1 else memory
    row = {"rank": rank, "entries_total": len(memory), "entries_here": len(local),
           "index_bytes_here": local.nbytes, "memory_bytes_total": memory.nbytes,
           "rss_before_add_mib": round(before["VmRSS"] / MiB, 1),
           "rss_anon_after_add_mib": round(added["RssAnon"] / MiB, 1),
           "peak_rss_mib": round(_status()["VmHWM"] / MiB, 1),
           "add_s": round(add_s, 2), "search_ms_per_image": round(1000 * search_s / SEARCHES, 2)}
    np.save(out / f"ids-{world}-{rank}.npy", np.stack(found))
    (out / f"row-{world}-{rank}.json").write_text(json.dumps(row))
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _variant(world: int, n: int, dim: int, kind: str, tmp: Path) -> list[dict[str, Any]]:
    port = _free_port()
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    procs = [subprocess.Popen([sys.executable, __file__, "--process", str(r), str(world), str(port), str(n),
                               str(dim), kind, str(tmp)], env=env, cwd=REPO) for r in range(world)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"perf_shard: the {world}-process variant failed (exit {p.returncode})")
    return [json.loads((tmp / f"row-{world}-{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--kind", default="flat", help="index kind (flat, flat-fp16, ivf-flat, ivf-pq, auto)")
    parser.add_argument("--out", default=str(REPO / "results/perf/shard.json"))
    parser.add_argument("--process", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.process:
        r, w, port, n, dim, kind, out = args.process
        _process(int(r), int(w), int(port), int(n), int(dim), kind, Path(out))
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = _variant(1, args.n, args.dim, args.kind, Path(tmp))
        two = _variant(2, args.n, args.dim, args.kind, Path(tmp))
        reference = np.load(Path(tmp) / "ids-1-0.npy")
        same = all(np.array_equal(np.load(Path(tmp) / f"ids-2-{r}.npy"), reference) for r in range(2))
    if not same:
        raise SystemExit("perf_shard: the sharded memory's neighbours differ from one process's")
    result = {
        "what": "peak resident memory per process: a memory of n entries held whole by 1 process vs sharded over "
                "2 (gloo, this machine); the same neighbours (checked)",
        "n": args.n, "dim": args.dim, "kind": args.kind, "chunk": CHUNK, "searches": SEARCHES,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "one_process": one, "two_processes": two, "same_neighbours": same,
        "peak_rss_ratio_two_over_one": round(max(r["peak_rss_mib"] for r in two) / one[0]["peak_rss_mib"], 3),
        "index_bytes_ratio_two_over_one": round(max(r["index_bytes_here"] for r in two) / one[0]["index_bytes_here"],
                                                3),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("what", "machine")}, indent=1))


if __name__ == "__main__":
    main()
