"""Pretrain tiny-clip-synth and write its weights and checksum (about 10 minutes on one CPU core).

    python scripts/pretrain_tiny_clip.py                 # rebuild bench/models/weights/tiny-clip-synth.safetensors
    python scripts/pretrain_tiny_clip.py --check         # rebuild into a temporary folder, compare checksums
    python scripts/pretrain_tiny_clip.py --out /tmp/w.safetensors steps=300   # an experiment: any config field

The defaults of ``bench.pretrain.train.PretrainConfig`` are what the committed weights were built with. Float
kernels round differently on different CPUs (AVX-512, AVX2, ...), which over 800 steps changes the weights, so the
script pins the numerics before torch loads (PINNED below): Intel MKL in its conditional numerical reproducibility
mode, ATen's baseline kernels, oneDNN capped at SSE4.1, one thread. With the same torch build that gives the same
checksum on the CPU model the weights were built on whatever the instruction set MKL may use (checked on that AMD
EPYC with MKL allowed AVX-512 and held to AVX2), but not across CPU vendors: on an Intel Xeon the training log
agrees with the committed one to its four decimals through step 125 and then drifts by at most 0.0028 (rounding;
where, is not known), which changes the bytes. ``--check`` therefore also compares the training log with the
committed one and says how far they agree.
"""

from __future__ import annotations

import os
import sys

PINNED = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
          "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
if "torch" in sys.modules:
    raise SystemExit("scripts/pretrain_tiny_clip.py pins torch's numerics before loading it; run it as a script")
os.environ.update(PINNED)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.io import atomic_write_json  # noqa: E402
from bench.models import clip  # noqa: E402
from bench.pretrain.train import PretrainConfig, history_agreement, save_weights, train  # noqa: E402


def _config(pairs: list[str]) -> PretrainConfig:
    types = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"expected field=value with a field of PretrainConfig ({', '.join(types)}), got {pair!r}")
        values[key] = {"int": int, "float": float}.get(types[key], str)(value)
    return PretrainConfig(**values)


def _build_environment() -> dict[str, object]:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu, "pinned": PINNED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="PretrainConfig fields as field=value")
    parser.add_argument("--out", type=Path, default=clip.SUITE_WEIGHTS["tiny-clip-synth"])
    parser.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare the "
                        "checksum with the committed one (exit 1 when they differ) and the training log with the "
                        "committed log")
    parser.add_argument("--log", type=Path, default=None, help="with --check: also write the rebuild's log here")
    args = parser.parse_args(argv)
    if args.log and not args.check:
        raise SystemExit("--log is for --check (a build writes its log next to the weights)")
    committed_log = args.out.with_name(args.out.stem + ".log.json")
    if args.check and not committed_log.exists():
        raise SystemExit(f"{committed_log}: no committed training log to check against")
    cfg = _config(args.overrides)
    start = time.perf_counter()
    model, tokens, log = train(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / args.out.name if args.check else args.out
        digest = save_weights(model, tokens, cfg, out)
        record = {"config": dataclasses.asdict(cfg), "sha256": digest, "built_with": _build_environment(), **log}
        if not args.check or args.log:
            atomic_write_json(args.log if args.check else committed_log, record)
    total = time.perf_counter() - start
    print(f"sha256 {digest}  ({total:.0f} s: scene pool {log['pool_s']:.0f} s, training {log['train_s']:.0f} s)")
    if args.check:
        committed = clip.suite_checksum("tiny-clip-synth")
        print(f"committed {committed}: {'same' if committed == digest else 'DIFFERENT'}")
        previous = json.loads(committed_log.read_text())
        built = previous["built_with"]
        agree = history_agreement(previous["history"], log["history"])
        print(f"training log: the committed one's to its 4 decimals through step {agree['identical_through']}, "
              f"largest difference {agree['max_abs']:.4f} (built on {built['cpu']!r} with torch {built['torch']}; "
              f"this is {record['built_with']['cpu']!r} with torch {record['built_with']['torch']})")
        return 0 if committed == digest else 1
    print(f"wrote {args.out} and {clip.checksum_path(args.out).name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
