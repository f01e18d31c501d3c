import math

import torch

from bench.fusion import fuse, retrieval_distribution
from bench.inference import semantic_from_proposals
from bench.proposals import pool_features


def test_retrieval_distribution_hand_worked():
    scores = torch.tensor([[0.9, 0.8, 0.7], [0.5, 0.4, 0.0]])
    classes = torch.tensor([[1, 0, 1], [2, -1, -1]])
    p, conf = retrieval_distribution(scores, classes, num_classes=3, temperature=0.1)
    w = torch.softmax(torch.tensor([9.0, 8.0, 7.0]), 0)
    assert torch.allclose(p[0], torch.tensor([w[1], w[0] + w[2], 0.0]))
    assert torch.allclose(p[1], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(conf, torch.tensor([0.9, 0.5]))


def test_no_valid_neighbour_gives_zero_distribution_and_no_confidence():
    p, conf = retrieval_distribution(torch.tensor([[0.3, 0.2]]), torch.tensor([[-1, -1]]), 4, 0.05)
    assert torch.equal(p, torch.zeros(1, 4)) and math.isinf(conf[0]) and conf[0] < 0


def test_fuse_uses_retrieval_only_above_threshold():
    p_base = torch.tensor([[0.7, 0.3], [0.7, 0.3]])
    p_ret = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = fuse(p_base, p_ret, torch.tensor([0.9, 0.4]), threshold=0.5, lam=0.6)
    assert torch.allclose(out[0], torch.tensor([0.28, 0.72]))
    assert torch.equal(out[1], p_base[1])


def test_pool_features_exact_area_weights():
    feats = torch.arange(2 * 2 * 2, dtype=torch.float32).view(2, 2, 2)  # D=2, 2×2 grid
    label_map = torch.zeros(4, 4, dtype=torch.long)
    label_map[:2, :2] = 1  # exactly cell (0,0)
    label_map[:, 2:] = 2  # cells (0,1) and (1,1)
    pooled = pool_features(feats, label_map, 3)
    assert torch.allclose(pooled[0], feats[:, 0, 0])
    assert torch.allclose(pooled[1], feats[:, :, 1].mean(1))
    assert torch.equal(pooled[2], torch.zeros(2))  # region 3 has no pixels


def test_pool_features_equals_a_direct_sum_per_region_and_cell():
    """Each pixel votes for the grid cell it falls in (rows * h // H, cols * w // W); checked against a loop over
    pixels on an odd-sized map whose size is no multiple of the grid."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(5, 3, 4, generator=g)
    label_map = torch.randint(0, 6, (13, 17), generator=g)
    sums, counts = torch.zeros(6, 5), torch.zeros(6)
    for y in range(13):
        for x in range(17):
            r = int(label_map[y, x])
            sums[r] += feats[:, y * 3 // 13, x * 4 // 17]
            counts[r] += 1
    expected = sums[1:] / counts[1:].clamp_min(1).unsqueeze(1)
    assert torch.allclose(pool_features(feats, label_map, 5), expected, atol=1e-6)
    assert torch.allclose(pool_features(feats, label_map, 7)[:5], expected, atol=1e-6)  # regions 6, 7: empty


def test_semantic_from_proposals_uncovered_pixels_are_ignore():
    label_map = torch.tensor([[0, 1], [2, 2]])
    probs = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert semantic_from_proposals(label_map, probs).tolist() == [[-1, 1], [0, 0]]
