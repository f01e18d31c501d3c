"""Damaged saved state is named, with what to do: run state (memory, adapter, checkpoints) says which step to
delete or ``--recompute-from``; caches (text embeddings, mask embeddings) are rebuilt with a logged line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import DamagedStateError
from bench.memory import Memory
from bench.methods.knn import MemoryWriter
from bench.run import build_config, run, run_dir

SMALL = ("SEQ=synth", "adapt_limit=8", "eval_limit=4", "progress=false", "wandb=false")
FINETUNE = ("METHOD=finetune", "finetune.epochs=2", "max_steps=1")


def _args(out: Path, *extra: str) -> list[str]:
    return [*SMALL, f"output_dir={out}", *extra]


def _run(out: Path, *extra: str, recompute_from: int | None = None) -> Any:
    cfg, spec = build_config(_args(out, *extra))
    return run(cfg, spec, recompute_from=recompute_from)


def _folder(out: Path, *extra: str) -> Path:
    return run_dir(*build_config(_args(out, *extra)))


def _comparable(record: Any) -> dict[str, Any]:
    """What two runs of one config must share (not timings, versions, where it was written, how far to go)."""
    d = record.to_json() if hasattr(record, "to_json") else dict(record)
    out = {k: v for k, v in d.items() if k not in ("timings", "git_commit", "versions")}
    out["config"] = {k: v for k, v in d["config"].items() if k not in ("output_dir", "max_steps")}
    return out


def _truncate(path: Path) -> None:
    path = path.resolve()
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``python -m bench <argv>`` (stdout stays in ``capsys`` as ``_cli.out``)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    _cli.out = captured.out  # type: ignore[attr-defined]
    return code, captured.err


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An uninterrupted knn run of the small sequence."""
    return _run(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def partial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of a knn run stopped after step 1 (copied by each test that damages it)."""
    out = tmp_path_factory.mktemp("partial")
    _run(out, "max_steps=1")
    return out


def _copy(partial: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    shutil.copytree(partial, out)
    return out, _folder(out)


@pytest.mark.parametrize("name", ["labels.npy", "index.faiss", "meta.json"])
def test_a_damaged_memory_file_is_named_with_the_step_to_recompute(partial, tmp_path, capsys, name):
    out, folder = _copy(partial, tmp_path)
    _truncate(folder / "memory" / "step-1" / name)
    reason = "checksum mismatch" if name != "meta.json" else "cannot be read"
    for _ in range(2):  # the same message on every rerun, until the user acts on it
        code, err = _cli(capsys, "run", *_args(out))
        assert code == 2
        assert err.startswith(f"error: {folder}/memory/step-1/{name} is damaged ({reason}")
        assert err.endswith(f": delete {folder}/memory/step-1 (and later steps) to recompute from step 1, or rerun "
                            "with --recompute-from 1\n")
        assert err.count("\n") == 1


def test_deleting_the_damaged_step_as_told_recomputes_it(partial, tmp_path, capsys, reference, monkeypatch):
    out, folder = _copy(partial, tmp_path)
    _truncate(folder / "memory" / "step-1" / "labels.npy")
    assert _cli(capsys, "run", *_args(out))[0] == 2
    shutil.rmtree(folder / "memory" / "step-1")
    adapted = _spy_adapt(monkeypatch)
    assert _cli(capsys, "run", *_args(out))[0] == 0
    assert adapted == ["park", "beach", "city"]
    assert _comparable(json.loads((folder / "record.json").read_text())) == _comparable(reference)


def _spy_adapt(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    adapted: list[str] = []
    original = MemoryWriter.__init__

    def spy(self, embedder, memory, vocabulary, *rest):
        adapted.append(vocabulary.name)
        return original(self, embedder, memory, vocabulary, *rest)

    monkeypatch.setattr(MemoryWriter, "__init__", spy)
    return adapted


def test_recompute_from_gives_the_record_of_an_uninterrupted_run(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _run(out)
    folder = _folder(out)
    step1 = (folder / "memory" / "step-1" / "index.faiss").stat().st_mtime_ns
    (folder / "memory" / "step-3" / "labels.npy").write_bytes(b"junk")  # recomputed, so never read
    adapted = _spy_adapt(monkeypatch)
    code, _ = _cli(capsys, "run", *_args(out), "--recompute-from", "2")
    assert code == 0 and adapted == ["beach", "city"]
    assert f"recomputing {folder} from step 2" in _cli.out  # type: ignore[attr-defined]
    record = json.loads((folder / "record.json").read_text())
    assert record["complete"] and _comparable(record) == _comparable(reference)
    assert (folder / "memory" / "step-1" / "index.faiss").stat().st_mtime_ns == step1
    assert Memory.load(folder / "memory" / "step-3").labels.shape[0] == record["state_size"][2]["memory_entries"]
    assert (folder / "heatmap-miou.png").exists() and (folder / "table.txt").exists()


def test_recompute_from_cuts_the_record_and_the_state(tmp_path, partial):
    out, folder = _copy(partial, tmp_path)
    record = _run(out, "max_steps=1")  # now 2 steps done
    assert record.steps_done == 2 and (folder / "memory" / "step-2").exists()
    from bench import resume
    from bench.run import _resummarize

    method = SimpleNamespace(state_path=lambda o, s: o / "memory" / f"step-{s}")
    cut = resume.rewind(folder, method, record, 2, 3, _resummarize)
    assert cut.steps_done == 1 and not cut.complete
    assert cut.matrix["miou"][1] == [None, None, None] and cut.matrix["pq"][1] == [None, None, None]
    assert len(cut.per_class_iou) == len(cut.state_size) == len(cut.timings["steps"]) == 1
    assert cut.summary["miou"].final_average == cut.matrix["miou"][0][0]
    assert not (folder / "memory" / "step-2").exists() and (folder / "memory" / "step-1").exists()
    assert json.loads((folder / "record.json").read_text())["steps_done"] == 1


def test_recompute_from_outside_the_sequence_is_refused(tmp_path, capsys):
    code, err = _cli(capsys, "run", *_args(tmp_path), "--recompute-from", "4")
    assert code == 2 and err == "error: --recompute-from must be a step between 1 and 3, got 4\n"


# -- the fine-tuning baselines' state ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_partial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("finetune")
    return out, _run(out, *FINETUNE)


def test_a_damaged_adapter_state_is_named_and_recompute_from_replaces_it(finetune_partial, tmp_path, capsys):
    partial, reference = finetune_partial
    out = tmp_path / "out"
    shutil.copytree(partial, out)
    folder = _folder(out, *FINETUNE)
    state = folder / "adapter" / "step-1.pt"
    assert state.with_name("step-1.pt.sha256").exists()
    _truncate(state)
    code, err = _cli(capsys, "run", *_args(out, *FINETUNE))
    assert code == 2 and err == (f"error: {state} is damaged (checksum mismatch): delete {state} (and later steps) "
                                 "to recompute from step 1, or rerun with --recompute-from 1\n")
    state.with_name("step-1.pt.sha256").unlink()  # as written before checksums: torch itself cannot read it
    code, err = _cli(capsys, "run", *_args(out, *FINETUNE))
    assert code == 2 and err.startswith(f"error: {state} is damaged (cannot be read: ")
    assert _cli(capsys, "run", *_args(out, *FINETUNE), "--recompute-from", "1")[0] == 0
    record = json.loads((folder / "record.json").read_text())
    assert record["steps_done"] == 1 and record["matrix"] == reference.to_json()["matrix"]


def test_a_damaged_training_checkpoint_is_named_with_its_step(tmp_path, monkeypatch, capsys, finetune_partial):
    from bench.baselines.adapter import AdapterTraining

    crash = {"on": True}
    original = getattr(AdapterTraining, "on_train_epoch_end", None)

    def crash_in_epoch_1(self):
        if original is not None:
            original(self)
        if self.current_epoch == 1 and crash["on"]:
            raise RuntimeError("killed in epoch 2")

    monkeypatch.setattr(AdapterTraining, "on_train_epoch_end", crash_in_epoch_1)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="killed"):
        _run(out, *FINETUNE)
    folder = _folder(out, *FINETUNE)
    last = folder / "checkpoints" / "step-1" / "last.ckpt"
    assert Path(str(last.resolve()) + ".sha256").exists()
    _truncate(last)
    crash["on"] = False
    code, err = _cli(capsys, "run", *_args(out, *FINETUNE))
    assert code == 2 and err == (f"error: {last} is damaged (checksum mismatch): delete {folder}/checkpoints/step-1 "
                                 "(and later steps) to recompute from step 1, or rerun with --recompute-from 1\n")
    shutil.rmtree(folder / "checkpoints" / "step-1")
    assert _cli(capsys, "run", *_args(out, *FINETUNE))[0] == 0
    record = json.loads((folder / "record.json").read_text())
    assert record["matrix"] == finetune_partial[1].to_json()["matrix"]


# -- memories saved before checksums -----------------------------------------------------------------------------
def _legacy_memory(path: Path) -> None:
    memory = Memory(8, "toy")
    memory.add(np.eye(8, dtype=np.float32)[:4], ["a", "b", "a", "b"])
    memory.save(path)
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta.pop("sha256")) == {"index.faiss", "labels.npy"}
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["labels.npy", "index.faiss"])
def test_a_damaged_memory_without_checksums_is_named_when_read(tmp_path, name):
    _legacy_memory(tmp_path / "m")
    assert len(Memory.load(tmp_path / "m")) == 4  # read as it is
    _truncate(tmp_path / "m" / name)
    with pytest.raises(DamagedStateError) as err:
        Memory.load(tmp_path / "m")
    assert err.value.path == tmp_path / "m" / name
    assert str(err.value).startswith(f"{tmp_path / 'm' / name} is damaged (cannot be read: ")
    assert "\n" not in str(err.value)


# -- caches: rebuilt with a logged line ------------------------------------------------------------------------
@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    return cache


def _check_rebuilt(path: Path, compute, caplog: pytest.LogCaptureFixture, what: str) -> None:
    first = compute()
    sidecar = path.with_name(path.name + ".sha256")
    assert sidecar.exists()
    for damage in ("checksum mismatch", "cannot be read: "):
        if damage != "checksum mismatch":
            sidecar.unlink()  # a cache written before checksums: torch's own error is the reason
        _truncate(path)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bench"):
            again = compute()
        assert f"{what} {path} is damaged ({damage}" in caplog.text and "rebuilding it" in caplog.text
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bench"):
            compute()  # the rebuilt file (and its checksum) was written back
        assert caplog.text == "" and sidecar.exists()


def test_a_damaged_text_embedding_cache_is_rebuilt(private_cache, caplog):
    from bench.models import build_base

    base = build_base("tiny-random")
    base.text_embeddings(["cat", "dog"])
    (path,) = (private_cache / "text").glob("*.pt")
    _check_rebuilt(path, lambda: base.text_embeddings(["cat", "dog"]), caplog, "text-embedding cache")


class _Dataset:
    """Three images of two segments each, with what :func:`mask_embeddings` reads of a task dataset."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        segments = torch.ones(32, 32, dtype=torch.long)
        segments[16:] = 2
        self.samples = [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator),
                         "segments": segments, "segment_classes": torch.tensor([0, 1]),
                         "segment_iscrowd": torch.tensor([False, False])} for _ in range(3)]
        self.task = SimpleNamespace(name="toy", format="label_map", root="toy", options={})
        self.vocabulary, self.reader = SimpleNamespace(classes=["sky", "sea"]), SimpleNamespace(split="train")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.samples[i]


def test_a_damaged_mask_embedding_cache_is_rebuilt(private_cache, caplog):
    from bench.baselines.features import mask_embeddings
    from bench.models import build_base

    base, dataset = build_base("tiny-random"), _Dataset()
    embeddings, names = mask_embeddings(base, dataset)
    assert embeddings.shape[0] == 6 and names == ["sky", "sea"] * 3
    (path,) = (private_cache / "features").glob("*.pt")
    _check_rebuilt(path, lambda: mask_embeddings(base, dataset)[0], caplog, "mask-embedding cache")
