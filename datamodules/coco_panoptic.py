"""Reader for the COCO panoptic format.

Layout under ``root`` (templates formatted with the split, defaults as in real COCO)::

    {split}/                          images; ``images[*].file_name`` in the json (``.jpg`` in COCO)
    panoptic_{split}/                 panoptic PNGs; ``annotations[*].file_name``; id = R + 256·G + 256²·B
    annotations/panoptic_{split}.json images, annotations (segments_info) and categories

The PNG folder is looked for where detectron2's preparation puts it (``panoptic_{split}/``, above), then where
the official archive ``panoptic_annotations_trainval2017.zip`` unpacks it (``annotations/panoptic_{split}/``,
next to the json); option ``panoptic_dir`` names it outright. ``bench data check`` says which one it found.

Categories are matched to the task vocabulary by NAME, so one json serves every class subset of a dataset:
segments of a category outside the vocabulary become ignore (-1) in ``semantic`` and are left out of the
segment list.

The decoding of the format (ids in PNGs, ``segments_info``) is here once, for this reader, the ``hf_parquet``
source and ``bench eval panoptic`` (:mod:`bench.scoring`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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

# Segment id → (class index, or None for a category outside the vocabulary; iscrowd), in segments_info order.
SegmentsInfo = dict[int, tuple[int | None, bool]]

PANOPTIC_PNG = "an RGB PNG with segment id = R + 256·G + 256²·B"
# Where the panoptic PNG folder may be, in the order looked for: (template, layout in words).
PANOPTIC_LAYOUTS = (("panoptic_{split}", "detectron2 layout (panoptic_{split}/ beside the images)"),
                    ("annotations/panoptic_{split}", "official COCO layout (annotations/panoptic_{split}/)"))


@dataclass(frozen=True)
class _Record:
    image_path: Path
    png_path: Path
    size: tuple[int, int] | None  # (H, W) from the json, when given
    segments: SegmentsInfo


def decode_panoptic_ids(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic id map from an H×W×3 PNG array: id = R + 256·G + 256²·B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def encode_panoptic_ids(ids: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_panoptic_ids` (for writers and test fixtures)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def load_panoptic_ids(path: Path) -> np.ndarray:
    """``H×W`` int64 segment ids of a panoptic PNG file; :class:`DataError` naming it when missing or not RGB."""
    return decode_panoptic_ids(load_rgb(path, "panoptic PNG", modes=("RGB", "RGBA"), expected=PANOPTIC_PNG))


def vocabulary_classes(categories: Iterable[dict[str, Any]], vocabulary: Vocabulary) -> dict[int, int | None]:
    """Category id → local class id, matched by name (None: a category outside the vocabulary)."""
    position = {name: i for i, name in enumerate(vocabulary.classes)}
    return {int(c["id"]): position.get(c["name"]) for c in categories}


def segments_info(entries: Iterable[dict[str, Any]], class_of: Mapping[int, int | None], where: str,
                  known: str = "the categories") -> SegmentsInfo:
    """The ``segments_info`` of one annotation as segment id → (class, iscrowd), in listed order.

    ``class_of`` maps category ids to class ids; a category not in it, or a segment id listed twice, is a
    :class:`DataError` beginning with ``where``. A missing field raises ``KeyError`` for the caller to report.
    """
    out: SegmentsInfo = {}
    for s in entries:
        cat = int(s["category_id"])
        if cat not in class_of:
            raise DataError(f"{where}: segment {s['id']} has category_id {cat}, which is not among {known}")
        if int(s["id"]) in out:
            raise DataError(f"{where}: segment id {s['id']} is listed twice in segments_info")
        out[int(s["id"])] = (class_of[cat], bool(s.get("iscrowd", 0)))
    return out


class PanopticMaps(NamedTuple):
    """One panoptic annotation decoded: segments numbered 1.. in ``segments_info`` order (0 = void)."""

    segments: np.ndarray  # H×W int64
    classes: list[int]  # class of segment k at k-1
    crowd: list[bool]  # iscrowd of segment k at k-1
    unpainted: list[int]  # listed segment ids without a pixel, ascending

    def semantic(self) -> np.ndarray:
        """``H×W`` int64 class of each pixel, ``IGNORE_INDEX`` on void and on segments left out."""
        return np.array([IGNORE_INDEX, *self.classes], dtype=np.int64)[self.segments]


def panoptic_maps(ids: np.ndarray, info: SegmentsInfo, png: Path | str, annotation: str,
                  keep_all: bool = False) -> PanopticMaps:
    """Decode a segment-id map with its ``segments_info`` (the readers' samples and ``bench eval`` alike).

    Every non-zero id in ``ids`` must be listed in ``info`` (else a :class:`DataError` naming ``png`` and the
    ``annotation`` it should be in). Kept, in listed order: by default the segments with a class and at least one
    pixel (an empty mask is neither a proposal nor matchable ground truth); with ``keep_all`` every listed segment
    (scoring: a ground-truth segment without pixels is still a false negative). Works on the unique ids and maps
    back with the inverse index, so the cost is one ``np.unique`` per image.
    """
    uniq, inverse = np.unique(ids, return_inverse=True)
    present = uniq.tolist()
    unknown = [u for u in present if u != 0 and u not in info]
    if unknown:
        raise DataError(f"{png}: segment id {unknown[0]} is in the PNG but not in the segments_info of "
                        f"{annotation}")
    present_set = set(present)
    if keep_all:
        kept = list(info)
    else:
        kept = [sid for sid, (cls, _) in info.items() if sid != 0 and sid in present_set and cls is not None]
    number = {sid: k for k, sid in enumerate(kept, 1)}
    lut = np.array([number.get(u, 0) for u in present], dtype=np.int64)
    return PanopticMaps(lut[inverse.reshape(ids.shape)], [info[sid][0] for sid in kept],
                        [info[sid][1] for sid in kept], sorted(set(info) - present_set))


@register_reader("coco_panoptic")
class CocoPanopticReader(ListedReader):
    """One split of a COCO-panoptic-format dataset, read one sample at a time.

    ``limit`` keeps the first N annotations (None or 0 = all, as in the sequence YAML).
    """

    panoptic = True  # yields real instance/stuff segments, so PQ is scored on it

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, image_dir: str = "{split}",
                 panoptic_dir: str | None = None, json: str = "annotations/panoptic_{split}.json",
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

    @staticmethod
    def find_panoptic_dir(root: Path, split: str, panoptic_dir: str | None = None) -> tuple[str, str]:
        """(PNG folder template, which layout): the one given, else detectron2's if present, else the official
        archive's if present, else detectron2's (reported missing)."""
        if panoptic_dir is not None:
            return panoptic_dir, f"PNG folder given by option 'panoptic_dir' ({panoptic_dir})"
        for template, layout in PANOPTIC_LAYOUTS:
            if (Path(root) / template.format(split=split)).is_dir():
                return template, layout.format(split=split)
        return PANOPTIC_LAYOUTS[0][0], "neither layout found"

    @classmethod
    def layout_found(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                     panoptic_dir: str | None = None, **_: Any) -> str:
        return cls.find_panoptic_dir(root, split, panoptic_dir)[1]

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        image_dir: str = "{split}", panoptic_dir: str | None = None,
                        json: str = "annotations/panoptic_{split}.json", **_: Any) -> list[LayoutEntry]:
        """The image folder, the panoptic PNG folder and the json of ``split`` (templates formatted)."""
        root = Path(root)
        template, _layout = cls.find_panoptic_dir(root, split, panoptic_dir)
        other = "" if panoptic_dir is not None else \
            f"; or {' or '.join(t.format(split=split) + '/' for t, _ in PANOPTIC_LAYOUTS if t != template)}"
        return [LayoutEntry(root / image_dir.format(split=split), "image folder"),
                LayoutEntry(root / template.format(split=split),
                            f"panoptic PNG folder (id = R + 256·G + 256²·B{other})"),
                LayoutEntry(root / json.format(split=split), "COCO panoptic json", kind="file")]

    def _index(self, doc: dict[str, Any]) -> list[_Record]:
        """Per-annotation records in json order; metadata only, no image is opened."""
        local = vocabulary_classes(doc["categories"], self.vocabulary)
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
        segments = segments_info(ann["segments_info"], local, f"{self.json_path}: image {image['file_name']!r}")
        size = (int(image["height"]), int(image["width"])) if {"height", "width"} <= image.keys() else None
        return _Record(self.image_dir / image["file_name"], self.panoptic_dir / ann["file_name"], size, segments)

    def _sample(self, rec: _Record) -> dict[str, Any]:
        image = load_rgb(rec.image_path)
        ids = load_panoptic_ids(rec.png_path)
        check_same_size(image, ids, rec.image_path, rec.png_path, "panoptic PNG")
        check_listed_size(image, rec.size, rec.image_path, self.json_path)
        maps = panoptic_maps(ids, rec.segments, rec.png_path, f"its annotation in {self.json_path}")
        return panoptic_sample(image, maps.semantic(), maps.segments, maps.classes, maps.crowd, self.root.name,
                               rec.image_path.stem, rec.image_path)
