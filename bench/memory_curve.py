"""Accuracy against memory size (``python -m bench memory-curve``): the final evaluation of one finished knn run,
re-scored with its final memory cut down per class and re-indexed in every index kind.

What a point is. A knn run's last row ``R[T][j]`` is every task scored with the final memory. Each point here
replaces that memory and scores the same images, features and proposals again through the run's own head
(:func:`bench.sweep.score_final`), so only the memory differs between points:

- *subsample* points: a fraction ``f`` of each class's entries, in an exact fp32 (``flat``) index. Per class,
  ``ceil(f·n_c)`` entries (at least one, so every class the run remembered keeps a prototype and the curve
  measures fewer examples, not fewer classes) drawn by one random permutation per class (numpy's PCG64 seeded
  with ``--subsample-seed``; classes in the order of their code): the same seed keeps the same entries, and a
  smaller fraction keeps a subset of a larger one. A per-class budget of randomly chosen exemplars is how class-
  incremental methods bound their memory (iCaRL, arXiv 1611.07725, m exemplars per class; random selection as
  in GDumb's class-balanced sampler, ECCV 2020, which finds it as good as herding).
- *kind* points: every entry, in each index kind of :data:`bench.memory.INDEX_KINDS` (product quantisation at a
  few code sizes, and PCA in front of it). A trained kind is trained as in a run: entries arrive step by step
  (the record's memory size after each step) and the index trains on everything that has arrived when
  ``train_size`` (1024, or all entries if fewer) is reached, with lists and probes as the perf benchmark's
  sequence runs (``benchmarks/perf.py`` SEQUENCE_RUNS: ``nlist`` automatic, 16 probed).

The vectors come from the saved index (``reconstruct``): exact for flat, HNSW and IVF-flat storage, lossy (and
said so in the output) for fp16, PQ and PCA. Two anchors are scored too: the run's own memory as saved, which
must reproduce the record's final row (else ``RuntimeError``, as the fusion sweep does), and the base model
alone (``λ = 0``, no memory). Final mIoU is the mean over the last row, as the record's summary
``final_average`` (no value when a task has none). Bytes are :attr:`Memory.nbytes` (serialised index + labels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import ConfigError

FRACTIONS = (0.01, 0.03, 0.1, 0.3, 1.0)
TRAIN_SIZE, NPROBE = 1024, 16  # trained kinds, as benchmarks/perf.py trains them on the embedded sequence
PQ_BYTES = (16, 8)  # product-quantised code sizes besides the automatic one (one byte per dim up to 64)
MARKERS = "sD^v<>pXP*hH"


@dataclass
class Variant:
    """One memory to score: a subsample (``fraction`` < 1 or the whole, flat) or the whole in another kind."""

    group: str  # "subsample" | "kind"
    label: str
    fraction: float
    spec: Any  # IndexSpec
    memory: Any = None  # Memory; None when skipped
    skipped: str = ""  # why this kind could not index this memory


def resolve_run(overrides: Sequence[str]) -> tuple[Any, Any, Path, Any]:
    """The finished knn run the overrides name (``SEQ=``, ``RUN_ID=``, ``output_dir=``, any run key), found as
    ``bench run`` names its folder, and checked by it (config, sequence content, weights). Returns ``(cfg, spec,
    folder, record)``; a missing or unfinished run is a :class:`ConfigError` naming the command that makes it."""
    from bench.config import parse_overrides
    from bench.record import load_record
    from bench.run import build_config, run, run_dir

    given = parse_overrides(list(overrides))
    method = given.get("METHOD", given.get("method", "knn"))
    if method != "knn":
        raise ConfigError(f"command line: METHOD: memory-curve scores knn runs (their memory), got {method!r}")
    cfg, spec = build_config(["METHOD=knn", *overrides])
    folder = run_dir(cfg, spec)
    record_path = folder / "record.json"
    if not record_path.exists() or not load_record(record_path).complete:
        what = "no finished knn run" if not record_path.exists() else "an unfinished knn run"
        command = " ".join(["python -m bench run", *(o for o in overrides if not o.startswith("METHOD=")),
                            "METHOD=knn"])
        raise ConfigError(f"{what} in {folder}: make it with `{command}`")
    with contextlib.redirect_stdout(io.StringIO()):  # finished: run only checks that the folder holds this
        record = run(cfg, spec)                     # config's run (config, sequence, weights) and returns it
    return cfg, spec, folder, record


def stored_vectors(memory: Any, where: Path) -> tuple[np.ndarray, bool]:
    """float32 ``N×dim`` vectors read back from a memory's index (a copy: the memory is left as it was) and
    whether they are the vectors added (fp32 storage) rather than decoded approximations."""
    import faiss

    index = faiss.clone_index(faiss.downcast_index(memory._cpu_index()))
    exact = isinstance(index, (faiss.IndexFlat, faiss.IndexHNSWFlat, faiss.IndexIVFFlat))
    ivf = faiss.try_extract_index_ivf(index)
    try:
        if ivf is not None:
            ivf.make_direct_map()  # IVF lists are not addressable by id without it
        if index.ntotal:
            index.reconstruct(0)  # a kind without reconstruct raises here; inside reconstruct_n's threads it aborts
        vectors = index.reconstruct_n(0, index.ntotal)
    except RuntimeError as e:
        reason = [line for line in str(e).splitlines() if line.strip()][-1:] or [type(e).__name__]
        raise ConfigError(f"{where}: the saved index {memory.spec.describe()} ({type(index).__name__}) cannot "
                          f"give back its vectors ({reason[0].strip()}); memory-curve needs a kind FAISS can "
                          "reconstruct") from e
    return np.ascontiguousarray(vectors, dtype=np.float32), exact


def subsample_ids(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 ids of the entries kept at ``fraction`` of each class (labels: int64 ``[N]`` class codes):
    ``ceil(fraction·n_c)``, at least 1, per class, by one permutation per class drawn from ``seed``."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--fractions: each fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    kept = []
    for code in np.unique(labels):  # sorted: the same draws for the same memory and seed
        ids = np.flatnonzero(labels == code)
        order = rng.permutation(len(ids))
        count = max(1, math.ceil(round(fraction * len(ids), 9)))  # 0.1·30 is 3, not 3.0000000000000004
        kept.append(ids[order[:count]])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def kind_specs(dim: int, entries: int) -> list[tuple[str, Any]]:
    """``(label, IndexSpec)`` for every registered kind, product quantisation at several code sizes and with PCA
    to half the dim; trained kinds with ``train_size`` ≤ the entries, so that they really are trained."""
    from bench.memory import INDEX_KINDS, IndexSpec, auto_pq_m

    trained = {"train_size": max(1, min(TRAIN_SIZE, entries)), "nlist": 0, "nprobe": NPROBE}
    out = []
    for name in INDEX_KINDS.names():
        if name != "ivf-pq":  # kinds that learn nothing (and auto, which sets its own training) keep their defaults
            out.append((name, IndexSpec(name, **trained) if INDEX_KINDS.get(name).trained else IndexSpec(name)))
            continue
        for m in dict.fromkeys((auto_pq_m(dim), *PQ_BYTES)):
            out.append((f"ivf-pq {m} B", IndexSpec(name, pq_m=m, **trained)))
        half = dim // 2
        m = 8 if half % 8 == 0 else auto_pq_m(half)
        out.append((f"pca {half} + ivf-pq {m} B", IndexSpec(name, pca_dim=half, pq_m=m, **trained)))
    return out


def build_memory(vectors: np.ndarray, names: Sequence[str], embedder: str, spec: Any,
                 boundaries: Sequence[int]) -> Any:
    """A memory of ``spec`` holding the vectors, added in the chunks ``boundaries`` cut (one per run step)."""
    from bench.memory import Memory

    memory = Memory(vectors.shape[1], embedder, spec)
    for start, stop in itertools.pairwise(boundaries):
        if stop > start:
            memory.add(vectors[start:stop], names[start:stop])
    if len(memory) != len(vectors) or not memory.trained:
        raise ConfigError(f"index {spec.describe()} holds {len(memory)} of {len(vectors)} entries "
                          f"({'trained' if memory.trained else 'never trained'}) after they were added")
    return memory


def step_boundaries(record: Any, entries: int) -> list[int]:
    """Entry ids where each step's additions start and end, from the record's memory size after each step; one
    chunk when those sizes do not add up to the saved memory (a bounded memory replaces entries)."""
    sizes = [int(s.get("memory_entries") or 0) for s in record.get("state_size") or []]
    if sizes and sizes[-1] == entries and sizes == sorted(sizes):
        return [0, *sizes]
    return [0, entries]


def variants(memory: Any, vectors: np.ndarray, record: Any, fractions: Sequence[float], seed: int
             ) -> list[Variant]:
    """The memories to score: each subsample (flat), then the whole memory in each kind."""
    from bench.memory import IndexSpec

    names = [memory.names[c] for c in memory.labels]
    out = []
    for f in fractions:
        ids = subsample_ids(memory.labels, f, seed)
        spec = IndexSpec("flat")
        out.append(Variant("subsample", f"{100 * f:g} %", f, spec,
                           build_memory(vectors[ids], [names[i] for i in ids], memory.embedder, spec,
                                        [0, len(ids)])))
    boundaries = step_boundaries(record, len(memory))
    whole = next((v for v in out if v.fraction == 1.0), None)
    for label, spec in kind_specs(memory.dim, len(memory)):
        variant = Variant("kind", label, 1.0, spec)
        if whole is not None and spec.structure() == whole.spec.structure():  # flat: the 100 % subsample itself
            variant.memory = whole.memory
            out.append(variant)
            continue
        try:
            spec.check(memory.dim)
            variant.memory = build_memory(vectors, names, memory.embedder, spec, boundaries)
        except (ConfigError, ValueError) as e:  # e.g. too few entries to train PQ codebooks: said in the output
            variant.skipped = str(e)
        out.append(variant)
    return out


def _row(per_task: Sequence[np.ndarray]) -> list[float | None]:
    from bench.sweep import miou_percent

    return [miou_percent(cms.sum(0)) for cms in per_task]


def final_miou(row: Sequence[float | None]) -> float | None:
    """Mean of the final row, as the record's ``final_average``: no value when a task has none."""
    if not row or any(v is None for v in row):
        return None
    return round(math.fsum(row) / len(row), 4)  # type: ignore[arg-type]


