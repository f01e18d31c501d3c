"""The FC-CLIP-style ConvNeXt base (bench/models/convnext.py): a mask is pooled on the last stage and passed
through the rest of CLIP's image tower; for a mask covering the whole image that is CLIP's own image embedding."""

from __future__ import annotations

import pytest
import torch

from bench.dense import WHOLE, Protocol, dense_features
from bench.errors import ConfigError
from bench.models import BASES, build_base, build_embedder

MODEL = "tiny-convnext-random"  # bench/models/configs: timm convnext_atto trunk, random weights


@pytest.fixture(scope="module")
def base():
    return build_base(MODEL, kind="convnext")


def test_a_whole_image_mask_gives_clips_image_embedding(base):
    # 160 x 224 pixels onto a 4 x 4 grid: every cell gets the same number of pixels, so mask pooling of the whole
    # image is the global average pool CLIP's head applies (other sizes weight cells by their pixel counts)
    image = torch.randint(0, 256, (3, 160, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = dense_features([base], [image], WHOLE, base.image_size)[0][0]
    assert features.features.shape[-2:] == (base.image_size // 32,) * 2  # the last stage, stride 32
    pooled = base.project_pooled(features.pool(torch.ones(160, 224, dtype=torch.long), 1))
    expected = base.model.encode_image(base.preprocess(image).unsqueeze(0))
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def test_sliding_windows_and_the_memory_embedder(base):
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    features = dense_features([base], [image], Protocol("slide", short_side=160), base.image_size)[0][0]
    assert features.layout.count == 6 and features.pool(torch.ones(200, 300, dtype=torch.long), 1).shape == (1, 320)
    embedder = build_embedder("clip", base)  # EMBEDDER=clip: the ConvNeXt's last-stage map
    assert embedder.identity.endswith(":last-stage") and embedder.dim == base.dim


def test_end_to_end_on_the_embedded_sequence(small_run):
    record = small_run(f"MODEL={MODEL}", "BASE=convnext")
    assert record["base"] == "convnext" and record["embedder"].endswith(":last-stage")
    assert all(v is not None for v in record["matrix"]["miou"][-1])
    assert "convnext" in BASES.names()


def test_a_tower_of_the_other_kind_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"^base\.kind=convnext needs an open_clip ConvNeXt model; MODEL "
                                          r"tiny-random is a ViT: use base\.kind=maskclip"):
        build_base("tiny-random", kind="convnext")
    with pytest.raises(ConfigError, match=r"^base\.kind=maskclip: MODEL tiny-convnext-random has a TimmModel image "
                                          r"tower, not an open_clip ViT; the ViT bases are .*maskclip.*; for a "
                                          r"ConvNeXt model use base\.kind=convnext$"):
        build_base(MODEL, kind="maskclip")
