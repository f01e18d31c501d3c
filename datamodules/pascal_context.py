"""PASCAL Context readers (59 and 459 classes) in the layout the ODISE / FC-CLIP scripts prepare.

Under ``pascal_ctx_d2`` (``datasets/prepare_pascal_ctx_sem_seg.py`` and ``prepare_pascal_ctx_full_sem_seg.py``)::

    images/{training,validation}/<id>.jpg            the VOC2010 JPEGs of the split
    annotations_ctx59/{training,validation}/<id>.png 8-bit: k = class k of 59, 255 = ignore (the script maps
                                                     the "background" label 0 to 255 by a uint8 wrap-around)
    annotations_ctx459/{training,validation}/<id>.tif 16-bit: k = class k of 459 (labels.txt order, 0-based),
                                                     65535 = ignore (label 0 of the .mat maps, unlabelled)

``variant`` picks the label space: ``59`` or ``459``; left out, it follows the vocabulary size. The vocabulary
lists the classes in label order (``tasks/vocab/pc59.txt``, ``pc459.txt``). Splits: ``train`` / ``val`` or the
folder names. Semantic only: one segment per class present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from datamodules.contract import DataError
from datamodules.ignore import PNG_IGNORE
from datamodules.labelmaps import LabelMapReader, LayoutEntry
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary

_VARIANTS: dict[int, dict[str, Any]] = {
    59: {"label_dir": "annotations_ctx59/{split}", "label_ext": ".png", "ignore_values": (PNG_IGNORE,)},
    459: {"label_dir": "annotations_ctx459/{split}", "label_ext": ".tif", "ignore_values": (65535,)},
}


def _variant(variant: int | str | None, num_classes: int | None) -> int:
    value = int(variant) if variant is not None else num_classes
    if value not in _VARIANTS:
        raise DataError(f"pascal_context: option 'variant' must be 59 or 459 (or left out with a vocabulary of "
                        f"59 or 459 classes), got {variant if variant is not None else f'{num_classes} classes'}")
    return value


@register_reader("pascal_context", "PASCAL Context (59 or 459 classes), detectron2 layout")
class PascalContextReader(LabelMapReader):
    split_aliases: ClassVar[dict[str, str]] = {"train": "training", "val": "validation"}
    defaults: ClassVar[dict[str, Any]] = {
        **LabelMapReader.defaults, "image_dir": "images/{split}", "image_ext": ".jpg", "offset": 0, **_VARIANTS[59]}

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, variant: int | str | None = None,
                 limit: int | None = None, **options: Any) -> None:
        n = _variant(variant, len(vocabulary))
        self.expected_classes = n
        super().__init__(root, split, vocabulary, limit=limit, **{**_VARIANTS[n], **options})
        self.variant = n

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        variant: int | str | None = None, **options: Any) -> list[LayoutEntry]:
        n = _variant(variant, len(vocabulary) if vocabulary is not None else None)
        return super().expected_layout(root, split, vocabulary, **{**_VARIANTS[n], **options})
