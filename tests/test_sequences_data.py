"""Shipped sequences, class subsets per step, a user's own YAML and ``data check`` on the fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures.make_fixtures import shared_fixture_root, vocab

from datamodules.check import check_sequence, format_check
from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.sequence import TaskDataset, list_sequences, load_sequence, restrict_sample

EXPECTED_STEPS = {
    "ade-100-50": [(0, 100), (100, 150)],
    "ade-100-10": [(0, 100), (100, 110), (110, 120), (120, 130), (130, 140), (140, 150)],
    "ade-50-50": [(0, 50), (50, 100), (100, 150)],
    "coco-83-5": [(0, 83), *[(a, a + 5) for a in range(83, 133, 5)]],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_fixture_root(tmp_path_factory)


def test_shipped_sequences_parse() -> None:
    names = set(list_sequences())
    assert {"ade-coco-lvis", "ade150-pc459-ade847", "synth", *EXPECTED_STEPS} <= names
    sizes = [len(t.vocabulary) for t in load_sequence("ade-coco-lvis").tasks]
    assert sizes == [150, 133, 1203]
    assert [len(t.vocabulary) for t in load_sequence("ade150-pc459-ade847").tasks] == [150, 459, 847]


@pytest.mark.parametrize("name", sorted(EXPECTED_STEPS))
def test_class_incremental_class_sets(name: str) -> None:
    spec = load_sequence(name)
    full = vocab("coco133" if name.startswith("coco") else "ade150")
    assert [(t.class_ids[0], t.class_ids[-1] + 1) for t in spec.tasks] == EXPECTED_STEPS[name]
    seen: list[str] = []
    for task, (a, b) in zip(spec.tasks, EXPECTED_STEPS[name]):
        assert task.vocabulary.classes == full.classes[a:b]
        assert task.vocabulary.is_thing == full.is_thing[a:b]
        assert task.dataset_vocabulary.classes == full.classes
        seen += task.vocabulary.classes
    assert seen == list(full.classes)  # disjoint steps covering the label space, in order


def test_class_subset_samples_on_fixture(data: Path) -> None:
    """ade-100-10 step 2 (classes 100..109): raw ADE value 101 (class 100) → local 0, all else ignore."""
    task = load_sequence("ade-100-10").tasks[1]
    ds = TaskDataset(task, task.adapt, data)
    s = ds[0]  # ADE_train_00000001: sky, person, class 100 block at rows 30:40, cols 40:60
    assert int(s["semantic"][35, 50]) == 0 and int(s["semantic"][0, 0]) == IGNORE_INDEX
    assert s["segment_classes"].tolist() == [0] and int(s["segments"].max()) == 1
    assert set(torch.unique(s["semantic"]).tolist()) == {0, IGNORE_INDEX}
    coco = load_sequence("coco-83-5").tasks[0]  # things (and 3 stuff): the crowd person stays, as crowd
    s = TaskDataset(coco, coco.eval, data)[0]
    assert s["segment_iscrowd"].tolist() == [False, False, True]


def test_restrict_sample_renumbers_segments() -> None:
    sample = {"semantic": torch.tensor([[0, 1], [2, IGNORE_INDEX]]), "segments": torch.tensor([[1, 2], [3, 0]]),
              "segment_classes": torch.tensor([0, 1, 2]), "segment_iscrowd": torch.tensor([False, True, False])}
    out = restrict_sample(sample, (2, 1), 3)
    assert out["semantic"].tolist() == [[IGNORE_INDEX, 1], [0, IGNORE_INDEX]]
    assert out["segments"].tolist() == [[0, 1], [2, 0]]
    assert out["segment_classes"].tolist() == [1, 0] and out["segment_iscrowd"].tolist() == [True, False]


def _yaml(tmp_path: Path, body: str) -> str:
    (tmp_path / "v.txt").write_text("sky\tstuff\nperson\tthing\ncar\tthing\n")
    path = tmp_path / "mine.yaml"
    path.write_text(body)
    return str(path)


def test_classes_forms_and_errors(tmp_path: Path) -> None:
    base = "tasks:\n  - {name: a, format: ade20k, root: x, vocabulary: v.txt, adapt: train, eval: val, %s}\n"
    for form, expected in (("classes: [car, sky]", ("car", "sky")), ("classes: [1]", ("person",)),
                           ("classes: {start: 1, stop: 3}", ("person", "car")), ("num_classes: 3", None)):
        task = load_sequence(_yaml(tmp_path, base % form)).tasks[0]
        assert task.vocabulary.classes == (expected or ("sky", "person", "car"))
    for form, msg in (("classes: {start: 2, stop: 9}", r"slice \[2, 9\)"), ("classes: [boat]", "'boat'"),
                      ("classes: [5]", "index 5"), ("classes: 3", "expected"),
                      ("num_classes: 150", "3 classes, but .* expects num_classes: 150")):
        with pytest.raises(DataError, match=msg):
            load_sequence(_yaml(tmp_path, base % form))


def test_users_own_yaml_over_fixture_data(data: Path, tmp_path: Path) -> None:
    """A sequence over the fixtures in two formats, written by a user: no code involved."""
    (tmp_path / "cs.txt").write_text((Path(__file__).parents[1] / "tasks/vocab/cityscapes19.txt").read_text())
    (tmp_path / "pc.txt").write_text((Path(__file__).parents[1] / "tasks/vocab/pc59.txt").read_text())
    path = tmp_path / "my-seq.yaml"
    path.write_text(f"""
