"""Dataset reader speed (samples/s) on the native-format fixtures, and memory while streaming a large split.

Run: ``.venv/bin/python benchmarks/readers.py [--images 400] [--size 256] [--repeats 5]
[--out results/perf/readers.json]``. Writes the JSON (atomically) and prints a summary table.

1. Speed: every reader on the fixtures of ``tests/fixtures/make_fixtures.py`` (written into a temporary folder),
   each split read start to end ``--repeats`` times after one warm-up pass: samples/s and megapixels/s of
   ``reader[i]`` (decode, label mapping, segments), and the time to build the reader (file index and json
   parsing; no image is decoded then). The fixture images are 48×64 apart from one 500×375 photo, so these
   figures are mostly per-sample overhead.
2. Streaming memory: ``--images`` generated scenes (``datamodules.synth``, ``--size``² pixels) written as a COCO
   panoptic split, as single-channel label maps over the same images (the ``label_map`` reader, the code that the
   ADE20K, ADE-847 and PASCAL Context readers share) and as parquet (``hf_parquet``, streamed through Hugging
   Face ``datasets``). Each is read start to end in a fresh process, its resident memory (RSS) sampled after
   every sample. The peak RSS growth is the highest RSS so far minus the RSS after building the reader and
   reading sample 0, given after a quarter, half and all of the split: flat (not growing with the samples read)
   means no reader holds the split.
   ``split_tensor_mib`` is what holding every sample's tensors would take, for scale; a control pass that keeps
   every sample shows that the measurement sees such growth.
   The ``hf`` reader is also run over the same parquet rows written in row groups of ``HF_ROW_GROUP`` rows, read
   through a DataLoader with ``HF_WORKERS`` workers (batches of ``HF_ROW_GROUP``): there the RSS is that of the
   main process and its worker processes together (``/proc``), sampled after every batch, and ``shards_per_worker``
   counts the row groups each worker opened (every shard once, by one worker: no worker reads the whole stream).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from bench.io import atomic_write_json  # noqa: E402
from datamodules.registry import get_reader  # noqa: E402
from datamodules.vocabulary import Vocabulary  # noqa: E402

VOCAB_DIR = REPO / "tasks" / "vocab"
SYNTH_VOCAB = "synth-park"
SYNTH_SEED = 1
LARGE_SPLIT = "train"
HF_ROW_GROUP, HF_WORKERS = 4, 2

# (label, format, dataset folder under the fixture root, vocabulary file, splits, reader options)
FIXTURE_READERS: list[tuple[str, str, str, str, tuple[str, ...], dict[str, Any]]] = [
    ("ade20k", "ade20k", "ADEChallengeData2016", "ade150", ("train", "val"), {}),
    ("ade20k_full", "ade20k_full", "ADE20K_2021_17_01", "ade847", ("train", "val"), {}),
    ("pascal_context-59", "pascal_context", "pascal_ctx_d2", "pc59", ("train", "val"), {}),
    ("pascal_context-459", "pascal_context", "pascal_ctx_d2", "pc459", ("train", "val"), {"variant": 459}),
    ("cityscapes", "cityscapes", "cityscapes", "cityscapes19", ("train", "val"), {}),
    ("coco_panoptic", "coco_panoptic", "coco", "coco133", ("train2017", "val2017"), {}),
    ("lvis", "lvis", "lvis", "lvis1203", ("train", "val"), {}),
    ("hf_parquet", "hf_parquet", "coco_parquet", "coco133", ("val2017",), {}),
]


def vocab(name: str) -> Vocabulary:
    return Vocabulary.from_file(VOCAB_DIR / f"{name}.txt")


def rss_mib() -> float:
    """Resident memory of this process now (``/proc/self/statm``); elsewhere the peak so far (``ru_maxrss``)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def tree_rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process and all its descendants (Linux ``/proc``; the DataLoader's workers)."""
    pid = os.getpid() if pid is None else pid
    try:
        total = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_rss_mib(int(child))
    except (OSError, ValueError, IndexError):
        return 0.0  # a worker that just exited
    return total


def sample_bytes(sample: dict[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in sample.values() if isinstance(v, torch.Tensor))


# --------------------------------------------------------------------------------------------------------------
# 1. Speed on the fixtures


def time_reader(fmt: str, root: Path, split: str, vocabulary: Vocabulary, options: dict[str, Any],
                repeats: int) -> dict[str, Any]:
    cls = get_reader(fmt)
    start = time.perf_counter()
    reader = cls(root=root, split=split, vocabulary=vocabulary, **options)
    build_s = time.perf_counter() - start
    n = len(reader)
    pixels = sum(int(np.prod(reader[i]["meta"]["size"])) for i in range(n))  # also the warm-up pass
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(n):
            reader[i]
    elapsed = time.perf_counter() - start
    return {"split": split, "samples": n, "build_ms": round(1000 * build_s, 3),
            "samples_per_s": round(repeats * n / elapsed, 2),
            "megapixels_per_s": round(repeats * pixels / elapsed / 1e6, 3),
            "ms_per_sample": round(1000 * elapsed / (repeats * n), 3)}


def fixture_speed(root: Path, repeats: int) -> dict[str, Any]:
    out = {}
    for label, fmt, folder, vocab_name, splits, options in FIXTURE_READERS:
        v = vocab(vocab_name)
        per_split = [time_reader(fmt, root / folder, s, v, options, repeats) for s in splits]
        n = sum(s["samples"] for s in per_split)
        seconds = sum(s["samples"] * s["ms_per_sample"] / 1000 for s in per_split)
        out[label] = {"format": fmt, "vocabulary": vocab_name, "samples": n,
                      "samples_per_s": round(n / seconds, 2), "splits": per_split}
    return out


# --------------------------------------------------------------------------------------------------------------
# 2. A large generated split in three formats, streamed in fresh processes


def write_large_split(root: Path, n: int, size: int) -> dict[str, tuple[str, Path, dict[str, Any]]]:
    """The synth scenes as COCO panoptic (``root/coco``), label maps over the same images (``root/labels``) and
    parquet (``root/coco_parquet``). Returns ``label -> (format, dataset root, reader options)``."""
    from fixtures.make_fixtures import write_coco_parquet

    from datamodules.coco_panoptic import CocoPanopticReader
    from datamodules.synth import write_split

    v = vocab(SYNTH_VOCAB)
    coco = root / "coco"
    write_split(coco, LARGE_SPLIT, n, v, SYNTH_SEED, size)
    labels = root / "labels" / LARGE_SPLIT
    labels.mkdir(parents=True)
    reader = CocoPanopticReader(coco, LARGE_SPLIT, v)
    for i in range(len(reader)):  # label value = class + 1, 0 = void (as in ADE20K)
        s = reader[i]
        Image.fromarray((s["semantic"].numpy() + 1).astype(np.uint8)).save(labels / f"{s['meta']['file_id']}.png")
    write_coco_parquet(root, LARGE_SPLIT)
    import pyarrow.parquet as pq

    sharded = root / "hf_sharded" / LARGE_SPLIT
    sharded.mkdir(parents=True)
    table = pq.read_table(next((root / "coco_parquet" / LARGE_SPLIT).glob("*.parquet")))
    pq.write_table(table, sharded / "part-0.parquet", row_group_size=HF_ROW_GROUP)
    (root / "hf_sharded" / "categories.json").write_bytes((root / "coco_parquet" / "categories.json").read_bytes())
    return {
        "coco_panoptic": ("coco_panoptic", coco, {}),
        "label_map": ("label_map", root, {"image_dir": "coco/{split}", "label_dir": "labels/{split}",
                                          "image_ext": ".png", "label_ext": ".png", "offset": 1,
                                          "ignore_values": []}),
        "hf_parquet": ("hf_parquet", root / "coco_parquet", {}),
        f"hf, {HF_WORKERS} loader workers": ("hf", root / "hf_sharded", {
            "data_files": "{split}/*.parquet", "categories": "categories.json", "columns": {"panoptic": "panoptic"}}),
    }


def stream_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build the reader, read sample 0, then the rest; RSS is sampled after every sample and
    its peak growth over the RSS after sample 0 reported at checkpoints.

    ``spec["hold"]``: keep every sample (the control: what a reader holding the split would show).
    """
    torch.set_num_threads(1)
    if spec["format"] == "hf":
        return loader_stream_worker(spec)
    rss_start = rss_mib()
    start = time.perf_counter()
    reader = get_reader(spec["format"])(root=Path(spec["root"]), split=LARGE_SPLIT, vocabulary=vocab(SYNTH_VOCAB),
                                        **spec["options"])
    build_s = time.perf_counter() - start
    n = len(reader)
    held = [reader[0]]
    total = sample_bytes(held[0])
    base = peak = rss_mib()
    checkpoints = {max(1, n // 4): "quarter", max(1, n // 2): "half", n: "all"}
    growth = {}
    start = time.perf_counter()
    for i in range(1, n):
        sample = reader[i]
        total += sample_bytes(sample)
        if spec.get("hold"):
            held.append(sample)
        peak = max(peak, rss_mib())
        if i + 1 in checkpoints:
            growth[checkpoints[i + 1]] = round(peak - base, 2)
    elapsed = time.perf_counter() - start
    return {"samples": n, "build_ms": round(1000 * build_s, 2),
            "samples_per_s": round((n - 1) / elapsed, 2) if n > 1 else None,
            "rss_after_build_and_first_sample_mib": round(base - rss_start, 2),
            "peak_rss_growth_mib": growth, "split_tensor_mib": round(total / 2**20, 2)}


def loader_stream_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """As :func:`stream_worker`, through a DataLoader with ``HF_WORKERS`` forked workers; RSS of the process tree."""
    from unittest import mock

    from datamodules.hf_rows import ShardedStream

    reader = get_reader(spec["format"])(root=Path(spec["root"]), split=LARGE_SPLIT, vocabulary=vocab(SYNTH_VOCAB),
                                        **spec["options"])
    n = len(reader)
    log = Path(spec["root"]) / "opened"
    log.mkdir(exist_ok=True)
    real_open = ShardedStream._open

    def logged_open(self: ShardedStream, shard: int, offset: int) -> None:  # which worker opens which shard
        with (log / str(os.getpid())).open("a") as f:
            f.write(f"{shard}\n")
        real_open(self, shard, offset)

    loader = torch.utils.data.DataLoader(reader, batch_size=HF_ROW_GROUP, num_workers=HF_WORKERS,
                                         collate_fn=list, multiprocessing_context="fork")
    checkpoints = {max(1, n // 4): "quarter", max(1, n // 2): "half", n: "all"}
    growth: dict[str, float] = {}
    read, total, base, peak = 0, 0, None, 0.0
    peaks: dict[str, float] = {}
    with mock.patch.object(ShardedStream, "_open", logged_open):
        start = time.perf_counter()
        for batch in loader:
            read += len(batch)
            total += sum(sample_bytes(s) for s in batch)
            rss = tree_rss_mib()
            if base is None:  # after the workers started and the first batch came back
                base = peak = rss
                start = time.perf_counter()
                first = read
                continue
            peak = max(peak, rss)
            for at, label in checkpoints.items():
                if read >= at and label not in growth:
                    growth[label] = round(peak - base, 2)
                    peaks[label] = peak
        elapsed = time.perf_counter() - start
    opened = [[int(x) for x in f.read_text().split()] for f in sorted(log.iterdir())]
    every = sorted(s for shards in opened for s in shards)
    return {"samples": read, "loader_workers": HF_WORKERS, "batch_size": HF_ROW_GROUP,
            "samples_per_s": round((read - first) / elapsed, 2) if read > first else None,
            "rss_tree_after_first_batch_mib": round(base or 0.0, 2), "peak_rss_growth_mib": growth,
            # the workers' one-off warm-up (allocator arenas, caches) falls in the first half; growth with the
            # samples read would show here
            "peak_rss_growth_second_half_mib": round(peaks.get("all", 0.0) - peaks.get("half", 0.0), 2),
            "split_tensor_mib": round(total / 2**20, 2), "shards": len(reader.rows.shard_rows),
            "shards_per_worker": [len(o) for o in opened],
            "every_shard_opened_once": every == list(range(len(reader.rows.shard_rows)))}


def stream_memory(root: Path, n: int, size: int) -> dict[str, Any]:
    start = time.perf_counter()
    datasets = write_large_split(root, n, size)
    out: dict[str, Any] = {"images": n, "image_size": [size, size], "vocabulary": SYNTH_VOCAB,
                           "generate_s": round(time.perf_counter() - start, 2), "readers": {}}
    runs = [(label, fmt, data_root, options, False) for label, (fmt, data_root, options) in datasets.items()]
    runs.append(("control: coco_panoptic keeping every sample", *datasets["coco_panoptic"], True))
    for label, fmt, data_root, options, hold in runs:
        spec = {"format": fmt, "root": str(data_root), "options": options, "hold": hold}
        proc = subprocess.run([sys.executable, __file__, "--stream-worker", json.dumps(spec)], check=True,
                              capture_output=True, text=True, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
        out["readers"][label] = {"format": fmt, **json.loads(proc.stdout.strip().splitlines()[-1])}
    return out


# --------------------------------------------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> str:
    lines = [f"{'reader (fixtures)':<22}{'samples':>8}{'samples/s':>11}{'Mpx/s':>8}{'build ms':>10}"]
    for label, r in report["fixtures"].items():
        mpx = sum(s["megapixels_per_s"] * s["samples"] for s in r["splits"]) / r["samples"]
        build = sum(s["build_ms"] for s in r["splits"])
        lines.append(f"{label:<22}{r['samples']:>8}{r['samples_per_s']:>11.1f}{mpx:>8.2f}{build:>10.1f}")
    big = report["streaming"]
    lines += ["", f"streaming {big['images']} generated {big['image_size'][0]}² images "
                  "(peak RSS growth in MiB after 1/4, 1/2, all of the split; holding the split would take):"]
    for label, r in big["readers"].items():
        g = r["peak_rss_growth_mib"]
        lines.append(f"  {label:<45}{r['samples_per_s']:>8.1f} samples/s   RSS +{g.get('quarter', 0):.1f} / "
                     f"+{g.get('half', 0):.1f} / +{g.get('all', 0):.1f} MiB   vs {r['split_tensor_mib']:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400, help="images of the generated split (streaming part)")
    parser.add_argument("--size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over each fixture split")
    parser.add_argument("--out", default="results/perf/readers.json")
    parser.add_argument("--stream-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_worker:
        print(json.dumps(stream_worker(json.loads(args.stream_worker))))
        return 0
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(1)

    from fixtures.make_fixtures import write_all

    with tempfile.TemporaryDirectory(prefix="reader-bench-") as tmp:
        fixtures = write_all(Path(tmp) / "fixtures")
        report: dict[str, Any] = {
            "benchmark": "dataset readers: samples/s on the native-format fixtures; memory while streaming a "
                         "generated split",
            "fixtures": fixture_speed(fixtures, args.repeats),
            "fixture_note": "tests/fixtures/make_fixtures.py: 48×64 images (one 500×375 photo in PASCAL Context "
                            f"val and LVIS val); {args.repeats} timed passes per split after a warm-up pass",
            "streaming": stream_memory(Path(tmp) / "large", args.images, args.size),
            "streaming_note": "each reader in a fresh process, RSS sampled after every sample; "
                              "peak_rss_growth_mib = highest RSS up to a quarter / half / all of the split minus "
                              "the RSS after building the reader and reading sample 0; split_tensor_mib = sum of "
                              "every sample's tensors; the control keeps every sample",
            "environment": {"torch": torch.__version__, "threads": 1, "cpus": os.cpu_count(),
                            "platform": platform.platform(), "python": platform.python_version()},
        }
    atomic_write_json(args.out, report)
    print(summary(report))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
