"""Placement (accelerator, devices, nodes, precision) and the inference settings: what is accepted, and the
one-line errors for what cannot run here. No GPU is needed: GPU counts are simulated where a test says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import devices
from bench.config import RunConfig, set_value, task_inference
from bench.errors import ConfigError
from bench.run import build_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**values: str) -> RunConfig:
    cfg = RunConfig()
    for key, value in values.items():
        set_value(cfg, key, value)
    return cfg


def test_auto_is_the_cpu_without_a_gpu_and_a_gpu_with_one(monkeypatch):
    monkeypatch.setattr(devices, "_visible_gpus", lambda: (0, "torch sees 0 GPUs"))
    assert devices.placement(_cfg()).accelerator == "cpu"
    assert devices.placement(_cfg()).precision == "32-true"
    monkeypatch.setattr(devices, "_visible_gpus", lambda: (2, "torch sees 2 GPUs"))
    where = devices.placement(_cfg(precision="bf16-mixed", devices="2", num_nodes="3"))
    assert (where.accelerator, where.precision, where.world) == ("gpu", "bf16-mixed", 6)


def test_a_gpu_asked_for_where_there_is_none_is_an_error_naming_what_was_found(monkeypatch):
    monkeypatch.setattr(devices, "_visible_gpus", lambda: (0, "torch 2.x (a CPU-only build) sees 0 GPUs"))
    with pytest.raises(ConfigError, match=r"^accelerator=gpu: no GPU found \(torch 2\.x \(a CPU-only build\) sees "
                                          r"0 GPUs\); use accelerator=cpu or auto$"):
        devices.placement(_cfg(accelerator="gpu"))
    monkeypatch.setattr(devices, "_visible_gpus", lambda: (1, "torch sees 1 GPU"))
    with pytest.raises(ConfigError, match=r"^devices=4: more GPUs than this node has \(torch sees 1 GPU\)$"):
        devices.placement(_cfg(accelerator="gpu", devices="4"))


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_on_the_cpu_is_refused(monkeypatch, precision):
    monkeypatch.setattr(devices, "_visible_gpus", lambda: (0, "torch sees 0 GPUs"))
    with pytest.raises(ConfigError, match=rf"^precision={precision}: mixed precision runs on GPUs only"):
        devices.placement(_cfg(precision=precision, accelerator="cpu"))


def test_real_machine_errors_before_a_run_folder_is_made(tmp_path, small_run):
    """On this machine (whatever it has): asking for more GPUs than exist, or fp16 on the CPU, stops the run
    before its folder exists."""
    import torch

    with pytest.raises(ConfigError, match=r"^(accelerator=gpu: no GPU found|devices=\d+: more GPUs)"):
        small_run("accelerator=gpu", f"devices={torch.cuda.device_count() + 1}")
    with pytest.raises(ConfigError, match=r"^precision=16-mixed: "):
        small_run("accelerator=cpu", "precision=16-mixed")
    assert not any(tmp_path.rglob("record.json")) and not any(tmp_path.rglob("*.lock"))


def test_the_trainer_gets_the_placement():
    from bench.run import _trainer

    trainer = _trainer(_cfg(accelerator="cpu", progress="false"))
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    assert trainer.precision == "32-true" and trainer.num_nodes == 1


def test_placement_keys_are_run_only_and_precision_is_part_of_the_run_id():
    from bench.config import config_hash

    base = config_hash(_cfg())
    assert config_hash(_cfg(accelerator="cpu", devices="2", num_nodes="2")) == base
    assert config_hash(_cfg(precision="bf16-mixed")) != base


def test_a_crop_larger_than_the_short_side_stops_the_run(tmp_path, small_run):
    with pytest.raises(ConfigError, match=r"^inference\.crop: a window of 128 pixels \(the base model's input "
                                          r"size\) is larger than inference\.short_side=100"):
        small_run("inference.mode=slide", "inference.short_side=100")
    with pytest.raises(ConfigError, match=r"^inference\.crop: a window of 200 pixels is larger than "):
        small_run("inference.mode=slide", "inference.short_side=150", "inference.crop=200")


def synth_yaml(folder: Path, first_task_extra: str) -> Path:
    """tasks/synth.yaml copied to ``folder/mine.yaml`` with ``first_task_extra`` appended to its first task."""
    text = (ROOT / "tasks" / "synth.yaml").read_text().replace("vocab/", f"{ROOT / 'tasks' / 'vocab'}/")
    text = text.replace("    options: {scene_seed: 1}\n", "    options: {scene_seed: 1}\n" + first_task_extra, 1)
    path = folder / "mine.yaml"
    path.write_text(text)
    return path


def test_a_task_inference_block_overrides_the_run_and_is_checked(tmp_path):
    path = synth_yaml(tmp_path, "    inference: {mode: slide, short_side: 160}\n")
    cfg, spec = build_config([f"SEQ={path}"])
    assert [task_inference(cfg, t).mode for t in spec.tasks] == ["slide", "whole", "whole"]
    assert task_inference(cfg, spec.tasks[0]).short_side == 160
    bad = synth_yaml(tmp_path, "    inference: {mode: tiles}\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml: task 'park': inference\.mode: must be one of whole, slide, "
                                          r"got 'tiles'$"):
        build_config([f"SEQ={bad}"])
    typo = synth_yaml(tmp_path, "    inference: {short: 160}\n")
    with pytest.raises(ConfigError, match=r"task 'park': inference\.short: unknown key; did you mean "
                                          r"'inference\.short_side'\?"):
        build_config([f"SEQ={typo}"])
