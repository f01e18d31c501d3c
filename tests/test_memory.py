import numpy as np
import pytest

from bench.errors import MemoryMismatchError
from bench.memory import Memory


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_matches_brute_force_cosine():
    rng = np.random.default_rng(0)
    memory = Memory(16, "emb-a")
    data = _unit(rng, 200, 16)
    memory.add(data, [f"c{i % 5}" for i in range(200)])
    queries = _unit(rng, 7, 16)
    scores, ids = memory.search(queries, 10)
    brute = queries @ data.T
    expected_ids = np.argsort(-brute, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected_ids, 1), rtol=1e-5, atol=1e-6)


def test_restricted_search_only_returns_allowed_classes_and_pads():
    rng = np.random.default_rng(1)
    memory = Memory(8, "emb")
    memory.add(_unit(rng, 30, 8), ["sky"] * 10 + ["ball"] * 17 + ["road"] * 3)
    scores, ids = memory.search(_unit(rng, 4, 8), 5, allowed=["road", "unknown class"])
    names = memory.class_names_of(ids)
    assert all(n in ("road", None) for row in names for n in row)
    assert (ids[:, :3] >= 0).all() and (ids[:, 3:] == -1).all()  # only 3 road entries exist
    assert np.isinf(scores[:, 3:]).all()
    # nothing allowed is present at all
    scores, ids = memory.search(_unit(rng, 2, 8), 3, allowed=["person"])
    assert (ids == -1).all()


def test_shared_names_share_entries():
    rng = np.random.default_rng(2)
    memory = Memory(4, "emb")
    memory.add(_unit(rng, 3, 4), ["person", "sky", "person"])
    memory.add(_unit(rng, 2, 4), ["person", "car"])  # a later task with an overlapping name
    assert memory.names == ["person", "sky", "car"]
    assert memory.labels.tolist() == [0, 1, 0, 0, 2]


def test_save_load_search_identical(tmp_path):
    rng = np.random.default_rng(3)
    memory = Memory(32, "open_clip:tiny/seed0")
    memory.add(_unit(rng, 500, 32), [f"c{i % 7}" for i in range(500)])
    queries = _unit(rng, 20, 32)
    before = memory.search(queries, 16, allowed=["c1", "c3"])
    memory.save(tmp_path / "step-1")
    loaded = Memory.load(tmp_path / "step-1", "open_clip:tiny/seed0", 32)
    after = loaded.search(queries, 16, allowed=["c1", "c3"])
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert loaded.names == memory.names and len(loaded) == 500
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folder left behind


def test_load_with_other_embedder_or_dim_names_both(tmp_path):
    memory = Memory(32, "open_clip:ViT-B-16/openai:tokens")
    memory.add(np.eye(32, dtype=np.float32)[:2], ["a", "b"])
    memory.save(tmp_path / "m")
    with pytest.raises(MemoryMismatchError) as err:
        Memory.load(tmp_path / "m", "timm:vit_small_patch14_dinov2/pretrained@224", 384)
    assert "open_clip:ViT-B-16/openai:tokens" in str(err.value)
    assert "timm:vit_small_patch14_dinov2/pretrained@224" in str(err.value)
    with pytest.raises(MemoryMismatchError, match=r"dim 32.*dim 64"):
        Memory.load(tmp_path / "m", "open_clip:ViT-B-16/openai:tokens", 64)
