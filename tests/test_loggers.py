"""`bench.loggers`: with no W&B login the run is logged offline, and what was logged reads back from disk."""

from __future__ import annotations

import csv
import json
import math
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import loggers as bl
from bench.continual import summarize
from bench.report import heatmap

TASKS = ["park", "beach", "city"]
MATRIX = [[68.2, None, None], [68.0, 68.8, None], [67.9, 68.8, 73.7]]
RECORD: dict[str, Any] = {
    "record_version": 1, "sequence": "synth", "method": "knn",
    "model": {"name": "tiny-random", "pretrained": "random-init", "identity": "tiny",
              "weights": "random-init, not pretrained"},
    "tasks": TASKS, "steps_done": 3, "complete": True, "matrix": {"miou": MATRIX},
    "summary": {"miou": summarize(MATRIX)},
    "per_class_iou": [{task: {"sky": 90.0 + j, "tree": 40.0 + t} for j, task in enumerate(TASKS[: t + 1])}
                      for t in range(3)],
    "state_size": [{"memory_entries": n, "memory_bytes": 4 * n} for n in (600, 1200, 1850)],
    "config": {"sequence": "synth", "method": "knn", "knn": {"k": 16}}, "config_hash": "h", "seed": 0,
    "versions": {}, "git_commit": "abc",
    "timings": {"steps": [{"step": t + 1, "adapt_s": 1.5, "eval_s": 0.5} for t in range(3)]},
}


