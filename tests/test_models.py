"""Base model and embedders: dense features, the text-embedding cache, and no silent fallback to random weights."""

from __future__ import annotations

import pytest
import torch

from bench.models import build_base, build_embedder
from bench.proposals import build_proposer, pool_features


@pytest.fixture(scope="module")
def base():
    return build_base("tiny-random")


def test_dense_features_shapes_and_identity(base):
    image = torch.randint(0, 256, (3, 90, 150), dtype=torch.uint8)
    x = torch.stack([base.preprocess(image)] * 2)
    assert x.shape == (2, 3, 128, 128)
    feats = base.dense_features(x)
    assert feats.shape == (2, base.dim, 16, 16)
    assert base.identity == "open_clip:tiny-random/random-init(seed=0)"
    clip = build_embedder("clip", base)
    assert clip.dense_features(x).shape == (2, clip.dim, 16, 16)


@pytest.mark.parametrize("name", ["tiny-random", "tiny-clip-synth"])
def test_one_pass_gives_base_and_clip_embedder_features(name):
    model = build_base(name)
    clip = build_embedder("clip", model)
    images = torch.stack([model.preprocess(torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)) for _ in range(3)])
    with torch.no_grad():
        dense, tokens = model.dense_and_token_features(images)
        torch.testing.assert_close(dense, model.dense_features(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(tokens, clip.dense_features(images), rtol=0, atol=1e-6)
    assert not torch.allclose(dense[:, :8], tokens[:, :8])  # two different features, not one copied


def test_random_init_weights_depend_only_on_the_seed(base):
    torch.manual_seed(123)  # the caller's RNG state must not matter
    again = build_base("tiny-random")
    other = build_base("tiny-random", seed=1)
    a, b, c = (m.model.visual.conv1.weight for m in (base, again, other))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert other.identity.endswith("(seed=1)")


def test_text_embeddings_are_normalised_and_cached(base, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    emb = base.text_embeddings(["ball", "sky", "grass"])
    assert emb.shape == (3, base.dim)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert len(list((tmp_path / "text").glob("tiny-random-random-init-*.pt"))) == 1
    reordered = base.text_embeddings(["sky", "ball", "grass"])  # order is part of the key
    assert torch.allclose(reordered[0], emb[1]) and len(list((tmp_path / "text").glob("*.pt"))) == 2
    # The cached file is what a second call returns, without touching the text tower.
    monkeypatch.setattr(base.model, "encode_text", lambda *a, **k: pytest.fail("cache not used"))
    assert torch.equal(base.text_embeddings(["ball", "sky", "grass"]), emb)


def test_dinov2_tiny_embedder(base):
    emb = build_embedder("dinov2", base, "dinov2-tiny-random")
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)
    feats = emb.dense_features(emb.preprocess(image).unsqueeze(0))
    assert feats.shape == (1, 32, 9, 9)
    assert emb.identity == "timm:dinov2-tiny-random/random-init(seed=0)@126"


def test_missing_pretrained_weights_fail_instead_of_random(base):
    # HF_HUB_OFFLINE=1 (conftest): the download cannot happen, and the error says so.
    with pytest.raises(RuntimeError, match="could not load pretrained weights.*never substituted"):
        build_embedder("dinov2", base, "vit_small_patch14_dinov2")


@pytest.mark.slow
def test_missing_pretrained_clip_weights_fail_instead_of_random():
    with pytest.raises(RuntimeError, match="could not load pretrained weights ViT-B-16/laion2b_s34b_b88k"):
        build_base("ViT-B-16", "laion2b_s34b_b88k")


def test_proposals_cover_the_image_and_pool():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    image[:, :, 32:] = 200
    sample = {"image": image, "segments": torch.ones(64, 64, dtype=torch.long)}
    labels = build_proposer("superpixel", n_segments=8)(sample)
    assert labels.shape == (64, 64) and int(labels.min()) == 1
    # no superpixel straddles the sharp colour edge
    for k in labels.unique():
        cols = (labels == k).nonzero()[:, 1]
        assert bool((cols < 32).all()) or bool((cols >= 32).all())
    assert torch.equal(build_proposer("gt")(sample), sample["segments"])
    pooled = pool_features(torch.randn(5, 8, 8), labels, int(labels.max()))
    assert pooled.shape == (int(labels.max()), 5)
