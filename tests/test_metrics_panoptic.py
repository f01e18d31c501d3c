"""Panoptic quality: pure functions against a mask-by-mask reference, hand-worked cases, the Metric shell, DDP
exactness, the real COCO sample, and panoptic inference from hard proposals."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from bench.inference import panoptic_from_proposals
from bench.metrics import PanopticQuality, pq_from_stats, pq_stats
from bench.sampling import ShardSampler

REAL = Path(__file__).parent / "fixtures" / "coco_real"


# --- reference: panopticapi's pq_compute_single_core rewritten on boolean masks --------------------------------

def reference_counts(pred: np.ndarray, pred_cls: list[int], gt: np.ndarray, gt_cls: list[int],
                     gt_crowd: list[bool], num_classes: int, gt_void: np.ndarray | None = None,
                     events: dict[str, int] | None = None) -> np.ndarray:
    """``[C, 4]`` (tp, fp, fn, iou_sum), one boolean mask per segment, every (gt, pred) pair visited.

    ``events`` (optional) counts the unmatched predictions excused by void alone and by void plus crowd."""
    events = {} if events is None else events
    void = gt == 0 if gt_void is None else (gt == 0) | gt_void
    out = np.zeros((num_classes, 4))
    gt_masks = [(gt == g + 1) & ~void for g in range(len(gt_cls))]
    pred_masks = [pred == p + 1 for p in range(len(pred_cls))]
    gt_matched, pred_matched = set(), set()
    for g, gm in enumerate(gt_masks):
        if gt_crowd[g]:
            continue
        for p, pm in enumerate(pred_masks):
            if gt_cls[g] != pred_cls[p]:
                continue
            intersection = np.count_nonzero(gm & pm)
            if intersection == 0:
                continue
            union = np.count_nonzero(pm) + np.count_nonzero(gm) - intersection - np.count_nonzero(pm & void)
            iou = intersection / union
            if iou > 0.5:
                out[gt_cls[g], 0] += 1
                out[gt_cls[g], 3] += iou
                gt_matched.add(g)
                pred_matched.add(p)
    for g in range(len(gt_cls)):
        if g not in gt_matched and not gt_crowd[g]:
            out[gt_cls[g], 2] += 1
    crowd_of_class = {}
    for g, gm in enumerate(gt_masks):
        if gt_crowd[g]:
            crowd_of_class[gt_cls[g]] = crowd_of_class.get(gt_cls[g], np.zeros_like(gm)) | gm
    for p, pm in enumerate(pred_masks):
        area = np.count_nonzero(pm)
        if p in pred_matched or area == 0:
            continue
        on_void = np.count_nonzero(pm & void)
        on_crowd = np.count_nonzero(pm & crowd_of_class[pred_cls[p]]) if pred_cls[p] in crowd_of_class else 0
        if (on_void + on_crowd) / area > 0.5:
            reason = "void" if on_void / area > 0.5 else "crowd"
            events[reason] = events.get(reason, 0) + 1
            continue
        out[pred_cls[p], 1] += 1
    return out


def reference_summary(counts: np.ndarray, is_thing: list[bool]) -> dict:
    """panopticapi's pq_average for All / Things / Stuff."""
    out = {}
    for name, wanted in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        for c, (tp, fp, fn, iou) in enumerate(counts):
            if (wanted is not None and is_thing[c] != wanted) or tp + fp + fn == 0:
                continue
            n += 1
            pq += iou / (tp + 0.5 * fp + 0.5 * fn)
            sq += iou / tp if tp else 0.0
            rq += tp / (tp + 0.5 * fp + 0.5 * fn)
        out[name] = {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n} if n else {"n": 0}
    return out


# --- random cases ------------------------------------------------------------------------------------------------

def _compact(ids: np.ndarray, classes: dict[int, int]) -> tuple[np.ndarray, list[int]]:
    """Renumber the ids present (and, for listed ids, absent ones too) to 1..S in a random-free order."""
    listed = sorted(classes)
    lut = {old: new for new, old in enumerate(listed, 1)}
    out = np.vectorize(lambda v: lut.get(v, 0), otypes=[np.int64])(ids) if ids.size else ids.astype(np.int64)
    return out, [classes[k] for k in listed]


