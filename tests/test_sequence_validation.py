"""Sequence YAMLs are checked where they are read (each error one line naming file, task and field), data check
and the start of a run open real samples, and a run's identity follows the sequence's content, not its name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fixtures.make_fixtures import shared_fixture_root

from bench.errors import ConfigError
from bench.run import build_config, run, run_dir
from datamodules.check import check_sequence, preflight
from datamodules.contract import DataError
from datamodules.sequence import load_sequence
from datamodules.vocabulary import Vocabulary

VOCAB = Path(__file__).resolve().parents[1] / "tasks" / "vocab"
SYNTH = {"park": 1, "beach": 2, "city": 3}
SMALL = ("METHOD=zeroshot", "adapt_limit=4", "eval_limit=2", "progress=false", "wandb=false")


def _task(name: str, extra: str = "", adapt: str = "{split: train}") -> str:
    return (f"  - name: {name}\n    format: synth\n    root: \"{{cache}}/synth-v1/{name}\"\n"
            f"    vocabulary: {VOCAB / f'synth-{name}.txt'}\n    adapt: {adapt}\n    eval: {{split: val}}\n"
            f"    options: {{scene_seed: {SYNTH[name]}}}\n{extra}")


def _seq(tmp_path: Path, *tasks: str, name: str = "mine", file: str = "mine.yaml") -> Path:
    path = tmp_path / file
    head = f"name: {name}\n" if name else ""
    path.write_text(f"{head}defaults:\n  model: {{name: tiny-random}}\n"
                    "  proposals: {kind: superpixel, n_segments: 64}\ntasks:\n" + "".join(tasks))
    return path


def test_misspelt_field_is_refused_with_a_suggestion(tmp_path: Path) -> None:
    """``clases:`` used to be ignored: the task silently kept its whole vocabulary."""
    path = _seq(tmp_path, _task("park", "    clases: [sky, ball]\n"))
    with pytest.raises(DataError) as info:
        load_sequence(str(path))
    assert str(info.value).startswith(f"{path}: task 'park': unknown field 'clases' (did you mean 'classes'?)")
    assert "\n" not in str(info.value)
    top = tmp_path / "top.yaml"
    top.write_text(path.read_text().replace("tasks:", "task:"))
    with pytest.raises(DataError, match=r"top.yaml: unknown field 'task' \(did you mean 'tasks'\?\)"):
        load_sequence(str(top))
    split = _seq(tmp_path, _task("park", adapt="{split: train, limt: 3}"), file="split.yaml")
    with pytest.raises(DataError, match=r"task 'park': field 'adapt': unknown field 'limt' \(did you mean 'limit'"):
        load_sequence(str(split))


@pytest.mark.parametrize("limit", ["abc", "-1", "true", "2.5"])
def test_limit_must_be_a_non_negative_integer(tmp_path: Path, limit: str) -> None:
    path = _seq(tmp_path, _task("park", adapt=f"{{split: train, limit: {limit}}}"))
    with pytest.raises(DataError, match=rf"^{path}: task 'park': field 'adapt.limit' must be an integer >= 0 "):
        load_sequence(str(path))


def test_missing_and_mistyped_fields_name_file_task_and_field(tmp_path: Path) -> None:
    path = _seq(tmp_path, _task("park").replace("    format: synth\n", ""))
    with pytest.raises(DataError, match=rf"^{path}: task 'park': missing field 'format'$"):
        load_sequence(str(path))
    path = _seq(tmp_path, _task("park").replace("eval: {split: val}", "eval: 5"))
    with pytest.raises(DataError, match=r"task 'park': field 'eval' must be a split name or \{split: NAME"):
        load_sequence(str(path))


def test_unknown_class_names_the_yaml_the_task_and_the_class(tmp_path: Path) -> None:
    path = _seq(tmp_path, _task("park", "    classes: [sky, bal]\n"))
    with pytest.raises(DataError) as info:
        load_sequence(str(path))
    assert str(info.value) == (f"{path}: task 'park': field 'classes': class 'bal' is not in the vocabulary file "
                               f"{VOCAB / 'synth-park.txt'} (7 classes); did you mean 'ball'?")


@pytest.mark.parametrize("encoding", ["bom", "crlf", "bom+crlf", "cr"])
def test_vocabulary_with_bom_or_windows_line_ends(tmp_path: Path, encoding: str) -> None:
    text = "wall\tstuff\nfloor\tstuff\nchair\tthing\n"
    if "crlf" in encoding:
        text = text.replace("\n", "\r\n")
    if encoding == "cr":
        text = text.replace("\n", "\r")
    data = text.encode("utf-8")
    (tmp_path / "v.txt").write_bytes(b"\xef\xbb\xbf" + data if "bom" in encoding else data)
    vocab = Vocabulary.from_file(tmp_path / "v.txt")
    assert vocab.classes == ("wall", "floor", "chair") and vocab.is_thing == (False, False, True)
    seq = tmp_path / "s.yaml"
    seq.write_bytes(b"\xef\xbb\xbf" + b"tasks:\r\n  - {name: a, format: ade20k, root: x, vocabulary: v.txt, "
                    b"classes: [wall, chair], adapt: train, eval: val}\r\n")
    spec = load_sequence(str(seq))
    assert spec.tasks[0].vocabulary.classes == ("wall", "chair") and spec.tasks[0].class_ids == (0, 2)
    # The same label space saved by another editor is the same content, so the same run.
    (tmp_path / "v.txt").write_text("wall\tstuff\nfloor\tstuff\nchair\tthing\n")
    assert load_sequence(str(seq)).content_hash() == spec.content_hash()


def test_sequence_name_cannot_leave_the_output_folder(tmp_path: Path) -> None:
    for bad in ("../../x", "a/b", ".hidden", "..", "/abs"):
        path = _seq(tmp_path, _task("park"), name=f"'{bad}'")
        with pytest.raises(DataError, match=rf"{path}: field 'name' must be a safe folder name .*got '{bad}'"):
            load_sequence(str(path))
    # Without a name the file's stem names the sequence, made safe.
    spec = load_sequence(str(_seq(tmp_path, _task("park"), name="", file="my seq (v2).yaml")))
    assert spec.name == "my-seq--v2-"
    cfg, spec = build_config([f"SEQ={tmp_path / 'my seq (v2).yaml'}", f"output_dir={tmp_path / 'out'}",
                              "MODEL=hf-hub:org/model"])
    out = run_dir(cfg, spec)
    assert out.parent.parent.parent == tmp_path / "out" and out.name.startswith("hf-hub-org-model-")
    cfg.run_id = "../elsewhere"
    with pytest.raises(ConfigError, match=r"RUN_ID must be one folder name .*got '\.\./elsewhere'"):
        run_dir(cfg, spec)


@pytest.fixture
def coco_copy(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of the COCO panoptic fixture and a one-task sequence over it."""
    shutil.copytree(shared_fixture_root(tmp_path_factory) / "coco", tmp_path / "data" / "coco")
    seq = tmp_path / "coco.yaml"
    seq.write_text(f"name: coco-mine\ntasks:\n  - name: coco\n    format: coco_panoptic\n    root: coco\n"
                   f"    vocabulary: {VOCAB / 'coco133.txt'}\n    adapt: train2017\n    eval: val2017\n")
    return tmp_path / "data", seq


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(bench.models, "build_base", refuse)


