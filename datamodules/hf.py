"""``hf``: any Hugging Face ``datasets`` dataset, by hub name (streamed) or from files on disk.

Where the rows come from (options; ``{split}`` in a template is the split):

- ``data_files: "{split}/*.parquet"``: parquet (or ``.arrow``) files under ``root``, a glob; streamed through
  ``datasets``, one shard per parquet row group;
- ``dataset: <folder>``: a ``save_to_disk`` folder under ``root`` (a Dataset, or a DatasetDict holding the split);
- ``dataset: <owner/name>`` (with ``config``, ``revision``) when no such folder exists: the hub dataset, streamed
  with ``datasets.load_dataset(name, config, split=split, streaming=True)``; with ``HF_DATASETS_OFFLINE=1`` it
  must be in the local cache;
- neither: ``root`` itself is a ``save_to_disk`` folder.

Columns (``columns: {image: ..., label: ...}``; defaults ``image`` / ``label``), encoded images as the ``datasets``
Image feature stores them (or raw bytes):

- semantic: ``label``, a single-channel label map; value ``v`` is class ``v - label_offset`` of the task's
  vocabulary file (in file order), ``ignore_values`` (default ``[255]``) and values below the offset are ignore;
- panoptic (when ``columns`` names ``panoptic``): ``panoptic``, the COCO-style PNG (id = R + 256·G + 256²·B), and
  ``segments_info`` (list of ``{id, category_id, iscrowd}`` or its JSON text). Category names come from the
  dataset's features when ``category_id`` is a ``ClassLabel``, else from the ``categories`` json under ``root``
  (COCO ``categories`` list); they are matched to the vocabulary by name, as the native COCO reader does.
- optional ``file_name`` (``meta.file_id``; default: the row number).

The order of the samples is the dataset's, the same for any number of DataLoader workers; ``limit`` keeps the
first N. See :mod:`datamodules.hf_rows` for how workers share the stream.
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
from datamodules.hf_rows import ShardedStream, TableRows, hub_stream, parquet_stream
from datamodules.ignore import PNG_IGNORE
from datamodules.jsonio import read_json
from datamodules.labelmaps import (
    LayoutEntry,
    apply_lut,
    check_default_ignore,
    check_index,
    decode_label_map,
    decode_rgb,
    panoptic_sample,
    semantic_sample,
    value_lut,
)
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary

SEMANTIC_COLUMNS = ("image", "label")
PANOPTIC_COLUMNS = ("image", "panoptic", "segments_info")


def cell_bytes(value: Any, where: str, column: str) -> io.BytesIO | Image.Image:
    """An encoded image cell (bytes, ``{"bytes": ...}`` as the Image feature stores it, or a PIL image)."""
    if isinstance(value, Image.Image):
        return value
    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes | bytearray):
        raise DataError(f"{where}: column {column!r} holds {type(value).__name__}; expected encoded image bytes")
    return io.BytesIO(data)


def decode_cell(value: Any, where: str, column: str) -> np.ndarray:
    """``H×W×3`` uint8 array of an encoded image cell."""
    data = cell_bytes(value, where, column)
    if isinstance(data, Image.Image):
        return np.asarray(data.convert("RGB"))
    return decode_rgb(data, where, f"column {column!r}")


def load_categories(path: Path) -> list[dict[str, Any]]:
    """The COCO ``categories`` list of a json (an object holding it, or the bare list)."""
    doc = read_json(path, "a json with the COCO 'categories' list")
    cats = doc.get("categories") if isinstance(doc, dict) else doc
    if not isinstance(cats, list) or not all(isinstance(c, dict) and {"id", "name"} <= c.keys() for c in cats):
        raise DataError(f"{path}: expected a list of categories with 'id' and 'name' (or an object holding one "
                        "under 'categories')")
    return cats


def feature_class_names(features: Any, column: str) -> list[str] | None:
    """Names of ``category_id`` when the features declare it a ``ClassLabel`` inside ``column`` (list of dicts, or
    the dict-of-lists form of ``Sequence``); None otherwise."""
    import datasets

    f = (features or {}).get(column)
    inner = f[0] if isinstance(f, list) and f else getattr(f, "feature", f)
    cat = inner.get("category_id") if isinstance(inner, dict) else None
    cat = getattr(cat, "feature", cat)
    return list(cat.names) if isinstance(cat, datasets.ClassLabel) else None


def _is_local(root: Path, dataset: str) -> bool:
    return bool(dataset) and (root / dataset).is_dir()


@register_reader("hf")
class HFReader:
    """Hugging Face datasets: a hub dataset by name (streamed), or parquet, arrow or save_to_disk data on disk."""

    panoptic = False  # per instance: True when the columns are panoptic

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, dataset: str = "", config: str | None = None,
                 revision: str | None = None, data_files: str | None = None, columns: dict[str, str] | None = None,
                 label_offset: int = 0, ignore_values: list[int] | None = None, categories: str | None = None,
                 limit: int | None = None) -> None:
        self.root, self.split, self.vocabulary = Path(root), split, vocabulary
        self.columns = {"image": "image", **({} if "panoptic" in (columns or {}) else {"label": "label"}),
                        **(columns or {})}
        self.panoptic = "panoptic" in self.columns
        needed = PANOPTIC_COLUMNS if self.panoptic else SEMANTIC_COLUMNS
        if self.panoptic:
            self.columns.setdefault("segments_info", "segments_info")
        unknown = set(self.columns) - {*SEMANTIC_COLUMNS, *PANOPTIC_COLUMNS, "file_name"}
        if unknown:
            raise DataError(f"hf reader: option 'columns' has unknown key(s) {sorted(unknown)}; expected image and "
                            "label (semantic) or image, panoptic and segments_info (panoptic), and file_name")
        self.needed = needed
        # the categories json (when given) is read first: it is small, and its errors are the likelier ones
        cats = load_categories(self.root / categories.format(split=split)) if self.panoptic and categories else None
        self.layout, self.where, self.rows = self._open_rows(dataset, config, revision, data_files, limit)
        self.dataset_name = dataset.rstrip("/").split("/")[-1] if dataset and not _is_local(self.root, dataset) \
            else self.root.name
        self._length = min(len(self.rows), limit) if limit else len(self.rows)
        if self.panoptic:
            self._class_of = self._categories(cats)
        else:
            given = ignore_values is not None
            self.ignore_values = tuple(ignore_values if given else (PNG_IGNORE,))
            if not given:
                check_default_ignore("hf reader", self.ignore_values, label_offset, vocabulary)
            self._lut = value_lut(65536, int(label_offset), self.ignore_values, len(vocabulary))

    # -- where the rows are --------------------------------------------------------------------------------------

    def _open_rows(self, dataset: str, config: str | None, revision: str | None, data_files: str | None,
                   limit: int | None) -> tuple[str, str, ShardedStream | TableRows]:
        kind, target = self.locate(self.root, self.split, dataset, data_files)
        if kind == "hub":
            stream = hub_stream(dataset, config, self.split, revision, limit)
            self._features = stream._stream.features
            return f"hub dataset {dataset!r} (streamed)", stream.where, stream
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root does not exist; expected {target}")
        if kind == "files":
            pattern = str(target)
            files = sorted(self.root.glob(pattern))
            if not files:
                raise DataError(f"{self.root / pattern}: no parquet file matches (nor an .arrow one); expected "
                                f"parquet or arrow files (option 'data_files', a glob under {self.root})")
            suffixes = {f.suffix for f in files}
            if suffixes == {".parquet"}:
                rows: ShardedStream | TableRows = parquet_stream(files, str(self.root / pattern))
                import datasets
                import pyarrow.parquet as pq

                self._features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
                return f"{len(files)} parquet file(s) (streamed, one shard per row group)", str(self.root / pattern), \
                    rows
            if suffixes == {".arrow"}:
                rows = TableRows(files, self.split, str(self.root / pattern), folder=False)
                self._features = rows.features
                return f"{len(files)} arrow file(s) (memory-mapped)", str(self.root / pattern), rows
            raise DataError(f"{self.root / pattern}: matches {sorted(suffixes)} files; expected .parquet or .arrow")
        folder = Path(target)
        if not (folder / "state.json").is_file() and not (folder / "dataset_dict.json").is_file():
            raise DataError(f"{folder}: not a save_to_disk folder (no state.json or dataset_dict.json); give option "
                            "'dataset' (a folder under root, or a hub name) or 'data_files' (a glob)")
        rows = TableRows([folder], self.split, str(folder), folder=True)
        self._features = rows.features
        return "save_to_disk folder (memory-mapped)", str(folder), rows

    @staticmethod
    def locate(root: Path, split: str, dataset: str = "", data_files: str | None = None) -> tuple[str, Any]:
        """``("files", glob)``, ``("folder", path)`` or ``("hub", name)``: where the options say the rows are."""
        if data_files:
            return "files", data_files.format(split=split)
        if dataset and not _is_local(Path(root), dataset):
            return "hub", dataset
        return "folder", Path(root) / dataset if dataset else Path(root)

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None, dataset: str = "",
                        data_files: str | None = None, categories: str | None = None,
                        **_: Any) -> list[LayoutEntry]:
        kind, target = cls.locate(Path(root), split, dataset, data_files)
        extra = [LayoutEntry(Path(root) / categories, "categories json", kind="file")] if categories else []
        if kind == "hub":
            return extra  # nothing to find on disk: the stream is opened when the first sample is read
        if kind == "files":
            return [LayoutEntry(Path(root) / Path(target).parent, f"parquet or arrow files '{Path(target).name}'"),
                    *extra]
        return [LayoutEntry(target, "save_to_disk folder (state.json or dataset_dict.json)"), *extra]

    @classmethod
    def layout_found(cls, root: Path, split: str, vocabulary: Vocabulary | None = None, dataset: str = "",
                     data_files: str | None = None, **_: Any) -> str:
        kind, target = cls.locate(Path(root), split, dataset, data_files)
        return {"hub": f"hub dataset {target!r}, streamed", "files": f"files {target!r} under the root",
                "folder": f"save_to_disk folder {target}"}[kind]

    def _categories(self, cats: list[dict[str, Any]] | None) -> dict[int, int | None]:
        if cats is None:
            names = feature_class_names(self._features, self.columns["segments_info"])
            if names is None:
                raise DataError(f"{self.where}: column {self.columns['segments_info']!r} has no ClassLabel "
                                "'category_id' feature naming the categories; set option 'categories' to a json "
                                "with the COCO 'categories' list (under the root)")
            cats = [{"id": i, "name": n} for i, n in enumerate(names)]
        return vocabulary_classes(cats, self.vocabulary)

    # -- samples ---------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        check_index(index, len(self), self.where, "rows")
        index %= len(self)
        row = self.rows.row(index)
        where = f"{self.where} row {index}"
        for key in self.needed:
            if self.columns[key] not in row:
                raise DataError(f"{where}: column {self.columns[key]!r} missing; columns: {sorted(row)}")
        rgb = decode_cell(row[self.columns["image"]], where, self.columns["image"])
        name = row.get(self.columns.get("file_name", "file_name")) or f"{index:06d}"
        file_id = Path(str(name)).stem
        if not self.panoptic:
            column = self.columns["label"]
            data = cell_bytes(row[column], where, column)
            raw = np.asarray(data).astype(np.int64) if isinstance(data, Image.Image) else \
                decode_label_map(data, where, f"column {column!r}")
            if raw.shape != rgb.shape[:2]:
                raise DataError(f"{where}: label map is {raw.shape[1]}×{raw.shape[0]} (W×H) but the image is "
                                f"{rgb.shape[1]}×{rgb.shape[0]}; expected the same size")
            semantic = apply_lut(raw, self._lut, Path(where), len(self.vocabulary))
            return semantic_sample(rgb, semantic, self.dataset_name, file_id, where)
        pan = decode_cell(row[self.columns["panoptic"]], where, self.columns["panoptic"])
        if pan.shape != rgb.shape:
            raise DataError(f"{where}: panoptic PNG is {pan.shape[1]}×{pan.shape[0]} (W×H) but the image is "
                            f"{rgb.shape[1]}×{rgb.shape[0]}; expected the same size")
        info = row[self.columns["segments_info"]]
        if isinstance(info, str):
            info = jsonlib.loads(info)
        if isinstance(info, dict):  # the dict-of-lists form of a Sequence of dicts
            info = [dict(zip(info, values, strict=True)) for values in zip(*info.values(), strict=True)]
        maps = panoptic_maps(decode_panoptic_ids(pan), segments_info(info, self._class_of, where), where,
                             f"column {self.columns['segments_info']!r}")
        return panoptic_sample(rgb, maps.semantic(), maps.segments, maps.classes, maps.crowd, self.dataset_name,
                               file_id, where)
