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
    """Renumber the listed ids to 1..S in id order (a listed id may have no pixel left); others become 0."""
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


# --- hand-worked cases -------------------------------------------------------------------------------------------

def _stats(pred, pred_cls, gt, gt_cls, gt_crowd, num_classes, gt_void=None) -> torch.Tensor:
    return pq_stats(torch.tensor(pred), torch.tensor(pred_cls, dtype=torch.int64), torch.tensor(gt),
                    torch.tensor(gt_cls, dtype=torch.int64), torch.tensor(gt_crowd, dtype=torch.bool), num_classes,
                    None if gt_void is None else torch.tensor(gt_void))


def assert_stats(stats: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(stats, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


# Class 0 = sky (stuff), class 1 = person (thing). Row 3 of the ground truth is void.
VOID_GT = [[1, 1, 1, 1],
           [1, 1, 1, 1],
           [2, 2, 2, 2],
           [0, 0, 0, 0]]
VOID_PRED = [[1, 1, 1, 1],
             [1, 1, 2, 2],
             [2, 2, 2, 2],
             [2, 2, 3, 3]]


def test_hand_void_pixels_leave_the_union() -> None:
    # sky: gt 8 px, pred 1 = 6 px inside it: IoU = 6 / (6 + 8 - 6 - 0) = 0.75 -> TP.
    # person: gt 4 px (row 2); pred 2 = 8 px: 2 on sky, 4 on the person, 2 on void.
    #   IoU = 4 / (8 + 4 - 4 - 2) = 4/6 -> TP (without leaving void out it would be 4/8 = 0.5, no match).
    # pred 3 (person, 2 px) lies wholly on void: unmatched but not a false positive.
    stats = _stats(VOID_PRED, [0, 1, 1], VOID_GT, [0, 1], [False, False], 2)
    assert_stats(stats, [[1, 0, 0, 0.75], [1, 0, 0, 4 / 6]])
    out = pq_from_stats(stats, torch.tensor([False, True]))
    assert out["per_class"][0] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0})
    assert out["per_class"][1] == pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0})
    assert out["All"] == pytest.approx({"pq": (0.75 + 2 / 3) / 2, "sq": (0.75 + 2 / 3) / 2, "rq": 1.0, "n": 2})
    assert out["Things"] == pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0, "n": 1})
    assert out["Stuff"] == pytest.approx({"pq": 0.75, "sq": 0.75, "rq": 1.0, "n": 1})


def test_hand_extra_void_mask_acts_as_segment_zero() -> None:
    # The same case with row 3 given a class in the gt map but marked by gt_void instead.
    gt = [row[:] for row in VOID_GT]
    gt[3] = [1, 1, 1, 1]
    void = [[False] * 4] * 3 + [[True] * 4]
    assert torch.equal(_stats(VOID_PRED, [0, 1, 1], gt, [0, 1], [False, False], 2, void),
                       _stats(VOID_PRED, [0, 1, 1], VOID_GT, [0, 1], [False, False], 2))


# Two persons (class 0) side by side: gt 1 a normal instance, gt 2 a crowd region.
CROWD_GT = [[1, 1, 1, 2, 2, 2],
            [1, 1, 1, 2, 2, 2]]
CROWD_PRED = [[1, 1, 2, 2, 3, 3],
              [1, 1, 2, 2, 3, 3]]


