"""Bad dataset input gives a DataError that names the file: a missing folder, an image without annotation,
a corrupt PNG, a truncated json, an unknown category, a label outside the vocabulary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures.make_fixtures import shared_fixture_root, vocab

from datamodules.contract import DataError
from datamodules.registry import get_reader


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


@pytest.fixture
def copy(data: Path, tmp_path: Path):
    def _copy(*names: str) -> Path:
        for name in names:
            shutil.copytree(data / name, tmp_path / name)
        return tmp_path

    return _copy


def _raises(path: Path, fmt: str, root: Path, split: str, vocab_name: str, index: int | None = None,
            **options) -> str:
    with pytest.raises(DataError) as info:
        reader = get_reader(fmt)(root=root, split=split, vocabulary=vocab(vocab_name), **options)
        if index is not None:
            reader[index]
    assert str(path) in str(info.value), str(info.value)
    return str(info.value)


# (format, dataset folder, split, vocabulary, image folder, label folder, label extension)
LABEL_MAP_CASES = [
    ("ade20k", "ADEChallengeData2016", "validation", "ade150", "images/validation", "annotations/validation",
     ".png"),
    ("ade20k_full", "ADE20K_2021_17_01", "validation", "ade847", "images_detectron2/validation",
     "annotations_detectron2/validation", ".tif"),
    ("pascal_context", "pascal_ctx_d2", "validation", "pc59", "images/validation", "annotations_ctx59/validation",
     ".png"),
]


@pytest.mark.parametrize("case", LABEL_MAP_CASES, ids=[c[0] for c in LABEL_MAP_CASES])
def test_label_map_readers(copy, case) -> None:
    fmt, name, split, v, image_dir, label_dir, ext = case
    root = copy(name) / name
    stem = sorted((root / image_dir).glob("*.jpg"))[0].stem  # sample 0
    assert "dataset root does not exist" in _raises(root.parent / "nope", fmt, root.parent / "nope", split, v)
    label = root / label_dir / f"{stem}{ext}"
    label.write_bytes(b"\x89PNG\r\n\x1a\n not an image" if ext == ".png" else b"not a tiff at all")
    assert "cannot decode label map" in _raises(label, fmt, root, split, v, index=0)
    label.unlink()
    assert "image has no annotation" in _raises(root / image_dir / f"{stem}.jpg", fmt, root, split, v)
    image = root / image_dir / f"{stem}.jpg"
    image.unlink()
    shutil.rmtree(root / label_dir)
    assert "label folder" in _raises(root / label_dir, fmt, root, split, v)


def test_ade_label_outside_vocabulary(copy) -> None:
    import numpy as np
    from PIL import Image

    root = copy("ADEChallengeData2016") / "ADEChallengeData2016"
    label = root / "annotations/validation/ADE_val_00000002.png"
    Image.fromarray(np.full((48, 64), 200, np.uint8)).save(label)
    assert "label value 200 maps past the 150 classes" in _raises(label, "ade20k", root, "val", "ade150", index=1)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(label)
    assert "mode RGB" in _raises(label, "ade20k", root, "val", "ade150", index=1)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(label)
    assert "same size" in _raises(label, "ade20k", root, "val", "ade150", index=1)


def test_cityscapes_errors(copy) -> None:
    root = copy("cityscapes") / "cityscapes"
    gt = root / "gtFine/train/aachen"
    inst = gt / "aachen_000000_000019_gtFine_instanceIds.png"
    inst.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert "instanceIds PNG" in _raises(inst, "cityscapes", root, "train", "cityscapes19", index=0)
    inst.unlink()
    image = root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert "no instance annotation" in _raises(image, "cityscapes", root, "train", "cityscapes19")
    (gt / "aachen_000000_000019_gtFine_labelIds.png").unlink()
    assert "image has no annotation" in _raises(image, "cityscapes", root, "train", "cityscapes19",
                                                instances=False)
    assert "cityscapes19" in _raises(Path("cityscapes19.txt"), "cityscapes", root, "train", "pc59")
    shutil.rmtree(root / "gtFine/val")
    assert "annotations" in _raises(root / "gtFine/val", "cityscapes", root, "val", "cityscapes19")


def test_lvis_errors(copy) -> None:
    root = copy("lvis", "coco") / "lvis"
    path = root / "lvis_v1_val.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    assert "not valid JSON" in _raises(path, "lvis", root, "val", "lvis1203")
    doc = json.loads(text)
    doc["annotations"][0]["category_id"] = 5000
    path.write_text(json.dumps(doc))
    message = _raises(path, "lvis", root, "val", "lvis1203")
    assert "category_id 5000" in message and "malformed entry" not in message  # said once, not wrapped again
    doc = json.loads(text)
    doc["annotations"][0]["segmentation"] = {"counts": 7}
    path.write_text(json.dumps(doc))
    assert "cannot decode its segmentation" in _raises(path, "lvis", root, "val", "lvis1203", index=0)
    path.write_text(text)
    image = root.parent / "coco/train2017/000000000002.jpg"
    image.write_bytes(b"\xff\xd8 not a jpeg")
    assert "cannot decode image" in _raises(image, "lvis", root, "val", "lvis1203", index=0)
    image.unlink()
    assert "image missing" in _raises(image, "lvis", root, "val", "lvis1203", index=0)
    path.unlink()
    assert "LVIS json" in _raises(path, "lvis", root, "val", "lvis1203")


def test_coco_panoptic_fixture_errors(copy) -> None:
    """The native COCO reader on the fixture layout: the errors the issue lists, each naming the file."""
    root = copy("coco") / "coco"
    path = root / "annotations/panoptic_val2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["segments_info"][0]["category_id"] = 999
    path.write_text(json.dumps(doc))
    assert "999" in _raises(path, "coco_panoptic", root, "val2017", "coco133")
    doc["annotations"][0]["segments_info"][0]["category_id"] = 1
    doc["images"].append({"id": 77, "file_name": "000000000077.jpg", "height": 48, "width": 64})
    path.write_text(json.dumps(doc))
    assert "'000000000077.jpg'" in _raises(path, "coco_panoptic", root, "val2017", "coco133")
    png = root / "panoptic_val2017/000000000003.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    path.write_text(json.dumps({**doc, "images": doc["images"][:-1]}))
    _raises(png, "coco_panoptic", root, "val2017", "coco133", index=0)
