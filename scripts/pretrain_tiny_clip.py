"""Pretrain tiny-clip-synth and write its weights and checksum (about 15 minutes on 2 CPU cores).

    python scripts/pretrain_tiny_clip.py                 # rebuild bench/models/weights/tiny-clip-synth.safetensors
    python scripts/pretrain_tiny_clip.py --check         # rebuild into a temporary folder, compare checksums
    python scripts/pretrain_tiny_clip.py --out /tmp/w.safetensors steps=300   # an experiment: any config field

The defaults of ``bench.pretrain.train.PretrainConfig`` are what the committed weights were built with; a rebuild
with them on the same torch build and kind of CPU reproduces the committed checksum.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.io import atomic_write_json
from bench.models import clip
from bench.pretrain.train import PretrainConfig, save_weights, train


def _config(pairs: list[str]) -> PretrainConfig:
    types = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"expected field=value with a field of PretrainConfig ({', '.join(types)}), got {pair!r}")
        values[key] = {"int": int, "float": float}.get(types[key], str)(value)
    return PretrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="PretrainConfig fields as field=value")
    parser.add_argument("--out", type=Path, default=clip.SUITE_WEIGHTS["tiny-clip-synth"])
    parser.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare the "
                        "checksum with the committed one; exit 1 when they differ")
    args = parser.parse_args(argv)
    cfg = _config(args.overrides)
    start = time.perf_counter()
    model, tokens, log = train(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / args.out.name if args.check else args.out
        digest = save_weights(model, tokens, cfg, out)
        if not args.check:
            log_path = out.with_name(out.stem + ".log.json")
            atomic_write_json(log_path, {"config": dataclasses.asdict(cfg), "sha256": digest, **log})
    total = time.perf_counter() - start
    print(f"sha256 {digest}  ({total:.0f} s: scene pool {log['pool_s']:.0f} s, training {log['train_s']:.0f} s)")
    if args.check:
        committed = clip.suite_checksum("tiny-clip-synth")
        print(f"committed {committed}: {'same' if committed == digest else 'DIFFERENT'}")
        return 0 if committed == digest else 1
    print(f"wrote {args.out} and {clip.checksum_path(args.out).name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
