"""Mutation testing of the core modules with mutmut 3, written to results/perf/mutation.json.

Run: ``make mutate`` (or ``.venv/bin/python benchmarks/mutation.py``; 11 to 14 minutes on two shared cores).
mutmut copies ``bench/`` and ``datamodules/`` to ``mutants/``, rewrites every function of the target files into
its mutants behind a trampoline, runs the non-slow tests once to learn which tests call which function and how
long each takes (fixture set-up included), then runs, for each mutant of a target function, the fastest of those
tests (each at most :data:`MAX_TEST_S`, together at most :data:`TEST_BUDGET_S`; ``pytest -x``, the
:data:`FIRST_PASS` fastest first) in a process forked from a server that has imported and collected the tests
once. Per-mutant wall limit: ``timeout_multiplier``/``timeout_constant`` in pyproject.toml's ``[tool.mutmut]``.

What is mutated is :data:`TARGETS`, and only there: a source file (or glob) and the functions of it to mutate
(``"function"`` or ``"Class.method"``), or ``None`` for every function of the file. When a module is split or
moved, replace its entry by the new files (a glob such as ``"bench/heads/*.py": None`` takes a whole package); a
pattern that matches no file stops the run. ``--only`` runs a subset while working on one module (the JSON then
covers that subset only).

Mutants that no test can tell apart from the original (equivalent mutants) are listed with the reason in
benchmarks/mutation_equivalent.json, each by module, function and the changed lines (not mutmut's number, which
shifts when the function changes). They are left out of ``total``; an entry that matches no mutant any more is
reported under ``stale_equivalent``, one whose mutant a test kills under ``killed_equivalent`` (and counted).

JSON keys: ``killed`` (killed by a failing test, the time limit or a crash), ``total`` (mutants run, equivalent
ones left out), ``score`` = killed / total, ``survivors`` and ``no_tests`` (name, module, function, changed
lines), ``timeouts_and_crashes`` (counted as killed), ``equivalent`` (with reasons), ``by_module`` counts,
``status_counts`` as mutmut reports them, ``tool`` and its version, ``wall_s``, ``targets`` and the load average
before and after (other jobs on the machine slow it).
``--fail-under S`` exits 1 when the score is below S (the JSON is written first). ``--resume`` keeps ``mutants/``
and re-runs only what has no verdict or survived (after adding a test); ``--report-only`` rebuilds the JSON.

mutmut is driven in-process (pinned to 3.8 in setup.cfg): its configuration object gets ``only_mutate`` from
TARGETS, and :func:`run_mutmut` wraps four of its internals (the stats run's timing, the fork server's warm-up, the
per-mutant test list and the mutant list); a mutmut upgrade should re-check those.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "perf" / "mutation.json"
EQUIVALENT = REPO / "benchmarks" / "mutation_equivalent.json"

# The core modules under mutation: source file or glob -> functions to mutate, None = all of the file's functions.
TARGETS: dict[str, tuple[str, ...] | None] = {
    "bench/metrics/*.py": None,  # mIoU and PQ: pure functions and their Metric shells
    "bench/fusion.py": None,  # retrieval distribution and its fusion with the base model's
    # the search path only: index kinds, training and persistence are what perf and test_memory_kinds cover
    "bench/memory/store.py": ("Memory.search", "Memory.search_params", "Memory._search_gpu", "Memory._selector",
                              "Memory.label_codes"),
    "bench/memory/gpu.py": ("search",),  # restricted search on a GPU index (run on the CPU index in tests)
    "bench/module.py": None,  # evaluation wiring: features, proposals, head, metrics
    "bench/heads/*.py": None,  # zero-shot, kNN and adapter heads
    "bench/methods/knn.py": ("MemoryWriter.__init__", "MemoryWriter.predict_step", "MemoryWriter._add",
                             "MemoryWriter.on_predict_epoch_end"),  # the adapt pass that fills the memory
    "bench/continual.py": None,  # result-matrix summaries
    "bench/run.py": ("_summarize", "_record_pq", "_pq_summary"),  # the summaries a record holds
    "bench/baselines/methods.py": ("AdapterFinetune._training_data", "AdapterFinetune._update_buffer"),
}

# Per-mutant runs use the tests that call the mutated function and take at most this long (set-up included, as
# measured in mutmut's stats run, here on two shared cores). The gate holds unit and wiring tests to account:
# with the whole-run tests (2-20 s each) every surviving mutant of a function that a run reaches cost 2-3 minutes,
# and a full pass hours.
MAX_TEST_S = 2.0
# ... and of those, the fastest whose times add up to this: a surviving mutant (which runs all it is given) costs at
# most this, where the whole list of a function that every run reaches adds up to 10 s. Conservative: a mutant
# that only a later test would kill is counted as surviving, never the other way round.
TEST_BUDGET_S = 3.0
FIRST_PASS = 5  # a mutant's fastest tests, run first; the others only if these all pass
RERUN = (None, 0, 5, 33)  # --resume runs these again: not run yet, survived, no tests (mutmut's exit codes)
CLASS_SEP = "ǁ"  # mutmut's separator in mangled method names: xǁClassǁmethod
DETECTED = ("killed", "timeout", "segfault")  # a mutant stopped by a failing test, the time limit or a crash


def target_files(targets: dict[str, tuple[str, ...] | None]) -> dict[str, tuple[str, ...] | None]:
    """Each target glob expanded to its files (relative to the repo), sorted."""
    files: dict[str, tuple[str, ...] | None] = {}
    for pattern, functions in targets.items():
        matched = sorted(glob.glob(pattern, root_dir=REPO))
        if not matched:
            raise SystemExit(f"benchmarks/mutation.py TARGETS: {pattern!r} matches no file")
        for path in matched:
            files[path] = functions
    return files


def module_of(path: str) -> str:
    return path[: -len(".py")].replace("/", ".").removesuffix(".__init__")


def mangled(function: str) -> str:
    if "." in function:
        cls, name = function.split(".")
        return f"x{CLASS_SEP}{cls}{CLASS_SEP}{name}"
    return f"x_{function}"


def patterns(files: dict[str, tuple[str, ...] | None]) -> list[str]:
    """mutmut mutant-name globs selecting the target functions."""
    out = []
    for path, functions in files.items():
        module = module_of(path)
        out += [f"{module}.x*"] if functions is None else [f"{module}.{mangled(f)}__mutmut_*" for f in functions]
    return out


def function_of(name: str) -> tuple[str, str]:
    """(module, "Class.method" or "function") of a mutant name such as ``bench.memory.xǁMemoryǁsearch__mutmut_3``."""
    head = name.partition("__mutmut_")[0]
    module, _, key = head.rpartition(".")
    if key.startswith(f"x{CLASS_SEP}"):
        _, cls, fn = key.split(CLASS_SEP)
        return module, f"{cls}.{fn}"
    return module, key.removeprefix("x_")


def changed_lines(diff: str) -> list[str]:
    """The removed and added lines of a unified diff, whitespace-trimmed: the mutant's identity in its function."""
    return [f"{line[0]} {line[1:].strip()}" for line in diff.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


# -- running mutmut (in a child process, so that nothing of bench is imported before mutmut places its copy) -------
def run_mutmut(files: dict[str, tuple[str, ...] | None], max_children: int, max_test_s: float,
               test_budget_s: float, resume: bool = False, debug: bool = False) -> int:
    """Run ``mutmut run`` on the target functions with ``only_mutate`` set to the target files; its exit status."""
    os.chdir(REPO)
    from mutmut import __main__ as mutmut_main
    from mutmut import configuration
    from mutmut.runners.harness import PytestRunner
    from mutmut.state import state

    cfg = configuration.config()  # [tool.mutmut] in pyproject.toml
    cfg.only_mutate = list(files)
    cfg.debug = debug

    # A test's time includes its fixtures' set-up (mutmut counts the call only): tests whose work is a module
    # fixture (a whole run) would otherwise look free, run first and get a time limit of timeout_constant only.
    class SetupTime:
        def pytest_runtest_makereport(self, item: Any, call: Any) -> None:
            if call.when != "call":
                state().duration_by_test[item.nodeid] += call.duration

    execute = PytestRunner.execute_pytest

    def execute_timing_setup(self: PytestRunner, params: list[str], **kwargs: Any) -> int:
        if "plugins" in kwargs:  # the stats run
            kwargs["plugins"] = [*kwargs["plugins"], SetupTime()]
        return execute(self, params, **kwargs)

    # mutmut hands pytest a mutant's tests in set order; fastest first (with -x) lets a killed mutant stop early.
    regular_run = PytestRunner._pytest_args_regular_run

    def fastest_first(self: PytestRunner, tests: Any) -> list[str]:
        durations = state().duration_by_test
        return regular_run(self, sorted(tests, key=lambda t: (durations.get(t, 0.0), t)))

    # Tests slower than max_test_s (whole runs) serve no mutant: each mutant that survives the fast ones would pay
    # for all of them. Pruned once the stats are known, before the clean run and the mutants.
    collect = mutmut_main.collect_source_file_mutation_data

    def collect_fast_tests_only(**kwargs: Any) -> Any:
        durations = state().duration_by_test
        slow = {t for t, d in durations.items() if d > max_test_s}
        for tests in state().tests_by_mangled_function_name.values():
            tests -= slow
        print(f"    {len(slow)} tests over {max_test_s} s left out of the per-mutant runs: {sorted(slow)}")
        mutants, by_path = collect(**kwargs)
        if resume:  # mutmut re-runs every mutant named on its command line: keep those still to decide
            mutants = [m for m in mutants if m[2] in RERUN]
        return mutants, by_path

    # The fork server has imported torch and collected every test: freeze that heap so that the workers' garbage
    # collections neither scan it nor copy its pages.
    warm_up = PytestRunner.warm_up

    def warm_up_and_freeze(self: PytestRunner) -> None:
        warm_up(self)
        gc.freeze()

    # Two passes per mutant: the FIRST_PASS fastest tests, then (only if they all pass) the rest. Most mutants die
    # in the first pass, and pytest then collects a few test modules instead of all that reach the function.
    run_tests = PytestRunner.run_tests

    def run_tests_in_two_passes(self: PytestRunner, *, mutant_name: str | None, tests: Any) -> int:
        if mutant_name is None:  # the clean run
            return run_tests(self, mutant_name=mutant_name, tests=tests)
        tests = within_budget(tests)
        if len(tests) <= FIRST_PASS:
            return run_tests(self, mutant_name=mutant_name, tests=tests)
        code = run_tests(self, mutant_name=mutant_name, tests=tests[:FIRST_PASS])
        return code if code != 0 else run_tests(self, mutant_name=mutant_name, tests=tests[FIRST_PASS:])

    def within_budget(tests: Any) -> list[str]:
        """The fastest tests whose times add up to at most test_budget_s (the fastest one at least)."""
        durations = state().duration_by_test
        chosen, total = [], 0.0
        for t in sorted(tests, key=lambda t: (durations.get(t, 0.0), t)):
            total += durations.get(t, 0.0)
            if chosen and total > test_budget_s:
                break
            chosen.append(t)
        return chosen

    PytestRunner.run_tests = run_tests_in_two_passes
    PytestRunner.warm_up = warm_up_and_freeze
    PytestRunner.execute_pytest = execute_timing_setup
    PytestRunner._pytest_args_regular_run = fastest_first
    mutmut_main.collect_source_file_mutation_data = collect_fast_tests_only
    try:
        mutmut_main._run(patterns(files), max_children)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # conftest.py sets these too; BENCH_CACHE must be the repo's cache, not mutants/.cache (conftest's default
    # follows the tests' folder, which mutmut copies).
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    env.setdefault("BENCH_CACHE", str(REPO / ".cache"))
    # One thread per worker: the workers are the parallelism, and forked processes stay clear of OpenMP pools.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


# -- reading the verdicts -----------------------------------------------------------------------------------------
def load_equivalent() -> list[dict[str, Any]]:
    if not EQUIVALENT.exists():
        return []
    entries = json.loads(EQUIVALENT.read_text())["equivalent"]
    for i, e in enumerate(entries):
        missing = {"module", "function", "diff", "reason"} - set(e)
        if missing:
            raise SystemExit(f"{EQUIVALENT}: entry {i} lacks {sorted(missing)}; expected module, function, diff "
                             "(the changed lines as results/perf/mutation.json shows them) and reason")
    return entries


def collect(files: dict[str, tuple[str, ...] | None]) -> list[dict[str, Any]]:
    """Every mutant of the target functions with its status and changed lines."""
    os.chdir(REPO)
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    selected = patterns(files)
    out = []
    for path in files:
        meta = REPO / "mutants" / f"{path}.meta"
        if not meta.exists():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            if not any(fnmatch.fnmatch(name, p) for p in selected):
                continue
            module, function = function_of(name)
            out.append({"name": name, "module": module, "function": function,
                        "status": status_by_exit_code[code], "exit_code": code,
                        "diff": changed_lines(get_diff_for_mutant(name, path=path))})
    return out


def summarize(mutants: list[dict[str, Any]], equivalent: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, score and the lists of survivors, untested and equivalent mutants."""
    reasons = {(e["module"], e["function"], tuple(e["diff"])): e["reason"] for e in equivalent}
    used: set[tuple[str, str, tuple[str, ...]]] = set()
    counted, equivalent_out = [], []
    killed_equivalent = []
    for m in mutants:
        key = (m["module"], m["function"], tuple(m["diff"]))
        if key in reasons:
            used.add(key)
        if key in reasons and m["status"] not in DETECTED:
            equivalent_out.append({**_brief(m), "status": m["status"], "reason": reasons[key]})
        else:  # a listed mutant that a test kills was not equivalent: it counts, and the entry is reported
            counted.append(m)
            if key in reasons:
                killed_equivalent.append({**_brief(m), "status": m["status"], "reason": reasons[key]})
    status_counts: dict[str, int] = {}
    by_module: dict[str, dict[str, int]] = {}
    for m in counted:
        status_counts[m["status"]] = status_counts.get(m["status"], 0) + 1
        row = by_module.setdefault(m["module"], {"killed": 0, "total": 0})
        row["total"] += 1
        row["killed"] += m["status"] in DETECTED
    killed = sum(m["status"] in DETECTED for m in counted)
    total = len(counted)
    for row in by_module.values():
        row["score"] = round(row["killed"] / row["total"], 4) if row["total"] else None
    stale = [e for e in equivalent if (e["module"], e["function"], tuple(e["diff"])) not in used]
    return {
        "killed": killed, "total": total, "score": round(killed / total, 4) if total else None,
        "status_counts": dict(sorted(status_counts.items())), "by_module": dict(sorted(by_module.items())),
        "survivors": [_brief(m) for m in counted if m["status"] == "survived"],
        "no_tests": [_brief(m) for m in counted if m["status"] == "no tests"],
        # counted as killed, but worth a look: a time limit hit under load can pass for a kill
        "timeouts_and_crashes": [{**_brief(m), "status": m["status"]} for m in counted
                                 if m["status"] in ("timeout", "segfault")],
        "other": [{**_brief(m), "status": m["status"]} for m in counted
                  if m["status"] not in (*DETECTED, "survived", "no tests")],
        "equivalent": equivalent_out, "equivalent_count": len(equivalent_out), "stale_equivalent": stale,
        "killed_equivalent": killed_equivalent,
    }


def slow_tests(max_test_s: float) -> dict[str, float]:
    """The tests the per-mutant runs left out, with their time in mutmut's stats run (set-up included)."""
    path = REPO / "mutants" / "mutmut-stats.json"
    durations = json.loads(path.read_text())["duration_by_test"] if path.exists() else {}
    return {t: round(d, 1) for t, d in sorted(durations.items()) if d > max_test_s}


def _brief(m: dict[str, Any]) -> dict[str, Any]:
    return {"name": m["name"], "module": m["module"], "function": m["function"], "diff": m["diff"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="TARGET",
                        help="run only the TARGETS entries containing one of these strings (e.g. fusion metrics)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="mutants run at once")
    parser.add_argument("--max-test-s", type=float, default=MAX_TEST_S,
                        help="tests slower than this (set-up included, as measured in mutmut's stats run) are left "
                             "out of the per-mutant runs")
    parser.add_argument("--test-budget-s", type=float, default=TEST_BUDGET_S,
                        help="each mutant runs its fastest tests up to this many seconds in all (as measured in the "
                             "stats run); a mutant only a later test would kill counts as surviving")
    parser.add_argument("--resume", action="store_true",
                        help="keep mutants/ and its verdicts: run only the mutants not run yet (new, or of functions "
                             "changed since) and those that survived or had no test (tests may have been added); "
                             "without it every mutant is run afresh")
    parser.add_argument("--report-only", action="store_true",
                        help="do not run mutmut: rebuild the JSON from mutants/ (after editing the equivalents)")
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 when the score is below this")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--debug", action="store_true", help="show mutmut's pytest commands and output")
    parser.add_argument("--mutmut-run", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()

    targets = {k: v for k, v in TARGETS.items() if not args.only or any(s in k for s in args.only)}
    if not targets:
        raise SystemExit(f"--only {args.only} matches no TARGETS entry: {list(TARGETS)}")
    files = target_files(targets)
    if args.mutmut_run:
        return run_mutmut(files, args.max_children, args.max_test_s, args.test_budget_s, args.resume, args.debug)

    load_before = os.getloadavg()
    start = time.perf_counter()
    rc = 0
    if not args.report_only:
        if not args.resume:
            shutil.rmtree(REPO / "mutants", ignore_errors=True)
        child = [sys.executable, __file__, "--mutmut-run", "--max-children", str(args.max_children),
                 "--max-test-s", str(args.max_test_s), "--test-budget-s", str(args.test_budget_s)]
        child += ["--only", *args.only] if args.only else []
        child += ["--debug"] if args.debug else []
        child += ["--resume"] if args.resume else []
        rc = subprocess.run(child, cwd=REPO, env=child_env()).returncode
    wall = time.perf_counter() - start

    mutants = collect(files)
    summary = summarize(mutants, load_equivalent())
    unchecked = [m["name"] for m in mutants if m["status"] == "not checked"]
    record = {
        "tool": "mutmut", "tool_version": metadata.version("mutmut"), "python": platform.python_version(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": rc == 0 and not unchecked and bool(mutants),
        "mutmut_exit_code": rc, "wall_s": None if args.report_only else round(wall, 1),
        "max_children": args.max_children, "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "targets": {k: list(v) if v else "all" for k, v in targets.items()}, "files": list(files),
        "max_test_s": args.max_test_s, "test_budget_s": args.test_budget_s,
        "slow_tests_left_out": slow_tests(args.max_test_s),
        "fail_under": args.fail_under, **summary,
    }
    from bench.io import atomic_write_json

    if args.report_only and args.out.exists():  # keep the measured run's time and load
        old = json.loads(args.out.read_text())
        for key in ("wall_s", "load_average_before", "load_average_after", "max_children", "finished"):
            record[key] = old.get(key, record[key])
    atomic_write_json(args.out, record)

    print(f"\nmutation score {record['score']}: {record['killed']} of {record['total']} mutants killed "
          f"({record['equivalent_count']} equivalent left out), {record['wall_s']} s; {args.out}")
    for m in summary["survivors"] + summary["no_tests"]:
        print(f"  {'survived' if m in summary['survivors'] else 'no tests'}  {m['name']}: {' | '.join(m['diff'])}")
    if not record["complete"]:
        print(f"incomplete: mutmut exited {rc}, {len(unchecked)} mutants not checked", file=sys.stderr)
        return 1
    if record["score"] is not None and record["score"] < args.fail_under:
        print(f"mutation score {record['score']} is below --fail-under {args.fail_under}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
