"""``hf_parquet``: COCO-panoptic-style rows in parquet files, the ``hf`` reader with this layout's defaults.

Layout under ``root`` (templates formatted with the split)::

    {data_files}      parquet file(s), a glob; default ``{split}/*.parquet``; rows in file-name order
    {categories}      json with the COCO ``categories`` list (a COCO panoptic json will do), or a bare list;
                      default ``categories.json``

Columns (names are options): ``image``, ``panoptic`` (id = R + 256·G + 256²·B), ``segments_info`` (list of
``{id, category_id, iscrowd}``, or its JSON text) and optionally ``file_name``. Rows are streamed through
``datasets`` one parquet row group at a time (:mod:`datamodules.hf_rows`) and yield the same samples as
:class:`~datamodules.coco_panoptic.CocoPanopticReader` on the same data. For hub datasets, ``save_to_disk``
folders and semantic data, use the ``hf`` format (:mod:`datamodules.hf`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datamodules.hf import HFReader
from datamodules.labelmaps import LayoutEntry
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary


@register_reader("hf_parquet")
class HFParquetPanopticReader(HFReader):
    """COCO panoptic rows from parquet through Hugging Face ``datasets`` streaming. ``limit`` keeps N rows."""

    panoptic = True  # yields real instance/stuff segments, so PQ is scored on it

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, data_files: str = "{split}/*.parquet",
                 categories: str = "categories.json", image_column: str = "image",
                 panoptic_column: str = "panoptic", segments_column: str = "segments_info",
                 file_name_column: str = "file_name", limit: int | None = None) -> None:
        columns = {"image": image_column, "panoptic": panoptic_column, "segments_info": segments_column,
                   "file_name": file_name_column}
        super().__init__(root, split, vocabulary, data_files=data_files, categories=categories, columns=columns,
                         limit=limit)

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        data_files: str = "{split}/*.parquet", categories: str = "categories.json",
                        **_: Any) -> list[LayoutEntry]:
        return super().expected_layout(root, split, vocabulary, data_files=data_files, categories=categories)

    @classmethod
    def layout_found(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                     data_files: str = "{split}/*.parquet", **_: Any) -> str:
        return super().layout_found(root, split, vocabulary, data_files=data_files)
