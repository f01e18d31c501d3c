"""ADE20K-full read from the 2021 release itself (``ADE20K_2021_17_01``), not from FC-CLIP's converted TIFFs.

Layout under ``root`` (the unpacked release)::

    index_ade20k.pkl                                   the release's index: ``objectnames`` (class names)
    images/ADE/{training,validation}/<scene>/.../ADE_*.jpg
    images/ADE/{training,validation}/<scene>/.../ADE_*_seg.png    colour-coded classes and instances
    images/ADE/{training,validation}/<scene>/.../ADE_*.json       per-image objects (``name``, ``name_ndx``)

``_seg.png`` is decoded as the dataset's toolkit does (CSAILVision/ADE20K ``utils/utils_ade20k.py``,
``loadAde20K``): class value = R / 10 · 256 + G (integer division), 0 = unlabelled; B numbers the instances.
Class value ``k`` names ``objectnames[k - 1]`` of the index (Mask2Former's ``prepare_ade20k_full_sem_seg.py``
keys its 847 classes by that value); without the index, the per-image json gives the name of each value
(``name_ndx`` → ``name``). Names are matched EXACTLY to the task vocabulary (``tasks/vocab/ade847.txt``, whose names
are the release's ``objectnames``); every other value is ignore. ``bench data check`` lists the vocabulary classes
that no release name matches. Images are read at full resolution (FC-CLIP's TIFFs are resized to a short side of
at most 512), so scores differ from the TIFF layout's. Semantic only: one segment per class present.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.jsonio import read_json
from datamodules.labelmaps import LayoutEntry, ListedReader, check_root, check_same_size, load_rgb, semantic_sample
from datamodules.vocabulary import Vocabulary

SPLITS = {"train": "training", "val": "validation"}


def decode_ade_seg(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class values, instance values) of an ``H×W×3`` ``_seg.png`` array, as the ADE20K toolkit decodes them."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return r // 10 * 256 + g, b


def encode_ade_seg(classes: np.ndarray, instances: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`decode_ade_seg` (for fixtures): R = class // 256 · 10, G = class % 256."""
    classes = np.asarray(classes, dtype=np.int64)
    b = np.zeros_like(classes) if instances is None else np.asarray(instances, dtype=np.int64)
    return np.stack([classes // 256 * 10, classes % 256, b], axis=-1).astype(np.uint8)


class _IndexUnpickler(pickle.Unpickler):
    """The index is a pickle: only plain containers and numpy arrays may be rebuilt from it (no code runs)."""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" or (module == "builtins" and name in {"list", "dict", "tuple", "set"}):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the ADE20K index")


def load_objectnames(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            index = _IndexUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise DataError(f"{path}: cannot read the ADE20K index ({e}); expected the release's index_ade20k.pkl") from e
    names = index.get("objectnames") if isinstance(index, dict) else None
    if names is None:
        raise DataError(f"{path}: no 'objectnames' in the index; expected the release's index_ade20k.pkl")
    return [str(n) for n in names]


@dataclass(frozen=True)
class _Record:
    image: Path
    seg: Path


class ADE20KReleaseReader(ListedReader):
    """ADE20K-full (847 classes) from the 2021 release: ``_seg.png`` + the release's index or per-image json."""

    panoptic = False
    defaults: ClassVar[dict[str, str]] = {"image_dir": "images/ADE/{split}", "index": "index_ade20k.pkl"}

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, image_dir: str = "images/ADE/{split}",
                 index: str = "index_ade20k.pkl", limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary = Path(root), SPLITS.get(split, split), vocabulary
        entries = self.expected_layout(self.root, split, vocabulary, image_dir=image_dir, index=index)
        layout = check_root(self.root, entries[:1])
        self.image_dir, self.index_path = entries[0].path, entries[1].path
        self._where = self.image_dir
        records = []
        for image in sorted(self.image_dir.rglob("*.jpg")):
            seg = image.with_name(f"{image.stem}_seg.png")
            if not seg.is_file():
                raise DataError(f"{image}: image has no annotation; expected {seg}")
            records.append(_Record(image, seg))
        if not records:
            raise DataError(f"{self.image_dir}: no '*.jpg' images in its scene folders; {layout}")
        self._records = records[:limit] if limit else records
        self.position = {name: i for i, name in enumerate(vocabulary.classes)}
        self._lut: np.ndarray | None = None
        self.check_notes: list[str] = []
        if self.index_path.is_file():
            names = load_objectnames(self.index_path)
            self._lut = self._names_lut(dict(enumerate(names, 1)))
            unmatched = [c for c in vocabulary.classes if c not in set(names)]
            outside = len(set(names) - set(vocabulary.classes))
            self.check_notes.append(f"class names from {self.index_path.name}: {len(vocabulary) - len(unmatched)} of "
                                    f"{len(vocabulary)} vocabulary classes found, {outside} release names outside "
                                    "the vocabulary (ignore)")
            if unmatched:
                self.check_notes.append(f"{len(unmatched)} vocabulary classes match no name of the release: "
                                        + ", ".join(repr(c) for c in unmatched))
        else:
            self.check_notes.append(f"no {self.index_path.name}: class names from each image's json")

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        image_dir: str = "images/ADE/{split}", index: str = "index_ade20k.pkl",
                        **_: Any) -> list[LayoutEntry]:
        split = SPLITS.get(split, split)
        return [LayoutEntry(Path(root) / image_dir.format(split=split),
                            "scene folders of ADE_*.jpg with ADE_*_seg.png (and ADE_*.json) beside each"),
                LayoutEntry(Path(root) / index, "the release's index (class names; else each image's json)",
                            kind="file")]

    def _names_lut(self, names: dict[int, str]) -> np.ndarray:
        lut = np.full(max(names, default=0) + 1, IGNORE_INDEX, dtype=np.int64)
        for value, name in names.items():
            lut[value] = self.position.get(name, IGNORE_INDEX)
        return lut

    def _json_lut(self, rec: _Record) -> np.ndarray:
        path = rec.image.with_suffix(".json")
        doc = read_json(path, "the image's ADE20K json (annotation.object[*].name / name_ndx)")
        try:
            objects = doc["annotation"]["object"]
            return self._names_lut({int(o["name_ndx"]): str(o["name"]) for o in objects})
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed entry (missing or wrong field {e}); expected "
                            "annotation.object[*] with 'name' and 'name_ndx'") from e

    def _sample(self, rec: _Record) -> dict[str, Any]:
        rgb = load_rgb(rec.image)
        seg = load_rgb(rec.seg, "colour-coded _seg.png", modes=("RGB", "RGBA"),
                       expected="an RGB PNG with class = R / 10 · 256 + G")
        check_same_size(rgb, seg, rec.image, rec.seg, "_seg.png")
        values, _instances = decode_ade_seg(seg)
        lut = self._lut if self._lut is not None else self._json_lut(rec)
        if int(values.max()) >= len(lut):
            if self._lut is not None:
                raise DataError(f"{rec.seg}: class value {int(values.max())} is past the {len(lut) - 1} names of "
                                f"{self.index_path}")
            lut = np.concatenate([lut, np.full(int(values.max()) + 1 - len(lut), IGNORE_INDEX)])
        return semantic_sample(rgb, lut[values], self.root.name, rec.image.stem, rec.image)
