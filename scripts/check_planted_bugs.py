"""Check that every deliberately planted bug makes the tests named as its guard fail.

    .venv/bin/python scripts/check_planted_bugs.py                # baseline + every plant (~10 min on 2 cores)
    .venv/bin/python scripts/check_planted_bugs.py --only 3,10    # some plants (JSON written only for a full run)
    .venv/bin/python scripts/check_planted_bugs.py --anchors      # only check that every anchor still matches

For each plant: the working tree (without .venv, .cache, results/runs, mutants, .git and caches) is copied to a
temp dir, the plant is applied there as an exact string replacement whose anchor must occur exactly once in its
file (else this stops loudly: the code moved, update the anchor), ``bench`` and the planted module are checked to
import from the copy, and each test selection of the plant runs as

    python -m pytest -q -x -p no:cacheprovider --basetemp=<tmp> <selection>

with BENCH_CACHE=<this tree>/.cache HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1. Every selection must fail (pytest
exit 1); a plant with a selection that passes *survived*. First the union of all selections runs once on an
unplanted copy: it must pass, else a "caught" plant would mean nothing. The table is printed and, for a full
run, written to results/perf/planted_bugs.json (atomically). Exit status 1 if the baseline fails or any plant
survives, 2 on a setup error (anchor not found, import from the wrong tree, pytest not exit 0 / 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "perf" / "planted_bugs.json"
# Not copied: the venv, caches, run outputs, the mutation-testing tree, git metadata, bytecode.
EXCLUDE_PATHS = {".venv", ".cache", "results/runs", "mutants", ".git"}
EXCLUDE_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "lightning_logs", "wandb"}
PYTEST = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
TIMEOUT_S = 1800  # per pytest run

WIRING = "tests/test_wiring.py"
REFERENCE_E2E = "tests/test_run.py::test_synth_records_equal_the_committed_references"

_RANDOM_ALLOWED = '''        scores[ids < 0] = -np.inf
        if mask is not None:  # PLANTED: random allowed entries (seeded), each with its true score, sorted
            rng, pool = np.random.default_rng(0), np.flatnonzero(mask)
            n = min(k, len(pool))
            try:
                true = queries @ self.index.reconstruct_n(0, self.index.ntotal).T
            except Exception:  # an index that cannot reconstruct: no true score to give
                true = np.full((len(queries), len(self)), -np.inf, np.float32)
            for row in range(len(ids)):
                pick = rng.permutation(pool)[:n]
                pick = pick[np.argsort(-true[row, pick], kind="stable")]
                ids[row, :n], ids[row, n:] = pick, -1
                scores[row, :n], scores[row, n:] = true[row, pick], -np.inf
        return scores, ids
'''


@dataclasses.dataclass(frozen=True)
class Plant:
    id: int
    name: str
    file: str
    anchor: str
    replacement: str
    # Each selection is one pytest run (with -x) and must fail. Fast known-answer tests first; the end-to-end
    # reference comparison (minutes) only where it is the named end-to-end guard.
    selections: tuple[tuple[str, ...], ...]


PLANTS = (
    Plant(1, "ignore pixels scored as class 0", "bench/module.py",
          'update(semantic, sample["semantic"])',
          'update(semantic, sample["semantic"].clamp_min(0))',
          ((f"{WIRING}::test_ignore_pixels_are_not_scored",), (REFERENCE_E2E,))),
    Plant(2, "crowd segments added to the memory", "bench/dense.py",
          'keep = ~sample["segment_iscrowd"] & (area > 0)', "keep = area > 0",
          ((f"{WIRING}::test_adapt_memory_holds_exactly_the_non_crowd_segments",),)),
    Plant(3, "fusion at confidence >= T", "bench/fusion.py",
          "confident = (confidence > threshold)", "confident = (confidence >= threshold)",
          ((f"{WIRING}::test_fuse_is_strict_at_the_threshold",
            f"{WIRING}::test_fusion_parameters_reach_the_prediction",
            f"{WIRING}::test_fusion_at_the_threshold_by_hand"),)),
    Plant(4, "restricted search returns random allowed entries", "bench/memory/store.py",
          "        scores[ids < 0] = -np.inf\n        return scores, ids\n", _RANDOM_ALLOWED,
          (("tests/test_memory_restricted.py",),
           ("tests/test_memory_restricted.py::test_restricted_search_on_the_mask_path",))),
    Plant(5, "replay buffer never replayed", "bench/baselines/methods.py",
          "        if self.replay:\n            parts.append(self.buffer)\n",
          "        if self.replay:\n            pass  # PLANTED: the buffer is not replayed\n",
          (("tests/test_baselines_wiring.py::test_replay_trains_on_the_buffer_at_later_steps",),)),
    Plant(6, "replay per-class cap dropped", "bench/baselines/methods.py",
          "            if counts.get(n, 0) < per_class:\n",
          "            if True:  # PLANTED: every embedding kept\n",
          (("tests/test_baselines_wiring.py::test_replay_buffer_holds_exactly_min_cap_available_per_class",),)),
    Plant(7, "merge_things flipped in panoptic inference", "bench/module.py",
          "merge_things=not self.proposer.instances", "merge_things=self.proposer.instances",
          ((f"{WIRING}::test_ground_truth_instances_are_not_merged",
            f"{WIRING}::test_superpixels_of_one_object_are_merged"),)),
    Plant(8, "mixed-sequence PQ summary is the max", "bench/protocols.py",
          "final_average=sum(scored) / len(scored) if scored else None",
          "final_average=max(scored) if scored else None",
          (("tests/test_summaries.py",),)),
    Plant(9, "fusion weight lambda ignored (1.0)", "bench/fusion.py",
          "lam * p_ret + (1.0 - lam) * p_base", "1.0 * p_ret + (1.0 - 1.0) * p_base",
          ((f"{WIRING}::test_fuse_lambda_endpoints", f"{WIRING}::test_fusion_parameters_reach_the_prediction"),
           (REFERENCE_E2E,))),
    Plant(10, "fusion threshold T ignored (always fuse)", "bench/fusion.py",
          "confident = (confidence > threshold).unsqueeze(1)",
          "confident = torch.ones_like(confidence, dtype=torch.bool).unsqueeze(1)  # PLANTED",
          ((f"{WIRING}::test_fuse_is_strict_at_the_threshold",
            f"{WIRING}::test_fusion_parameters_reach_the_prediction"),)),
)


class SetupError(RuntimeError):
    """The check itself could not be made (not a test result)."""


def planted_text(plant: Plant, tree: Path) -> str:
    """The plant's file in ``tree`` with the plant applied; the anchor must occur exactly once."""
    path = tree / plant.file
    if not path.is_file():
        raise SetupError(f"plant {plant.id} ({plant.name}): {plant.file} does not exist")
    text = path.read_text()
    found = text.count(plant.anchor)
    if found != 1:
        raise SetupError(f"plant {plant.id} ({plant.name}): anchor found {found} times in {plant.file} (must be "
                         f"exactly once; the code moved? update the anchor):\n{plant.anchor}")
    return text.replace(plant.anchor, plant.replacement)