def test_hand_crowd_regions() -> None:
    # pred 1 (4 px) on gt 1 (6 px): IoU = 4 / (4 + 6 - 4) = 2/3 -> TP.
    # pred 2 (4 px): 2 px on gt 1 (IoU 2/8, no match), 2 px on the crowd: 2/4 = 0.5 is not > 0.5 -> FP.
    # pred 3 (4 px) wholly on the crowd of its class -> not a FP. The crowd is never a FN.
    # person: tp 1, fp 1, fn 0 -> SQ = 2/3, RQ = 1 / (1 + 0.5) = 2/3, PQ = 4/9.
    stats = _stats(CROWD_PRED, [0, 0, 0], CROWD_GT, [0, 0], [False, True], 2)
    assert_stats(stats, [[1, 1, 0, 2 / 3], [0, 0, 0, 0]])
    out = pq_from_stats(stats, torch.tensor([True, False]))
    assert out["All"] == pytest.approx({"pq": 4 / 9, "sq": 2 / 3, "rq": 2 / 3, "n": 1})
    assert out["Things"] == out["All"]
    assert out["Stuff"]["n"] == 0 and math.isnan(out["Stuff"]["pq"])
    assert out["per_class"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # never occurs: zeros, as panopticapi

    # pred 3 as class 1 instead: a crowd of persons does not excuse it -> FP of class 1 (PQ = SQ = RQ = 0).
    # All = mean over the two classes: PQ = (4/9 + 0) / 2, SQ = (2/3 + 0) / 2, RQ = (2/3 + 0) / 2.
    out = pq_from_stats(_stats(CROWD_PRED, [0, 0, 1], CROWD_GT, [0, 0], [False, True], 2),
                        torch.tensor([True, False]))
    assert out["All"] == pytest.approx({"pq": 2 / 9, "sq": 1 / 3, "rq": 1 / 3, "n": 2})
    assert out["Stuff"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1})


def test_hand_two_crowd_segments_of_one_class_both_count() -> None:
    # Crowd split in two segments (3 and 4) of class 0; pred 2 covers 1 px of each and 1 px of the instance:
    # 2/3 of it lies on crowd of its class -> excused. (panopticapi would look only at the last crowd segment
    # listed: 1/3, a FP; COCO never lists two crowd segments of a class in one image.)
    gt = [[1, 1, 3, 4]]
    pred = [[1, 2, 2, 2]]
    stats = _stats(pred, [0, 0], gt, [0, 0, 0, 0], [False, False, True, True], 1)
    # gt 1 (2 px) vs pred 1 (1 px): IoU 1/2, no match -> FN, and pred 1 (not on void or crowd) is a FP.
    # gt 2 has no pixel -> FN too.
    assert stats.tolist() == [[0, 1, 2, 0]]


@pytest.mark.parametrize(("cut", "expected"), [
    # stuff region of 8 px, predicted as two pieces of the same class:
    # 4 + 4: each IoU 4/8 = 0.5, not > 0.5 -> no TP; 1 FN, 2 FP -> PQ = SQ = RQ = 0.
    (2, {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}),
    # 6 + 2: IoU 6/8 -> TP (0.75); the 2 px piece is a FP. RQ = 1 / 1.5 = 2/3, SQ = 0.75, PQ = 0.5.
    (3, {"pq": 0.5, "sq": 0.75, "rq": 2 / 3, "n": 1}),
])
def test_hand_split_prediction(cut: int, expected: dict) -> None:
    gt = [[1] * 4] * 2
    pred = [[1] * cut + [2] * (4 - cut)] * 2
    out = pq_from_stats(_stats(pred, [2, 2], gt, [2], [False], 3), torch.tensor([True, True, False]))
    assert out["All"] == pytest.approx(expected)
    assert out["Stuff"] == pytest.approx(expected)


def test_hand_empty_prediction_and_empty_image() -> None:
    gt = [[1, 1], [2, 0]]
    # No prediction: every non-crowd gt segment is a FN; a crowd one is not.
    stats = _stats([[0, 0], [0, 0]], [], gt, [0, 1], [False, True], 2)
    assert stats.tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]
    assert pq_from_stats(stats, torch.tensor([False, True]))["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 1}
    # All void, nothing predicted: nothing counted, averages over no class are NaN.
    stats = _stats([[0, 0]], [], [[0, 0]], [], [], 2)
    assert int(stats.abs().sum()) == 0
    out = pq_from_stats(stats, torch.tensor([False, True]))
    assert out["All"]["n"] == 0 and math.isnan(out["All"]["pq"])


def test_input_checks() -> None:
    seg = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="same shape"):
        pq_stats(seg, torch.tensor([0, 0]), torch.tensor([[1], [1]]), torch.tensor([0]), torch.tensor([False]), 2)
    with pytest.raises(ValueError, match=r"pred_segments holds ids .* 1\.\.1"):
        pq_stats(seg, torch.tensor([0]), seg, torch.tensor([0, 1]), torch.tensor([False, False]), 2)
    with pytest.raises(ValueError, match=r"gt_classes holds class ids .* expected 0\.\.1"):
        pq_stats(seg, torch.tensor([0, 0]), seg, torch.tensor([0, 2]), torch.tensor([False, False]), 2)
    with pytest.raises(ValueError, match="gt_iscrowd"):
        pq_stats(seg, torch.tensor([0, 0]), seg, torch.tensor([0, 1]), torch.tensor([False]), 2)
    with pytest.raises(ValueError, match="integer"):
        pq_stats(seg.float(), torch.tensor([0, 0]), seg, torch.tensor([0, 1]), torch.tensor([False, False]), 2)


