"""CPU proposals made in the eval DataLoader's workers, and SLIC on a downscaled image (``proposals.max_side``)."""

from __future__ import annotations

import pickle

import pytest
import torch

from bench.proposals import WithProposals, build_proposer, loader_transform
from datamodules import SequenceDataModule
from datamodules.sequence import load_sequence


def _proposals(num_workers: int, max_side: int = 0) -> list[torch.Tensor]:
    proposer = build_proposer("superpixel", 64, 10.0, max_side=max_side)
    dm = SequenceDataModule(load_sequence("synth"), batch_size=2, num_workers=num_workers, eval_limit=3,
                            eval_transform=loader_transform(proposer))
    dm.set_step(1)
    out = []
    for loader in dm.test_dataloader():
        for batch in loader:
            for sample in batch:
                assert torch.equal(sample["proposals"], proposer(sample))  # as the main process would make them
                out.append(sample["proposals"])
    return out


def test_proposals_made_in_a_worker_equal_those_made_in_the_process():
    in_process, in_worker = _proposals(0), _proposals(1)
    assert len(in_process) == 6
    assert all(p.dtype == torch.int64 and p.shape == (128, 128) for p in in_worker)
    assert all(torch.equal(a, b) for a, b in zip(in_process, in_worker, strict=True))


def test_the_loader_transform_survives_pickling_for_spawned_workers():
    transform = pickle.loads(pickle.dumps(loader_transform(build_proposer("superpixel", 8, max_side=16))))
    image = torch.randint(0, 255, (3, 40, 30), dtype=torch.uint8)
    sample = transform({"image": image})
    assert isinstance(transform, WithProposals) and transform.proposer.max_side == 16
    assert sample["proposals"].shape == (40, 30)


def test_a_device_proposer_gets_no_loader_transform():
    class OnDevice:
        instances, runs_on = False, "device"

    assert loader_transform(OnDevice()) is None
    assert isinstance(loader_transform(build_proposer("gt")), WithProposals)


def _image(height: int, width: int) -> torch.Tensor:
    """Smooth colour blobs with noise, so SLIC has edges to follow."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 255, (1, 3, 6, 8), generator=g).float()
    x = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (x + 8 * torch.randn(x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("max_side", [16, 48, 97])
def test_downscaled_superpixels_cover_the_full_image_with_contiguous_ids(max_side):
    image = _image(97, 70)
    labels = build_proposer("superpixel", 32, max_side=max_side)({"image": image})
    assert labels.dtype == torch.int64 and labels.shape == (97, 70)
    ids = labels.unique()
    assert torch.equal(ids, torch.arange(1, len(ids) + 1))


@pytest.mark.parametrize("max_side", [97, 98, 4000])
def test_max_side_at_least_the_long_side_is_full_resolution_slic(max_side):
    image = _image(97, 70)
    full = build_proposer("superpixel", 32)({"image": image})
    assert torch.equal(build_proposer("superpixel", 32, max_side=max_side)({"image": image}), full)


def test_downscaled_superpixels_follow_a_sharp_edge():
    image = torch.zeros(3, 120, 160, dtype=torch.uint8)
    image[:, :, 80:] = 200
    labels = build_proposer("superpixel", 8, max_side=40)({"image": image})
    # nearest upscaling by 4: an edge on a multiple of the scale stays where it was
    for k in labels.unique():
        cols = (labels == k).nonzero()[:, 1]
        assert bool((cols < 80).all()) or bool((cols >= 80).all())
