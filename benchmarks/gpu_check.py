"""GPU check: one short sequence on the GPU and on the CPU, the two records compared, the stages timed.

    make gpu-check                      # -> results/perf/gpu_check.json; skips (exit 0) where torch sees no GPU
    python benchmarks/gpu_check.py --sequence synth --precision 32 --tolerance 0.05

The runs: the ``synth`` sequence (tiny-random, three tasks; whole mode as committed) and a self-retrieval run on
the COCO val photo in ``slide`` mode (benchmarks/real_samples.py), each with ``accelerator=cpu`` and
``accelerator=gpu``. Every mIoU / PQ cell of the GPU record must be within ``--tolerance`` points of the CPU
record's (fp32: the same computation with other kernels and summation orders; a segment whose two best classes are
nearly tied may flip, which moves a cell by a fraction of a point on these small eval sets). Timings: each step's
adapt and eval seconds from the records, and images per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("miou", "pq", "sq", "rq", "pq_things", "pq_stuff")


def cell_differences(cpu: dict[str, Any], gpu: dict[str, Any], tolerance: float) -> list[str]:
    """Cells of the two records' matrices more than ``tolerance`` points apart (or present in only one)."""
    out = []
    for metric in METRICS:
        a, b = cpu["matrix"].get(metric), gpu["matrix"].get(metric)
        if a is None and b is None:
            continue
        if a is None or b is None:
            out.append(f"{metric}: in one record only")
            continue
        for t, (row_a, row_b) in enumerate(zip(a, b)):
            for j, (x, y) in enumerate(zip(row_a, row_b)):
                if (x is None) != (y is None) or (x is not None and abs(x - y) > tolerance):
                    out.append(f"{metric}[{t}][{j}]: cpu {x}, gpu {y}")
    return out


def _timings(record: dict[str, Any], seconds: float) -> dict[str, Any]:
    steps = record["timings"]["steps"]
    images = sum(s.get("adapt_images", 0) + s.get("eval_images", 0) for s in steps)
    return {"wall_s": round(seconds, 2), "model_load_s": record["timings"].get("model_load_s"),
            "placement": record["timings"].get("placement"),
            "steps": [{k: s.get(k) for k in ("step", "adapt_s", "eval_s", "adapt_images", "eval_images")}
                      for s in steps],
            "images_per_s": round(images / max(sum(s["adapt_s"] + s["eval_s"] for s in steps), 1e-9), 2)}


def _run(args: list[str]) -> tuple[dict[str, Any], float]:
    from bench.run import build_config, run

    cfg, spec = build_config(args)
    start = time.perf_counter()
    record = run(cfg, spec).to_json()
    return record, time.perf_counter() - start


def check(out_dir: Path, precision: str, tolerance: float) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import real_samples

    common = ["wandb=false", "progress=false", "num_workers=2"]
    runs = {"synth": ["SEQ=synth", *common]}
    coco = out_dir / "coco.yaml"
    import yaml

    fmt, vocab, split, (sequence, task), options = real_samples.SAMPLES["coco-val2017-39769"]
    coco.write_text(yaml.safe_dump({"name": "gpu-check-coco", "tasks": [{
        "name": "coco", "format": fmt, "root": str(real_samples.COCO),
        "vocabulary": str(ROOT / "tasks" / "vocab" / vocab), "adapt": {"split": split}, "eval": {"split": split},
        "options": options, "inference": real_samples.sequence_inference(sequence, task)}]}))
    runs["coco-slide"] = [f"SEQ={coco}", "MODEL=tiny-random", "PROPOSALS=gt", *common]
    result: dict[str, Any] = {"precision": precision, "tolerance_points": tolerance, "runs": {}}
    for name, args in runs.items():
        cpu, cpu_s = _run([*args, "accelerator=cpu", f"output_dir={out_dir / 'cpu'}"])
        gpu, gpu_s = _run([*args, "accelerator=gpu", f"precision={precision}", f"output_dir={out_dir / 'gpu'}"])
        result["runs"][name] = {"differences": cell_differences(cpu, gpu, tolerance),
                                "final_average": {"cpu": cpu["summary"]["miou"]["final_average"],
                                                  "gpu": gpu["summary"]["miou"]["final_average"]},
                                "cpu": _timings(cpu, cpu_s), "gpu": _timings(gpu, gpu_s)}
    result["ok"] = all(not r["differences"] for r in result["runs"].values())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--tolerance", type=float, default=0.5, help="largest allowed cell difference, points")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf" / "gpu_check.json")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check skipped: torch {torch.__version__} sees no GPU (CUDA build: {torch.version.cuda}); "
              "nothing was compared")
        return 0
    from bench.io import atomic_write_json

    with tempfile.TemporaryDirectory() as tmp:
        result = check(Path(tmp), args.precision, args.tolerance)
    result["device"] = torch.cuda.get_device_name(0)
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
