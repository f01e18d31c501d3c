"""CocoPanopticReader: a hand-written two-image fixture, its error cases, and one real COCO sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.coco_panoptic import CocoPanopticReader, decode_panoptic_ids, encode_panoptic_ids
from datamodules.contract import IGNORE_INDEX, DataError, validate_sample
from datamodules.registry import get_reader
from datamodules.vocabulary import Vocabulary

REAL = Path(__file__).parent / "fixtures" / "coco_real"

# Vocabulary order differs from the category ids on purpose: classes are matched by name.
VOCAB = Vocabulary.from_names("tiny", ["grass", "person"], things=["person"])
GRASS, PERSON = 0, 1

# Image "a": person 1000 (R, G channels), grass 70000 (uses B), a crowd of persons 5, a zebra 7 (not in the
# vocabulary) and void 0.
IDS_A = np.array([[1000, 1000, 70000, 70000, 70000, 70000],
                  [1000, 1000, 70000, 70000, 5, 5],
                  [0, 0, 70000, 70000, 5, 5],
                  [7, 7, 70000, 70000, 0, 0]])
IDS_B = np.full((3, 3), 256)  # one grass segment, id only in the G channel


def _doc() -> dict:
    return {
        "images": [{"id": 10, "file_name": "a.png", "height": 4, "width": 6},
                   {"id": 3, "file_name": "b.png", "height": 3, "width": 3}],
        "annotations": [  # json order (10, then 3) is the sample order, not the id order
            {"image_id": 10, "file_name": "a.png", "segments_info": [
                {"id": 1000, "category_id": 1, "iscrowd": 0, "area": 4, "bbox": [0, 0, 2, 2]},
                {"id": 70000, "category_id": 2, "iscrowd": 0, "area": 8, "bbox": [2, 0, 4, 4]},
                {"id": 5, "category_id": 1, "iscrowd": 1, "area": 4, "bbox": [4, 1, 2, 2]},
                {"id": 7, "category_id": 3, "iscrowd": 0, "area": 2, "bbox": [0, 3, 2, 1]}]},
            {"image_id": 3, "file_name": "b.png", "segments_info": [
                {"id": 256, "category_id": 2, "iscrowd": 0, "area": 9, "bbox": [0, 0, 3, 3]}]}],
        "categories": [{"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
                       {"id": 2, "name": "grass", "isthing": 0, "supercategory": "plant"},
                       {"id": 3, "name": "zebra", "isthing": 1, "supercategory": "animal"}],
    }


def _write_doc(root: Path, doc: dict) -> None:
    (root / "annotations" / "panoptic_val.json").write_text(json.dumps(doc))


@pytest.fixture
def coco(tmp_path: Path) -> Path:
    root = tmp_path / "tinycoco"
    for d in ("val", "panoptic_val", "annotations"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, ids in (("a.png", IDS_A), ("b.png", IDS_B)):
        Image.fromarray(rng.integers(0, 256, (*ids.shape, 3), dtype=np.uint8)).save(root / "val" / name)
        Image.fromarray(encode_panoptic_ids(ids)).save(root / "panoptic_val" / name)
    _write_doc(root, _doc())
    return root


def _reader(root: Path, **kw) -> CocoPanopticReader:
    return CocoPanopticReader(root, "val", VOCAB, **kw)


def test_id_encoding_round_trip() -> None:
    ids = np.array([[0, 1, 255, 256], [1000, 65535, 65536, 70000]])
    rgb = encode_panoptic_ids(ids)
    assert rgb[1, 3].tolist() == [70000 % 256, 70000 // 256 % 256, 1]  # 70000 = 112 + 256·17 + 65536·1
    assert np.array_equal(decode_panoptic_ids(rgb), ids)


def test_samples_in_json_order_with_limit(coco: Path) -> None:
    reader = _reader(coco)
    assert len(reader) == 2
    assert [reader[i]["meta"]["file_id"] for i in range(2)] == ["a", "b"]
    assert len(_reader(coco, limit=1)) == 1
    assert get_reader("coco_panoptic") is CocoPanopticReader
    with pytest.raises(IndexError):
        reader[2]


def test_classes_crowd_and_ignore(coco: Path) -> None:
    s = validate_sample(_reader(coco)[0], len(VOCAB))
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 4, 6)
    # Kept segments in json order: person 1000, grass 70000, crowd 5; zebra 7 is dropped.
    assert s["segment_classes"].tolist() == [PERSON, GRASS, PERSON]
    assert s["segment_iscrowd"].tolist() == [False, False, True]
    expected_seg = np.select([IDS_A == 1000, IDS_A == 70000, IDS_A == 5], [1, 2, 3], 0)
    assert np.array_equal(s["segments"].numpy(), expected_seg)
    sem = s["semantic"].numpy()
    assert (sem[IDS_A == 1000] == PERSON).all() and (sem[IDS_A == 5] == PERSON).all()
    assert (sem[IDS_A == 70000] == GRASS).all()
    assert (sem[(IDS_A == 0) | (IDS_A == 7)] == IGNORE_INDEX).all()
    assert s["semantic"].dtype == torch.int64 and s["segments"].dtype == torch.int64
    assert s["meta"] == {"dataset": "tinycoco", "file_id": "a", "source": str(coco / "val" / "a.png"),
                         "size": (4, 6)}


def test_id_in_green_channel_and_class_subset(coco: Path) -> None:
    s = _reader(coco)[1]
    assert s["segment_classes"].tolist() == [GRASS]
    assert (s["segments"] == 1).all() and (s["semantic"] == GRASS).all()
    only_person = CocoPanopticReader(coco, "val", Vocabulary.from_names("p", ["person"], things=["person"]))
    s = only_person[0]
    assert s["segment_classes"].tolist() == [0, 0]
    assert (s["semantic"].numpy()[IDS_A == 70000] == IGNORE_INDEX).all()
    assert (s["segments"].numpy()[IDS_A == 70000] == 0).all()


def _raises(match: str | Path, fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    assert str(match) in str(info.value), str(info.value)
    return str(info.value)


def test_missing_root_and_dirs(coco: Path) -> None:
    msg = _raises(coco / "nope", _reader, coco / "nope")
    assert "panoptic_val/" in msg  # names the expected layout
    (coco / "val" / "a.png").unlink()
    (coco / "val" / "b.png").unlink()
    (coco / "val").rmdir()
    assert "image folder" in _raises(coco / "val", _reader, coco)


def test_missing_json(coco: Path) -> None:
    (coco / "annotations" / "panoptic_val.json").unlink()
    _raises(coco / "annotations" / "panoptic_val.json", _reader, coco)


def test_truncated_json(coco: Path) -> None:
    path = coco / "annotations" / "panoptic_val.json"
    path.write_text(path.read_text()[:100])
    assert "not valid JSON" in _raises(path, _reader, coco)


def test_corrupt_png_and_image(coco: Path) -> None:
    png = coco / "panoptic_val" / "a.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not a PNG")
    reader = _reader(coco)
    _raises(png, reader.__getitem__, 0)
    (coco / "val" / "b.png").write_bytes(b"garbage")
    _raises(coco / "val" / "b.png", reader.__getitem__, 1)


def test_missing_image_file(coco: Path) -> None:
    (coco / "val" / "b.png").unlink()
    assert "missing" in _raises(coco / "val" / "b.png", _reader(coco).__getitem__, 1)


def test_png_size_differs_from_image(coco: Path) -> None:
    Image.fromarray(encode_panoptic_ids(IDS_A[:3])).save(coco / "panoptic_val" / "a.png")
    assert "same size" in _raises(coco / "panoptic_val" / "a.png", _reader(coco).__getitem__, 0)


def test_png_id_missing_from_json(coco: Path) -> None:
    doc = _doc()
    doc["annotations"][0]["segments_info"].pop(1)  # 70000
    _write_doc(coco, doc)
    msg = _raises(coco / "panoptic_val" / "a.png", _reader(coco).__getitem__, 0)
    assert "70000" in msg


def test_unknown_category_id(coco: Path) -> None:
    doc = _doc()
    doc["annotations"][0]["segments_info"][2]["category_id"] = 99
    _write_doc(coco, doc)
    msg = _raises(coco / "annotations" / "panoptic_val.json", _reader, coco)
    assert "'a.png'" in msg and "segment 5" in msg and "99" in msg


def test_image_without_annotation(coco: Path) -> None:
    doc = _doc()
    doc["images"].append({"id": 11, "file_name": "c.png", "height": 2, "width": 2})
    _write_doc(coco, doc)
    msg = _raises(coco / "annotations" / "panoptic_val.json", _reader, coco)
    assert "'c.png'" in msg


def test_real_coco_sample() -> None:
    doc = json.loads((REAL / "annotations" / "panoptic_val2017.json").read_text())
    cats = {c["id"]: c for c in doc["categories"]}
    vocab = Vocabulary.from_names("coco-4", [c["name"] for c in doc["categories"]],
                                  things=[c["name"] for c in doc["categories"] if c["isthing"]])
    reader = CocoPanopticReader(REAL, "val2017", vocab)
    assert len(reader) == 1
    s = validate_sample(reader[0], len(vocab))
    info = doc["annotations"][0]["segments_info"]
    assert len(s["segment_classes"]) == len(info) == 6
    seg = s["segments"]
    for k, segment in enumerate(info, 1):
        assert int((seg == k).sum()) == segment["area"]  # exact pixel counts, as COCO computes them
        assert vocab.classes[int(s["segment_classes"][k - 1])] == cats[segment["category_id"]]["name"]
    names = [vocab.classes[c] for c in s["segment_classes"].tolist()]
    assert sorted(names) == ["blanket", "cat", "cat", "couch", "remote", "remote"]
    assert not s["segment_iscrowd"].any()
    assert int((s["semantic"] == IGNORE_INDEX).sum()) == 640 * 480 - sum(x["area"] for x in info) == 10752
    assert s["meta"]["size"] == (480, 640) and s["meta"]["file_id"] == "000000039769"
    assert s["meta"]["dataset"] == "coco_real"


def test_real_coco_class_subset() -> None:
    vocab = Vocabulary.from_names("cats", ["remote", "cat"], things=["remote", "cat"])
    s = CocoPanopticReader(REAL, "val2017", vocab)[0]
    assert s["segment_classes"].tolist() == [1, 1, 0, 0]  # cat, cat, remote, remote in json order
    assert int((s["semantic"] != IGNORE_INDEX).sum()) == 53306 + 59627 + 4068 + 2118
