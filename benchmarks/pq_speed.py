"""Speed of our PanopticQuality against torchmetrics' on the same 512×512 images with about 30 segments each.

Run: ``.venv/bin/python benchmarks/pq_speed.py [--images 16] [--repeats 5] [--out results/perf/pq_speed.json]``.
Writes the JSON (atomically) and prints it. Each metric gets the same images in its own input format, prepared
before the clock starts: ours ``(segment map, classes)``, torchmetrics ``(category, instance)`` per pixel.

The inputs have no void and no crowd pixels: torchmetrics' ``PanopticQuality`` has no crowd segments and
subtracts void from the ground-truth side of the union too, so only on such inputs do the two definitions agree.
The script checks that they give the same PQ, SQ, RQ (all classes and per class) and fails if not; to 1e-6,
because torchmetrics divides intersection by union in float32 (ours, like panopticapi, in float64).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchmetrics
from torchmetrics.detection import PanopticQuality as TorchmetricsPQ

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.io import atomic_write_json
from bench.metrics import PanopticQuality

NUM_THINGS, NUM_STUFF = 80, 53  # COCO panoptic's vocabulary sizes; class k < 80 is a thing
SIZE = 512
TOLERANCE = 1e-6


def make_gt(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Category and instance maps: 10 stuff regions (Voronoi cells, distinct classes) under 22 thing ellipses."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    seeds = rng.integers(0, SIZE, (10, 2))
    cell = np.argmin((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2, 0)
    category = (NUM_THINGS + rng.choice(NUM_STUFF, 10, replace=False))[cell]
    instance = np.zeros((SIZE, SIZE), dtype=np.int64)
    for k in range(1, 23):
        cy, cx = rng.integers(0, SIZE, 2)
        ry, rx = rng.integers(15, 90, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        category[inside] = rng.integers(NUM_THINGS)
        instance[inside] = k
    return category, instance


def make_pred(rng: np.random.Generator, category: np.ndarray, instance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth shifted, about a fifth of its segments relabelled, and a few spurious blobs."""
    shift = tuple(int(s) for s in rng.integers(-12, 13, 2))
    category, instance = np.roll(category, shift, (0, 1)).copy(), np.roll(instance, shift, (0, 1)).copy()
    key = category * 1000 + instance
    for k in np.unique(key):
        if rng.random() < 0.2:
            mask = key == k
            stuff = category[mask][0] >= NUM_THINGS
            category[mask] = NUM_THINGS + rng.integers(NUM_STUFF) if stuff else rng.integers(NUM_THINGS)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k in range(100, 104):
        cy, cx = rng.integers(0, SIZE, 2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(10, 40)) ** 2
        category[inside], instance[inside] = rng.integers(NUM_THINGS), k
    return category, instance


def to_segments(category: np.ndarray, instance: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Our input: one segment per thing (category, instance) and per stuff category, as torchmetrics sees them."""
    instance = np.where(category >= NUM_THINGS, 0, instance)
    uniq, inverse = np.unique(category * 1000 + instance, return_inverse=True)
    return torch.from_numpy(inverse.reshape(category.shape) + 1), torch.from_numpy(uniq // 1000)


def build_inputs(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        gt = make_gt(rng)
        pred = make_pred(rng, *gt)
        gt_seg, gt_cls = to_segments(*gt)
        pred_seg, pred_cls = to_segments(*pred)
        images.append({
            "ours": (pred_seg, pred_cls, gt_seg, gt_cls, torch.zeros(len(gt_cls), dtype=torch.bool)),
            "torchmetrics": (torch.from_numpy(np.stack(pred, -1))[None], torch.from_numpy(np.stack(gt, -1))[None]),
        })
    return images


def timed(metric, inputs: list[tuple], repeats: int) -> float:
    """Seconds per image of ``metric.update`` over ``repeats`` passes, after one warm-up image; the metric is left
    holding the last pass only."""
    metric.update(*inputs[0])
    elapsed = 0.0
    for _ in range(repeats):
        metric.reset()
        start = time.perf_counter()
        for args in inputs:
            metric.update(*args)
        elapsed += time.perf_counter() - start
    return elapsed / (repeats * len(inputs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="passes over the images for our metric")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both metrics")
    parser.add_argument("--out", default="results/perf/pq_speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    images = build_inputs(args.images, args.seed)
    is_thing = torch.arange(NUM_THINGS + NUM_STUFF) < NUM_THINGS
    ours = PanopticQuality(NUM_THINGS + NUM_STUFF, is_thing)
    theirs = TorchmetricsPQ(things=set(range(NUM_THINGS)), stuffs=set(range(NUM_THINGS, NUM_THINGS + NUM_STUFF)),
                            return_sq_and_rq=True, return_per_class=True)
    ours_s = timed(ours, [im["ours"] for im in images], args.repeats)
    theirs_s = timed(theirs, [im["torchmetrics"] for im in images], 1)

    # Both now hold one pass over the same images: compare their values.
    result = ours.compute()
    per_class_theirs = theirs.compute()  # [C, 3]: pq, sq, rq; classes in our order (things, then stuff)
    present = ours.stats[:, :3].sum(1) > 0
    theirs_all = per_class_theirs[present].mean(0).tolist()
    per_class_ours = torch.tensor([[q["pq"], q["sq"], q["rq"]] for q in result["per_class"].values()],
                                  dtype=torch.float64)
    diff = max(float((per_class_ours - per_class_theirs).abs().max()),
               *(abs(result["All"][k] - v) for k, v in zip(("pq", "sq", "rq"), theirs_all)))

    segments = [len(im["ours"][3]) for im in images]
    report = {
        "benchmark": "PQ update speed, ours vs torchmetrics.detection.PanopticQuality",
        "images": args.images,
        "image_size": [SIZE, SIZE],
        "gt_segments_per_image": {"mean": float(np.mean(segments)), "min": min(segments), "max": max(segments)},
        "pred_segments_per_image_mean": float(np.mean([len(im["ours"][1]) for im in images])),
        "num_classes": {"things": NUM_THINGS, "stuff": NUM_STUFF},
        "inputs": "no void and no crowd pixels (torchmetrics has no crowd and treats void differently); each "
                  "metric gets its own input format, prepared before timing; update() only, one image per call",
        "ours": {"images_per_s": 1 / ours_s, "ms_per_image": 1000 * ours_s,
                 "images_timed": args.images * args.repeats},
        "torchmetrics": {"images_per_s": 1 / theirs_s, "ms_per_image": 1000 * theirs_s,
                         "images_timed": args.images, "version": torchmetrics.__version__},
        "speedup": theirs_s / ours_s,
        "pq": {"ours": result["All"]["pq"], "torchmetrics": theirs_all[0]},
        "sq": {"ours": result["All"]["sq"], "torchmetrics": theirs_all[1]},
        "rq": {"ours": result["All"]["rq"], "torchmetrics": theirs_all[2]},
        "max_abs_difference_all_and_per_class": diff,
        "tolerance": TOLERANCE,
        "tolerance_why": "torchmetrics computes each IoU in float32; ours and panopticapi in float64",
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                        "device": "cpu", "platform": platform.platform(), "python": platform.python_version()},
    }
    atomic_write_json(args.out, report)
    print(Path(args.out).read_text(), end="")
    if diff > TOLERANCE:
        print(f"error: the two metrics disagree by {diff:.3g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
