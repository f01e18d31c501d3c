"""The synthetic dataset: determinism, content, appearance, caching and the reader it feeds."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import synth
from datamodules.contract import IGNORE_INDEX, DataError, validate_sample
from datamodules.registry import get_reader
from datamodules.synth import APPEARANCE, SynthReader, make_scene
from datamodules.synth import dataset as synth_dataset
from datamodules.vocabulary import Vocabulary

# A three-task set like tasks/synth.yaml (kept here so these tests do not depend on that file).
PARK = Vocabulary.from_names("park", ["sky", "grass", "road", "ball", "kite", "person", "tree"],
                             things=["ball", "kite", "person", "tree"])
BEACH = Vocabulary.from_names("beach", ["sky", "sand", "water", "ball", "umbrella", "crab", "boat"],
                              things=["ball", "umbrella", "crab", "boat"])
CITY = Vocabulary.from_names("city", ["sky", "road", "wall", "car", "sign", "window", "person"],
                             things=["car", "sign", "window", "person"])
SMALL = {"train": 24, "val": 4}


@pytest.fixture(scope="module")
def park(tmp_path_factory: pytest.TempPathFactory) -> SynthReader:
    root = tmp_path_factory.mktemp("cache") / "park"
    return SynthReader(root, "train", PARK, scene_seed=1, num_images=SMALL)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _samples(reader: SynthReader) -> list[dict]:
    return [reader[i] for i in range(len(reader))]


def test_same_spec_gives_identical_bytes(tmp_path: Path) -> None:
    spec = {"scene_seed": 5, "num_images": {"train": 6, "val": 2}}
    a = SynthReader(tmp_path / "a" / "park", "train", PARK, **spec)
    b = SynthReader(tmp_path / "b" / "park", "val", PARK, **spec)
    da, db = _digests(a.root), _digests(b.root)
    assert len(da) == 6 + 2 + 6 + 2 + 2 + 1  # images, panoptic PNGs, two jsons, spec.json
    assert da == db
    other = SynthReader(tmp_path / "c" / "park", "train", PARK, scene_seed=6, num_images=spec["num_images"])
    assert _digests(other.root)["train/000000.png"] != da["train/000000.png"]


def test_scene_depends_only_on_seed_split_index() -> None:
    a, b = make_scene(PARK, 3, "train", 7), make_scene(PARK, 3, "train", 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.ids, b.ids) and a.classes == b.classes
    assert not np.array_equal(a.image, make_scene(PARK, 3, "val", 7).image)


def test_small_split_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    reader = SynthReader(tmp_path / "fast", "train", CITY, num_images={"train": 12})
    assert len(reader) == 12
    assert time.perf_counter() - start < 5.0  # ~0.2 s on one core; generous for slow CI machines


def test_samples_follow_the_contract(park: SynthReader) -> None:
    assert get_reader("synth") is SynthReader
    assert len(park) == SMALL["train"]
    for s in _samples(park):
        validate_sample(s, len(PARK))
        assert s["image"].shape == (3, 128, 128) and s["meta"]["size"] == (128, 128)
        assert s["meta"]["dataset"] == "park"
        seg, sem, classes = s["segments"], s["semantic"], s["segment_classes"]
        assert sorted(torch.unique(seg[seg > 0]).tolist()) == list(range(1, len(classes) + 1))
        assert torch.equal(sem[seg > 0], classes[seg[seg > 0] - 1])
        assert (sem[seg == 0] == IGNORE_INDEX).all()
        assert not s["segment_iscrowd"].any() and len(s["segment_iscrowd"]) == len(classes)


def test_json_areas_and_categories_match_pngs(park: SynthReader) -> None:
    doc = json.loads((park.root / "annotations" / "panoptic_train.json").read_text())
    assert [c["name"] for c in doc["categories"]] == list(PARK.classes)
    assert [c["isthing"] for c in doc["categories"]] == [int(t) for t in PARK.is_thing]
    for ann, s in zip(doc["annotations"], _samples(park)):
        ks = range(1, len(ann["segments_info"]) + 1)
        assert [i["area"] for i in ann["segments_info"]] == [int((s["segments"] == k).sum()) for k in ks]
        assert [i["id"] for i in ann["segments_info"]] == list(ks)


def test_every_image_has_things_and_stuff(park: SynthReader) -> None:
    things = {PARK.index(c) for c in PARK.things}
    for s in _samples(park):
        present = set(s["segment_classes"].tolist())
        assert len(present) >= 3
        assert present & things and present - things


def test_void_appears_and_things_are_not_tiny(park: SynthReader) -> None:
    samples = _samples(park)
    void = [int((s["segments"] == 0).sum()) for s in samples]
    assert sum(v > 0 for v in void) >= 1  # p = 0.2 per image over 24 images
    assert sum(v > 0 for v in void) < len(samples)  # ... but most images are fully labelled
    for s in samples:
        for k, c in enumerate(s["segment_classes"].tolist(), 1):
            if PARK.is_thing[c]:
                assert int((s["segments"] == k).sum()) >= synth.MIN_THING_AREA


@pytest.mark.parametrize("vocab", [PARK, BEACH, CITY], ids=lambda v: v.name)
def test_each_class_appears_in_a_split(tmp_path: Path, vocab: Vocabulary) -> None:
    reader = SynthReader(tmp_path / vocab.name, "val", vocab, scene_seed=2, num_images={"val": 12})
    seen = set()
    for s in _samples(reader):
        seen |= set(s["segment_classes"].tolist())
    assert seen == set(range(len(vocab)))


def _mean_colours(reader: SynthReader, vocab: Vocabulary) -> dict[str, np.ndarray]:
    sums, counts = np.zeros((len(vocab), 3)), np.zeros(len(vocab))
    for s in _samples(reader):
        img, sem = s["image"].numpy().reshape(3, -1).T.astype(float), s["semantic"].numpy().ravel()
        keep = sem != IGNORE_INDEX
        np.add.at(sums, sem[keep], img[keep])
        counts += np.bincount(sem[keep], minlength=len(vocab))
    return {c: sums[i] / max(counts[i], 1) for i, c in enumerate(vocab.classes)}


def test_classes_look_different(park: SynthReader) -> None:
    mean = _mean_colours(park, PARK)
    ball, grass, sky, road = mean["ball"], mean["grass"], mean["sky"], mean["road"]
    assert np.linalg.norm(ball - grass) > 100
    assert ball[0] > ball[1] + 100  # red
    assert grass[1] > grass[0] + 50 and grass[1] > grass[2] + 50  # green
    assert sky[2] > sky[0] + 40  # blue
    assert np.ptp(road) < 15  # grey
    names = list(PARK.classes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.linalg.norm(mean[a] - mean[b]) > 25, (a, b)


def test_every_catalog_class_renders() -> None:
    things = [n for n, a in APPEARANCE.items() if a.isthing]
    vocab = Vocabulary.from_names("all", list(APPEARANCE), things=things)
    seen: set[str] = set()
    for i in range(40):
        seen |= set(make_scene(vocab, 0, "train", i, size=96).classes)
    assert seen == set(APPEARANCE)


def test_things_only_and_stuff_only_vocabularies() -> None:
    things = make_scene(Vocabulary.from_names("t", ["ball", "car", "crab"], things=["ball", "car", "crab"]),
                        0, "train", 0)
    assert (things.ids == 0).any() and set(things.classes) <= {"ball", "car", "crab"}  # background is void
    stuff = make_scene(Vocabulary.from_names("s", ["sky", "snow"]), 0, "train", 0)
    assert stuff.classes == ["sky", "snow"]  # sky band on top, the other stuff below


def test_unknown_class_lists_catalog(tmp_path: Path) -> None:
    vocab = Vocabulary.from_names("odd", ["sky", "unicorn"], things=["unicorn"])
    with pytest.raises(DataError) as info:
        SynthReader(tmp_path / "odd", "train", vocab)
    msg = str(info.value)
    assert "'unicorn'" in msg and "ball" in msg and "grass" in msg
    assert not (tmp_path / "odd").exists()


def test_thing_flag_must_match_catalog(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'ball' is thing in the synth catalog"):
        SynthReader(tmp_path / "x", "train", Vocabulary.from_names("x", ["sky", "ball"]))


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split 'test'"):
        SynthReader(tmp_path / "x", "test", PARK)
    with pytest.raises(DataError, match="scene_seed"):
        SynthReader(tmp_path / "x", "train", PARK, scene_seed=-1)


def test_other_spec_in_same_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "park"
    SynthReader(root, "train", PARK, scene_seed=1, num_images={"train": 2})
    before = _digests(root)
    with pytest.raises(DataError, match="scene_seed") as info:
        SynthReader(root, "train", PARK, scene_seed=2, num_images={"train": 2})
    assert str(root) in str(info.value)
    assert _digests(root) == before
    assert len(SynthReader(root, "train", PARK, scene_seed=1, num_images={"train": 2}, limit=1)) == 1


def test_foreign_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "park"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"no spec\.json"):
        SynthReader(root, "train", PARK)


def test_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args, **kw):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kw)

    real = synth_dataset.write_split
    monkeypatch.setattr(synth_dataset, "write_split", failing)
    with pytest.raises(RuntimeError):
        SynthReader(tmp_path / "park", "train", PARK, num_images={"train": 2, "val": 1})
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its temporary folder


def test_second_concurrent_generator_keeps_first_copy(tmp_path: Path) -> None:
    root = tmp_path / "park"
    reader = SynthReader(root, "train", PARK, num_images={"train": 2})
    before = _digests(root)
    # What a generator that lost the race does after writing its copy: rename fails, its copy is dropped.
    synth_dataset._generate_atomically(root, synth.dataset_spec(PARK, 0, {"train": 2}, 128), PARK)
    assert _digests(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["park"]
    assert len(reader) == 2
