"""The ``sclip`` and ``clearclip`` bases: the authors' output on tiny weights (goldens), a whole run, ``bench list``,
the memory embedder's tokens left alone, and a non-ViT model refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures.dense_clip_goldens import GOLDENS, IMAGE_SIZE, OUTPUT_DIM, SHAPE
from fixtures.naclip_golden import tiny_input, tiny_vit_state

from bench.errors import ConfigError
from bench.models import build_base, build_embedder
from bench.models.clearclip import ClearClipBase
from bench.models.clip import OpenClipBase
from bench.models.sclip import SclipBase

# float32 on CPU; the authors' code and ours differ only in the order of operations (heads folded into one bmm
# batch against a 4-d matmul, sequence-first against batch-first): observed differences are ~1e-6 on values ~1.
ATOL, RTOL = 1e-5, 1e-4
BASES = {"sclip": SclipBase, "clearclip": ClearClipBase}


def _on_tiny_vit(cls: type[OpenClipBase]) -> OpenClipBase:
    """A base of class ``cls`` around an open_clip ViT of the goldens' shape, holding the goldens' weights."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    vit = VisionTransformer(image_size=IMAGE_SIZE, mlp_ratio=4.0, output_dim=OUTPUT_DIM, act_layer=QuickGELU,
                            **SHAPE).eval()
    vit.load_state_dict(tiny_vit_state({k: tuple(v.shape) for k, v in vit.state_dict().items()}), strict=True)
    base = cls.__new__(cls)  # skip loading a named model; everything dense runs on ``model.visual``
    torch.nn.Module.__init__(base)
    base.model, base.image_size = SimpleNamespace(visual=vit), IMAGE_SIZE
    return base


@pytest.mark.parametrize("kind", BASES)
def test_dense_features_match_the_authors_code(kind):
    golden = np.load(GOLDENS / f"{kind}.npz")
    base = _on_tiny_vit(BASES[kind])
    with torch.no_grad():
        dense = base.dense_features(tiny_input())  # B×D×h×w
        both, tokens = base.dense_and_token_features(tiny_input())
        full, grid = base.tokens(tiny_input(), last_block="full")
    ours = dense.flatten(2).transpose(1, 2).numpy()  # B×N×D, row-major patches as theirs
    np.testing.assert_allclose(ours, golden["features"], atol=ATOL, rtol=RTOL)
    assert torch.equal(both, dense)
    assert torch.equal(tokens, full.transpose(1, 2).reshape(tokens.shape)) and grid == 8
    maskclip = _on_tiny_vit(OpenClipBase)
    with torch.no_grad():  # the golden is no MaskCLIP output in disguise
        assert not torch.allclose(maskclip.dense_features(tiny_input()), dense, atol=1e-2)


@pytest.mark.parametrize("kind", BASES)
def test_the_memory_embedder_keeps_clips_own_tokens(kind):
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    plain, variant = build_base("tiny-random", kind="maskclip"), build_base("tiny-random", kind=kind)
    assert variant.identity.endswith(f"+{kind}") and isinstance(variant, BASES[kind])
    with torch.no_grad():
        expected = build_embedder("clip", plain).dense_features(images)
        assert torch.equal(build_embedder("clip", variant).dense_features(images), expected)
        dense, tokens = variant.dense_and_token_features(images)
        assert torch.equal(tokens, expected) and torch.equal(dense, variant.dense_features(images))
        assert dense.shape == plain.dense_features(images).shape


@pytest.mark.parametrize("kind", BASES)
def test_a_run_names_its_base(small_run, kind):
    record = small_run(f"BASE={kind}", "max_steps=1")
    assert record.base == kind and record.config["base"]["kind"] == kind
    assert record.model.identity.endswith(f"+{kind}") and record.steps_done == 1
    assert 0 <= record.matrix["miou"][0][0] <= 100


def test_bench_list_shows_both():
    out = subprocess.run([sys.executable, "-m", "bench", "list"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert "sclip" in out and "clearclip" in out and "softmax(qqᵀ)" in out


@pytest.mark.parametrize("kind", BASES)
def test_a_non_vit_model_is_a_one_line_error(kind):
    with pytest.raises(ConfigError, match=rf"^base\.kind={kind}: MODEL tiny-convnext-random has a TimmModel image "
                                          r"tower, not an open_clip ViT; the ViT bases are .*\bsclip\b.*; for a "
                                          r"ConvNeXt model use base\.kind=convnext$") as err:
        build_base("tiny-convnext-random", kind=kind)
    assert "clearclip" in str(err.value) and "\n" not in str(err.value)
