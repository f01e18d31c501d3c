"""``python -m bench run|list`` — the one entry point. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.errors import ConfigError, DamagedStateError, MemoryMismatchError, RunInUseError, WeightsUnavailable
from bench.evaluate import add_eval_commands
from bench.segment import add_segment_command


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.run import build_config, run

    cfg, spec = build_config(args.overrides)
    run(cfg, spec, recompute_from=args.recompute_from)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bench.compare import COMPARE_ORDER, compare
    from bench.methods import get_method

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods else COMPARE_ORDER
    for method in methods:
        get_method(method)  # an unknown name stops here, before anything runs
    compare(args.overrides, methods=methods)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report import build_report, write_dashboard

    written = build_report(args.run_dirs or ["results/runs"], args.out, perf=args.perf, history=args.history or (),
                           memory_dir=args.memory)
    print(f"report of {len(written['records'])} runs: {written['summary_md']}")
    if args.dashboard:
        write_dashboard(Path(written["summary_md"]), Path(args.dashboard))
        print(f"dashboard: {args.dashboard}")
    if args.html:
        from bench.html_page import write_html

        write_html(args.dashboard or written["summary_md"], args.html)
        print(f"dashboard page: {args.html}")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from bench.history import rebuild, write_history

    lines = rebuild(".", args.references)
    write_history(args.out, lines)
    print(f"history: {len(lines)} lines from the git log of {args.references} -> {args.out}")
    return 0


def _cmd_regress(args: argparse.Namespace) -> int:
    from bench.regress import regress_main

    return regress_main(args.reference, args.run, history_out=args.history_out, summary_out=args.summary)


def _cmd_reference(args: argparse.Namespace) -> int:
    from bench.regress import make_reference

    make_reference(args.run, args.out)
    print(f"reference written: {args.out}")
    return 0


def _cmd_memory_curve(args: argparse.Namespace) -> int:
    from bench.memory_curve import main as memory_curve

    memory_curve(args.overrides, args.fractions, args.subsample_seed, args.out)  # fractions None: the defaults
    return 0


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.1,1, got {text!r}") \
            from None


def _cmd_data_check(args: argparse.Namespace) -> int:
    from bench.config import RunConfig, parse_overrides, set_value
    from datamodules.check import check_sequence, format_check
    from datamodules.sequence import load_sequence

    overrides = parse_overrides(args.overrides)
    cfg = RunConfig()
    for key in ("SEQ", "sequence", "DATA_ROOT", "data_root"):
        if key in overrides:
            set_value(cfg, key, overrides[key])
    spec = load_sequence(cfg.sequence)
    reports = check_sequence(spec, cfg.data_root, count=not args.no_count)
    print(format_check(reports, spec))
    return 0 if all(r.ok for r in reports) else 1


def registries() -> list[tuple[str, object]]:
    """Every registry users extend, with its heading in ``python -m bench list``."""
    from bench.memory import INDEX_KINDS
    from bench.methods import METHODS
    from bench.models import BASES, EMBEDDERS
    from bench.proposals import PROPOSERS
    from datamodules.registry import READERS

    return [("methods", METHODS), ("bases", BASES), ("embedders", EMBEDDERS), ("proposers", PROPOSERS),
            ("index kinds", INDEX_KINDS), ("dataset formats", READERS)]


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.models.clip import RANDOM_INIT_MODELS
    from datamodules.sequence import list_sequences, load_sequence

    print("sequences:")
    for name in list_sequences():
        spec = load_sequence(name)
        print(f"  {name:<20} {len(spec.tasks)} tasks: {', '.join(t.name for t in spec.tasks)}")
    for heading, registry in registries():
        print(f"{heading} ({registry.key}=):")
        for entry in registry.entries().values():
            print(f"  {entry.name:<20} {entry.description}")
    print("models (MODEL=): any open_clip model with a pretrained tag or a checkpoint file (ViTs for the ViT bases, "
          f"ConvNeXts for base.kind=convnext); suite configs: {', '.join(RANDOM_INIT_MODELS)}, tiny-clip-synth")
    return 0


class _RunParser(argparse.ArgumentParser):
    """``run --help`` ends with what each registry offers (read from the registries, so it is never stale)."""

    def format_help(self) -> str:
        lines = [super().format_help(), "choices (python -m bench list describes each):"]
        for _, registry in registries():
            lines.append(f"  {registry.key:<16} {', '.join(registry.names())}")
        return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) a sequence with one method",
                       description="Run a sequence: key=value overrides, e.g. SEQ=synth METHOD=knn knn.k=32")
    p.__class__ = _RunParser
    p.add_argument("overrides", nargs="*", help="key=value (SEQ, METHOD, MODEL, PRETRAINED, knn.k, ...)")
    p.add_argument("--recompute-from", type=int, metavar="T",
                   help="delete the saved state and record rows of steps >= T and resume from step T-1's state")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("compare", help="run every method on a sequence (reusing finished runs), one table",
                       description="Same overrides as run, applied to every method: SEQ=synth adapt_limit=20; "
                                   "seeds=1,2,3 runs each method that depends on SEED once per seed")
    p.add_argument("overrides", nargs="*", help="key=value, as for run (METHOD is ignored), and seeds=1,2,3")
    p.add_argument("--methods", help="comma-separated methods, in table order (default: zeroshot,knn,finetune,"
                                     "replay,joint)")
    p.set_defaults(func=_cmd_compare)
    p = sub.add_parser("report", help="markdown/CSV tables and PNG plots from run records")
    p.add_argument("run_dirs", nargs="*", help="run folders or folders holding them (default: results/runs)")
    p.add_argument("--out", default="results/report", help="where the report goes (default: results/report)")
    p.add_argument("--dashboard", help="also write the report as this markdown page (e.g. results/README.md)")
    p.add_argument("--perf", help="add the memory-at-scale section from this JSON of benchmarks/perf.py "
                                  "(e.g. results/perf/latest.json)")
    p.add_argument("--history", nargs="+", metavar="JSONL", help="history files to plot across commits "
                                                                 "(results/history.jsonl, and CI's lines)")
    p.add_argument("--memory", metavar="DIR", help="show every accuracy-vs-memory-size plot in DIR (results/memory)")
    p.add_argument("--html", metavar="FILE", help="also write the dashboard as one self-contained HTML page "
                                                  "(e.g. results/index.html)")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("history", help="rebuild the history across commits from the git log of the references")
    p.add_argument("--references", default="results/reference", help="folder of the committed references")
    p.add_argument("--out", default="results/history.jsonl", help="the history file (default: %(default)s)")
    p.set_defaults(func=_cmd_history)
    p = sub.add_parser("regress", help="compare a run with a committed reference; exit 1 on a drop")
    p.add_argument("--reference", required=True, help="results/reference/<seq>-<method>.json")
    p.add_argument("run", help="a run folder or its record.json")
    p.add_argument("--history-out", metavar="JSONL", help="append the run's history line (source ci) to this file")
    p.add_argument("--summary", metavar="FILE", help="append the comparison as markdown (a CI job summary)")
    p.set_defaults(func=_cmd_regress)
    p = sub.add_parser("reference", help="write a reference file from a finished run (see make reference)")
    p.add_argument("run", help="a run folder or its record.json")
    p.add_argument("--out", required=True, help="results/reference/<seq>-<method>.json")
    p.set_defaults(func=_cmd_reference)
    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("check", help="what each task of a sequence finds on disk (loads no model)")
    p.add_argument("overrides", nargs="*", help="SEQ=<name|file.yaml> DATA_ROOT=<dir>")
    p.add_argument("--no-count", action="store_true", help="only check paths, do not index the annotations")
    p.set_defaults(func=_cmd_data_check)
    add_eval_commands(sub)
    add_segment_command(sub)
    p = sub.add_parser("memory-curve", help="final mIoU of a finished knn run against memory size (memory "
                                            "subsampled per class, and in every index kind)",
                       description="Re-score a finished knn run (found as run names its folder: SEQ=, RUN_ID=, "
                                   "any run key) with its final memory subsampled per class and re-indexed in each "
                                   "index kind; writes <out>.json, .png and .md")
    p.add_argument("overrides", nargs="*", help="key=value naming the run, as for run (SEQ=synth-shift RUN_ID=...)")
    p.add_argument("--fractions", type=_fractions,
                   help="fractions of each class's entries kept (default 0.01,0.03,0.1,0.3,1)")
    p.add_argument("--subsample-seed", type=int, default=0, help="seed of the per-class draws (default 0)")
    p.add_argument("--out", help="path without suffix (default results/memory/<sequence>-knn)")
    p.set_defaults(func=_cmd_memory_curve)
    p = sub.add_parser("list", help="list sequences and every registry (methods, bases, embedders, proposers, "
                                    "index kinds, dataset formats)")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from datamodules.contract import DataError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ConfigError, DataError, MemoryMismatchError, DamagedStateError, RunInUseError, WeightsUnavailable,
            ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a full disk, a folder where a file should be: one line naming the path
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2


def describe_os_error(e: OSError) -> str:
    """``<what> <path>: <reason>`` (``what`` from :func:`bench.io.os_error`), or the message as raised."""
    if e.filename is None or not e.strerror:
        return str(e)
    action = getattr(e, "action", "")
    return f"{action + ' ' if action else ''}{e.filename}: {e.strerror}"
