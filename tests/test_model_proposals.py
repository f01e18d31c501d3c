"""Mask-model proposers (``proposals.kind=mask2former|sam``) on tiny random configs: label maps on a real photo,
the overlap rule on hand-made masks, whole runs, and the one-line error for a checkpoint that is not there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.errors import WeightsUnavailable
from bench.proposals import build_proposer
from bench.proposals.overlaps import paint_by_score

PHOTO = Path(__file__).parent / "fixtures/coco_real/val2017/000000039769.jpg"
KINDS = ("mask2former", "sam")


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(PHOTO).convert("RGB")).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_proposer_labels_a_real_photo(kind, photo):
    proposer = build_proposer(kind, model="tiny-random")
    assert proposer.instances and proposer.runs_on == "device"
    labels = proposer({"image": photo})
    assert labels.dtype == torch.int64 and labels.shape == photo.shape[-2:] and labels.device == photo.device
    ids = labels.unique()
    ids = ids[ids > 0]
    assert len(ids) >= 1 and torch.equal(ids, torch.arange(1, len(ids) + 1))  # contiguous from 1
    assert torch.equal(labels, proposer({"image": photo}))  # deterministic


@pytest.mark.parametrize("kind", KINDS)
def test_min_area_drops_small_masks(kind, photo):
    everything = photo.shape[-1] * photo.shape[-2]
    labels = build_proposer(kind, model="tiny-random", min_area=everything + 1)({"image": photo})
    assert not labels.any()  # no mask can cover more than the image: all uncovered, nothing silently kept


def _masks(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    out = torch.zeros(len(boxes), 10, 10, dtype=torch.bool)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        out[k, r0:r1, c0:c1] = True
    return out


def test_overlaps_are_painted_best_score_first():
    # 0: rows 0-4 (50 px); 1: rows 3-9 (70 px), better, takes rows 3-4 from 0: 30 of 50 left (60 %)
    masks, scores = _masks((0, 5, 0, 10), (3, 10, 0, 10)), torch.tensor([0.5, 0.9])
    labels = paint_by_score(masks, scores, keep_fraction=0.5)
    assert (labels[3:] == 1).all() and (labels[:3] == 2).all()  # ids in descending score
    dropped = paint_by_score(masks, scores, keep_fraction=0.8)  # 60 % < 80 %: dropped, its pixels uncovered
    assert (dropped[3:] == 1).all() and (dropped[:3] == 0).all()


def test_overlap_rule_min_area_empty_masks_and_ties():
    masks = _masks((0, 1, 0, 2), (5, 10, 5, 10), (0, 0, 0, 0), (5, 10, 5, 10))
    labels = paint_by_score(masks, torch.tensor([0.9, 0.1, 1.0, 0.1]), keep_fraction=0.5, min_area=3)
    # the 2-pixel mask is under min_area, the empty one has nothing to paint, the tie keeps the first of the two
    assert labels.dtype == torch.int64 and labels.unique().tolist() == [0, 1]
    assert (labels[5:, 5:] == 1).all() and labels.sum() == 25
    assert not paint_by_score(masks[:0], torch.zeros(0)).any()


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_checkpoint_offline_is_a_one_line_error(kind, tmp_path):
    missing = str(tmp_path / "no-such-checkpoint")
    with pytest.raises(WeightsUnavailable) as e:
        build_proposer(kind, model=missing)
    assert f"proposals.model={missing!r}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(WeightsUnavailable, match="proposals.model='nobody/not-cached'.*HF_HUB_OFFLINE"):
        build_proposer(kind, model="nobody/not-cached")


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_with_a_model_proposer_keeps_instances_apart(kind, small_run, monkeypatch):
    import bench.module

    merges = []
    original = bench.module.panoptic_from_proposals

    def spy(*args, merge_things, **kwargs):
        merges.append(merge_things)
        return original(*args, merge_things=merge_things, **kwargs)

    monkeypatch.setattr(bench.module, "panoptic_from_proposals", spy)
    record = small_run(f"proposals.kind={kind}", "proposals.model=tiny-random", "eval_limit=2", "adapt_limit=4",
                       "max_steps=1")
    assert record.proposer == kind and record.steps_done == 1
    assert merges and not any(merges)  # synth is panoptic: instance proposals are never joined per class
    assert 0 <= record.matrix["pq"][0][0] <= 100


def test_the_proposals_model_is_neutral_in_the_run_id():
    from bench.config import RunConfig, config_hash, set_value

    cfg = RunConfig()
    before = config_hash(cfg)
    set_value(cfg, "proposals.model", "")
    set_value(cfg, "proposals.min_area", "0")
    assert config_hash(cfg) == before
    set_value(cfg, "proposals.model", "tiny-random")
    assert config_hash(cfg) != before


def test_bench_list_shows_the_mask_proposers(capsys):
    from bench.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "mask2former" in out and "sam" in out and "Mask2Former query masks" in out
