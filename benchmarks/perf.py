"""Memory at scale: index kinds, compression and the per-image pipeline, written to results/perf/latest.json.

Run: ``make perf`` (memories of 10k, 100k and 1M entries at d = 384 and 768, the pipeline with a 1M-entry memory,
the embedded sequence with six memory kinds; 12 minutes on two quiet CPU cores, 27 on a loaded machine), or
``.venv/bin/python benchmarks/perf.py --quick`` (10k and 100k entries at d = 384 only, fewer images, two
sequence runs; 2 to 4 minutes; written to results/perf/quick.json so the full figures stay; its size-dependent
keys end in _100k). The JSON is written atomically, with a plot of latency and recall against memory size next
to it (same name, ``-latency-recall.png``); the headline figures print.

Headline keys (null where a quick run does not measure them):

- ``retrieval_fraction_1m``: (retrieval + fusion) / the whole per-image evaluate time, open_clip ViT-B-16 base and
  DINOv2 ViT-S/14 memory embedder at 224 (random weights), 1M-entry memory in ``DEFAULT_INDEX``, this CPU.
- ``recall_at_16_1m``: that index's recall@16 against exact search, restricted to a vocabulary as evaluation is.
- ``recall_at_16_by_size`` / ``ms_per_image_by_size``: ``{dim: {entries: value}}`` for the default index grown
  through ``AUTO_SIZES`` (1k to 1M entries, d = 384 and 768; a quick run: to 100k at d = 384). 10M entries do
  not fit this machine (24 GiB: the embeddings alone are 15 GB at d = 384, and the index as much again).
- ``bytes_per_entry``: ``COMPRESSED_INDEX`` (IVF-PQ, 64-byte codes) at 1M entries, d = 384: index and labels.
- ``miou_loss_compressed``: the embedded sequence (synth), knn final-average mIoU with the flat fp32 memory minus
  with ``knn.index=ivf-pq`` (the same kind with its defaults, which suit that memory's ~2k entries). That memory
  is 64-d, so its 64-byte codes keep a byte per dim; ``miou.ivf-pq-8B`` shows the loss at d=384's ratio.
- ``adapt_overhead_fraction``: (data + preprocess + pooling + memory add) per adapt image with the run's default
  loader workers (``bench.config.default_workers()``: one per core but one, at most 8; the data time is the wait
  for them; the knn adapt pass's loader transform resizes and normalises the embedder's inputs there and counts
  the segments' pixels per cell of its grid, so the label maps are not sent), over the
  embedder forward measured in the process, with no worker competing for the cores (on two cores the worker
  slows the forward by a seventh to a fifth, which would flatter a ratio to the forward of the same run).
  ``adapt_overhead_fraction_in_process``: the same with everything in the process (``num_workers=0``, the run
  default until issue 15), over its own forward. ``adapt_ms_per_image_wall``: wall time per image of both.
- ``pq_speedup_vs_torchmetrics``: benchmarks/pq_speed.py, re-run here (read from its file in a quick run).

OMP_WAIT_POLICY defaults to PASSIVE: on a shared two-core machine FAISS's spinning OpenMP threads otherwise
compete with torch's and with other processes (k-means training measured 2.3× slower with spinning here).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch and faiss load OpenMP

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import perf_memory  # noqa: E402
import perf_pipeline  # noqa: E402
import perf_plot  # noqa: E402
import torch  # noqa: E402

from bench.config import default_workers  # noqa: E402
from bench.io import atomic_write_json  # noqa: E402

# The suite's default index (bench.config.KnnConfig): auto (bench.memory.policy), measured as one memory grows
# through AUTO_SIZES; the fixed IVF kind it replaced (4096 lists, 8 probed, trained at 65,536) is in the tables.
DEFAULT_INDEX = {"index": "auto", "target_recall": 0.95}
AUTO_SIZES = [1_000, 10_000, 100_000, 300_000, 1_000_000]
# The compact one: the same lists holding 64-byte product-quantised codes.
COMPRESSED_INDEX = {"index": "ivf-pq", "nlist": 4096, "train_size": 65536, "nprobe": 8}
# The embedded sequence (1854 entries, 64-d): exact flat, and each kind trained on the first 1024 entries (16 lists,
# 16 probed) so that it really is compressed there, not the exact buffer the defaults keep below 65,536 entries.
# 64-byte codes are one byte per dim at 64-d; the 8- and 16-byte codes give the ratio that 64 bytes are at d = 384
# (6 dims per byte) and beyond.
_TRAINED = ["knn.train_size=1024", "knn.nlist=0", "knn.nprobe=16"]
SEQUENCE_RUNS = {
    "flat": ["knn.index=flat"],
    "compressed": ["knn.index=ivf-pq", *_TRAINED],
    "flat-fp16": ["knn.index=flat-fp16"],
    "hnsw": ["knn.index=hnsw"],
    "ivf-pq-16B": ["knn.index=ivf-pq", "knn.pq_m=16", *_TRAINED],
    "ivf-pq-8B": ["knn.index=ivf-pq", "knn.pq_m=8", *_TRAINED],
}
DIMS = (384, 768)  # ViT-S / ViT-B widths


def log(message: str) -> None:
    print(message, flush=True)


def _row(rows: list[dict[str, Any]], dim: int, n: int, kind: str) -> dict[str, Any] | None:
    return next((r for r in rows if (r["dim"], r["n"], r.get("kind")) == (dim, n, kind)), None)


def memory_and_pipeline(sizes: list[int], dims: tuple[int, ...], quick: bool, images: int, batch: int
                        ) -> dict[str, Any]:
    """Tables at both dims, the default index grown through the sizes at both dims; between them, the pipeline
    timed with the largest d=384 memory in DEFAULT_INDEX."""
    syn = perf_memory.Synthetic()
    largest = max(sizes)
    auto_sizes = [n for n in AUTO_SIZES if n <= largest]
    rows, auto, pipeline = [], [], {}
    for dim in dims:
        tick = time.perf_counter()
        data = perf_memory.embeddings(largest, dim, syn)
        rows += perf_memory.table(sizes, dim, syn, quick, log=log, data=data)[0]
        log(f"d={dim}: tables in {time.perf_counter() - tick:.0f}s")
        tick = time.perf_counter()
        part, memory = perf_memory.auto_rows(auto_sizes, dim, syn, *data, perf_memory.recall_queries(dim, syn), log=log)
        auto += part
        log(f"d={dim}: default index grown to {largest} in {time.perf_counter() - tick:.0f}s")
        del data
        if dim != 384:
            del memory
        else:
            tick = time.perf_counter()
            module = perf_pipeline.build_model(memory)
            pipeline["memory"] = {"entries": len(memory), "dim": memory.dim, "index": memory.index_report(),
                                  "vocabulary_classes": syn.vocabulary, "memory_classes": syn.classes}
            pipeline["threads"] = {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
            pipeline["predict"] = perf_pipeline.predict_timing(module, syn.allowed(), images, batch, log=log)
            # Adapt with the run's default loader workers (decoding and the embedder's inputs made there,
            # overlapping the forward, as a run's adapt pass does) and with everything in the process. More images
            # than predict: the data wait of two timed batches swung by a factor of three between runs.
            adapt_images = 4 * images if quick else 3 * images
            pipeline["adapt"] = perf_pipeline.adapt_timing(module, adapt_images, batch, num_workers=default_workers(),
                                                           log=log)
            pipeline["adapt_in_process"] = perf_pipeline.adapt_timing(module, adapt_images, batch, log=log)
            del module, memory
            log(f"pipeline in {time.perf_counter() - tick:.0f}s")
    return {"rows": rows, "auto": auto, "pipeline": pipeline, "synthetic": syn.__dict__}


def miou_runs(log_dir: Path, names: list[str]) -> dict[str, Any]:
    """The embedded sequence with knn and the named memories of SEQUENCE_RUNS; per step: entries and mIoU."""
    from bench.run import build_config, run

    out: dict[str, Any] = {}
    for name in names:
        overrides = SEQUENCE_RUNS[name]
        tick = time.perf_counter()
        cfg, spec = build_config(["SEQ=synth", "METHOD=knn", "progress=false", "wandb=false", f"RUN_ID=perf-{name}",
                                  f"output_dir={log_dir}", *overrides])
        with contextlib.redirect_stdout(io.StringIO()):
            record = run(cfg, spec)
        meta = json.loads((log_dir / "synth" / "knn" / f"perf-{name}" / "memory" / f"step-{len(spec.tasks)}"
                           / "meta.json").read_text())
        out[name] = {"overrides": overrides, "index": meta["index"], "resolved": meta.get("resolved", {}),
                     "memory_entries": [s["memory_entries"] for s in record["state_size"]],
                     "bytes_per_entry_final": round(meta["bytes_per_entry"], 2),
                     "miou_matrix": record["matrix"]["miou"],
                     "final_average": record["summary"]["miou"]["final_average"],
                     "run_s": round(time.perf_counter() - tick, 1)}
        log(f"synth knn {name}: final average mIoU {out[name]['final_average']:.2f} ({out[name]['run_s']:.0f}s)")
    for entry in out.values():
        entry["loss_vs_flat"] = round(out["flat"]["final_average"] - entry["final_average"], 4)
    out["loss"] = out["compressed"]["loss_vs_flat"]
    return out


def pq_speedup(rerun: bool) -> dict[str, Any] | None:
    path = REPO / "results" / "perf" / "pq_speed.json"
    if rerun:
        import pq_speed

        threads = torch.get_num_threads()
        with contextlib.redirect_stdout(io.StringIO()):
            status = pq_speed.main(["--out", str(path)])
        torch.set_num_threads(threads)  # pq_speed times both metrics on one thread
        if status != 0:
            raise RuntimeError("benchmarks/pq_speed.py: the two PQ implementations disagree")
    return json.loads(path.read_text()) if path.exists() else None


def by_size(auto: list[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """``{dim: {entries: value}}`` of the default index's rows (JSON keys are strings)."""
    out: dict[str, dict[str, float]] = {}
    for row in auto:
        out.setdefault(str(row["dim"]), {})[str(row["n"])] = row[key]
    return out


