"""OS errors, interruptions and concurrent commands end in one line naming the path, never in half a result.

The tests run as root, where a read-only folder is still writable, so permission and disk-full errors are made
by replacing the system call that would fail.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import RunInUseError
from bench.io import atomic_dir, lock_dir
from bench.methods.knn import MemoryWriter
from bench.run import build_config, run_dir

SMALL = ("SEQ=synth", "adapt_limit=8", "eval_limit=4", "progress=false", "wandb=false")
REPO = Path(__file__).resolve().parents[1]


def _args(out: Path, *extra: str) -> list[str]:
    return [*SMALL, f"output_dir={out}", *extra]


def _folder(out: Path, *extra: str) -> Path:
    return run_dir(*build_config(_args(out, *extra)))


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(bench.models, "build_base", refuse)


def _fail_fsync(monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """``os.fsync`` of a file whose name contains ``when`` fails as on a full disk."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if when in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _spy_adapt(monkeypatch: pytest.MonkeyPatch, interrupt_at: str | None = None) -> list[str]:
    adapted: list[str] = []
    original = MemoryWriter.__init__

    def spy(self, embedder, memory, vocabulary, *rest):
        adapted.append(vocabulary.name)
        if vocabulary.name == interrupt_at:
            raise KeyboardInterrupt
        return original(self, embedder, memory, vocabulary, *rest)

    monkeypatch.setattr(MemoryWriter, "__init__", spy)
    return adapted


# -- run --------------------------------------------------------------------------------------------------------
def test_an_unwritable_output_folder_stops_the_run_before_the_model_loads(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ro"
    folder = _folder(out)
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(out)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    _no_model(monkeypatch)
    code, err = _cli(capsys, "run", *_args(out))
    assert code == 2 and err == f"error: cannot create run folder {folder}: Permission denied\n"


def test_a_full_disk_while_drawing_heatmaps_leaves_the_record_incomplete_and_a_rerun_completes_it(
        tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path)
    with monkeypatch.context() as patch:
        _fail_fsync(patch, "heatmap-")
        code, err = _cli(capsys, "run", *_args(tmp_path))
    assert code == 2 and err == f"error: cannot write {folder}/heatmap-miou.png: No space left on device\n"
    record = json.loads((folder / "record.json").read_text())
    assert record["steps_done"] == 3 and not record["complete"]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".heatmap")]  # no temporary file left
    assert not list(folder.glob("heatmap-*.png"))

    adapted = _spy_adapt(monkeypatch)
    assert _cli(capsys, "run", *_args(tmp_path)) == (0, "")
    assert adapted == []  # nothing recomputed: only the artefacts were missing
    record = json.loads((folder / "record.json").read_text())
    assert record["complete"] and (folder / "heatmap-miou.png").stat().st_size > 0


def test_ctrl_c_says_how_to_resume_and_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        _spy_adapt(patch, interrupt_at="beach")
        code, err = _cli(capsys, "run", *_args(tmp_path))
    assert code == 130 and err.endswith("interrupted; rerun the same command to resume\n")
    adapted = _spy_adapt(monkeypatch)
    assert _cli(capsys, "run", *_args(tmp_path))[0] == 0  # the lock went with the interrupted command
    assert adapted == ["beach", "city"]


