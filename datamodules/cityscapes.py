"""Cityscapes reader: fine annotations mapped to the 19 evaluation classes, with thing instances.

Layout under ``root`` (the release's ``leftImg8bit_trainvaltest`` and ``gtFine_trainvaltest``; what detectron2
expects under ``$DETECTRON2_DATASETS/cityscapes``)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png      8-bit label ids (0..33)
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   16-bit (with ``instances``)

``semantic``: label ids → the 19 train ids (cityscapesScripts ``labels.py``; every other id → ignore), local
class ``k`` = train id ``k`` (``tasks/vocab/cityscapes19.txt``). Segments come from the instanceIds PNG: a value
``v >= 1000`` is instance ``v % 1000`` of label id ``v // 1000`` (one thing segment each); a value ``v < 1000`` is
label id ``v`` itself: for a stuff class one segment per class, for a thing class a crowd region (the
annotators' group polygons), one crowd segment per class, as cityscapesScripts' panoptic conversion does.
With ``instances: false`` the instanceIds PNG is not read and each class present is one segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.contract import IGNORE_INDEX, DataError
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
)
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary

# label id → train id for ids 0..33 (cityscapesScripts labels.py; license plate, id -1, never appears in PNGs).
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
THING_TRAIN_IDS = frozenset(range(11, 19))  # person, rider, car, truck, bus, train, motorcycle, bicycle
NUM_CLASSES = 19
_IMAGE_SUFFIX, _LABEL_SUFFIX, _INSTANCE_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png", "_gtFine_instanceIds.png"


def _train_lut() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def instance_segments(instance_ids: np.ndarray, semantic: np.ndarray,
                      lut: np.ndarray) -> tuple[np.ndarray, list[int], list[bool]]:
    """Segment map (1-based, 0 = void), class and crowd flag per segment, from an instanceIds map.

    Segments are ordered by their instanceIds value, so stuff and crowd regions (values < 1000) come first.
    Pixels whose semantic class is ignore belong to no segment.
    """
    values, inverse = np.unique(instance_ids, return_inverse=True)
    seg_lut = np.zeros(len(values), dtype=np.int64)
    classes, crowd = [], []
    for i, v in enumerate(values.tolist()):
        label_id = v // 1000 if v >= 1000 else v
        train_id = int(lut[label_id]) if label_id < len(lut) else IGNORE_INDEX
        if train_id == IGNORE_INDEX:
            continue
        classes.append(train_id)
        crowd.append(v < 1000 and train_id in THING_TRAIN_IDS)
        seg_lut[i] = len(classes)
    segments = seg_lut[inverse.reshape(instance_ids.shape)]
    segments[semantic == IGNORE_INDEX] = 0
    kept = np.zeros(len(classes) + 1, dtype=bool)
    kept[np.unique(segments)] = True
    kept[0] = False
    if not kept[1:].all():  # a segment left with no pixel is no ground truth: renumber the others
        renumber = np.cumsum(kept) * kept
        segments = renumber[segments]
        classes = [c for c, k in zip(classes, kept[1:]) if k]
        crowd = [c for c, k in zip(crowd, kept[1:]) if k]
    return segments, classes, crowd


@register_reader("cityscapes")
class CityscapesReader(ListedReader):
    """One split of Cityscapes ``gtFine``, images in city then name order. ``limit`` keeps the first N."""

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, instances: bool = True,
                 image_dir: str = "leftImg8bit/{split}", gt_dir: str = "gtFine/{split}",
                 limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary, self.instances = Path(root), split, vocabulary, bool(instances)
        self.panoptic = self.instances  # PQ is scored only when thing instances are read
        if len(vocabulary) != NUM_CLASSES:
            raise DataError(f"cityscapes: vocabulary {vocabulary.name!r} has {len(vocabulary)} classes; the "
                            f"labels map to the {NUM_CLASSES} train ids in order (tasks/vocab/cityscapes19.txt)")
        entries = self.expected_layout(self.root, split, vocabulary, image_dir=image_dir, gt_dir=gt_dir)
        layout = check_root(self.root, entries)
        self.image_dir, self.gt_dir = entries[0].path, entries[1].path
        self._where = self.image_dir
        self._records = self._index(layout)
        if limit:
            self._records = self._records[:limit]
        self._lut = _train_lut()

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        image_dir: str = "leftImg8bit/{split}", gt_dir: str = "gtFine/{split}",
                        **_: Any) -> list[LayoutEntry]:
        return [LayoutEntry(Path(root) / image_dir.format(split=split), f"images '<city>/*{_IMAGE_SUFFIX}'"),
                LayoutEntry(Path(root) / gt_dir.format(split=split),
                            f"annotations '<city>/*{_LABEL_SUFFIX}' and '*{_INSTANCE_SUFFIX}'")]

    def _index(self, layout: str) -> list[tuple[Path, Path, Path]]:
        samples = []
        for image in sorted(self.image_dir.glob(f"*/*{_IMAGE_SUFFIX}")):
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            gt = self.gt_dir / image.parent.name
            label, inst = gt / f"{stem}{_LABEL_SUFFIX}", gt / f"{stem}{_INSTANCE_SUFFIX}"
            if not label.is_file():
                raise DataError(f"{image}: image has no annotation; expected {label}")
            if self.instances and not inst.is_file():
                raise DataError(f"{image}: image has no instance annotation; expected {inst} "
                                "(or set option instances: false)")
            samples.append((image, label, inst))
        if not samples:
            raise DataError(f"{self.image_dir}: no '<city>/*{_IMAGE_SUFFIX}' images; {layout}")
        return samples

    def _sample(self, record: tuple[Path, Path, Path]) -> dict[str, Any]:
        image_path, label_path, inst_path = record
        rgb = load_rgb(image_path)
        label_ids = load_label_map(label_path, "labelIds PNG")
        check_same_size(rgb, label_ids, image_path, label_path)
        semantic = apply_lut(label_ids, self._lut, label_path, NUM_CLASSES)
        file_id = image_path.name[: -len(_IMAGE_SUFFIX)]
        if not self.instances:
            return semantic_sample(rgb, semantic, self.root.name, file_id, image_path)
        inst = load_label_map(inst_path, "instanceIds PNG")
        check_same_size(rgb, inst, image_path, inst_path)
        segments, classes, crowd = instance_segments(inst, semantic, self._lut)
        return panoptic_sample(rgb, semantic, segments, classes, crowd, self.root.name, file_id, image_path)
