"""Mapillary Vistas v1.2 (65 classes) and v2.0 (123 classes + unlabelled): label and instance PNGs.

Layout under ``root`` (the unpacked release; ``{version}`` is ``v1.2`` or ``v2.0``)::

    config_{version}.json                      ``labels``: ``readable`` name and ``instances`` flag per label value
    {training,validation}/images/<key>.jpg
    {training,validation}/{version}/labels/<key>.png       palette PNG: value = label index in the config
    {training,validation}/{version}/instances/<key>.png    16-bit: value = label · 256 + instance

Label values are named by the config's ``readable`` names and matched EXACTLY to the task vocabulary
(``tasks/vocab/mapillary-v1.2.txt``, ``mapillary-v2.0.txt``: the config's names without ``Unlabeled``); values whose
name is not in the vocabulary (``Unlabeled``, the last label) are ignore, and ``bench data check`` lists the
vocabulary classes the config does not name. Panoptic from the instance PNGs: each distinct value is one segment
(a stuff class has one value per image), never crowd; the vocabulary's thing flags are checked against the config's
``instances`` flags (mismatches listed by ``bench data check``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.jsonio import load_json
from datamodules.labelmaps import (
    LayoutEntry,
    ListedReader,
    apply_lut,
    check_root,
    check_same_size,
    load_label_map,
    load_rgb,
    pair_files,
    panoptic_sample,
)
from datamodules.registry import register_reader
from datamodules.voc import instance_segments
from datamodules.vocabulary import Vocabulary

SPLITS = {"train": "training", "val": "validation"}
VERSIONS = ("v1.2", "v2.0")


@register_reader("mapillary", "Mapillary Vistas v1.2 / v2.0: label PNGs, panoptic from the instance PNGs")
class MapillaryReader(ListedReader):
    panoptic = True

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, version: str = "v1.2",
                 image_dir: str = "{split}/images", label_dir: str = "{split}/{version}/labels",
                 instance_dir: str = "{split}/{version}/instances", config: str = "config_{version}.json",
                 limit: int | None = None) -> None:
        if version not in VERSIONS:
            raise DataError(f"mapillary: option 'version' is {version!r}; expected one of {', '.join(VERSIONS)}")
        self.root, self.split, self.vocabulary = Path(root), SPLITS.get(split, split), vocabulary
        entries = self.expected_layout(self.root, split, vocabulary, version=version, image_dir=image_dir,
                                       label_dir=label_dir, instance_dir=instance_dir, config=config)
        layout = check_root(self.root, entries, required=entries[1:])
        config_path, image_path, label_path, instance_path = (e.path for e in entries)
        doc = load_json(config_path, ("labels",), f"the Mapillary Vistas {version} config", layout)
        try:
            labels = [(str(lab["readable"]), bool(lab.get("instances", False))) for lab in doc["labels"]]
        except (KeyError, TypeError) as e:
            raise DataError(f"{config_path}: malformed entry in 'labels' (missing or wrong field {e}); expected "
                            "'readable' and 'instances' per label") from e
        position = {name: i for i, name in enumerate(vocabulary.classes)}
        self._lut = np.array([position.get(name, IGNORE_INDEX) for name, _ in labels], dtype=np.int64)
        names = {name for name, _ in labels}
        self.check_notes = [f"{config_path.name}: {len(labels)} labels, {int((self._lut >= 0).sum())} matched to the "
                            f"{len(vocabulary)} vocabulary classes, the rest ignore"]
        unmatched = [c for c in vocabulary.classes if c not in names]
        if unmatched:
            self.check_notes.append(f"{len(unmatched)} vocabulary classes match no label of {config_path.name}: "
                                    + ", ".join(map(repr, unmatched)))
        flags = [n for n, inst in labels if n in position and inst != vocabulary.is_thing[position[n]]]
        if flags:
            self.check_notes.append("thing/stuff differs from the config's 'instances' flag for: "
                                    + ", ".join(map(repr, flags)))
        pairs = pair_files(image_path, label_path, ".jpg", ".png")
        if not pairs:
            raise DataError(f"{image_path}: no '*.jpg' images; {layout}")
        self._where = image_path
        self._records = [(img, lab, instance_path / lab.name) for img, lab in pairs][: limit or None]

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None, version: str = "v1.2",
                        image_dir: str = "{split}/images", label_dir: str = "{split}/{version}/labels",
                        instance_dir: str = "{split}/{version}/instances", config: str = "config_{version}.json",
                        **_: Any) -> list[LayoutEntry]:
        root, split = Path(root), SPLITS.get(split, split)
        fmt = {"split": split, "version": version}
        return [LayoutEntry(root / config.format(**fmt), f"label config of {version}", kind="file"),
                LayoutEntry(root / image_dir.format(**fmt), "images '<key>.jpg'"),
                LayoutEntry(root / label_dir.format(**fmt), "label PNGs '<key>.png' (label index)"),
                LayoutEntry(root / instance_dir.format(**fmt), "instance PNGs '<key>.png' (label · 256 + instance)")]

    @classmethod
    def layout_found(cls, root: Path, split: str, vocabulary: Vocabulary | None = None, version: str = "v1.2",
                     **_: Any) -> str:
        return f"Mapillary Vistas {version} release layout"

    def _sample(self, record: tuple[Path, Path, Path]) -> dict[str, Any]:
        image_path, label_path, instance_path = record
        rgb = load_rgb(image_path)
        raw = load_label_map(label_path)
        check_same_size(rgb, raw, image_path, label_path)
        semantic = apply_lut(raw, self._lut, label_path, len(self.vocabulary))
        instances = load_label_map(instance_path, "instance PNG")
        check_same_size(rgb, instances, image_path, instance_path, "instance PNG")
        if bool((instances // 256 != raw).any()):
            y, x = np.argwhere(instances // 256 != raw)[0]
            raise DataError(f"{instance_path}: pixel ({y}, {x}) has label {int(instances[y, x]) // 256} but "
                            f"{label_path} gives {int(raw[y, x])}; expected value = label · 256 + instance")
        # each distinct instance value is a segment; a stuff label's pixels share one value
        segments, classes = instance_segments(semantic, instances, stuff_value=-1, void=())
        return panoptic_sample(rgb, semantic, segments, classes, [False] * len(classes), self.root.name,
                               image_path.stem, image_path)