name: my-seq
tasks:
  - name: streets
    format: cityscapes
    root: {data / 'cityscapes'}
    vocabulary: cs.txt
    classes: [road, car, person]
    adapt: train
    eval: {{split: val, limit: 1}}
  - name: context
    format: pascal_context
    root: pascal_ctx_d2
    vocabulary: pc.txt
    adapt: {{split: training, limit: 1}}
    eval: validation
""")
    spec = load_sequence(str(path))
    streets = TaskDataset(spec.tasks[0], spec.tasks[0].adapt, data)
    s = streets[0]
    assert [spec.tasks[0].vocabulary.classes[c] for c in s["segment_classes"].tolist()] == [
        "road", "person", "car", "car"]
    assert len(TaskDataset(spec.tasks[1], spec.tasks[1].adapt, data)) == 1
    reports = check_sequence(spec, data)
    assert all(r.ok for r in reports) and [s.samples for s in reports[0].splits] == [2, 1]


def test_data_check_reports_missing_and_present(data: Path, tmp_path: Path) -> None:
    spec = load_sequence("ade-coco-lvis")
    ok = check_sequence(spec, data)
    assert all(r.ok for r in ok)
    assert [[s.samples for s in r.splits] for r in ok] == [[2, 2], [2, 2], [1, 3]]
    missing = check_sequence(spec, tmp_path)
    assert not any(r.ok for r in missing)
    text = format_check(missing, spec)
    assert f"MISSING {tmp_path / 'ADEChallengeData2016/images/training'}" in text
    assert f"MISSING {tmp_path / 'coco/annotations/panoptic_val2017.json'}" in text
    assert "0/3 tasks ready" in text
    # a present layout with bad content is reported, not raised
    (tmp_path / "lvis").mkdir()
    (tmp_path / "coco").mkdir()
    (tmp_path / "lvis" / "lvis_v1_val.json").write_text("{")
    report = check_sequence(spec, tmp_path)[2]
    assert "not valid JSON" in report.splits[1].error and report.splits[0].missing


def test_datasets_built_once_per_task_and_split(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps reuse the datasets built when first asked for, and the steps of a class-incremental sequence share
    the reader of their dataset split: each COCO json is parsed once per run, however many steps read it."""
    from datamodules import SequenceDataModule
    from datamodules.coco_panoptic import CocoPanopticReader

    opened: list[str] = []
    init = CocoPanopticReader.__init__

    def counting_init(self, *args, **kwargs) -> None:
        opened.append(kwargs["split"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(CocoPanopticReader, "__init__", counting_init)
    spec = load_sequence("coco-83-5")
    dm = SequenceDataModule(spec, data)
    steps = 4
    for t in range(steps):  # what the run flow asks of the datamodule at each step
        dm.set_step(t)
        assert len(dm.predict_dataloader().dataset) == len(dm.adapt_dataset(t)) == 2
        assert [loader.dataset for loader in dm.test_dataloader()] == [dm.eval_dataset(j) for j in range(t + 1)]
        assert all(dm.eval_dataset(j).panoptic for j in range(t + 1))
    assert sorted(opened) == ["train2017", "val2017"]
    assert len({id(dm.adapt_dataset(t)) for t in range(steps)} | {id(dm.eval_dataset(t)) for t in range(steps)}) == 8
    # A shared reader changes nothing: each task still relabels to its own classes.
    for t in range(steps):
        alone = TaskDataset(spec.tasks[t], spec.tasks[t].eval, data)
        for key in ("semantic", "segments", "segment_classes", "segment_iscrowd"):
            assert torch.equal(dm.eval_dataset(t)[0][key], alone[0][key]), (t, key)
