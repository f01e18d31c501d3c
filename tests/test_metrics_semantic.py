"""Semantic metric: pure functions against a mask-counting reference, the Metric shell, DDP exactness."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.metrics import MeanIoU, confusion_matrix, iou_from_confusion, mean_iou, pixel_accuracy
from bench.sampling import ShardSampler

IGNORE = 255


def reference_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Independent reference: one boolean mask per class, counted directly (no confusion matrix)."""
    valid = target != IGNORE
    cm = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    pred_is_class = (pred >= 0) & (pred < num_classes)
    iou = np.full(num_classes, np.nan)
    for c in range(num_classes):
        in_target = valid & (target == c)
        in_pred = valid & (pred == c)
        union = np.count_nonzero(in_target | in_pred)
        if union:
            iou[c] = np.count_nonzero(in_target & in_pred) / union
        for k in range(num_classes):
            cm[c, k] = np.count_nonzero(in_target & (pred == k))
        cm[c, num_classes] = np.count_nonzero(in_target & ~pred_is_class)
    counted = np.count_nonzero(valid)
    correct = np.count_nonzero(valid & (pred == target))
    present = ~np.isnan(iou)
    return {
        "cm": cm,
        "iou": iou,
        "miou": float(iou[present].mean()) if present.any() else math.nan,
        "accuracy": correct / counted if counted else math.nan,
    }


def random_case(rng: np.random.Generator, num_classes: int, shape: tuple[int, ...]):
    """Target uses a random subset of classes (others absent) plus ignore pixels; predictions use another
    subset (some classes only predicted) plus invalid ids (255 and out-of-range)."""
    target_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    pred_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    target = rng.choice(target_classes, size=shape)
    target[rng.random(shape) < rng.uniform(0, 0.3)] = IGNORE
    pred = np.where(rng.random(shape) < 0.4, target, rng.choice(pred_classes, size=shape))
    pred[rng.random(shape) < rng.uniform(0, 0.2)] = IGNORE
    pred[rng.random(shape) < 0.05] = num_classes + int(rng.integers(0, 3))
    pred[pred == IGNORE] = np.where(rng.random() < 0.5, IGNORE, -1)  # both kinds of "no class"
    return pred.astype(np.int64), target.astype(np.int64)


def assert_close(actual: float, expected: float) -> None:
    assert (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_matches_mask_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(1, 12))
    shape = tuple(int(s) for s in rng.integers(1, 20, size=rng.integers(1, 4)))
    pred, target = random_case(rng, num_classes, shape)
    ref = reference_scores(pred, target, num_classes)

    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
    assert cm.dtype == torch.int64 and cm.shape == (num_classes, num_classes + 1)
    np.testing.assert_array_equal(cm.numpy(), ref["cm"])
    iou = iou_from_confusion(cm)
    assert iou.dtype == torch.float64
    np.testing.assert_allclose(iou.numpy(), ref["iou"], rtol=0, atol=1e-12)  # NaNs compare equal
    assert_close(mean_iou(cm), ref["miou"])
    assert_close(pixel_accuracy(cm), ref["accuracy"])


def test_hand_worked_example() -> None:
    # 2×3 image, 4 classes; class 3 appears nowhere; (1,2) is ignored although predicted as 2.
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE]])
    pred = torch.tensor([[0, 1, 1], [IGNORE, 2, 2]])
    cm = confusion_matrix(pred, target, num_classes=4)
    expected_cm = [[1, 1, 0, 0, 0],
                   [0, 1, 0, 0, 1],
                   [0, 0, 1, 0, 0],
                   [0, 0, 0, 0, 0]]
    assert cm.tolist() == expected_cm
    iou = iou_from_confusion(cm)
    # class 0: 1 / |{(0,0),(0,1)}|; class 1: 1 / |{(0,1),(0,2),(1,0)}|; class 2: 1 / 1
    assert iou[:3].tolist() == pytest.approx([1 / 2, 1 / 3, 1.0])
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)


def test_empty_and_all_ignored() -> None:
    target = torch.full((2, 2), IGNORE)
    cm = confusion_matrix(torch.zeros(2, 2, dtype=torch.int64), target, num_classes=3)
    assert int(cm.sum()) == 0
    assert torch.isnan(iou_from_confusion(cm)).all()
    assert math.isnan(mean_iou(cm)) and math.isnan(pixel_accuracy(cm))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.int64), 2)


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_target_out_of_range_raises(bad: int) -> None:
    target = torch.tensor([0, 1, bad, IGNORE])
    with pytest.raises(ValueError, match=f"class id {bad}"):
        confusion_matrix(torch.zeros(4, dtype=torch.int64), target, num_classes=3)