# --- the Metric ----------------------------------------------------------------------------------------------------

def _update(metric: PanopticQuality, case: dict) -> None:
    metric.update(torch.from_numpy(case["pred"]), torch.tensor(case["pred_cls"], dtype=torch.int64),
                  torch.from_numpy(case["gt"]), torch.tensor(case["gt_cls"], dtype=torch.int64),
                  torch.tensor(case["gt_crowd"], dtype=torch.bool),
                  None if case["gt_void"] is None else torch.from_numpy(case["gt_void"]))


def fixed_vocabulary_cases(n: int, seed: int) -> list[dict]:
    """Random cases re-drawn until their vocabulary has 7 classes, so they can share one Metric."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        case = random_case(rng)
        if case["num_classes"] == 7:
            cases.append(case)
    return cases


def test_metric_sums_images_and_resets() -> None:
    cases = fixed_vocabulary_cases(6, seed=3)
    is_thing = cases[0]["is_thing"]
    metric = PanopticQuality(7, is_thing)
    for case in cases:
        _update(metric, case)
    total = sum(reference(case) for case in cases)
    np.testing.assert_array_equal(metric.stats[:, :3].numpy(), total[:, :3])
    np.testing.assert_allclose(metric.stats[:, 3].numpy(), total[:, 3], rtol=0, atol=1e-9)
    out = metric.compute()
    assert set(out) == {"All", "Things", "Stuff", "per_class", "present"}
    assert set(out["per_class"]) == set(range(7))
    # present: the classes that occur (tp + fp + fn > 0); per_class shows 0.0 for the others, as panopticapi
    assert out["present"] == [bool(total[c, :3].sum() > 0) for c in range(7)]
    assert_summary_close(out, reference_summary(total, is_thing))
    metric.reset()
    assert int(metric.stats.abs().sum()) == 0


def test_metric_rejects_bad_vocabulary() -> None:
    with pytest.raises(ValueError, match="is_thing"):
        PanopticQuality(3, [True, False])
    with pytest.raises(ValueError, match="num_classes"):
        PanopticQuality(0, [])


# --- DDP: two gloo processes on CPU, 7 images sharded 4 + 3 ---------------------------------------------------

DDP_IMAGES = 7


def ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    try:
        cases = fixed_vocabulary_cases(DDP_IMAGES, seed=11)
        metric = PanopticQuality(7, cases[0]["is_thing"])
        indices = list(ShardSampler(len(cases), world_size, rank))
        for i in indices:
            _update(metric, cases[i])
        out = metric.compute()
        metric.sync()
        synced = metric.stats.clone()
        metric.unsync()
        torch.save({"out": out, "synced": synced, "indices": indices}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_equals_one_process(tmp_path: Path) -> None:
    world_size = 2
    # fork, not spawn: the workers inherit the imported modules instead of importing torch and torchmetrics
    # again (seconds each); they set one thread before any torch op, as DataLoader workers do.
    mp.start_processes(ddp_worker, args=(world_size, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=world_size,
                       join=True, start_method="fork")

    cases = fixed_vocabulary_cases(DDP_IMAGES, seed=11)
    single = PanopticQuality(7, cases[0]["is_thing"])
    for case in cases:
        _update(single, case)
    expected = single.compute()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    assert [len(r["indices"]) for r in results] == [4, 3]
    assert single.stats[:, :3].sum() > 0
    for r in results:
        assert torch.equal(r["synced"][:, :3], single.stats[:, :3])  # counts exact
        torch.testing.assert_close(r["synced"][:, 3], single.stats[:, 3], rtol=0, atol=1e-12)
        for name in ("All", "Things", "Stuff"):
            assert r["out"][name]["n"] == expected[name]["n"]
            for k in ("pq", "sq", "rq"):
                assert r["out"][name][k] == pytest.approx(expected[name][k], abs=1e-12, nan_ok=True)


# --- the real COCO sample ------------------------------------------------------------------------------------------

def real_sample() -> tuple[np.ndarray, list[dict], list[dict]]:
    """Raw ids of the PNG, its segments_info and the categories."""
    doc = json.loads((REAL / "annotations" / "panoptic_val2017.json").read_text())
    with Image.open(REAL / "panoptic_val2017" / "000000039769.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    return ids, doc["annotations"][0]["segments_info"], doc["categories"]


def _as_case(ids: np.ndarray, infos: list[dict], categories: list[dict]) -> tuple[np.ndarray, list[int], list[bool]]:
    class_of = {c["id"]: k for k, c in enumerate(categories)}
    seg = np.zeros(ids.shape, dtype=np.int64)
    for k, s in enumerate(infos, 1):
        seg[ids == s["id"]] = k
    return seg, [class_of[s["category_id"]] for s in infos], [bool(s["iscrowd"]) for s in infos]


def test_real_coco_sample_against_itself_and_perturbed() -> None:
    ids, infos, categories = real_sample()
    is_thing = [bool(c["isthing"]) for c in categories]
    seg, cls, crowd = _as_case(ids, infos, categories)
    assert (seg == 0).sum() == 10752  # the void pixels of the README
    stats = _stats(seg, cls, seg, cls, crowd, len(categories))
    out = pq_from_stats(stats, torch.tensor(is_thing))
    assert out["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 4}
    assert out["Things"]["n"] == 3 and out["Stuff"]["n"] == 1
    assert all(q == {"pq": 1.0, "sq": 1.0, "rq": 1.0} for q in out["per_class"].values())
    assert stats[:, 0].tolist() == [2, 1, 2, 1]  # cats, couch, remotes, blanket (json category order)

    # Perturbed: shift by (5, -7) px, split the couch at x = 320, call one remote a cat, drop a stripe into void;
    # then also with the second cat as a crowd region.
    pred = np.roll(seg, (5, -7), axis=(0, 1))
    pred_cls = list(cls)
    couch = next(k for k, c in enumerate(cls, 1) if categories[c]["name"] == "couch")
    pred[(pred == couch) & (np.arange(ids.shape[1])[None, :] >= 320)] = len(cls) + 1
    pred_cls.append(pred_cls[couch - 1])
    remote = next(k for k, c in enumerate(cls, 1) if categories[c]["name"] == "remote")
    pred_cls[remote - 1] = next(k for k, c in enumerate(categories) if c["name"] == "cat")
    pred[100:140] = 0
    for gt_crowd in (crowd, [False, True, *crowd[2:]]):
        got = _stats(pred, pred_cls, seg, cls, gt_crowd, len(categories))
        want = reference_counts(pred, pred_cls, seg, cls, gt_crowd, len(categories))
        np.testing.assert_array_equal(got[:, :3].numpy(), want[:, :3])
        np.testing.assert_allclose(got[:, 3].numpy(), want[:, 3], rtol=0, atol=1e-9)
        assert want[:, :3].sum(0).tolist() != [len(cls), 0, 0]  # the perturbation did change something
        assert_summary_close(pq_from_stats(got, torch.tensor(is_thing)), reference_summary(want, is_thing))


# --- panoptic inference from hard proposals ----------------------------------------------------------------------

def _one_hot(classes: list[int], num_classes: int, p: float = 0.9) -> torch.Tensor:
    probs = torch.full((len(classes), num_classes), (1 - p) / (num_classes - 1))
    probs[torch.arange(len(classes)), torch.tensor(classes)] = p
    return probs


IS_THING = torch.tensor([False, True, True])  # 0 = wall (stuff), 1 = cat, 2 = dog


def test_panoptic_stuff_merges_and_low_scores_drop() -> None:
    label_map = torch.tensor([[1, 1, 2, 3],
                              [4, 4, 2, 3],
                              [0, 0, 5, 5]])
    probs = _one_hot([0, 1, 0, 0, 2], 3)
    probs[3] = torch.tensor([0.5, 0.25, 0.25])  # top probability 0.5 is not above the threshold: dropped
    segments, classes = panoptic_from_proposals(label_map, probs, IS_THING)
    # Wall proposals 1 and 3 (apart) form one segment; cat 2 and dog 5 are their own instances.
    assert segments.tolist() == [[1, 1, 2, 1],
                                 [0, 0, 2, 1],
                                 [0, 0, 3, 3]]
    assert classes.tolist() == [0, 1, 2]
    assert segments.dtype == torch.int64 and classes.dtype == torch.int64


def test_panoptic_touching_thing_proposals_merge() -> None:
    # Cat proposals 1, 2 touch (a superpixel-cut cat); 4 touches 2 only diagonally; 3 is a dog touching 2.
    label_map = torch.tensor([[1, 2, 0, 0],
                              [1, 2, 3, 0],
                              [0, 0, 0, 4]])
    probs = _one_hot([1, 1, 2, 1], 3)
    segments, classes = panoptic_from_proposals(label_map, probs, IS_THING)
    assert segments.tolist() == [[1, 1, 0, 0],
                                 [1, 1, 2, 0],
                                 [0, 0, 0, 3]]
    assert classes.tolist() == [1, 2, 1]
    # Without merging (instance-level proposals such as the ground truth) each proposal is an instance.
    segments, classes = panoptic_from_proposals(label_map, probs, IS_THING, merge_things=False)
    assert segments.tolist() == label_map.tolist()
    assert classes.tolist() == [1, 1, 2, 1]


def test_panoptic_merging_goes_by_proposal_and_skips_dropped_ones() -> None:
    # Proposal 1 is one cat in two pieces (never split); 2 is a dropped cat touching 1, 3 and 4, which do not
    # touch each other, so they stay apart; an empty proposal 5 and the uncovered pixels give nothing.
    label_map = torch.tensor([[1, 0, 1, 0, 0],
                              [0, 3, 2, 2, 4]])
    probs = torch.cat([_one_hot([1], 3), torch.tensor([[0.1, 0.45, 0.45]]), _one_hot([1, 1, 1], 3)])
    segments, classes = panoptic_from_proposals(label_map, probs, IS_THING)
    assert segments.tolist() == [[1, 0, 1, 0, 0],
                                 [0, 2, 0, 0, 3]]
    assert classes.tolist() == [1, 1, 1]


def test_panoptic_edge_cases() -> None:
    empty_segments, empty_classes = panoptic_from_proposals(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(0, 3),
                                                            IS_THING)
    assert empty_segments.tolist() == [[0, 0, 0]] * 2 and empty_classes.tolist() == []
    with pytest.raises(ValueError, match="label_map"):
        panoptic_from_proposals(torch.tensor([[3]]), _one_hot([0, 1], 3), IS_THING)
    # object_mask_threshold 0 keeps everything; overlap_threshold above 1 drops everything (no proposal can keep
    # more than all of its area).
    label_map = torch.tensor([[1, 2]])
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.2, 0.2, 0.6]])
    assert panoptic_from_proposals(label_map, probs, IS_THING, object_mask_threshold=0.0)[1].tolist() == [0, 2]
    assert panoptic_from_proposals(label_map, probs, IS_THING, overlap_threshold=1.01)[1].tolist() == []


def test_panoptic_from_ground_truth_proposals_scores_one() -> None:
    """Oracle proposals with confident correct classes give PQ = 1 through inference and metric together."""
    ids, infos, categories = real_sample()
    seg, cls, crowd = _as_case(ids, infos, categories)
    is_thing = torch.tensor([bool(c["isthing"]) for c in categories])
    segments, classes = panoptic_from_proposals(torch.from_numpy(seg), _one_hot(cls, len(categories)), is_thing,
                                                merge_things=False)
    out = pq_from_stats(_stats(segments.numpy(), classes.tolist(), seg, cls, crowd, len(categories)), is_thing)
    assert out["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 4}
