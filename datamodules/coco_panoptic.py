"""Reader for the COCO panoptic format.

Layout under ``root`` (templates formatted with the split, defaults as in real COCO)::

    {split}/                          images; ``images[*].file_name`` in the json (``.jpg`` in COCO)
    panoptic_{split}/                 panoptic PNGs; ``annotations[*].file_name``; id = R + 256·G + 256²·B
    annotations/panoptic_{split}.json images, annotations (segments_info) and categories

Categories are matched to the task vocabulary by NAME, so one json serves every class subset of a dataset:
segments of a category outside the vocabulary become ignore (-1) in ``semantic`` and are left out of the
segment list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.jsonio import index_entries, load_json
from datamodules.labelmaps import (
    LayoutEntry,
    ListedReader,
    check_listed_size,
    check_root,
    check_same_size,
    load_rgb,
    panoptic_sample,
)
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary


@dataclass(frozen=True)
class _Segment:
    id: int
    local_class: int | None  # None: category not in the vocabulary
    iscrowd: bool


@dataclass(frozen=True)
class _Record:
    image_path: Path
    png_path: Path
    size: tuple[int, int] | None  # (H, W) from the json, when given
    segments: tuple[_Segment, ...]


def decode_panoptic_ids(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic id map from an H×W×3 PNG array: id = R + 256·G + 256²·B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def encode_panoptic_ids(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_panoptic_ids` (for writers and test fixtures)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


@register_reader("coco_panoptic")
class CocoPanopticReader(ListedReader):
    """One split of a COCO-panoptic-format dataset, read one sample at a time.

    ``limit`` keeps the first N annotations (None or 0 = all, as in the sequence YAML).
    """

    panoptic = True  # yields real instance/stuff segments, so PQ is scored on it

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, image_dir: str = "{split}",
                 panoptic_dir: str = "panoptic_{split}", json: str = "annotations/panoptic_{split}.json",
                 limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary = Path(root), split, vocabulary
        entries = self.expected_layout(self.root, split, vocabulary, image_dir=image_dir,
                                       panoptic_dir=panoptic_dir, json=json)
        # the json gets its own checks (missing, truncated, malformed)
        layout = check_root(self.root, entries, required=entries[:2])
        self.image_dir, self.panoptic_dir, self.json_path = (e.path for e in entries)
        self._where = self.json_path
        doc = load_json(self.json_path, ("images", "annotations", "categories"), "COCO panoptic annotations",
                        layout)
        self._records = index_entries(self.json_path, lambda: self._index(doc), "COCO panoptic annotations", limit)

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        image_dir: str = "{split}", panoptic_dir: str = "panoptic_{split}",
                        json: str = "annotations/panoptic_{split}.json", **_: Any) -> list[LayoutEntry]:
        """The image folder, the panoptic PNG folder and the json of ``split`` (templates formatted)."""
        root = Path(root)
        return [LayoutEntry(root / image_dir.format(split=split), "image folder"),
                LayoutEntry(root / panoptic_dir.format(split=split),
                            "panoptic PNG folder (id = R + 256·G + 256²·B)"),
                LayoutEntry(root / json.format(split=split), "COCO panoptic json", kind="file")]

    def _index(self, doc: dict[str, Any]) -> list[_Record]:
        """Per-annotation records in json order; metadata only, no image is opened."""
        local = {int(c["id"]): (self.vocabulary.classes.index(c["name"])
                                if c["name"] in self.vocabulary.classes else None)
                 for c in doc["categories"]}
        images = {int(im["id"]): im for im in doc["images"]}
        records = []
        for ann in doc["annotations"]:
            image = images.pop(int(ann["image_id"]), None)
            if image is None:
                raise DataError(f"{self.json_path}: annotation {ann['file_name']!r} refers to image id "
                                f"{ann['image_id']}, which is not in 'images' or has another annotation")
            records.append(self._record(image, ann, local))
        if images:  # those left had no annotation
            image_id, image = next(iter(images.items()))
            raise DataError(f"{self.json_path}: image {image['file_name']!r} (id {image_id}) has no "
                            "entry in 'annotations'; expected one panoptic annotation per image")
        return records

    def _record(self, image: dict[str, Any], ann: dict[str, Any], local: dict[int, int | None]) -> _Record:
        segments = []
        for s in ann["segments_info"]:
            if int(s["category_id"]) not in local:
                raise DataError(f"{self.json_path}: image {image['file_name']!r}: segment {s['id']} has "
                                f"category_id {s['category_id']}, which is not in 'categories'")
            segments.append(_Segment(int(s["id"]), local[int(s["category_id"])], bool(s.get("iscrowd", 0))))
        size = (int(image["height"]), int(image["width"])) if {"height", "width"} <= image.keys() else None
        return _Record(self.image_dir / image["file_name"], self.panoptic_dir / ann["file_name"], size,
                       tuple(segments))

    def _sample(self, rec: _Record) -> dict[str, Any]:
        image = load_rgb(rec.image_path)
        pan = load_rgb(rec.png_path, "panoptic PNG", modes=("RGB", "RGBA"),
                       expected="an RGB PNG with segment id = R + 256·G + 256²·B")
        check_same_size(image, pan, rec.image_path, rec.png_path, "panoptic PNG")
        check_listed_size(image, rec.size, rec.image_path, self.json_path)
        segments, semantic, classes, crowd = self._maps(decode_panoptic_ids(pan), rec)
        return panoptic_sample(image, semantic, segments, classes, crowd, self.root.name, rec.image_path.stem,
                               rec.image_path)

    def _maps(self, ids: np.ndarray, rec: _Record) -> tuple[np.ndarray, np.ndarray, list[int], list[bool]]:
        """Segment map (1-based, kept segments only), semantic map and per-segment class / iscrowd.

        Works on the unique ids and maps back with the inverse index, so the cost is one np.unique per image.
        """
        uniq, inverse = np.unique(ids, return_inverse=True)
        info = {s.id: s for s in rec.segments}
        for uid in uniq.tolist():
            if uid != 0 and uid not in info:
                raise DataError(f"{rec.png_path}: segment id {uid} is in the PNG but not in segments_info "
                                f"of its annotation in {self.json_path}")
        present = set(uniq.tolist())
        # Segments with no pixel are skipped: an empty mask is neither a proposal nor matchable ground truth.
        kept = [s for s in rec.segments if s.local_class is not None and s.id in present and s.id != 0]
        seg_of = {s.id: k for k, s in enumerate(kept, 1)}
        seg_lut = np.array([seg_of.get(u, 0) for u in uniq.tolist()], dtype=np.int64)
        cls_lut = np.array([kept[seg_of[u] - 1].local_class if u in seg_of else IGNORE_INDEX
                            for u in uniq.tolist()], dtype=np.int64)
        inverse = inverse.reshape(ids.shape)
        return seg_lut[inverse], cls_lut[inverse], [s.local_class for s in kept], [s.iscrowd for s in kept]
