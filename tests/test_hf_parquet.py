"""The Hugging Face ``datasets`` source yields the same samples as the native COCO panoptic reader."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from fixtures.make_fixtures import shared_fixture_root, vocab

from datamodules.coco_panoptic import CocoPanopticReader
from datamodules.contract import DataError
from datamodules.hf_parquet import HFParquetPanopticReader
from datamodules.registry import get_reader
from datamodules.vocabulary import Vocabulary

KEYS = ("image", "semantic", "segments", "segment_classes", "segment_iscrowd")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def _assert_same(a: dict, b: dict) -> None:
    for key in KEYS:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert a["meta"]["file_id"] == b["meta"]["file_id"] and a["meta"]["size"] == b["meta"]["size"]


@pytest.mark.parametrize("vocabulary", [vocab("coco133"),
                                        Vocabulary.from_names("sub", ["car", "road", "person"], things=["car"])])
def test_parquet_equals_native(data: Path, vocabulary: Vocabulary) -> None:
    native = CocoPanopticReader(data / "coco", "val2017", vocabulary)
    hf = get_reader("hf_parquet")(root=data / "coco_parquet", split="val2017", vocabulary=vocabulary)
    assert len(hf) == len(native) == 2
    for i in range(len(native)):
        _assert_same(hf[i], native[i])
    assert any(native[i]["segment_iscrowd"].any() for i in range(2)) or vocabulary.name == "sub"


def test_cursor_goes_back_and_pickles(data: Path) -> None:
    v = vocab("coco133")
    hf = HFParquetPanopticReader(data / "coco_parquet", "val2017", v)
    second = hf[1]
    _assert_same(hf[0], CocoPanopticReader(data / "coco", "val2017", v)[0])  # restarts the stream
    _assert_same(pickle.loads(pickle.dumps(hf))[1], second)
    assert len(HFParquetPanopticReader(data / "coco_parquet", "val2017", v, limit=1)) == 1
    with pytest.raises(IndexError):
        hf[2]


def test_bad_parquet_inputs(data: Path, tmp_path: Path) -> None:
    v = vocab("coco133")
    with pytest.raises(DataError, match="no parquet file matches"):
        HFParquetPanopticReader(data / "coco_parquet", "train2017", v)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "part.parquet").write_bytes(b"PAR1 not really")
    (tmp_path / "categories.json").write_text('{"categories": [{"id": 1, "name": "person"}]}')
    with pytest.raises(DataError, match=r"part.parquet: not a readable parquet file"):
        HFParquetPanopticReader(tmp_path, "val", v)
    (tmp_path / "categories.json").write_text('{"categories": [{"id": 1, "na')
    with pytest.raises(DataError, match=r"categories.json: not valid JSON"):
        HFParquetPanopticReader(tmp_path, "val", v)
