"""LVIS v1 reader: instance annotations over COCO images, as thing segments and a semantic map.

Layout (as detectron2 expects under ``$DETECTRON2_DATASETS``: ``lvis/`` beside ``coco/``), with ``root`` the
``lvis`` folder and the defaults below::

    {root}/lvis_v1_{split}.json            LVIS json: images, annotations (polygons or RLE), categories
    {root}/../coco/{train2017,val2017}/    the COCO images; the folder and file name come from each image's
                                           ``coco_url`` (LVIS v1 val draws on both COCO folders), else from
                                           its ``file_name`` relative to ``image_root``

Options: ``json`` and ``image_root`` (templates, relative to ``root``), ``skip_empty`` (default true: images with
no annotation are left out; LVIS labels are not exhaustive, so such an image would be all ignore), ``limit``.

Categories are matched to the task vocabulary by NAME (``tasks/vocab/lvis1203.txt`` has the json's names).
Each category's ``frequency`` (LVIS v1: ``r`` rare, ``c`` common, ``f`` frequent, by the number of training images
it is annotated in; Gupta et al., CVPR 2019) gives ``class_groups``, the vocabulary's classes per group, from which
the report breaks the IoU down; a json without ``frequency`` (another LVIS-format dataset) has none.
Masks are decoded with pycocotools. Overlapping instances are resolved deterministically: instances are painted
from the largest mask area to the smallest, so a small object lying on a large one stays visible; equal areas
are painted in increasing annotation id, so the higher id ends on top. Each instance with pixels left becomes a
thing segment (segments in json annotation order); its class is the semantic label of its pixels. Pixels no
instance covers, and pixels of categories outside the vocabulary, are ignore. ``iscrowd`` is read when present
(LVIS has none).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.jsonio import index_entries, load_json
from datamodules.labelmaps import LayoutEntry, ListedReader, check_listed_size, check_root, load_rgb, panoptic_sample
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary

FREQUENCY_GROUPS = {"r": "rare", "c": "common", "f": "frequent"}  # LVIS v1 category "frequency"


@dataclass(frozen=True)
class _Instance:
    id: int
    local_class: int | None  # None: category not in the vocabulary
    segmentation: Any
    iscrowd: bool


@dataclass(frozen=True)
class _Record:
    image_path: Path
    size: tuple[int, int]  # (H, W) from the json
    instances: tuple[_Instance, ...]


def decode_mask(segmentation: Any, h: int, w: int) -> np.ndarray:
    """``H×W`` bool mask of a COCO-style segmentation: polygons, uncompressed or compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((h, w), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str | bytes):
        rle = segmentation
    else:
        raise TypeError(f"segmentation must be polygons or RLE, got {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def paint_instances(masks: list[np.ndarray], ids: list[int], h: int, w: int) -> np.ndarray:
    """``H×W`` int64 map of the index (into ``masks``) of the instance on top at each pixel, -1 for none.

    Largest area first, ties by increasing id; later ones overwrite earlier ones.
    """
    owner = np.full((h, w), -1, dtype=np.int64)
    order = sorted(range(len(masks)), key=lambda i: (-int(masks[i].sum()), ids[i]))
    for i in order:
        owner[masks[i]] = i
    return owner


@register_reader("lvis")
class LVISReader(ListedReader):
    """One split of an LVIS-format dataset, read one image at a time."""

    panoptic = True  # yields real instance/stuff segments, so PQ is scored on it

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, json: str = "lvis_v1_{split}.json",
                 image_root: str = "../coco", skip_empty: bool = True, limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary = Path(root), split, vocabulary
        entries = self.expected_layout(self.root, split, vocabulary, json=json, image_root=image_root)
        check_root(self.root, entries)
        self.json_path, self.image_root = entries[0].path, entries[1].path
        self._where = self.json_path
        doc = load_json(self.json_path, ("images", "annotations", "categories"), "LVIS instance annotations")
        self.class_groups = self._class_groups(doc["categories"])
        self._records = index_entries(self.json_path, lambda: self._index(doc, skip_empty),
                                      "LVIS / COCO instance annotations", limit,
                                      errors=(KeyError, TypeError, ValueError))

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        json: str = "lvis_v1_{split}.json", image_root: str = "../coco",
                        **_: Any) -> list[LayoutEntry]:
        return [LayoutEntry(Path(root) / json.format(split=split), "LVIS json", kind="file"),
                # normpath: "lvis/../coco" reads as "coco" in messages (symlinks are left alone)
                LayoutEntry(Path(os.path.normpath(Path(root) / image_root.format(split=split))),
                            "COCO image root holding train2017/ and val2017/")]

    def _image_path(self, image: dict[str, Any]) -> Path:
        url = image.get("coco_url")
        if url:
            folder, name = str(url).rstrip("/").split("/")[-2:]
            return self.image_root / folder / name
        return self.image_root / image["file_name"]

    def _class_groups(self, categories: list[dict[str, Any]]) -> dict[str, list[str]]:
        """``{"rare": [...], "common": [...], "frequent": [...]}``: the vocabulary's classes (in its order) by
        their category's ``frequency``; ``{}`` when the categories carry none."""
        if not all(isinstance(c, dict) and "frequency" in c for c in categories):
            return {}
        frequency = {}
        for c in categories:
            if not isinstance(c["frequency"], str) or c["frequency"] not in FREQUENCY_GROUPS:
                raise DataError(f"{self.json_path}: category {c.get('id')} ({c.get('name')!r}) has frequency "
                                f"{c['frequency']!r}; expected one of {sorted(FREQUENCY_GROUPS)}")
            frequency[c.get("name")] = FREQUENCY_GROUPS[c["frequency"]]
        return {group: [n for n in self.vocabulary.classes if frequency.get(n) == group]
                for group in FREQUENCY_GROUPS.values()}

    def _index(self, doc: dict[str, Any], skip_empty: bool) -> list[_Record]:
        """Per-image records in json order; metadata only, no image is opened."""
        names = set(self.vocabulary.classes)
        local = {int(c["id"]): (self.vocabulary.index(c["name"]) if c["name"] in names else None)
                 for c in doc["categories"]}
        by_image: dict[int, list[_Instance]] = defaultdict(list)
        image_ids = {int(im["id"]) for im in doc["images"]}
        for ann in doc["annotations"]:
            if int(ann["category_id"]) not in local:
                raise DataError(f"{self.json_path}: annotation {ann['id']} has category_id {ann['category_id']}, "
                                "which is not in 'categories'")
            if int(ann["image_id"]) not in image_ids:
                raise DataError(f"{self.json_path}: annotation {ann['id']} refers to image id {ann['image_id']}, "
                                "which is not in 'images'")
            by_image[int(ann["image_id"])].append(
                _Instance(int(ann["id"]), local[int(ann["category_id"])], ann["segmentation"],
                          bool(ann.get("iscrowd", 0))))
        records = []
        for im in doc["images"]:
            instances = by_image.get(int(im["id"]), [])
            if instances or not skip_empty:
                records.append(_Record(self._image_path(im), (int(im["height"]), int(im["width"])),
                                       tuple(instances)))
        return records

    def _sample(self, rec: _Record) -> dict[str, Any]:
        rgb = load_rgb(rec.image_path)
        check_listed_size(rgb, rec.size, rec.image_path, self.json_path)
        h, w = rgb.shape[:2]
        masks = []
        for inst in rec.instances:
            try:
                masks.append(decode_mask(inst.segmentation, h, w))
            except (TypeError, ValueError, IndexError) as e:
                raise DataError(f"{self.json_path}: annotation {inst.id} of image {rec.image_path.name}: "
                                f"cannot decode its segmentation ({e})") from e
        owner = paint_instances(masks, [i.id for i in rec.instances], h, w)
        semantic, segments, classes, crowd = self._maps(owner, rec.instances)
        return panoptic_sample(rgb, semantic, segments, classes, crowd, self.root.name, rec.image_path.stem,
                               rec.image_path)

    @staticmethod
    def _maps(owner: np.ndarray, instances: tuple[_Instance, ...]
              ) -> tuple[np.ndarray, np.ndarray, list[int], list[bool]]:
        """Semantic map, segment map (json order, visible in-vocabulary instances only), class and crowd."""
        visible = np.zeros(len(instances) + 1, dtype=bool)
        visible[np.unique(owner) + 1] = True  # owner -1 (none) lands on slot 0
        cls_lut = np.full(len(instances) + 1, IGNORE_INDEX, dtype=np.int64)
        seg_lut = np.zeros(len(instances) + 1, dtype=np.int64)
        classes, crowd = [], []
        for i, inst in enumerate(instances):
            if inst.local_class is None or not visible[i + 1]:
                continue
            classes.append(inst.local_class)
            crowd.append(inst.iscrowd)
            cls_lut[i + 1], seg_lut[i + 1] = inst.local_class, len(classes)
        return cls_lut[owner + 1], seg_lut[owner + 1], classes, crowd