def test_data_check_finds_a_truncated_eval_json_without_a_model(coco_copy, monkeypatch, capsys) -> None:
    from bench.cli import main

    _no_model(monkeypatch)
    data, seq = coco_copy
    json_path = data / "coco" / "annotations" / "panoptic_val2017.json"
    json_path.write_text(json_path.read_text()[:200])
    report = check_sequence(load_sequence(str(seq)), data)[0]
    assert report.splits[0].ok and report.splits[0].samples == 2
    assert "panoptic_val2017.json" in report.splits[1].error and "not valid JSON" in report.splits[1].error
    assert main(["data", "check", f"SEQ={seq}", f"DATA_ROOT={data}"]) == 1
    assert "0/1 tasks ready" in capsys.readouterr().out


def test_data_check_reads_the_first_sample(coco_copy) -> None:
    """Paths present and json valid, but the first eval image is not an image: found before a run."""
    data, seq = coco_copy
    doc = json.loads((data / "coco" / "annotations" / "panoptic_val2017.json").read_text())
    first = data / "coco" / "val2017" / doc["images"][0]["file_name"]
    first.write_bytes(b"not a jpeg")
    report = check_sequence(load_sequence(str(seq)), data)[0]
    assert report.splits[0].ok and report.splits[1].error and first.name in report.splits[1].error


