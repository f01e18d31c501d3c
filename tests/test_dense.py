"""Sliding-window inference (bench/dense.py) against direct computations: window placement, the averaging of
overlapping windows, pooling at the image's own resolution, and ``slide`` = ``whole`` at the model's input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.dense import WHOLE, Protocol, check_protocol, dense_features, layout, window_starts
from bench.errors import ConfigError


def test_window_starts_follow_the_harness_rule():
    # 500 pixels, windows of 224 every 112: 0, 112, 224, then the last moved back to end at 500 (276)
    assert window_starts(500, 224, 112) == (0, 112, 224, 276)
    assert window_starts(224, 224, 112) == (0,)  # exactly one window
    assert window_starts(100, 224, 112) == (0,)  # shorter than a window: one, padded
    assert window_starts(336, 224, 112) == (0, 112)
    assert window_starts(337, 224, 112) == (0, 112, 113)


def test_layout_resizes_keeping_the_ratio_and_caps_the_long_side():
    slide = Protocol("slide", short_side=336, max_long_side=2048, crop=224, stride=112)
    lay = layout(512, 683, slide, 224)  # an ADE20K image: 683 x 512 -> 448 x 336
    assert lay.resized == (336, 448) and lay.window == 224
    assert lay.rows == (0, 112) and lay.cols == (0, 112, 224)
    capped = layout(100, 3000, Protocol("slide", 336, 2048, 224, 112), 224)  # scale = min(3.36, 0.68)
    assert capped.resized == (68, 2048) and capped.rows == (0,)
    assert layout(70, 90, WHOLE, 96).resized == (96, 96)


class PatchMean(torch.nn.Module):
    """A backbone with a known answer: each feature cell is the mean of its patch's pixels (3 channels), plus a
    constant channel per window so that windows differ even where the image agrees."""

    patch_size, image_size = 4, 16

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float().unsqueeze(0) / 255.0
        return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)[0]

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(images, self.patch_size)
        window_id = images[:, :1, :1, :1].expand(-1, 1, *cells.shape[-2:]) * 0 + torch.arange(
            len(images), dtype=images.dtype).view(-1, 1, 1, 1)
        return torch.cat([cells, window_id], 1)


def _direct_pooling(image: torch.Tensor, labels: torch.Tensor, protocol: Protocol, backbone: PatchMean
                    ) -> np.ndarray:
    """Region means computed the slow, obvious way: every resized pixel gets the average, over the windows that
    cover it, of its window cell's feature; every original pixel takes its resized pixel's feature."""
    lay = layout(*image.shape[-2:], protocol, backbone.image_size)
    rh, rw = lay.resized
    x = F.interpolate(image.float().unsqueeze(0) / 255.0, size=(rh, rw), mode="bilinear", align_corners=False)[0]
    canvas = np.zeros((3, max(rh, lay.window), max(rw, lay.window)))
    canvas[:, :rh, :rw] = x.numpy()
    p = backbone.patch_size
    total = np.zeros((4, rh, rw))
    count = np.zeros((rh, rw))
    k = 0
    for top in lay.rows:
        for left in lay.cols:
            win = canvas[:, top:top + lay.window, left:left + lay.window]
            for y in range(top, min(top + lay.window, rh)):
                for xx in range(left, min(left + lay.window, rw)):
                    cy, cx = (y - top) // p, (xx - left) // p
                    patch = win[:, cy * p:(cy + 1) * p, cx * p:(cx + 1) * p]
                    total[:3, y, xx] += patch.reshape(3, -1).mean(1)
                    total[3, y, xx] += k
                    count[y, xx] += 1
            k += 1
    per_pixel = total / count
    H, W = labels.shape
    out = np.zeros((int(labels.max()), 4))
    for r in range(1, int(labels.max()) + 1):
        ys, xs = np.nonzero(labels.numpy() == r)
        out[r - 1] = per_pixel[:, ys * rh // H, xs * rw // W].mean(1)
    return out


@pytest.mark.parametrize("size,protocol", [
    ((37, 53), Protocol("slide", short_side=24, max_long_side=64, crop=16, stride=8)),  # 3 x 4 windows
    ((30, 30), Protocol("slide", short_side=20, max_long_side=64, crop=16, stride=6)),  # uneven overlaps
    ((10, 90), Protocol("slide", short_side=16, max_long_side=40, crop=16, stride=8)),  # capped: padded window
])
def test_sliding_pooling_equals_a_direct_computation(size, protocol):
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(1, 6, size, generator=gen)
    labels[: size[0] // 2, : size[1] // 3] = 6  # one large region beside many scattered ones
    backbone = PatchMean()
    features = dense_features([backbone], [image], protocol, backbone.image_size)[0][0]
    assert features.features.shape[0] == features.layout.count > 1
    got = features.pool(labels, 6).numpy()
    np.testing.assert_allclose(got, _direct_pooling(image, labels, protocol, backbone), rtol=1e-5, atol=1e-6)


def test_pooling_an_empty_region_gives_zeros():
    backbone = PatchMean()
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    features = dense_features([backbone], [image], Protocol("slide", 16, 64, 16, 8), 16)[0][0]
    pooled = features.pool(torch.ones(20, 30, dtype=torch.long), 3)
    assert torch.equal(pooled[1:], torch.zeros(2, 4))


def test_slide_equals_whole_at_the_model_input_size():
    """A 128 x 128 image with tiny-random (input 128): one window, the same features and the same pooled regions."""
    from bench.models import build_base, build_embedder

    base = build_base("tiny-random")
    embedder = build_embedder("dinov2", base, "dinov2-tiny-random")  # another patch size (14): padded to 140
    gen = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=gen)
    labels = torch.randint(1, 9, (128, 128), generator=gen)
    slide = Protocol("slide", short_side=128, max_long_side=2048)
    assert base.image_size == 128
    whole_f = dense_features([base], [image], WHOLE, 128)[0][0]
    slide_f = dense_features([base], [image], slide, 128)[0][0]
    assert slide_f.layout.count == 1
    assert torch.equal(whole_f.features, slide_f.features)
    # the same numbers; the matrix product may add them in another order (the windows are a contiguous copy)
    torch.testing.assert_close(whole_f.pool(labels, 8), slide_f.pool(labels, 8), rtol=1e-6, atol=1e-7)
    assert dense_features([embedder], [image], slide, 128)[0][0].features.shape[-1] == 10  # 140 / 14


def test_windows_of_another_size_resize_the_positional_embedding():
    """A window other than the trained input size runs (positional grid resized); at the trained size the
    suite's embedding path is open_clip's own."""
    from bench.models import build_base

    base = build_base("tiny-random")
    x = torch.randn(2, 3, 128, 128)
    assert torch.equal(base._embeds(x), base.model.visual._embeds(x))
    assert base.dense_features(torch.randn(1, 3, 96, 96)).shape[-2:] == (12, 12)


def test_joint_pass_gives_the_two_separate_results():
    """embedder=clip shares the base's pass over the windows: the same numbers as two passes."""
    from bench.models import build_base, build_embedder
    from bench.module import eval_features

    base = build_base("tiny-random")
    embedder = build_embedder("clip", base)
    image = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    slide = Protocol("slide", short_side=160, max_long_side=2048)
    joint_base, joint_memory = eval_features(base, embedder, [{"image": image}], slide)
    alone_base = dense_features([base], [image], slide, 128)[0][0]
    alone_memory = dense_features([embedder], [image], slide, 128)[0][0]
    torch.testing.assert_close(joint_base[0].features, alone_base.features)
    torch.testing.assert_close(joint_memory[0].features, alone_memory.features)


def test_bad_protocols_are_one_line_errors_naming_the_key():
    with pytest.raises(ConfigError, match=r"^inference\.crop: a window of 224 pixels \(the base model's input "
                                          r"size\) is larger than inference\.short_side=200"):
        check_protocol(Protocol("slide", short_side=200), 224)
    with pytest.raises(ConfigError, match=r"^inference\.stride: 300 is larger than the window \(224\)"):
        check_protocol(Protocol("slide", short_side=336, stride=300), 224)
    check_protocol(Protocol("whole", short_side=10), 224)  # whole mode has no windows to check
