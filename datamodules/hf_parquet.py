"""A Hugging Face ``datasets`` source: COCO-panoptic-style rows streamed from parquet files.

Rows are read through ``datasets.load_dataset("parquet", data_files=..., streaming=True)``, so no split is ever
loaded whole, and yield the same samples as :class:`~datamodules.coco_panoptic.CocoPanopticReader` on the same
data. Layout under ``root`` (templates formatted with the split)::

    {data_files}      parquet file(s), a glob; default ``{split}/*.parquet``; rows in file-name order
    {categories}      json with the COCO ``categories`` list (a COCO panoptic json will do), or a bare list;
                      default ``categories.json``

Columns (names are options): ``image`` (encoded image: bytes, ``{"bytes": ...}`` as the ``datasets`` Image
feature stores it, or a decoded PIL image), ``panoptic`` (the panoptic PNG, same encodings; id = R + 256·G +
256²·B), ``segments_info`` (list of ``{id, category_id, iscrowd}``, or its JSON text), and optionally
``file_name`` (the image's file name, for ``meta.file_id``). Categories are matched to the vocabulary by name,
as the native reader does.

Random access is served by a forward cursor over the stream: reading indices in order (a DataLoader without
shuffling) costs one pass; going back restarts the stream at that row.
"""

from __future__ import annotations

import io
import json as jsonlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from datamodules.coco_panoptic import decode_panoptic_ids, panoptic_maps, segments_info, vocabulary_classes
from datamodules.contract import DataError
from datamodules.jsonio import read_json
from datamodules.labelmaps import LayoutEntry, check_index, check_root, decode_rgb, panoptic_sample
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary


def _categories(path: Path) -> list[dict[str, Any]]:
    doc = read_json(path, "a json with the COCO 'categories' list")
    cats = doc.get("categories") if isinstance(doc, dict) else doc
    if not isinstance(cats, list) or not all(isinstance(c, dict) and {"id", "name"} <= c.keys() for c in cats):
        raise DataError(f"{path}: expected a list of categories with 'id' and 'name' (or an object holding one "
                        "under 'categories')")
    return cats


def _decode(value: Any, where: str, what: str) -> np.ndarray:
    """``H×W×3`` uint8 array of an encoded image cell (bytes, ``{"bytes": ...}`` or PIL image)."""
    if isinstance(value, Image.Image):
        return np.asarray(value.convert("RGB"))
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray):
        raise DataError(f"{where}: column {what!r} holds {type(value).__name__}; expected encoded image bytes")
    return decode_rgb(io.BytesIO(data), where, f"column {what!r}")


@register_reader("hf_parquet")
class HFParquetPanopticReader:
    """COCO panoptic rows from parquet through Hugging Face ``datasets`` streaming. ``limit`` keeps N rows."""

    panoptic = True  # yields real instance/stuff segments, so PQ is scored on it

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, data_files: str = "{split}/*.parquet",
                 categories: str = "categories.json", image_column: str = "image",
                 panoptic_column: str = "panoptic", segments_column: str = "segments_info",
                 file_name_column: str = "file_name", limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary = Path(root), split, vocabulary
        self.columns = {"image": image_column, "panoptic": panoptic_column, "segments": segments_column,
                        "file_name": file_name_column}
        entries = self.expected_layout(self.root, split, vocabulary, data_files=data_files, categories=categories)
        layout = check_root(self.root, entries, required=())  # the categories json gets its own checks
        self.pattern = data_files.format(split=split)
        self.files = sorted(self.root.glob(self.pattern))
        if not self.files:
            raise DataError(f"{self.root / self.pattern}: no parquet file matches; {layout}")
        self._local = vocabulary_classes(_categories(entries[1].path), vocabulary)
        self._length = sum(self._num_rows(f) for f in self.files)
        if limit:
            self._length = min(self._length, limit)
        self._stream: Any = None
        self._cursor: Any = None
        self._pos = 0

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        data_files: str = "{split}/*.parquet", categories: str = "categories.json",
                        **_: Any) -> list[LayoutEntry]:
        pattern = data_files.format(split=split)
        return [LayoutEntry(Path(root) / Path(pattern).parent, f"parquet files '{Path(pattern).name}'"),
                LayoutEntry(Path(root) / categories.format(split=split), "categories json", kind="file")]

    @staticmethod
    def _num_rows(path: Path) -> int:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
            raise DataError(f"{path}: not a readable parquet file ({e})") from e

    def __getstate__(self) -> dict[str, Any]:
        # A live stream cannot be pickled (DataLoader workers): each copy opens its own.
        return {**self.__dict__, "_stream": None, "_cursor": None, "_pos": 0}

    def _row(self, index: int) -> dict[str, Any]:
        if self._cursor is None or index < self._pos:
            if self._stream is None:
                import datasets

                self._stream = datasets.load_dataset("parquet", data_files=[str(f) for f in self.files],
                                                     split="train", streaming=True)
            self._cursor, self._pos = iter(self._stream.skip(index) if index else self._stream), index
        try:
            while self._pos < index:
                next(self._cursor)
                self._pos += 1
            row = next(self._cursor)
        except StopIteration:
            raise DataError(f"{self.root / self.pattern}: stream ended before row {index}; the parquet "
                            f"metadata counts {self._length} rows") from None
        self._pos += 1
        return row

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        check_index(index, len(self), self.root / self.pattern, "rows")
        index %= len(self)
        row = self._row(index)
        where = f"{self.root / self.pattern} row {index}"
        for key in ("image", "panoptic", "segments"):
            if self.columns[key] not in row:
                raise DataError(f"{where}: column {self.columns[key]!r} missing; columns: {sorted(row)}")
        rgb = _decode(row[self.columns["image"]], where, self.columns["image"])
        pan = _decode(row[self.columns["panoptic"]], where, self.columns["panoptic"])
        if pan.shape != rgb.shape:
            raise DataError(f"{where}: panoptic PNG is {pan.shape[1]}×{pan.shape[0]} (W×H) but the image is "
                            f"{rgb.shape[1]}×{rgb.shape[0]}; expected the same size")
        info = row[self.columns["segments"]]
        if isinstance(info, str):
            info = jsonlib.loads(info)
        maps = panoptic_maps(decode_panoptic_ids(pan), segments_info(info, self._local, where), where,
                             f"column {self.columns['segments']!r}")
        name = row.get(self.columns["file_name"]) or f"{index:06d}"
        return panoptic_sample(rgb, maps.semantic(), maps.segments, maps.classes, maps.crowd, self.root.name,
                               Path(str(name)).stem, where)
