"""``python -m bench run|list`` — the one entry point. Heavy imports happen inside the commands."""

from __future__ import annotations

import argparse
import os
import sys

from bench.errors import ConfigError, MemoryMismatchError


def _cmd_run(args: argparse.Namespace) -> int:
    from bench.run import build_config, run

    cfg, spec = build_config(args.overrides)
    run(cfg, spec)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from bench.methods import METHODS
    from bench.models.clip import RANDOM_INIT_MODELS
    from datamodules.sequence import list_sequences, load_sequence

    print("sequences:")
    for name in list_sequences():
        spec = load_sequence(name)
        print(f"  {name:<16} {len(spec.tasks)} tasks: {', '.join(t.name for t in spec.tasks)}")
    print("methods:")
    for m in METHODS.values():
        print(f"  {m.name:<16} {m.description}")
    print(f"models: any open_clip ViT name with a pretrained tag; suite random-init configs: "
          f"{', '.join(RANDOM_INIT_MODELS)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) a sequence with one method",
                       description="Run a sequence: key=value overrides, e.g. SEQ=synth METHOD=knn knn.k=32")
    p.add_argument("overrides", nargs="*", help="key=value (SEQ, METHOD, MODEL, PRETRAINED, knn.k, ...)")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("list", help="list sequences, methods and models")
    p.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from datamodules.contract import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, MemoryMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