def copy_tree(dest: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        rel = Path(folder).relative_to(ROOT)
        return {n for n in names if n in EXCLUDE_NAMES or (rel / n).as_posix() in EXCLUDE_PATHS}

    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(BENCH_CACHE=str(ROOT / ".cache"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    return env


def check_imports(python: str, tree: Path, module: str) -> None:
    """``bench`` (and the planted module) must import from ``tree``, not from the editable install's tree."""
    code = f"import bench, {module}; print(bench.__file__); print({module}.__file__)"
    proc = subprocess.run([python, "-c", code], cwd=tree, env=environment(tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SetupError(f"importing bench in {tree} failed:\n{proc.stderr[-3000:]}")
    for line in proc.stdout.split():
        if not Path(line).resolve().is_relative_to(tree.resolve()):
            raise SetupError(f"{line} is not inside the copy {tree}: the tests would not see the plant")


def run_pytest(python: str, tree: Path, tests: tuple[str, ...]) -> dict[str, Any]:
    cmd = [python, *PYTEST, f"--basetemp={tree.parent / 'pytest-tmp'}", *tests]
    tick = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=environment(tree), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise SetupError(f"pytest {' '.join(tests)} ran past {TIMEOUT_S} s") from e
    seconds = round(time.perf_counter() - tick, 1)
    out = proc.stdout + proc.stderr
    if proc.returncode not in (0, 1):  # 2 interrupted / collection error, 4 usage, 5 nothing collected
        raise SetupError(f"pytest exit {proc.returncode} for {' '.join(tests)}:\n{out[-3000:]}")
    return {"tests": list(tests), "failed": proc.returncode == 1, "seconds": seconds,
            "caught_by": re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M),
            "first_error": next((line[1:].strip() for line in out.splitlines() if line.startswith("E ")), None),
            "summary": (out.strip().splitlines() or [""])[-1]}


def in_copy(python: str, plant: Plant | None, selections: tuple[tuple[str, ...], ...]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="planted-") as tmp:
        tree = copy_tree(Path(tmp) / "tree")
        module = "bench"
        if plant is not None:
            (tree / plant.file).write_text(planted_text(plant, tree))
            module = plant.file.removesuffix(".py").replace("/", ".")
        check_imports(python, tree, module)
        return [run_pytest(python, tree, tests) for tests in selections]


def baseline_selection() -> tuple[str, ...]:
    """Every test any plant names, once (a node id is dropped where its whole file is named)."""
    every = list(dict.fromkeys(t for p in PLANTS for s in p.selections for t in s))
    return tuple(t for t in every if "::" not in t or t.split("::")[0] not in every)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def short(test: str) -> str:
    return test.replace("tests/", "").replace("::", " ")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated plant ids (the JSON is written only for a full run)")
    parser.add_argument("--anchors", action="store_true", help="only check that every anchor matches once")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unplanted run")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the tests (default: this one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    plants = PLANTS
    if args.only:
        wanted = {int(i) for i in args.only.split(",")}
        plants = tuple(p for p in PLANTS if p.id in wanted)
        if {p.id for p in plants} != wanted:
            parser.error(f"unknown plant ids {sorted(wanted - {p.id for p in PLANTS})}")
    try:
        for plant in plants:
            planted_text(plant, ROOT)
        if args.anchors:
            print(f"{len(plants)} anchors found exactly once")
            return 0
        start = time.perf_counter()
        baseline = None
        if not args.no_baseline:
            print("baseline (unplanted):", " ".join(baseline_selection()), flush=True)
            (baseline,) = in_copy(args.python, None, (baseline_selection(),))
            print(f"  {'FAILED' if baseline['failed'] else 'passed'} in {baseline['seconds']} s: "
                  f"{baseline['summary']}", flush=True)
        rows = []
        for plant in plants:
            print(f"plant {plant.id}: {plant.name} ({plant.file})", flush=True)
            runs = in_copy(args.python, plant, plant.selections)
            for r in runs:
                print(f"  {'caught' if r['failed'] else 'SURVIVED'} in {r['seconds']} s by "
                      f"{', '.join(r['caught_by']) or ' '.join(r['tests'])}", flush=True)
                if r["first_error"]:
                    print(f"    {r['first_error'][:160]}", flush=True)
            rows.append({"id": plant.id, "name": plant.name, "file": plant.file,
                         "tests": [t for s in plant.selections for t in s],
                         "failed": all(r["failed"] for r in runs),
                         "seconds": round(sum(r["seconds"] for r in runs), 1), "runs": runs})
    except SetupError as e:
        print(f"SETUP ERROR: {e}", file=sys.stderr)
        return 2
    total = round(time.perf_counter() - start, 1)

    print(f"\n{'#':>2}  {'planted bug':<50} {'failed':<7} {'s':>6}  tests (caught by)")
    for row in rows:
        caught = [c for r in row["runs"] for c in r["caught_by"]]
        print(f"{row['id']:>2}  {row['name']:<50} {'yes' if row['failed'] else 'NO':<7} {row['seconds']:>6}  "
              f"{'; '.join(short(t) for t in row['tests'])} ({'; '.join(short(c) for c in caught) or '-'})")
    if baseline is not None:
        print(f"baseline (unplanted, {len(baseline['tests'])} test ids): "
              f"{'FAILED' if baseline['failed'] else 'passed'} in {baseline['seconds']} s")
    print(f"total {total} s")

    survivors = [row["id"] for row in rows if not row["failed"]]
    if not args.only and not args.no_baseline:
        write_json(args.out, {
            "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": f"python scripts/check_planted_bugs.py  (each run: python {' '.join(PYTEST)} <tests>)",
            "env": {"BENCH_CACHE": str(ROOT / ".cache"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
            "baseline": baseline, "bugs": rows, "survivors": survivors, "total_seconds": total})
        print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if baseline is not None and baseline["failed"]:
        print("the unplanted tests fail: fix them before trusting this check", file=sys.stderr)
        return 1
    if survivors:
        print(f"planted bugs that survived their tests: {survivors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