def test_run_stops_at_a_broken_eval_file_before_the_model(coco_copy, monkeypatch, tmp_path: Path) -> None:
    _no_model(monkeypatch)
    data, seq = coco_copy
    json_path = data / "coco" / "annotations" / "panoptic_val2017.json"
    json_path.write_text(json_path.read_text()[:200])
    with pytest.raises(DataError, match=rf"^{seq}: task 'coco', eval split 'val2017': .*panoptic_val2017.json"):
        preflight(load_sequence(str(seq)), data)
    cfg, spec = build_config([f"SEQ={seq}", f"DATA_ROOT={data}", f"output_dir={tmp_path / 'out'}", *SMALL])
    with pytest.raises(DataError, match="panoptic_val2017.json"):
        run(cfg, spec)


def test_content_hash_follows_content_not_notes(tmp_path: Path) -> None:
    base = load_sequence(str(_seq(tmp_path, _task("park"))))
    notes = load_sequence(str(_seq(tmp_path, _task("park", "    about: \"what it tests\"\n"), name="other")))
    assert notes.content_hash() == base.content_hash()
    for edit in (_task("park", "    classes: [sky, ball]\n"), _task("park", adapt="{split: train, limit: 3}"),
                 _task("park").replace("scene_seed: 1", "scene_seed: 9"), _task("park") + _task("beach")):
        assert load_sequence(str(_seq(tmp_path, edit))).content_hash() != base.content_hash(), edit


def test_edited_classes_start_a_new_run(tmp_path: Path) -> None:
    path = _seq(tmp_path, _task("park"), _task("beach"))
    args = [f"SEQ={path}", f"output_dir={tmp_path / 'out'}", "max_steps=1", *SMALL]
    first = run(*build_config(args))
    assert first.sequence_content["park"]["classes"] == "all"
    _seq(tmp_path, _task("park", "    classes: [sky, grass, ball]\n"), _task("beach"))
    second = run(*build_config(args))
    assert second.steps_done == 1 and second.vocabulary_sizes == [3, 7]  # a fresh run, not a resumed one
    assert len(list((tmp_path / "out" / "mine" / "zeroshot").iterdir())) == 2
    assert second.sequence_hash != first.sequence_hash


def test_fixed_run_id_with_edited_sequence_is_refused(tmp_path: Path) -> None:
    path = _seq(tmp_path, _task("park"), _task("beach"))
    args = [f"SEQ={path}", f"output_dir={tmp_path / 'out'}", "max_steps=1", "RUN_ID=fixed", *SMALL]
    run(*build_config(args))
    _seq(tmp_path, _task("park", "    classes: [sky, grass, ball]\n"), _task("beach", adapt="{split: train, limit: 3}"))
    with pytest.raises(ConfigError, match=r"other contents of sequence 'mine' \(task 'park': classes changed; "
                                          r"task 'beach': adapt changed;"):
        run(*build_config(args))
    _seq(tmp_path, _task("park"), _task("beach"), _task("city"))
    with pytest.raises(ConfigError, match=r"\(task 'city' added;"):
        run(*build_config(args))


def test_appended_task_runs_as_a_new_run(tmp_path: Path) -> None:
    """Used to resume the finished one-task run into a two-task matrix and end in IndexError."""
    path = _seq(tmp_path, _task("park"))
    args = [f"SEQ={path}", f"output_dir={tmp_path / 'out'}", *SMALL]
    one = run(*build_config(args))
    assert one.complete and one.tasks == ["park"]
    _seq(tmp_path, _task("park"), _task("beach"))
    two = run(*build_config(args))
    assert two.complete and two.tasks == ["park", "beach"] and len(two.matrix["miou"]) == 2
    assert two.matrix["miou"][0][0] == one.matrix["miou"][0][0]  # same data, same seed: the same first cell