def test_float_input_raises() -> None:
    with pytest.raises(ValueError, match="dtype"):
        confusion_matrix(torch.zeros(4), torch.zeros(4, dtype=torch.int64), num_classes=3)


def test_metric_over_batches_equals_concatenation() -> None:
    rng = np.random.default_rng(123)
    num_classes = 7
    metric = MeanIoU(num_classes, class_names=[f"c{i}" for i in range(num_classes)])
    preds, targets = [], []
    for b in range(5):
        shape = (int(rng.integers(1, 4)), 9, 11) if b % 2 else (6, 13)  # batched and single samples
        pred, target = random_case(rng, num_classes, shape)
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred.ravel())
        targets.append(target.ravel())
    out = metric.compute()
    cm = confusion_matrix(torch.from_numpy(np.concatenate(preds)), torch.from_numpy(np.concatenate(targets)),
                          num_classes)
    assert torch.equal(metric.confmat, cm)
    assert set(out) == {"miou", "per_class_iou", "pixel_accuracy"}
    assert out["per_class_iou"].shape == (num_classes,)
    torch.testing.assert_close(out["per_class_iou"], iou_from_confusion(cm), equal_nan=True)
    assert float(out["miou"]) == pytest.approx(mean_iou(cm))
    assert 0.0 <= float(out["miou"]) <= 1.0
    assert float(out["pixel_accuracy"]) == pytest.approx(pixel_accuracy(cm))
    metric.reset()
    assert int(metric.confmat.sum()) == 0


def test_metric_rejects_wrong_class_names() -> None:
    with pytest.raises(ValueError, match="class_names"):
        MeanIoU(3, class_names=["a", "b"])


@pytest.mark.parametrize(("n", "replicas"), [(0, 1), (1, 3), (7, 2), (10, 3), (12, 4), (5, 8), (100, 7)])
def test_shard_sampler_covers_each_index_once(n: int, replicas: int) -> None:
    shards = [list(ShardSampler(n, replicas, rank)) for rank in range(replicas)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(ShardSampler(n, replicas, rank)) for rank in range(replicas)] == [len(s) for s in shards]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_sampler_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        ShardSampler(5, 2, 2)


# --- DDP: two gloo processes on CPU, 7 samples sharded 4 + 3 -------------------------------------------

DDP_SAMPLES = 7
DDP_CLASSES = 5


def ddp_samples() -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(7)
    samples = []
    for _ in range(DDP_SAMPLES):
        pred, target = random_case(rng, DDP_CLASSES, (int(rng.integers(4, 12)), int(rng.integers(4, 12))))
        samples.append((torch.from_numpy(pred), torch.from_numpy(target)))
    return samples


def ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=30))
    try:
        samples = ddp_samples()
        metric = MeanIoU(DDP_CLASSES)
        indices = list(ShardSampler(len(samples), world_size, rank))
        for i in indices:
            metric.update(*samples[i])
        out = metric.compute()
        metric.sync()
        synced = metric.confmat.clone()
        metric.unsync()
        record = {"out": out, "synced_confmat": synced, "indices": indices}
        torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_sum_is_exact(tmp_path: Path) -> None:
    world_size = 2
    mp.spawn(ddp_worker, args=(world_size, str(tmp_path / "pg_init"), str(tmp_path)), nprocs=world_size,
             join=True)

    samples = ddp_samples()
    single = MeanIoU(DDP_CLASSES)
    for sample in samples:
        single.update(*sample)
    expected = single.compute()
    counted = sum(int((target != IGNORE).sum()) for _, target in samples)

    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    assert [len(r["indices"]) for r in results] == [4, 3]
    for r in results:
        assert torch.equal(r["synced_confmat"], single.confmat)
        assert int(r["synced_confmat"].sum()) == counted
        assert torch.equal(r["out"]["miou"], expected["miou"])
        assert torch.equal(r["out"]["pixel_accuracy"], expected["pixel_accuracy"])
        torch.testing.assert_close(r["out"]["per_class_iou"], expected["per_class_iou"], equal_nan=True,
                                   rtol=0, atol=0)