def test_a_second_command_on_a_run_in_use_names_the_process(tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path)
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom bench.io import lock_dir\n"
         "with lock_dir(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(120)\n", str(folder)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        _no_model(monkeypatch)
        code, err = _cli(capsys, "run", *_args(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    assert re.fullmatch(rf"error: {re.escape(str(folder))} is in use by process {holder.pid} \(started "
                        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or choose another RUN_ID\n", err), err
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_ddp_children_compute_under_their_parents_lock(tmp_path, monkeypatch):
    from bench.resume import claim

    with lock_dir(tmp_path):
        with pytest.raises(RunInUseError, match=rf"{os.getpid()}"):
            with claim(tmp_path):
                pass
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", "1")  # as Lightning starts the second process
        with claim(tmp_path):
            pass


def test_unavailable_hub_weights_are_one_line(tmp_path, capsys):
    code, err = _cli(capsys, "run", *_args(tmp_path, "EMBEDDER=dinov2", "embedder.name=vit_small_patch14_dinov2"))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: could not load pretrained weights for embedder vit_small_patch14_dinov2 "
                          "(HF_HUB_OFFLINE=1 is set): ")
    assert err.endswith("Random weights are never substituted; use embedder.kind=clip to run offline\n")


# -- eval --out -------------------------------------------------------------------------------------------------
@pytest.fixture
def sem(tmp_path: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    for folder in ("gt", "pred"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.array([[0, 1, 1]], dtype=np.uint8)).save(tmp_path / folder / "x.png")
    return ["eval", "semantic", "--gt-dir", str(tmp_path / "gt"), "--pred-dir", str(tmp_path / "pred"),
            "--num-classes", "2", "--quiet"]


def _no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.scoring

    def refuse(*args, **kwargs):
        raise AssertionError("scored")

    monkeypatch.setattr(bench.scoring, "evaluate_semantic", refuse)


def test_eval_out_into_a_read_only_folder_names_the_target_before_scoring(tmp_path, sem, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == ro:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(ro / ".miou.json.x1y2.tmp"))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    _no_scoring(monkeypatch)
    code, err = _cli(capsys, *sem, "--out", str(ro / "miou.json"))
    assert code == 2 and err == f"error: cannot write --out {ro}/miou.json: Permission denied\n"


def test_eval_out_on_a_full_disk_leaves_nothing(tmp_path, sem, monkeypatch, capsys):
    out = tmp_path / "results"
    _fail_fsync(monkeypatch, "miou.json")
    code, err = _cli(capsys, *sem, "--out", str(out / "miou.json"))
    assert code == 2 and err == f"error: cannot write {out}/miou.json: No space left on device\n"
    assert list(out.iterdir()) == []


def test_eval_out_that_is_a_folder_is_refused_before_scoring(tmp_path, sem, monkeypatch, capsys):
    _no_scoring(monkeypatch)
    code, err = _cli(capsys, *sem, "--out", str(tmp_path))
    assert code == 2 and err == (f"error: cannot write --out {tmp_path}: is a folder; give a file name such as "
                                 f"{tmp_path}/result.json\n")


def test_eval_out_under_a_file_is_refused_before_scoring(tmp_path, sem, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    _no_scoring(monkeypatch)
    code, err = _cli(capsys, *sem, "--out", str(tmp_path / "file" / "miou.json"))
    assert code == 2 and err == (f"error: cannot write --out {tmp_path}/file/miou.json: {tmp_path}/file is a file, "
                                 "not a folder\n")


# -- atomic folders under concurrency ----------------------------------------------------------------------------
def _write_folder(target: Path, tag: str) -> None:
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text(tag)
        (tmp / "b.txt").write_text(tag)


def _check_one_whole_folder(parent: Path) -> None:
    assert sorted(p.name for p in parent.iterdir()) == ["state"]  # nothing left aside or half-moved
    a, b = ((parent / "state" / name).read_text() for name in ("a.txt", "b.txt"))
    assert a == b  # both files from one writer


def test_atomic_dir_under_200_concurrent_threads(tmp_path):
    target, errors = tmp_path / "state", []

    def write(i: int) -> None:
        try:
            _write_folder(target, str(i))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    _check_one_whole_folder(tmp_path)


def test_atomic_dir_under_concurrent_processes(tmp_path):
    code = ("import sys\nfrom pathlib import Path\nfrom bench.io import atomic_dir\n"
            "for i in range(25):\n    with atomic_dir(Path(sys.argv[1])) as tmp:\n"
            "        (tmp / 'a.txt').write_text(f'{sys.argv[2]}-{i}')\n"
            "        (tmp / 'b.txt').write_text(f'{sys.argv[2]}-{i}')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "state"), str(n)], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for n in range(8)]
    failures = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert failures == []
    _check_one_whole_folder(tmp_path)