@pytest.fixture
def no_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No W&B credentials anywhere: no API key, no netrc (HOME is empty), no mode forced."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def wandb_records(path: Path) -> Iterator[Any]:
    """Protobuf records of a ``.wandb`` transaction log (LevelDB-style log: 32 KiB blocks of chunks, each
    chunk headed by crc32, length, kind = full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, path
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block tail too short for a header: padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(data):  # end, or a chunk still being written
            break
        chunk, pos = data[pos + 7: pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def finished_log(path: Path, timeout_s: float = 30.0) -> list[Any]:
    """The records of a finished offline run. W&B's service process may still be writing the file when
    ``finish()`` returns, so wait for the run's exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_mode_follows_the_login(no_login: Path) -> None:
    assert bl.wandb_mode() == "offline" and not bl.wandb_login_configured()
    assert bl.wandb_mode({"WANDB_API_KEY": "x" * 40, "HOME": str(no_login)}) == "online"
    assert bl.wandb_mode({"WANDB_API_KEY": "x" * 40, "WANDB_MODE": "offline"}) == "offline"
    assert bl.wandb_mode({"WANDB_MODE": "disabled"}) == "disabled"
    (no_login / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    assert bl.wandb_mode({"HOME": str(no_login)}) == "online"
    assert bl.wandb_mode({"HOME": str(no_login), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"


def test_offline_run_reads_back(no_login: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "synth" / "knn" / "run-a"
    loggers = bl.make_loggers(run_dir, "synth", "knn", "run-a", RECORD["config"])
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "WandbLogger"]
    try:
        for step in (1, 2, 3):
            bl.log_results(loggers, RECORD, step)
        png = heatmap(RECORD, "miou", run_dir / "heatmap-miou.png")
        bl.log_final(loggers, RECORD, png)
    finally:
        bl.finish(loggers)
    assert len(loggers) == 2, "W&B logger was dropped after an error"

    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log_file = next(runs[0].glob("run-*.wandb"))
    assert log_file.stat().st_size > 0
    records = finished_log(log_file)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == bl.WANDB_PROJECT and run.run_group == "synth" and run.display_name == "knn/run-a"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["knn"] == {"k": 16}
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join([u.key, *u.nested_key]).strip("/"): json.loads(u.value_json)
                            for u in r.summary.update})
    expected = RECORD["summary"]["miou"]
    for key in ("final_average", "average_incremental", "mean_forgetting", "bwt"):
        assert summary[f"miou/{key}"] == pytest.approx(expected[key]), key
    assert summary["miou/forgetting/park"] == pytest.approx(expected["forgetting"][0])
    assert summary["memory_size"] == 1850 and summary["complete"] is True
    history = [{"/".join([i.key, *i.nested_key]).strip("/"): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    per_step = {h["step"]: h for h in history if "miou/park" in h}
    assert sorted(per_step) == [1, 2, 3]
    assert per_step[2]["miou/beach"] == 68.8 and per_step[3]["miou/average"] == pytest.approx(sum(MATRIX[2]) / 3)
    assert any("heatmap/miou/path" in h for h in history)
    # the result matrix table, as W&B stored it
    table = json.loads(next((runs[0] / "files").rglob("miou_*.table.json")).read_text())
    assert table["columns"] == ["after step", *TASKS]
    assert [row[1:] for row in table["data"]] == MATRIX
    per_class = json.loads(next((runs[0] / "files").rglob("per_class_iou_*.table.json")).read_text())
    assert len(per_class["data"]) == 2 * (1 + 2 + 3) and per_class["columns"] == ["step", "task", "class", "iou"]

    rows = list(csv.DictReader(next((run_dir / "logs").rglob("metrics.csv")).open()))
    steps = {int(r["step"]): r for r in rows if r["miou/park"]}
    assert sorted(steps) == [1, 2, 3]
    assert float(steps[3]["miou/city"]) == 73.7 and float(steps[1]["memory_size"]) == 600
    final = next(r for r in rows if r.get("summary/miou/final_average"))
    assert float(final["summary/miou/final_average"]) == pytest.approx(expected["final_average"])
    assert (run_dir / "logs" / "version_0" / "hparams.yaml").is_file()


def test_wandb_failure_leaves_the_csv_log(no_login: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    def broken_init(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no service")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="W&B could not start"):
        loggers = bl.make_loggers(tmp_path, "synth", "knn", "r", {})
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger"]
    bl.log_results(loggers, RECORD, 1)
    bl.log_final(loggers, RECORD)
    bl.finish(loggers)
    assert (tmp_path / "logs" / "version_0" / "metrics.csv").is_file()


def test_a_failing_wandb_call_drops_only_that_logger(tmp_path: Path) -> None:
    class Experiment:
        def log(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

        def finish(self, *args: Any, **kwargs: Any) -> None:
            pass

    class WandbLogger:  # stands in for Lightning's, recognised by its class name
        experiment = Experiment()

    from lightning.pytorch.loggers import CSVLogger

    csv_logger = CSVLogger(save_dir=str(tmp_path), name="logs")
    loggers = [csv_logger, WandbLogger()]
    with pytest.warns(RuntimeWarning, match="W&B log failed"):
        bl.log_results(loggers, RECORD, 2)
    assert loggers == [csv_logger]
    bl.log_results(loggers, RECORD, 3)
    rows = list(csv.DictReader((tmp_path / "logs" / "version_0" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 3]


def test_step_and_summary_scalars() -> None:
    first = bl.step_metrics(RECORD, 1)
    assert first["miou/park"] == 68.2 and "miou/beach" not in first and first["memory_size"] == 600
    assert first["state/memory_bytes"] == 2400 and first["time/adapt_s"] == 1.5
    nan_record = RECORD | {"matrix": {"miou": [[math.nan, None, None]]}}
    assert "miou/park" not in bl.step_metrics(nan_record, 1)
    summary = bl.summary_metrics(RECORD)
    assert summary["miou/final_average"] == pytest.approx(sum(MATRIX[2]) / 3)
    assert "miou/forgetting/city" not in summary and summary["time/adapt_s_total"] == 4.5


def test_progress_bar_one_bar_per_dataloader_in_images(capsys: pytest.CaptureFixture[str]) -> None:
    """Adapt: one bar named by the task, counted in images of the sampler (so images/s and a total for the ETA);
    eval: one bar per dataloader; never Lightning's "Predicting: 0/?"."""
    from types import SimpleNamespace

    import torch

    from bench.loggers import progress_bar

    task = [SimpleNamespace(name=n) for n in ("park", "beach")]
    dm = SimpleNamespace(tasks=task, step=1, evaluated=lambda: task)
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2, collate_fn=list)
    trainer = SimpleNamespace(datamodule=dm, predict_dataloaders=loader, test_dataloaders=[loader, loader])
    bar = progress_bar()
    bar.on_predict_start(trainer, None)
    for i, batch in enumerate(loader):
        bar.on_predict_batch_start(trainer, None, batch, i)
        bar.on_predict_batch_end(trainer, None, None, batch, i)
    bar.on_predict_end(trainer, None)
    bar.on_test_start(trainer, None)
    for d in (0, 1):
        for i, batch in enumerate(loader):
            bar.on_test_batch_start(trainer, None, batch, i, d)
            bar.on_test_batch_end(trainer, None, None, batch, i, d)
    bar.on_test_end(trainer, None)
    err = capsys.readouterr().err.replace("\r", "\n")
    finals = [line for line in err.splitlines() if "5/5" in line]
    assert {line.split(":")[0] for line in finals} == {"adapt beach", "eval park", "eval beach"}
    assert all("img/s" in line for line in finals) and "?" not in "".join(finals) and "Predicting" not in err


def test_progress_bar_fine_tuning_epochs_have_no_empty_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """The baselines' fit: one bar redrawn per epoch, named ``fit: epoch n`` with its batch count, never the
    "Training: 0/?" lines Lightning's bar prints before it knows the count."""
    import lightning as L
    import torch

    from bench.loggers import progress_bar

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = torch.utils.data.DataLoader(torch.zeros(6, 2), batch_size=2)
    trainer = L.Trainer(max_epochs=2, callbacks=[progress_bar()], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), loader)
    out = capsys.readouterr().out.replace("\r", "\n")
    assert "fit: epoch 0" in out and "fit: epoch 1" in out and "3/3" in out
    assert "0/?" not in out and "Training" not in out
