"""Model inputs made in the loader's workers (bench/inputs.py) are the ones the main process would make, bit for
bit (``whole``; ``slide``'s stay in the main process), and so are the segments pooled from the cell counts the
workers make instead of sending the label maps; a knn adapt pass with them writes the same memory; segments are
kept exactly where they are not crowd and have pixels."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bench.dense import WHOLE, Protocol, dense_features
from bench.inputs import InputPrep, PreparedInputs, input_key, loader_inputs, model_input
from bench.pooling import region_cells
from datamodules import SequenceDataModule
from datamodules.sequence import load_sequence

SLIDE = Protocol("slide", short_side=160, max_long_side=2048, crop=96, stride=48)  # 128² → 160², 3×3 windows


@pytest.fixture(scope="module")
def backbones():
    from bench.models import build_base, build_embedder

    base = build_base("tiny-random")
    return base, build_embedder("dinov2", base, "dinov2-tiny-random")


def test_the_prep_of_a_backbone_states_its_own_preprocessing(backbones):
    base, dino = backbones
    prep = base.input_prep
    assert (prep.size, prep.patch_size) == (base.image_size, base.patch_size)
    assert torch.equal(torch.tensor(prep.mean), base.mean) and torch.equal(torch.tensor(prep.std), base.std)
    assert dino.input_prep.mean == pytest.approx((0.485, 0.456, 0.406)) and dino.input_prep.patch_size == 14
    assert InputPrep.of(8, base.mean, base.std) == InputPrep.of(8, base.mean.tolist(), base.std.tolist())
    clip_tower = __import__("bench.models", fromlist=["build_embedder"]).build_embedder("clip", base)
    assert clip_tower.input_prep == prep  # the base's own tower takes the base's inputs: one key


def _batches(num_workers: int, transform: PreparedInputs | None) -> list[list[dict]]:
    """The first 5 adapt samples of synth, in batches of 2, through the data module's predict loader."""
    dm = SequenceDataModule(load_sequence("synth"), batch_size=2, num_workers=num_workers, adapt_limit=5)
    dm.set_step(0)
    dm.adapt_transform = transform
    return list(dm.predict_dataloader())


def _served(num_workers: int, transform: PreparedInputs | None) -> list[dict]:
    return [sample for batch in _batches(num_workers, transform) for sample in batch]


def test_inputs_made_in_a_worker_equal_those_made_in_the_process(backbones):
    base, dino = backbones
    transform = loader_inputs([base, dino], WHOLE)
    samples = _served(1, pickle.loads(pickle.dumps(transform)))  # what a spawned worker would unpickle
    assert len(samples) == 5
    for sample in samples:
        assert len(sample["inputs"]) == 2
        for backbone in (base, dino):
            made_here = model_input(backbone, sample["image"], None)
            assert made_here.shape == (3, backbone.image_size, backbone.image_size)
            assert torch.equal(sample["inputs"][input_key(backbone, None)], made_here)
        # and the features from them are the features made from the image alone
        got = dense_features([base, dino], [sample["image"]], WHOLE, base.image_size, inputs=[sample["inputs"]])
        want = dense_features([base, dino], [sample["image"]], WHOLE, base.image_size)
        assert all(torch.equal(g[0].features, w[0].features) for g, w in zip(got, want))


def test_slide_inputs_stay_in_the_main_process():
    """torch's bilinear resize without antialiasing (slide's, as the harness's cv2) is not bit-identical across
    thread counts, the antialiased one (whole's) is: a worker (1 thread) may only prepare whole's inputs."""
    import torch.nn.functional as F

    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        out = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            out[n] = F.interpolate(x, size=(160, 160), mode="bilinear", align_corners=False, antialias=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[1], out[2])  # whole's resize: the same whatever the threads
    assert loader_inputs([PatchlessPrep()], SLIDE) is None
    assert isinstance(loader_inputs([PatchlessPrep()], WHOLE), PreparedInputs)