def headline(result: dict[str, Any], largest: int) -> dict[str, Any]:
    rows, pipeline = result["memory"]["rows"], result["memory"]["pipeline"]
    auto = result["memory"]["auto"]
    default = next(r for r in auto if (r["dim"], r["n"]) == (384, largest))
    compressed = _row(rows, 384, largest, "ivf-pq")
    miou, pq = result.get("miou"), result.get("pq_speed")
    suffix = "1m" if largest >= 1_000_000 else f"{largest // 1000}k"
    return {
        f"retrieval_fraction_{suffix}": pipeline["predict"]["retrieval_fraction"],
        f"retrieval_fraction_of_forward_{suffix}": pipeline["predict"]["retrieval_fraction_of_forward"],
        f"recall_at_16_{suffix}": default["recall_at_16"],
        "recall_at_16_by_size": by_size(auto, "recall_at_16"),
        "ms_per_image_by_size": by_size(auto, "ms_per_image"),
        "bytes_per_entry": compressed and compressed["bytes_per_entry"],
        "miou_loss_compressed": miou and miou["loss"],
        "adapt_overhead_fraction": perf_pipeline.adapt_overhead(pipeline["adapt"], pipeline["adapt_in_process"]),
        "adapt_overhead_fraction_in_process": pipeline["adapt_in_process"]["adapt_overhead_fraction"],
        "adapt_ms_per_image_wall": {"default_workers": pipeline["adapt"]["ms_per_image_total"],
                                    "in_process": pipeline["adapt_in_process"]["ms_per_image_total"]},
        "pq_speedup_vs_torchmetrics": pq and round(pq["speedup"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k entries at d=384, few images")
    parser.add_argument("--out", default=None, help="default results/perf/latest.json (quick: quick.json)")
    args = parser.parse_args(argv)
    out = Path(args.out or REPO / "results" / "perf" / ("quick.json" if args.quick else "latest.json"))
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    images, batch = (4, 2) if args.quick else (16, 8)
    dims = DIMS[:1] if args.quick else DIMS
    start = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "memory at scale and the per-image pipeline (issue 9)",
                              "quick": args.quick, "sizes": sizes, "dims": list(dims),
                              "default_index": DEFAULT_INDEX, "compressed_index": COMPRESSED_INDEX}
    result["memory"] = memory_and_pipeline(sizes, dims, args.quick, images, batch)
    with tempfile.TemporaryDirectory() as tmp:
        result["miou"] = miou_runs(Path(tmp), ["flat", "compressed"] if args.quick else list(SEQUENCE_RUNS))
    result["pq_speed"] = pq_speedup(rerun=not args.quick)
    heads = headline(result, max(sizes))
    for key in ("retrieval_fraction_1m", "recall_at_16_1m"):
        heads.setdefault(key, None)
    result = {**heads, **result}
    result["environment"] = {
        "torch": torch.__version__, "faiss": faiss.__version__, "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "cpus": os.cpu_count(), "device": "cpu",
        "load_average": os.getloadavg(), "platform": platform.platform(), "python": platform.python_version()}
    result["total_s"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out, result)
    perf_plot.plot(result, perf_plot.png_path(out))
    log(json.dumps(heads, indent=2))
    log(f"written {out} in {result['total_s']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
