"""PASCAL VOC 2012 segmentation: 21 classes with background, instances from ``SegmentationObject``.

Layout under ``root`` (``VOCdevkit/VOC2012`` as unpacked)::

    ImageSets/Segmentation/{split}.txt     image ids of the split (train, val, trainval)
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png             palette PNG: value = class (0 background .. 20), 255 = boundary/void
    SegmentationObject/<id>.png            palette PNG: value = instance (1..), 0 = background, 255 = boundary

Label value ``v`` is class ``v`` of the vocabulary (``tasks/vocab/voc21.txt``: background first, then the 20 object
classes in the dataset's order); 255 is ignore. Panoptic: every instance of ``SegmentationObject`` is a thing
segment with the class its pixels carry in ``SegmentationClass``, the background one stuff segment; boundary
pixels are void. (The SBD "aug" masks have no instance PNGs: point ``class_dir`` at them and set
``object_dir: null`` for one segment per class.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.ignore import PNG_IGNORE
from datamodules.labelmaps import (
    LayoutEntry,
    ListedReader,
    apply_lut,
    check_root,
    check_same_size,
    load_label_map,
    load_rgb,
    panoptic_sample,
    semantic_sample,
    value_lut,
)
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary

VOC_CLASSES = 21


def instance_segments(semantic: np.ndarray, instances: np.ndarray, stuff_value: int = 0,
                      void: tuple[int, ...] = (PNG_IGNORE,)) -> tuple[np.ndarray, list[int]]:
    """Segments from an instance map: each instance id (not 0, not in ``void``) one segment whose class is the most
    frequent class of its pixels; pixels of instance ``stuff_value`` get one segment per class. Returns the
    ``H×W`` int64 segment map (0 = void) and the class of each segment."""
    segments = np.zeros(semantic.shape, dtype=np.int64)
    classes: list[int] = []
    for iid in np.unique(instances).tolist():
        if iid in void:
            continue
        mask = instances == iid
        if iid == stuff_value:
            for c in np.unique(semantic[mask]).tolist():
                if c != IGNORE_INDEX:
                    classes.append(c)
                    segments[mask & (semantic == c)] = len(classes)
            continue
        labelled = semantic[mask]
        labelled = labelled[labelled != IGNORE_INDEX]
        if labelled.size:
            classes.append(int(np.bincount(labelled).argmax()))
            segments[mask] = len(classes)
    return segments, classes


@register_reader("voc", "PASCAL VOC 2012 segmentation (21 classes with background), instances from SegmentationObject")
class VOCReader(ListedReader):
    panoptic = True

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, image_dir: str = "JPEGImages",
                 class_dir: str = "SegmentationClass", object_dir: str | None = "SegmentationObject",
                 split_file: str = "ImageSets/Segmentation/{split}.txt", limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary = Path(root), split, vocabulary
        if len(vocabulary) != VOC_CLASSES:
            raise DataError(f"voc: vocabulary {vocabulary.name!r} has {len(vocabulary)} classes; VOC labels index "
                            f"{VOC_CLASSES} classes (background first) in dataset order")
        entries = self.expected_layout(self.root, split, vocabulary, image_dir=image_dir, class_dir=class_dir,
                                       object_dir=object_dir, split_file=split_file)
        check_root(self.root, entries)
        self.panoptic = object_dir is not None
        split_path = entries[0].path
        ids = [line.split()[0] for line in split_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not ids:
            raise DataError(f"{split_path}: no image id; expected one id per line")
        dirs = [e.path for e in entries[1:]]
        self._where = split_path
        self._records = [(dirs[0] / f"{i}.jpg", dirs[1] / f"{i}.png",
                          dirs[2] / f"{i}.png" if self.panoptic else None) for i in ids][: limit or None]
        self._lut = value_lut(256, 0, (PNG_IGNORE,), VOC_CLASSES)

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        image_dir: str = "JPEGImages", class_dir: str = "SegmentationClass",
                        object_dir: str | None = "SegmentationObject",
                        split_file: str = "ImageSets/Segmentation/{split}.txt", **_: Any) -> list[LayoutEntry]:
        root = Path(root)
        entries = [LayoutEntry(root / split_file.format(split=split), "image ids of the split", kind="file"),
                   LayoutEntry(root / image_dir, "images '<id>.jpg'"),
                   LayoutEntry(root / class_dir, "class PNGs '<id>.png' (0 background .. 20, 255 boundary)")]
        if object_dir is not None:
            entries.append(LayoutEntry(root / object_dir, "instance PNGs '<id>.png' (1.. instances, 255 boundary)"))
        return entries

    def _sample(self, record: tuple[Path, Path, Path | None]) -> dict[str, Any]:
        image_path, class_path, object_path = record
        rgb = load_rgb(image_path)
        raw = load_label_map(class_path, "class PNG")
        check_same_size(rgb, raw, image_path, class_path, "class PNG")
        semantic = apply_lut(raw, self._lut, class_path, VOC_CLASSES)
        if object_path is None:
            return semantic_sample(rgb, semantic, self.root.name, image_path.stem, image_path)
        objects = load_label_map(object_path, "instance PNG")
        check_same_size(rgb, objects, image_path, object_path, "instance PNG")
        segments, classes = instance_segments(semantic, objects)
        return panoptic_sample(rgb, semantic, segments, classes, [False] * len(classes), self.root.name,
                               image_path.stem, image_path)