class PatchlessPrep:
    input_prep = InputPrep(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_inputs_under_another_key_are_not_used(backbones):
    base, dino = backbones
    sample = PreparedInputs([dino.input_prep])(_served(0, None)[0])  # the embedder's inputs, not the base's
    poisoned = {key: torch.full_like(x, 7.0) for key, x in sample["inputs"].items()}
    got = dense_features([base], [sample["image"]], WHOLE, base.image_size, inputs=[poisoned])[0][0]
    assert torch.equal(got.features, dense_features([base], [sample["image"]], WHOLE, base.image_size)[0][0].features)
    used = dense_features([dino], [sample["image"]], WHOLE, base.image_size, inputs=[poisoned])[0][0]
    assert not torch.equal(used.features, dense_features([dino], [sample["image"]], WHOLE, base.image_size)[0][0]
                           .features)  # the matching key is taken as given
    slide = dense_features([dino], [sample["image"]], SLIDE, base.image_size, inputs=[poisoned])[0][0]
    assert torch.equal(slide.features, dense_features([dino], [sample["image"]], SLIDE, base.image_size)[0][0]
                       .features)  # a whole input is never a slide one


def test_a_pass_on_another_device_resizes_there(backbones):
    """A knn adapt pass on a GPU gets no loader transform: its inputs are made from the batch on the device, as
    in evaluation (a CPU resize in a worker would round differently)."""
    from bench.memory import IndexSpec, Memory
    from bench.methods.knn import MemoryWriter

    _, dino = backbones
    writer = MemoryWriter(dino, Memory(dino.dim, dino.identity, IndexSpec()), load_sequence("synth").tasks[0]
                          .vocabulary)
    assert isinstance(writer.loader_transform(torch.device("cpu")), PreparedInputs)
    assert writer.loader_transform(torch.device("cuda", 0)) is None and writer.loader_transform("mps") is None


def test_a_backbone_without_a_prep_gets_no_transform():
    class Plain:
        pass

    assert loader_inputs([Plain()], WHOLE) is None and input_key(Plain(), None) is None


def test_a_knn_adapt_pass_writes_the_same_memory_with_inputs_from_a_worker(backbones):
    """MemoryWriter over the loader with its transform in one worker = without it, in the process."""
    from bench.config import KnnConfig
    from bench.memory import IndexSpec, Memory
    from bench.methods.knn import MemoryWriter

    base, dino = backbones
    memories = []
    for workers, prepared in ((0, False), (1, True)):
        memory = Memory(dino.dim, dino.identity, IndexSpec.from_config(KnnConfig(index="flat")))
        spec = load_sequence("synth")
        writer = MemoryWriter(dino, memory, spec.tasks[0].vocabulary, WHOLE, base.image_size)
        with torch.no_grad():
            for i, batch in enumerate(_batches(workers, writer.loader_transform() if prepared else None)):
                assert all(("inputs" in s) == prepared == ("segment_cells" in s) != ("segments" in s) for s in batch)
                writer.predict_step(batch, i)
        memories.append(memory)
    assert len(memories[0]) == len(memories[1]) > 0
    assert np.array_equal(memories[0].labels, memories[1].labels)
    assert np.array_equal(memories[0].vectors(np.arange(len(memories[0]))),
                          memories[1].vectors(np.arange(len(memories[1]))))


@pytest.mark.parametrize("protocol", [WHOLE, SLIDE], ids=["whole", "slide"])
def test_segments_keep_exactly_the_non_crowd_regions_with_pixels(backbones, protocol):
    base, _ = backbones
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    segments = torch.zeros(128, 128, dtype=torch.long)
    segments[:40] = 1
    segments[40:90, :70] = 2
    segments[90:, 5:6] = 4  # a one-pixel-wide strip; region 3 has no pixels, region 5 neither
    segments[40:90, 70:] = 6
    sample = {"segments": segments, "segment_classes": torch.tensor([3, 1, 4, 1, 5, 9]),
              "segment_iscrowd": torch.tensor([False, False, False, False, False, True])}
    feats = dense_features([base], [image], protocol, base.image_size)[0][0]
    pooled, classes = feats.segments(sample)
    present = torch.bincount(segments.flatten(), minlength=7)[1:] > 0
    keep = present & ~sample["segment_iscrowd"]
    assert keep.tolist() == [True, True, False, True, False, False]
    assert torch.equal(classes, sample["segment_classes"][keep])
    assert torch.equal(pooled, feats.pool(segments, 6)[keep])
    if protocol.mode == "whole":  # and the means themselves, the obvious way: each pixel takes its grid cell
        grid = feats.features[0].float()
        g = grid.shape[-1]
        cells = grid[:, (torch.arange(128) * g // 128).view(-1, 1), (torch.arange(128) * g // 128).view(1, -1)]
        expected = torch.stack([cells[:, segments == k].mean(1) for k in (1, 2, 4)])
        torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)


def test_region_cells_count_each_regions_pixels_per_grid_cell():
    label_map = torch.tensor([[1, 1, 2, 0, 0, 0],
                              [1, 2, 2, 0, 0, 3],
                              [0, 0, 0, 3, 3, 3],
                              [0, 0, 0, 3, 3, 3]])
    # a 2×3 grid: each cell is a 2×2 block of pixels
    assert region_cells(label_map, 4, 2, 3).tolist() == [[3, 0, 0, 0, 0, 0],
                                                         [1, 2, 0, 0, 0, 0],
                                                         [0, 0, 1, 0, 2, 4],
                                                         [0, 0, 0, 0, 0, 0]]


def test_segments_pooled_from_a_workers_cell_counts_equal_those_from_the_maps(backbones):
    """The adapt transform of a memory writer counts each segment's pixels per grid cell in the worker and leaves
    the full-size maps there; pooling from the counts gives the same means, bit for bit."""
    base, dino = backbones
    plain = _served(0, None)
    served = _served(1, pickle.loads(pickle.dumps(loader_inputs([base, dino], WHOLE, cells=True))))
    for sample, counted in zip(plain, served, strict=True):
        assert "segments" not in counted and "semantic" not in counted
        assert set(counted["segment_cells"]) == {base.input_prep.grid, dino.input_prep.grid}
        for backbone in (base, dino):
            feats = dense_features([backbone], [sample["image"]], WHOLE, base.image_size)[0][0]
            assert tuple(feats.features.shape[-2:]) == backbone.input_prep.grid
            got, want = feats.segments(counted), feats.segments(sample)
            assert len(want[1]) > 0 and torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_cell_counts_on_another_grid_are_not_used(backbones):
    base, dino = backbones
    sample = _served(0, None)[0]
    counted = PreparedInputs([dino.input_prep], cells=True)(sample)
    feats = dense_features([base], [sample["image"]], WHOLE, base.image_size)[0][0]
    assert base.input_prep.grid not in counted["segment_cells"]
    with pytest.raises(ValueError, match=r"no segment map and no segment cell counts on a \(\d+, \d+\) grid"):
        feats.segments(counted)
    both = {**counted, "segments": sample["segments"]}  # the map, when it is there, serves any grid
    assert torch.equal(feats.segments(both)[0], feats.segments(sample)[0])
    slide = dense_features([dino], [sample["image"]], SLIDE, base.image_size)[0][0]
    with pytest.raises(ValueError, match="no segment map"):  # windows: counts on one grid do not apply
        slide.segments(counted)
