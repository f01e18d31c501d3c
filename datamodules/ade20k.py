"""ADE20K readers: the 150-class SceneParsing release and the 847-class full ADE20K.

``ade20k`` — ``ADEChallengeData2016`` as released by the MIT SceneParsing benchmark (also what detectron2 /
Mask2Former / FC-CLIP expect under ``$DETECTRON2_DATASETS/ADEChallengeData2016``)::

    images/{training,validation}/ADE_*_<n>.jpg
    annotations/{training,validation}/ADE_*_<n>.png     8-bit: 0 = "other" (ignored), k = class k-1 of 150

``ade20k_full`` — ADE20K-847 as prepared for open-vocabulary evaluation by ODISE / FC-CLIP
(``datasets/prepare_ade20k_full_sem_seg.py``), under ``ADE20K_2021_17_01``::

    images_detectron2/{training,validation}/ADE_*.jpg          resized so the short side is at most 512
    annotations_detectron2/{training,validation}/ADE_*.tif     16-bit: k = class k of 847 (the script's
                                                                trainId order), 65535 = ignore

or the 2021 release itself (``images/ADE/...`` with ``_seg.png``; :mod:`datamodules.ade20k_release`): the reader
takes the layout it finds (the TIFFs first; option ``layout: tiff | release`` to choose) and ``bench data check``
says which.

The vocabulary must list the classes in label order (``tasks/vocab/ade150.txt``, ``ade847.txt``). The split may
be given as ``train`` / ``val`` or by its folder name. Semantic only: one segment per class present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from datamodules.ade20k_release import ADE20KReleaseReader
from datamodules.contract import DataError
from datamodules.labelmaps import LabelMapReader, LayoutEntry
from datamodules.registry import register_reader

_ADE_SPLITS = {"train": "training", "val": "validation"}


@register_reader("ade20k", "ADE20K SceneParsing (150 classes), detectron2 layout")
class ADE20KReader(LabelMapReader):
    split_aliases: ClassVar[dict[str, str]] = _ADE_SPLITS
    defaults: ClassVar[dict[str, Any]] = {
        **LabelMapReader.defaults, "image_dir": "images/{split}", "label_dir": "annotations/{split}",
        "image_ext": ".jpg", "label_ext": ".png", "offset": 1, "ignore_values": ()}
    expected_classes = 150


class ADE20KFullTiffReader(LabelMapReader):
    """ADE20K-full, 16-bit TIFFs of FC-CLIP's preparation."""

    split_aliases: ClassVar[dict[str, str]] = _ADE_SPLITS
    defaults: ClassVar[dict[str, Any]] = {
        **LabelMapReader.defaults, "image_dir": "images_detectron2/{split}",
        "label_dir": "annotations_detectron2/{split}", "image_ext": ".jpg", "label_ext": ".tif", "offset": 0,
        "ignore_values": (65535,)}
    expected_classes = 847


_FULL_LAYOUTS = {"tiff": ADE20KFullTiffReader, "release": ADE20KReleaseReader}
_RELEASE_OPTIONS = {"image_dir", "index"}


@register_reader("ade20k_full", "ADE20K-full (847 classes): FC-CLIP's 16-bit TIFFs or the 2021 release's _seg.png")
class ADE20KFullReader:
    """Builds the reader of the layout on disk (see the module docstring); ``layout`` chooses it outright."""

    panoptic = False

    def __new__(cls, root: Path, split: str, vocabulary: Any, layout: str = "auto", **options: Any) -> Any:
        return cls.reader_class(root, split, layout, options)(root=root, split=split, vocabulary=vocabulary,
                                                              **options)

    @staticmethod
    def reader_class(root: Path, split: str, layout: str = "auto", options: dict[str, Any] | None = None) -> type:
        if layout not in ("auto", *_FULL_LAYOUTS):
            raise DataError(f"ade20k_full: option 'layout' is {layout!r}; expected auto, tiff or release")
        if layout != "auto":
            return _FULL_LAYOUTS[layout]
        options = options or {}
        tiff = ADE20KFullTiffReader.expected_layout(root, split, **options)[0].exists() if not \
            set(options) & _RELEASE_OPTIONS else False
        release = ADE20KReleaseReader.expected_layout(root, split)[0].exists() and not set(options) - \
            _RELEASE_OPTIONS - {"limit"}
        return ADE20KReleaseReader if release and not tiff else ADE20KFullTiffReader

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Any = None, layout: str = "auto",
                        **options: Any) -> list[LayoutEntry]:
        return cls.reader_class(root, split, layout, options).expected_layout(root, split, vocabulary, **options)

    @classmethod
    def layout_found(cls, root: Path, split: str, vocabulary: Any = None, layout: str = "auto",
                     **options: Any) -> str:
        chosen = cls.reader_class(root, split, layout, options)
        what = ("2021 release (_seg.png, images/ADE/)" if chosen is ADE20KReleaseReader
                else "FC-CLIP's 16-bit TIFFs (images_detectron2/, annotations_detectron2/)")
        found = any(e.exists() for e in chosen.expected_layout(root, split, **options)[:1])
        return what + ("" if found or layout != "auto" else "; neither layout found")
