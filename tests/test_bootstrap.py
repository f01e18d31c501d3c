"""Per-image class counts and bootstrap intervals (bench/bootstrap.py, bench/protocols.py): hand-worked counts,
the recorded scores recovered from the counts a run keeps, and intervals around them."""

from __future__ import annotations

import numpy as np
import torch

from bench.bootstrap import class_iou, dense, draws, image_counts, interval, miou, resampled, summary_replicates
from bench.metrics.semantic import confusion_matrix, mean_iou


def test_image_counts_by_hand():
    target = torch.tensor([[0, 0, 1], [1, 2, -1]])
    pred = torch.tensor([[0, 1, 1], [-1, 2, 0]])  # -1: no proposal there (a miss, no class's false positive)
    rows = image_counts(pred, target, 4, ignore_index=-1)
    # class 0: 2 target pixels, 1 hit, predicted once; class 1: 2 target, 1 hit, predicted twice; class 2: 1/1/1
    assert rows.tolist() == [[0, 1, 2, 1], [1, 1, 2, 2], [2, 1, 1, 1]]
    totals = dense([rows], 4).sum(0)
    # IoU: 1/(2+1-1) = 0.5, 1/(2+2-1) = 1/3, 1/1 = 1; class 3 absent
    assert np.isclose(miou(totals), 100 * (0.5 + 1 / 3 + 1) / 3)
    assert np.isclose(miou(totals), 100 * mean_iou(confusion_matrix(pred, target, 4, ignore_index=-1)))
    assert np.isnan(class_iou(totals)[3])


def test_summed_counts_of_random_images_give_the_metric():
    gen = torch.Generator().manual_seed(0)
    cms, rows = torch.zeros(5, 6, dtype=torch.long), []
    for _ in range(7):
        target = torch.randint(-1, 5, (9, 11), generator=gen)
        pred = torch.randint(-1, 5, (9, 11), generator=gen)
        cms = cms + confusion_matrix(pred, target, 5, ignore_index=-1)
        rows.append(image_counts(pred, target, 5, ignore_index=-1))
    assert np.isclose(miou(dense(rows, 5).sum(0)), 100 * mean_iou(cms))


def test_draws_resample_every_image_count_once_on_average():
    w = draws(4, replicates=2000, seed=3)
    assert w.shape == (2000, 4) and (w.sum(1) == 4).all() and np.allclose(w.mean(0), 1, atol=0.1)
    assert np.array_equal(w, draws(4, replicates=2000, seed=3))  # the same draw for every run compared


def test_identical_images_give_a_point_interval():
    counts = np.tile(np.array([[[3, 4, 5], [0, 1, 0]]]), (6, 1, 1))  # six identical images, 2 classes
    reps = miou(resampled(counts, draws(6, 200)))
    assert interval(reps) == [round(float(miou(counts.sum(0))), 4)] * 2
    assert interval(np.array([np.nan])) is None


def test_summary_replicates_use_the_lower_triangle():
    a = dense([np.array([[0, 1, 1, 1]]), np.array([[0, 0, 1, 1]])], 1)  # task 0: IoU 100 and 0 on two images
    b = dense([np.array([[0, 2, 2, 2]])], 1)  # task 1: one image, IoU 100
    w = [draws(2, 50, seed=0), draws(1, 50, seed=1)]
    reps = summary_replicates([[a, None], [a, b]], w)
    # final average = (task 0 resampled + 100) / 2; average incremental = (task 0 + final) / 2
    t0 = miou(resampled(a, w[0]))
    assert np.allclose(reps["final_average"], (t0 + 100) / 2)
    assert np.allclose(reps["average_incremental"], (t0 + (t0 + 100) / 2) / 2)


def test_a_run_keeps_counts_that_give_back_its_scores_and_intervals_around_them(small_run, tmp_path):
    from bench.protocols import load_counts

    record = small_run()
    folder = next(tmp_path.rglob("record.json")).parent
    steps = len(record["tasks"])
    for t in range(steps):
        counts = load_counts(folder, t + 1)
        for j in range(t + 1):
            total = dense(counts[str(j)], record["vocabulary_sizes"][j]).sum(0)
            assert abs(float(miou(total)) - record["matrix"]["miou"][t][j]) < 1e-3
    for key in ("final_average", "average_incremental"):
        low, high = record["intervals"]["miou"][key]
        assert low <= record["summary"]["miou"][key] + 1e-6 and record["summary"]["miou"][key] <= high + 1e-6
