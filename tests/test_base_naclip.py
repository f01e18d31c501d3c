"""The ``naclip`` base: the authors' output on tiny weights (golden), a whole run, and ``bench list``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures.naclip_golden import GOLDEN, SHAPE, STDS, tiny_input, tiny_vit_state

from bench.models.naclip import NaclipBase, neighbourhood_prior

# float32 on CPU; the authors' code and ours differ only in the order of operations (one batched bmm with the
# heads folded into the batch against a 4-d matmul): observed differences are ~1e-6 on outputs of size ~1.
ATOL, RTOL = 1e-5, 1e-4


def _base_on_tiny_vit(std: float) -> NaclipBase:
    """A :class:`NaclipBase` around an open_clip ViT of the golden's shape, holding the golden's weights."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    vit = VisionTransformer(image_size=SHAPE["input_resolution"], patch_size=SHAPE["patch_size"],
                            width=SHAPE["width"], layers=SHAPE["layers"], heads=SHAPE["heads"], mlp_ratio=4.0,
                            output_dim=SHAPE["output_dim"], act_layer=QuickGELU).eval()
    vit.load_state_dict(tiny_vit_state({k: tuple(v.shape) for k, v in vit.state_dict().items()}), strict=True)
    base = NaclipBase.__new__(NaclipBase)  # skip loading a named model; everything dense runs on ``model.visual``
    torch.nn.Module.__init__(base)
    base.model, base.image_size, base.gaussian_std = SimpleNamespace(visual=vit), SHAPE["input_resolution"], std
    return base


@pytest.mark.parametrize("std", STDS)
def test_dense_features_match_the_authors_code(std):
    golden = np.load(GOLDEN)
    base = _base_on_tiny_vit(std)
    with torch.no_grad():
        dense = base.dense_features(tiny_input())  # B×D×h×w
        both, tokens = base.dense_and_token_features(tiny_input())
    ours = dense.flatten(2).transpose(1, 2).numpy()  # B×N×D, row-major patches as theirs
    np.testing.assert_allclose(ours, golden[f"std{std:g}"], atol=ATOL, rtol=RTOL)
    assert torch.equal(both, dense)
    with torch.no_grad():  # the memory embedder's tokens stay CLIP's full last block
        full, grid = base.tokens(tiny_input(), last_block="full")
    assert torch.equal(tokens, full.transpose(1, 2).reshape(tokens.shape)) and grid == 8


def test_the_prior_is_a_gaussian_of_grid_distance_without_the_class_token():
    prior = neighbourhood_prior(3, 2.0)
    assert prior.shape == (10, 10) and prior[0].abs().sum() == 0 and prior[:, 0].abs().sum() == 0
    assert prior[1, 1] == 1 and prior[1, 9] == pytest.approx(np.exp(-8 / 8))  # (0,0) to (2,2): d² = 8, 2σ² = 8


def test_a_naclip_run_names_its_base(small_run):
    record = small_run("BASE=naclip", "METHOD=zeroshot", "max_steps=1")
    assert record.base == "naclip" and record.config["base"]["kind"] == "naclip"
    assert record.model.identity.endswith("+naclip(std=5)") and record.steps_done == 1
    assert 0 <= record.matrix["miou"][0][0] <= 100


def test_bench_list_shows_naclip():
    out = subprocess.run([sys.executable, "-m", "bench", "list"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert "naclip" in out and "neighbourhood" in out
