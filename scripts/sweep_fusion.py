"""Choose kNN-CLIP's fusion threshold T, weight λ and vote temperature τ on held-out adapt-distribution data.

    python scripts/sweep_fusion.py                                   # synth-shift, tune splits, the default grid
    python scripts/sweep_fusion.py --thresholds 0,0.9 --lams 0,0.5,1 --temperatures 0.05 knn.k=16
    python scripts/sweep_fusion.py --split eval --chosen-from results/sweeps/synth-shift-tiny-clip-synth.json

By default each task of the sequence is evaluated on its ``tune`` split instead of its eval split (a derived
sequence ``<name>-tune`` written next to the runs; the tune split is drawn from the same distribution as the adapt
split, see tasks/synth-shift.yaml), so nothing is chosen on val. ``--split eval`` keeps the sequence's own eval
splits; with ``--chosen-from`` it only *checks* a choice made on tune: its headline compares the chosen setting
with pure retrieval (λ = 1) as chosen there, instead of picking anything.

One ordinary ``bench run`` (``METHOD=knn`` with the sequence's defaults and the overrides; reused when finished)
fills the memory; then every grid point is scored from that run's final evaluation by ``bench.sweep``, which
reproduces the run's own final row at its own setting or stops. The table (``--out``, JSON and markdown) holds
per point the final average mIoU over all tasks after the last step and each task's final mIoU, the best point
per λ, and a paired bootstrap interval (over images) for the difference between the best point and the best pure
retrieval point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.io import atomic_write_json, atomic_write_text
from bench.run import build_config, run, run_dir
from bench.sweep import FusionPoint, GridResult, evaluate_grid, grid
from datamodules.sequence import load_sequence

DEFAULT_THRESHOLDS = (0.0, 0.8, 0.9, 0.95)  # cosine similarities of synth neighbours are mostly above 0.8
DEFAULT_LAMS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DEFAULT_TEMPERATURES = (0.01, 0.02, 0.05, 0.1, 0.2)


def tune_sequence(seq: str, split: str, folder: Path) -> Path:
    """Write ``<name>-<split>.yaml`` into ``folder``: the sequence with every task evaluated on ``split``."""
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


def _point(d: dict[str, Any]) -> FusionPoint:
    return FusionPoint(float(d["threshold"]), float(d["lam"]), float(d["temperature"]))


def _best(result: GridResult, indices: list[int]) -> int:
    return max(indices, key=lambda i: result.final_average(i))  # the first in grid order on a tie


def build_table(result: GridResult, anchor: FusionPoint, chosen: dict[str, Any] | None, samples: int,
                **info: Any) -> dict[str, Any]:
    points = result.points
    rows = [{"threshold": p.threshold, "lam": p.lam, "temperature": p.temperature,
             "final_average": round(result.final_average(i), 4), "final_row": result.final_row(i)}
            for i, p in enumerate(points)]
    pure = [i for i, p in enumerate(points) if p.lam == 1.0]
    if chosen is None:  # choose here
        best, best_pure = _best(result, list(range(len(points)))), _best(result, pure)
    else:  # check a choice made elsewhere
        best, best_pure = points.index(_point(chosen["best"])), points.index(_point(chosen["best_pure_retrieval"]))
    base = next(i for i, p in enumerate(points) if p.lam == 0.0)
    per_lam = {}
    for lam in sorted({p.lam for p in points}):
        i = _best(result, [k for k, p in enumerate(points) if p.lam == lam])
        per_lam[f"{lam:g}"] = i
    per_task = []
    for j, task in enumerate(result.tasks):
        def score(i: int, j: int = j) -> float:
            v = result.final_row(i)[j]
            return -1.0 if v is None else v
        per_task.append({"task": task, "best": max(range(len(points)), key=score),
                         "best_pure_retrieval": max(pure, key=score)})
    return {**info, "tasks": result.tasks, "points": rows, "anchor": vars(anchor),
            "chosen_on": chosen["split"] if chosen else info["split"],
            "best_index": best, "best": vars(points[best]),
            "best_pure_retrieval_index": best_pure, "best_pure_retrieval": vars(points[best_pure]),
            "base_index": base, "best_per_lam": per_lam, "best_per_task": per_task,
            "best_minus_pure_retrieval": result.bootstrap_difference(best, best_pure, samples) | {"samples": samples}}


def markdown(table: dict[str, Any]) -> str:
    tasks, rows = table["tasks"], table["points"]

    def line(label: str, i: int) -> str:
        p = rows[i]
        cells = " | ".join("-" if v is None else f"{v:.1f}" for v in p["final_row"])
        return (f"| {label} | {p['threshold']:g} | {p['lam']:g} | {p['temperature']:g} | "
                f"{p['final_average']:.1f} | {cells} |")

    head = ["| | T | λ | τ | final avg | " + " | ".join(tasks) + " |", "|---|---|---|---|---|" + "---|" * len(tasks)]
    checking = table["chosen_on"] != table["split"]
    d = table["best_minus_pure_retrieval"]
    what = (f"the setting chosen on the {table['chosen_on']} splits" if checking else "best setting")
    out = [f"Fusion sweep on {table['sequence']} ({table['model']}), evaluated on the {table['split']} splits: "
           "final mIoU per task after the last step (all tasks adapted) and their average, per fusion setting "
           f"(T: threshold, λ: weight of retrieval, τ: vote temperature, k = {table['k']}"
           f"{''.join(', ' + o for o in table.get('overrides') or [])}). "
           f"{len(rows)} settings, scored from one knn run (`{table['anchor_run']}`) by `bench.sweep`, which "
           "reproduces that run's recorded final row at its own setting.", ""]
    if checking:
        out += [f"Nothing is chosen here: the settings come from the sweep on the {table['chosen_on']} splits "
                f"(`{table['chosen_from']}`).", ""]
    out += ["### Headline", "", *head,
            line(what, table["best_index"]),
            line(f"best pure retrieval (λ = 1){' on ' + table['chosen_on'] if checking else ''}",
                 table["best_pure_retrieval_index"]),
            line("base model alone (λ = 0)", table["base_index"]), "",
            f"{what.capitalize()} minus best pure retrieval, final average: {d['mean']:+.2f} points "
            f"(paired bootstrap over images, {d['samples']} draws: 95 % interval [{d['low']:+.2f}, "
            f"{d['high']:+.2f}]; not better in {100 * d['p_not_better']:.1f} % of draws).", "",
            "### Best setting for each λ" + (" on this split (for reading, not for choosing)" if checking else ""),
            "", *head]
    out += [line(f"λ = {lam}", i) for lam, i in table["best_per_lam"].items()]
    if not checking:
        out += ["", "### Best setting for each task alone (for reading, not for choosing)", "",
                "| task | best T | λ | τ | mIoU | best at λ = 1: T | τ | mIoU |", "|---|---|---|---|---|---|---|---|"]
        for j, entry in enumerate(table["best_per_task"]):
            a, b = rows[entry["best"]], rows[entry["best_pure_retrieval"]]
            out.append(f"| {entry['task']} | {a['threshold']:g} | {a['lam']:g} | {a['temperature']:g} | "
                       f"{a['final_row'][j]:.1f} | {b['threshold']:g} | {b['temperature']:g} | "
                       f"{b['final_row'][j]:.1f} |")
    out += ["", "<details><summary>every setting</summary>", "", *head]
    out += [line("", i) for i in range(len(rows))]
    out += ["", "</details>"]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="run config overrides (key=value) for the knn run")
    parser.add_argument("--seq", default="synth-shift")
    parser.add_argument("--split", default="tune", help="split every task is evaluated on; 'eval' = the "
                        "sequence's own eval splits")
    parser.add_argument("--thresholds", type=_floats, default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--lams", type=_floats, default=list(DEFAULT_LAMS))
    parser.add_argument("--temperatures", type=_floats, default=list(DEFAULT_TEMPERATURES))
    parser.add_argument("--chosen-from", type=Path, help="a sweep table (JSON) whose choice is only checked here")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the interval")
    parser.add_argument("--output-dir", type=Path, default=Path("results/runs"))
    parser.add_argument("--out", type=Path, default=None, help="table path without suffix (default: "
                        "results/sweeps/<seq>-<model>[-<split>]); .json and .md are written")
    args = parser.parse_args(argv)
    if 0.0 not in args.lams or 1.0 not in args.lams:
        parser.error("--lams must hold 0 (the base alone) and 1 (pure retrieval)")
    seq = args.seq if args.split == "eval" else str(tune_sequence(args.seq, args.split,
                                                                  args.output_dir / "sweep-sequences"))
    cfg, spec = build_config([f"SEQ={seq}", "METHOD=knn", f"output_dir={args.output_dir}", "progress=false",
                              "wandb=false", *args.overrides])
    record = run(cfg, spec)
    anchor = FusionPoint(cfg.knn.threshold, cfg.knn.lam, cfg.knn.temperature)
    points = grid(args.thresholds, args.lams, args.temperatures)
    chosen = json.loads(args.chosen_from.read_text()) if args.chosen_from else None
    if chosen:
        points += [p for p in (_point(chosen["best"]), _point(chosen["best_pure_retrieval"])) if p not in points]
    points += [anchor] if anchor not in points else []
    print(f"== scoring {len(points)} fusion settings from {run_dir(cfg, spec)}", flush=True)
    result = evaluate_grid(run_dir(cfg, spec), points, cfg, spec, anchor_row=record["matrix"]["miou"][-1])
    name = load_sequence(args.seq).name
    table = build_table(result, anchor, chosen, args.bootstrap, sequence=name, split=args.split,
                        model=cfg.model.name, k=cfg.knn.k, overrides=args.overrides,
                        anchor_run=str(run_dir(cfg, spec)),
                        chosen_from=str(args.chosen_from) if chosen else None)
    out = args.out or Path("results/sweeps") / (f"{name}-{cfg.model.name}"
                                                + ("" if args.split == "tune" else f"-{args.split}"))
    atomic_write_json(out.with_suffix(".json"), table)
    atomic_write_text(out.with_suffix(".md"), markdown(table))
    print(markdown(table))
    print(f"wrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
