"""Choose kNN-CLIP's fusion threshold T and weight λ on held-out adapt-distribution data, never on val.

    python scripts/sweep_fusion.py                                   # synth-shift, the default grid
    python scripts/sweep_fusion.py --seq synth-shift --thresholds 0.5,0.8 --lams 0,0.5,1 knn.k=16

Each task of the sequence is evaluated on its ``tune`` split instead of its eval split (a derived sequence
``<name>-tune`` written next to the results; the tune split is drawn from the same distribution as the adapt
split, see tasks/synth-shift.yaml). Every grid point is one ordinary ``bench run`` with ``METHOD=knn
knn.threshold=T knn.lam=λ``, so finished points are reused when the sweep is run again. The table written to
``--out`` (JSON and markdown) holds, per point, the final average mIoU over all tasks after the last step and
the final row per task, all read back from the records the runs wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.io import atomic_write_json, atomic_write_text
from bench.run import build_config, run, run_dir
from datamodules.sequence import load_sequence

DEFAULT_THRESHOLDS = (0.0, 0.9, 0.95)  # cosine similarities of synth neighbours are mostly above 0.8
DEFAULT_LAMS = (0.0, 0.25, 0.5, 0.75, 1.0)


def tune_sequence(seq: str, split: str, folder: Path) -> Path:
    """Write ``<name>-tune.yaml`` into ``folder``: the sequence with every task evaluated on ``split``."""
    spec = load_sequence(seq)
    doc = yaml.safe_load(spec.path.read_text())
    doc["name"] = f"{spec.name}-{split}"
    doc["description"] = f"{spec.name} evaluated on its {split!r} splits (fusion sweep)"
    for task in doc["tasks"]:
        task["vocabulary"] = str((spec.path.parent / task["vocabulary"]).resolve())
        task["eval"] = {"split": split}
    path = folder / f"{doc['name']}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def markdown(table: dict[str, Any]) -> str:
    tasks = table["tasks"]
    lines = [f"Fusion sweep on {table['sequence']} ({table['model']}), {table['split']} splits: final average mIoU "
             "over all tasks after the last step, and each task's final mIoU.", "",
             "| T | λ | final avg | " + " | ".join(tasks) + " |", "|---|---|---|" + "---|" * len(tasks)]
    for p in table["points"]:
        cells = " | ".join("-" if v is None else f"{v:.1f}" for v in p["final_row"])
        mark = " **best**" if p is table["points"][table["best_index"]] else ""
        lines.append(f"| {p['threshold']:g} | {p['lam']:g} | {p['final_average']:.1f}{mark} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="run config overrides (key=value) for every grid point")
    parser.add_argument("--seq", default="synth-shift")
    parser.add_argument("--split", default="tune")
    parser.add_argument("--thresholds", type=_floats, default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--lams", type=_floats, default=list(DEFAULT_LAMS))
    parser.add_argument("--output-dir", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=None, help="table path without suffix (default: "
                        "results/sweeps/<seq>-<model>); .json and .md are written")
    args = parser.parse_args(argv)
    seq_path = tune_sequence(args.seq, args.split, args.output_dir / "sweep-sequences")
    points = []
    grid = [(t, lam) for t in args.thresholds for lam in args.lams]
    grid = [(t, lam) for t, lam in grid if lam != 0 or t == args.thresholds[0]]  # λ = 0 is the base alone, any T
    for threshold, lam in grid:
        cfg, spec = build_config([f"SEQ={seq_path}", "METHOD=knn", f"knn.threshold={threshold}",
                                  f"knn.lam={lam}", f"output_dir={args.output_dir}", "progress=false",
                                  *args.overrides])
        print(f"== T={threshold:g} λ={lam:g}", flush=True)
        record = run(cfg, spec)
        points.append({"threshold": threshold, "lam": lam,
                       "final_average": record["summary"]["miou"]["final_average"],
                       "final_row": record["matrix"]["miou"][-1], "record": str(run_dir(cfg, spec))})
    best = max(range(len(points)), key=lambda i: points[i]["final_average"])
    table = {"sequence": args.seq, "split": args.split, "model": cfg.model.name, "tasks": record["tasks"],
             "points": points, "best_index": best, "best": {k: points[best][k] for k in ("threshold", "lam")}}
    out = args.out or Path("results/sweeps") / f"{spec.name.removesuffix('-' + args.split)}-{cfg.model.name}"
    atomic_write_json(out.with_suffix(".json"), table)
    atomic_write_text(out.with_suffix(".md"), markdown(table))
    print(markdown(table))
    print(f"best: T={points[best]['threshold']:g} λ={points[best]['lam']:g}; wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