def random_case(rng: np.random.Generator) -> dict:
    """One image: stuff bands and thing boxes (some crowd, some fully covered), void blocks and noise, and a
    prediction made by copying, splitting, merging, relabelling, dropping and shifting ground-truth segments, plus
    noise, spurious boxes, and empty predictions."""
    num_classes = int(rng.integers(2, 8))
    is_thing = rng.random(num_classes) < 0.5
    is_thing[0], is_thing[1] = False, True
    things, stuffs = np.flatnonzero(is_thing), np.flatnonzero(~is_thing)
    h, w = int(rng.integers(6, 33)), int(rng.integers(6, 33))

    gt = np.zeros((h, w), dtype=np.int64)
    gt_classes, crowd = {}, {}
    cuts = np.sort(rng.choice(np.arange(1, w), size=min(w - 1, int(rng.integers(0, 3))), replace=False))
    for i, (a, b) in enumerate(zip([0, *cuts.tolist()], [*cuts.tolist(), w]), 1):
        gt[:, a:b] = i
        gt_classes[i], crowd[i] = int(rng.choice(stuffs)), False
    for i in range(len(gt_classes) + 1, len(gt_classes) + 1 + int(rng.integers(0, 7))):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        gt[y:y + int(rng.integers(1, h // 2 + 2)), x:x + int(rng.integers(1, w // 2 + 2))] = i
        gt_classes[i], crowd[i] = int(rng.choice(things)), bool(rng.random() < 0.2)
    full = gt.copy()  # before void: the prediction also covers void pixels
    if rng.random() < 0.6:
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        gt[y:y + int(rng.integers(1, h // 2 + 1)), x:x + int(rng.integers(1, w // 2 + 1))] = 0
    gt[rng.random((h, w)) < rng.uniform(0, 0.1)] = 0
    if rng.random() < 0.04:
        gt[:] = 0
        gt_classes, crowd = {}, {}
    gt_void = rng.random((h, w)) < 0.05 if rng.random() < 0.3 else None

    pred = np.zeros((h, w), dtype=np.int64)
    pred_classes: dict[int, int] = {}
    next_id = 1
    for i in np.unique(full).tolist():
        if i == 0:
            continue
        mask, action = full == i, rng.choice(["copy", "copy", "split", "merge", "relabel", "drop", "shift"])
        cls = gt_classes.get(i, int(rng.integers(num_classes)))
        if action == "drop":
            continue
        if action == "merge" and pred_classes:  # join an earlier prediction, whatever its class
            target = int(rng.choice(list(pred_classes)))
            pred[mask] = target
            continue
        if action == "shift":
            mask = np.roll(mask, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)) & (pred == 0)
        if action == "relabel":
            cls = int(rng.integers(num_classes))
        pred[mask] = next_id
        pred_classes[next_id] = cls
        next_id += 1
        if action == "split":
            xs = np.nonzero(mask)[1]
            cut = int(rng.integers(xs.min(), xs.max() + 1))
            pred[mask & (np.arange(w)[None, :] >= cut)] = next_id
            pred_classes[next_id] = cls
            next_id += 1
    for _ in range(int(rng.integers(0, 3))):  # spurious boxes
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        pred[y:y + int(rng.integers(1, h // 2 + 2)), x:x + int(rng.integers(1, w // 2 + 2))] = next_id
        pred_classes[next_id] = int(rng.integers(num_classes))
        next_id += 1
    noise = rng.random((h, w)) < rng.uniform(0, 0.15)
    if pred_classes:
        pred[noise] = rng.choice([0, *pred_classes], size=int(noise.sum()))
    if rng.random() < 0.1:
        pred_classes[next_id] = int(rng.integers(num_classes))  # listed, no pixel
    if rng.random() < 0.06:
        pred[:] = 0
        pred_classes = {}
    gt, gt_cls = _compact(gt, gt_classes)  # covered-up boxes stay listed: zero-area ground truth
    gt_crowd = [crowd[k] for k in sorted(crowd)]
    pred, pred_cls = _compact(pred, pred_classes)
    return {"pred": pred, "pred_cls": pred_cls, "gt": gt, "gt_cls": gt_cls, "gt_crowd": gt_crowd,
            "num_classes": num_classes, "is_thing": is_thing.tolist(), "gt_void": gt_void}


def ours(case: dict) -> torch.Tensor:
    void = None if case["gt_void"] is None else torch.from_numpy(case["gt_void"])
    return pq_stats(torch.from_numpy(case["pred"]), torch.tensor(case["pred_cls"], dtype=torch.int64),
                    torch.from_numpy(case["gt"]), torch.tensor(case["gt_cls"], dtype=torch.int64),
                    torch.tensor(case["gt_crowd"], dtype=torch.bool), case["num_classes"], void)


def reference(case: dict) -> np.ndarray:
    return reference_counts(case["pred"], case["pred_cls"], case["gt"], case["gt_cls"], case["gt_crowd"],
                            case["num_classes"], case["gt_void"])


def assert_summary_close(ours_: dict, ref: dict) -> None:
    for name in ("All", "Things", "Stuff"):
        assert ours_[name]["n"] == ref[name]["n"]
        for k in ("pq", "sq", "rq"):
            if ref[name]["n"] == 0:
                assert math.isnan(ours_[name][k])
            else:
                assert abs(ours_[name][k] - ref[name][k]) <= 1e-9, (name, k)


@pytest.mark.parametrize("seed", range(25))
def test_matches_reference_on_random_cases(seed: int) -> None:
    """10 cases per seed, 250 in all; each seed also sums its cases as a multi-image evaluation."""
    rng = np.random.default_rng(seed)
    total_ours, total_ref = None, None
    for _ in range(10):
        case = random_case(rng)
        got, want = ours(case), reference(case)
        assert got.dtype == torch.float64 and got.shape == (case["num_classes"], 4)
        np.testing.assert_array_equal(got[:, :3].numpy(), want[:, :3])
        np.testing.assert_allclose(got[:, 3].numpy(), want[:, 3], rtol=0, atol=1e-9)
        assert_summary_close(pq_from_stats(got, torch.tensor(case["is_thing"])),
                             reference_summary(want, case["is_thing"]))
        # Across images: pad to a common vocabulary of 8 classes (unused ones never occur).
        pad = (0, 0, 0, 8 - case["num_classes"])
        total_ours = torch.nn.functional.pad(got, pad) + (0 if total_ours is None else total_ours)
        total_ref = np.pad(want, ((0, 8 - case["num_classes"]), (0, 0))) + (0 if total_ref is None else total_ref)
    is_thing = [c % 2 == 1 for c in range(8)]
    assert_summary_close(pq_from_stats(total_ours, torch.tensor(is_thing)), reference_summary(total_ref, is_thing))


def test_random_cases_cover_the_edge_cases() -> None:
    """The generator reaches every rule: matches, misses, false positives, predictions excused by void or by crowd,
    crowd ground truth, ground truth with no pixel, extra void, and empty predictions."""
    seen = dict.fromkeys(["tp", "fn", "fp", "excused_void", "excused_crowd", "crowd", "empty_pred", "gt_void",
                          "zero_area_gt"], 0)
    for seed in range(25):
        rng = np.random.default_rng(seed)
        for _ in range(10):
            c = random_case(rng)
            events: dict[str, int] = {}
            counts = reference_counts(c["pred"], c["pred_cls"], c["gt"], c["gt_cls"], c["gt_crowd"],
                                      c["num_classes"], c["gt_void"], events)
            seen["tp"] += counts[:, 0].sum() > 0
            seen["fp"] += counts[:, 1].sum() > 0
            seen["fn"] += counts[:, 2].sum() > 0
            seen["excused_void"] += events.get("void", 0) > 0
            seen["excused_crowd"] += events.get("crowd", 0) > 0
            seen["crowd"] += any(c["gt_crowd"])
            seen["empty_pred"] += not c["pred_cls"]
            seen["gt_void"] += c["gt_void"] is not None
            seen["zero_area_gt"] += len(c["gt_cls"]) > len(set(np.unique(c["gt"]).tolist()) - {0})
    assert all(v >= 5 for v in seen.values()), seen