def memory_curve(cfg: Any, spec: Any, folder: Path, record: Any, fractions: Sequence[float] = FRACTIONS,
                 seed: int = 0) -> dict[str, Any]:
    """Score every variant (and the two anchors) on the run's final evaluation; returns the table (JSON-ready)."""
    from bench.results import git_commit
    from bench.sweep import score_final

    if not fractions:
        raise ConfigError("--fractions: give at least one fraction")
    start = time.perf_counter()
    made: dict[str, Any] = {}

    def heads(head: Any) -> list[Any]:
        memory = head.memory
        vectors, exact = stored_vectors(memory, folder / "memory" / f"step-{len(spec.tasks)}")
        made.update(source=memory, exact=exact, variants=variants(memory, vectors, record, fractions, seed))
        unique = list({id(v.memory): v.memory for v in made["variants"] if v.memory is not None}.values())
        made["unique"] = [id(m) for m in unique]
        print(f"  {len(unique)} memories built from {len(memory)} entries ({time.perf_counter() - start:.0f} s)",
              flush=True)
        return [head, head.with_settings(dataclasses.replace(cfg.knn, lam=0.0)),
                *(head.with_memory(m) for m in unique)]

    per_image = score_final(folder, cfg, spec, heads, "memories")
    rows = [_row(per_task) for per_task in per_image]
    by_memory = dict(zip(made["unique"], rows[2:]))
    own, recorded = rows[0], list(record["matrix"]["miou"][-1])
    if any((a is None) != (b is None) or (a is not None and abs(a - b) > 1e-3) for a, b in zip(own, recorded)):
        raise RuntimeError(f"re-scoring {folder} with its own memory gives {own}, but its record says {recorded}: "
                           "memory-curve no longer computes what bench run computes")
    source = made["source"]
    points = []
    for v in made["variants"]:
        point: dict[str, Any] = {"group": v.group, "label": v.label, "fraction": v.fraction,
                                 "index": v.spec.structure(), "seed": seed if v.group == "subsample" else None}
        if v.memory is None:
            points.append({**point, "skipped": v.skipped})
            continue
        row = by_memory[id(v.memory)]
        entries, size = len(v.memory), v.memory.nbytes
        points.append({**point, "resolved": dict(v.memory.resolved), "entries": entries,
                       "classes": len(set(v.memory.labels.tolist())), "bytes": size,
                       "bytes_per_entry": round(size / max(1, entries), 2), "final_miou": final_miou(row),
                       "per_task_miou": row})
    return {
        "sequence": spec.name, "method": "knn", "model": cfg.model.name, "run": str(folder), "run_id": folder.name,
        "tasks": [t.name for t in spec.tasks], "protocol": spec.protocol,
        "source_index": source.spec.describe(), "source_entries": len(source), "source_bytes": source.nbytes,
        "vectors": "exact (fp32 storage)" if made["exact"] else "reconstructed by a lossy index",
        "record_final_average": record["summary"]["miou"]["final_average"],
        "run_memory": {"final_miou": final_miou(own), "per_task_miou": own},
        "base_alone": {"final_miou": final_miou(rows[1]), "per_task_miou": rows[1]},
        "fractions": list(fractions), "subsample_seed": seed,
        "train_size": TRAIN_SIZE, "nprobe": NPROBE, "points": points,
        "seconds": round(time.perf_counter() - start, 1), "git_commit": git_commit(),
    }


