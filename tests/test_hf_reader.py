"""The ``hf`` reader: the same samples as the native readers on the same data saved as a local ``datasets``
dataset (semantic: ADE20K, panoptic: COCO), parquet streamed one row group per shard, DataLoader workers that
each open only their own shards, the hub call's arguments (mocked), and its errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from unittest import mock

import pytest
import torch
from fixtures.make_fixtures import coco_rows, shared_fixture_root, vocab

from datamodules.ade20k import ADE20KReader
from datamodules.coco_panoptic import CocoPanopticReader
from datamodules.contract import DataError
from datamodules.hf import HFReader
from datamodules.hf_rows import ShardedStream
from datamodules.registry import get_reader

KEYS = ("image", "semantic", "segments", "segment_classes", "segment_iscrowd")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def assert_same(a: dict, b: dict) -> None:
    for key in KEYS:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert a["meta"]["file_id"] == b["meta"]["file_id"] and a["meta"]["size"] == b["meta"]["size"]


def ade_rows(data: Path, split: str = "validation", repeat: int = 1) -> dict[str, list]:
    base = data / "ADEChallengeData2016"
    rows: dict[str, list] = {"image": [], "label": [], "file_name": []}
    for _ in range(repeat):
        for image in sorted((base / "images" / split).glob("*.jpg")):
            rows["image"].append({"bytes": image.read_bytes(), "path": None})
            rows["label"].append({"bytes": (base / "annotations" / split / f"{image.stem}.png").read_bytes(),
                                  "path": None})
            rows["file_name"].append(image.name)
    return rows


def semantic_dataset(rows: dict[str, list]):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Image(),
                                  "file_name": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


def coco_dataset(data: Path, split: str = "val2017"):
    """The COCO fixture split with ``category_id`` a ClassLabel (contiguous indices, names from the json)."""
    import datasets

    coco = data / "coco"
    categories = json.loads((coco / "annotations" / f"panoptic_{split}.json").read_text())["categories"]
    index = {c["id"]: i for i, c in enumerate(categories)}
    rows, doc = coco_rows(coco, split, lambda s: {"id": s["id"], "category_id": index[s["category_id"]],
                                                  "iscrowd": s["iscrowd"]})
    names = datasets.ClassLabel(names=[c["name"] for c in doc["categories"]])
    features = datasets.Features({
        "image": datasets.Image(), "panoptic": datasets.Image(), "file_name": datasets.Value("string"),
        "segments_info": [{"id": datasets.Value("int64"), "category_id": names, "iscrowd": datasets.Value("int64")}]})
    return datasets.Dataset.from_dict(rows, features=features)


ADE_OPTIONS = {"label_offset": 1, "ignore_values": []}  # ADE20K: value v = class v-1, 0 = other (ignore)


def test_semantic_save_to_disk_equals_native(data: Path, tmp_path: Path) -> None:
    semantic_dataset(ade_rows(data)).save_to_disk(str(tmp_path / "ade"))
    v = vocab("ade150")
    native = ADE20KReader(data / "ADEChallengeData2016", "validation", v)
    hf = get_reader("hf")(root=tmp_path, split="validation", vocabulary=v, dataset="ade", **ADE_OPTIONS)
    assert len(hf) == len(native) == 2 and not hf.panoptic
    for i in range(len(native)):
        assert_same(hf[i], native[i])
    assert "save_to_disk" in hf.layout


def test_panoptic_save_to_disk_equals_native_names_from_features(data: Path, tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"val2017": coco_dataset(data)}).save_to_disk(str(tmp_path / "coco"))
    v = vocab("coco133")
    native = CocoPanopticReader(data / "coco", "val2017", v)
    hf = HFReader(tmp_path / "coco", "val2017", v, columns={"panoptic": "panoptic"})
    assert hf.panoptic and len(hf) == len(native) == 2
    for i in range(2):
        assert_same(hf[i], native[i])
    assert any(hf[i]["segment_iscrowd"].any() for i in range(2))
    with pytest.raises(DataError, match="no split 'train2017'"):
        HFReader(tmp_path / "coco", "train2017", v, columns={"panoptic": "panoptic"})


def test_parquet_row_groups_are_shards_and_arrow_files(data: Path, tmp_path: Path) -> None:
    ds = semantic_dataset(ade_rows(data, repeat=3))  # 6 rows
    (tmp_path / "validation").mkdir()
    ds.to_parquet(str(tmp_path / "validation" / "part-0.parquet"), batch_size=2)  # 3 row groups of 2
    v = vocab("ade150")
    hf = HFReader(tmp_path, "validation", v, data_files="{split}/*.parquet", **ADE_OPTIONS)
    assert isinstance(hf.rows, ShardedStream) and hf.rows.shard_rows == [2, 2, 2] and len(hf) == 6
    native = ADE20KReader(data / "ADEChallengeData2016", "validation", v)
    assert_same(hf[5], native[1])
    assert_same(hf[0], native[0])  # going back reopens shard 0 only
    assert hf.rows.shards_opened == [2, 0]
    assert_same(pickle.loads(pickle.dumps(hf))[3], native[1])
    assert len(HFReader(tmp_path, "validation", v, data_files="{split}/*.parquet", limit=4, **ADE_OPTIONS)) == 4
    arrow = tmp_path / "arrow"
    ds.save_to_disk(str(arrow))
    hf_arrow = HFReader(tmp_path, "validation", v, data_files="arrow/*.arrow", **ADE_OPTIONS)
    assert len(hf_arrow) == 6 and "arrow" in hf_arrow.layout
    assert_same(hf_arrow[4], native[0])


def _loader_order(reader: HFReader, workers: int, log: Path | None = None) -> list[str]:
    loader = torch.utils.data.DataLoader(reader, batch_size=2, num_workers=workers, collate_fn=list,
                                         multiprocessing_context="fork" if workers else None)
    return [s["meta"]["file_id"] + f"@{int(s['semantic'].sum())}" for batch in loader for s in batch]


def test_workers_read_their_own_shards_in_one_order(data: Path, tmp_path: Path) -> None:
    rows = ade_rows(data, repeat=4)  # 8 rows, distinct names so that the order is visible
    rows["file_name"] = [f"{i:02d}_{n}" for i, n in enumerate(rows["file_name"])]
    (tmp_path / "val").mkdir()
    semantic_dataset(rows).to_parquet(str(tmp_path / "val" / "p.parquet"), batch_size=2)
    reader = HFReader(tmp_path, "val", vocab("ade150"), data_files="{split}/*.parquet", **ADE_OPTIONS)
    log = tmp_path / "opened"
    log.mkdir()
    real_open = ShardedStream._open

    def logged_open(self: ShardedStream, shard: int, offset: int) -> None:
        import os

        with open(log / str(os.getpid()), "a") as f:
            f.write(f"{shard}\n")
        real_open(self, shard, offset)

    with mock.patch.object(ShardedStream, "_open", logged_open):
        one = _loader_order(reader, 0)
        for f in log.iterdir():
            f.unlink()
        two = _loader_order(reader, 2)
    assert one == two and len(one) == 8
    opened = {f.name: [int(x) for x in f.read_text().split()] for f in log.iterdir()}
    assert len(opened) == 2  # two worker processes
    every = sorted(s for shards in opened.values() for s in shards)
    assert every == [0, 1, 2, 3]  # each shard opened once, by one worker: no worker reads the whole stream
    limited = HFReader(tmp_path, "val", vocab("ade150"), data_files="{split}/*.parquet", limit=5, **ADE_OPTIONS)
    assert _loader_order(limited, 2) == _loader_order(limited, 0) == one[:5]


def test_hub_name_arguments(data: Path, tmp_path: Path) -> None:
    import datasets

    v = vocab("ade150")
    rows = ade_rows(data)
    rows["segmentation"] = rows.pop("label")
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "segmentation": datasets.Image(), "file_name": datasets.Value("string")}))
    native = ADE20KReader(data / "ADEChallengeData2016", "validation", v)
    for shard_lengths in (None, [1, 1]):  # without and with the shard sizes in the dataset's card
        stream = ds.to_iterable_dataset(num_shards=2)
        info = datasets.SplitInfo(name="validation", num_examples=2, shard_lengths=shard_lengths)
        stream.info.splits = datasets.SplitDict({"validation": info})
        with mock.patch("datasets.load_dataset", return_value=stream) as load:
            hf = HFReader(tmp_path, "validation", v, dataset="1aurent/ADE20K", config="scene",
                          revision="abc123", columns={"label": "segmentation"}, **ADE_OPTIONS)
            assert_same(hf[1], native[1])
            assert_same(hf[0], native[0])
        load.assert_called_with("1aurent/ADE20K", "scene", split="validation", streaming=True, revision="abc123")
        assert len(hf) == 2 and hf.dataset_name == "ADE20K" and "hub" in hf.layout
        assert hf.rows.sharded == (shard_lengths is not None)
    assert HFReader.expected_layout(tmp_path, "validation", dataset="1aurent/ADE20K") == []


def test_hub_offline_not_cached_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        HFReader(tmp_path, "validation", vocab("ade150"), dataset="no-such-owner/no-such-dataset-x1", **ADE_OPTIONS)
    text = str(err.value)
    assert "\n" not in text and "HF_DATASETS_OFFLINE=1" in text and "no-such-owner/no-such-dataset-x1" in text


def test_errors_name_what_is_wrong(data: Path, tmp_path: Path) -> None:
    v = vocab("ade150")
    with pytest.raises(DataError, match="no parquet file matches"):
        HFReader(tmp_path, "val", v, data_files="{split}/*.parquet")
    with pytest.raises(DataError, match="not a save_to_disk folder"):
        HFReader(tmp_path, "val", v)
    with pytest.raises(DataError, match="unknown key"):
        HFReader(tmp_path, "val", v, columns={"mask": "m"})
    semantic_dataset(ade_rows(data)).save_to_disk(str(tmp_path / "ade"))
    with pytest.raises(DataError, match="column 'segmentation' missing"):
        HFReader(tmp_path, "validation", v, dataset="ade", columns={"label": "segmentation"}, **ADE_OPTIONS)[0]
    with pytest.raises(DataError, match="label value 150 maps past"):  # offset 0: value 150 is no ADE-150 class
        HFReader(tmp_path, "validation", v, dataset="ade", ignore_values=[])[0]
    with pytest.raises(DataError, match="ClassLabel"):
        HFReader(tmp_path, "validation", v, dataset="ade", columns={"panoptic": "label"})
