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

The vocabulary must list the classes in label order (``tasks/vocab/ade150.txt``, ``ade847.txt``). The split may
be given as ``train`` / ``val`` or by its folder name. Semantic only: one segment per class present.
"""

from __future__ import annotations

from typing import Any, ClassVar

from datamodules.labelmaps import LabelMapReader
from datamodules.registry import register_reader

_ADE_SPLITS = {"train": "training", "val": "validation"}


@register_reader("ade20k", "ADE20K SceneParsing (150 classes), detectron2 layout")
class ADE20KReader(LabelMapReader):
    split_aliases: ClassVar[dict[str, str]] = _ADE_SPLITS
    defaults: ClassVar[dict[str, Any]] = {
        **LabelMapReader.defaults, "image_dir": "images/{split}", "label_dir": "annotations/{split}",
        "image_ext": ".jpg", "label_ext": ".png", "offset": 1, "ignore_values": ()}
    expected_classes = 150


@register_reader("ade20k_full", "ADE20K-full (847 classes), 16-bit TIFFs of FC-CLIP's preparation")
class ADE20KFullReader(LabelMapReader):
    split_aliases: ClassVar[dict[str, str]] = _ADE_SPLITS
    defaults: ClassVar[dict[str, Any]] = {
        **LabelMapReader.defaults, "image_dir": "images_detectron2/{split}",
        "label_dir": "annotations_detectron2/{split}", "image_ext": ".jpg", "label_ext": ".tif", "offset": 0,
        "ignore_values": (65535,)}
    expected_classes = 847