def plot(table: dict[str, Any], path: Path) -> Path:
    """Two panels: final mIoU against entries and against bytes (log x); subsamples a line, kinds markers."""
    from bench.plots import _pyplot, _save

    plt = _pyplot()
    points = [p for p in table["points"] if p.get("final_miou") is not None]
    subsample = sorted((p for p in points if p["group"] == "subsample"), key=lambda p: p["entries"])
    kinds = [p for p in points if p["group"] == "kind"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for ax, key, xlabel in zip(axes, ("entries", "bytes"), ("memory entries", "memory bytes (index + labels)")):
        ax.plot([p[key] for p in subsample], [p["final_miou"] for p in subsample], "o-", color="C0",
                label="per-class subsample (flat fp32)", zorder=2)
        for p in subsample:
            ax.annotate(p["label"], (p[key], p["final_miou"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=7, color="C0")
        for i, p in enumerate(kinds):
            ax.scatter([p[key]], [p["final_miou"]], marker=MARKERS[i % len(MARKERS)], s=46, color=f"C{i % 9 + 1}",
                       label=p["label"], zorder=3, edgecolors="black", linewidths=0.4)
        base = table["base_alone"]["final_miou"]
        if base is not None:
            ax.axhline(base, ls="--", color="gray", lw=1, label="base model alone (no memory)")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("final mIoU (%)")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{table['sequence']}: final mIoU against memory size ({table['method']}, {table['model']}, "
                 f"run {table['run_id']})", fontsize=10)
    return _save(fig, path)


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(table: dict[str, Any], png: str) -> str:
    tasks = table["tasks"]
    out = [f"# Accuracy against memory size: {table['sequence']} ({table['method']}, {table['model']})", "",
           f"![final mIoU against memory size]({png})", "",
           f"The final evaluation of run `{table['run']}` (memory: {table['source_entries']} entries, "
           f"{table['source_index']}, vectors {table['vectors']}) scored again with its final memory subsampled "
           f"per class (ceil of the fraction of each class's entries, at least one; seed "
           f"{table['subsample_seed']}; exact flat index) and re-indexed in every index kind (trained kinds on the "
           f"entries of the first steps once {table['train_size']} have arrived, {table['nprobe']} lists probed). "
           "Method and sources: `bench/memory_curve.py`. Its own memory reproduces the record "
           f"({_num(table['run_memory']['final_miou'], 2)} against {_num(table['record_final_average'], 2)}); "
           f"the base model alone scores {_num(table['base_alone']['final_miou'])}.", "",
           "| memory | index | entries | bytes | bytes/entry | final mIoU | " + " | ".join(tasks) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(tasks)]
    for p in table["points"]:
        params = {k: v for k, v in {**p["index"], **p.get("resolved", {})}.items() if k != "kind" and v}
        index = p["index"]["kind"] + (f"({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")
        if "skipped" in p:
            out.append(f"| {p['label']} | {index} | skipped: {p['skipped']} |" + " |" * (3 + len(tasks)))
            continue
        cells = " | ".join(_num(v) for v in p["per_task_miou"])
        out.append(f"| {p['label']} | {index} | {p['entries']} | {p['bytes']} | {p['bytes_per_entry']:.1f} | "
                   f"{_num(p['final_miou'])} | {cells} |")
    return "\n".join(out) + "\n"


def write(table: dict[str, Any], out: Path) -> list[Path]:
    """``<out>.json``, ``<out>.png`` and ``<out>.md``, each written atomically."""
    from bench.io import atomic_write_json, atomic_write_text

    json_path, png, md = out.with_suffix(".json"), out.with_suffix(".png"), out.with_suffix(".md")
    atomic_write_json(json_path, table)
    plot(table, png)
    atomic_write_text(md, markdown(table, png.name))
    return [json_path, png, md]


def main(overrides: Sequence[str], fractions: Sequence[float] | None = None, seed: int = 0,
         out: str | None = None) -> list[Path]:
    """``python -m bench memory-curve``: resolve the run, score, write ``results/memory/<sequence>-knn.*``."""
    from bench.io import check_writable

    cfg, spec, folder, record = resolve_run(overrides)
    target = Path(out) if out else Path("results/memory") / f"{spec.name}-knn"
    for suffix in (".json", ".png", ".md"):
        check_writable(target.with_suffix(suffix), "--out")
    print(f"== memory curve of {folder}", flush=True)
    table = memory_curve(cfg, spec, folder, record, FRACTIONS if fractions is None else fractions, seed)
    written = write(table, target)
    print(markdown(table, written[1].name))
    print("wrote " + ", ".join(map(str, written)))
    return written
