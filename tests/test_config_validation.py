"""A bad run setting stops before anything runs: one line naming where it came from (the command-line key, or the
sequence YAML and its field), the key and what was expected; no run folder is made."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import KnnConfig, RunConfig, config_hash, set_value, to_dict
from bench.errors import ConfigError
from bench.memory.spec import KNOB_MIN
from bench.run import build_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, Path]:
    out = tmp_path / "runs"
    rc = main(["run", "SEQ=synth", f"output_dir={out}", "progress=false", "wandb=false", *args])
    return rc, capsys.readouterr().err, out


BAD_ARGS = [
    ("knn.k=0", "command line: knn.k: must be an integer >= 1, got '0'"),
    ("knn.k=-1", "command line: knn.k: must be an integer >= 1, got '-1'"),
    ("knn.k=.inf", "command line: knn.k: must be an integer >= 1, got '.inf'"),
    ("knn.lam=2", "command line: knn.lam: must be a finite number in [0, 1], got '2'"),
    ("knn.lam=.nan", "command line: knn.lam: must be a finite number in [0, 1], got '.nan'"),
    ("knn.temperature=0", "command line: knn.temperature: must be a finite number > 0, got '0'"),
    ("proposals.n_segments=0", "command line: proposals.n_segments: must be an integer >= 1, got '0'"),
    ("adapt_limit=-1", "command line: adapt_limit: must be an integer >= 0, got '-1'"),
    ("max_steps=-1", "command line: max_steps: must be an integer >= 0, got '-1'"),
    ("knn.kk=3", "command line: knn.kk: unknown key; did you mean 'knn.k'?"),
    ("knn.k=many", "command line: knn.k: must be an integer >= 1, got 'many'"),
    ("progress=maybe", "command line: progress: must be true or false, got 'maybe'"),
]


@pytest.mark.parametrize(("arg", "message"), BAD_ARGS, ids=[arg for arg, _ in BAD_ARGS])
def test_bad_command_line_value_stops_before_the_run(tmp_path, capsys, arg, message):
    rc, err, out = run_cli(tmp_path, capsys, arg)
    assert rc == 2
    assert err == f"error: {message}\n"
    assert not out.exists()  # nothing ran, no orphan run folder


def test_unknown_key_in_sequence_defaults_names_the_yaml(tmp_path, capsys, monkeypatch):
    text = (ROOT / "tasks" / "synth.yaml").read_text().replace("vocab/", f"{ROOT / 'tasks' / 'vocab'}/")
    text = text.replace("  proposals: {kind: superpixel, n_segments: 64}\n", "  knn: {lamda: 0.3}\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "my.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "SEQ=tasks/my.yaml", "output_dir=runs", "wandb=false"]) == 2
    assert capsys.readouterr().err == "error: tasks/my.yaml: defaults.knn.lamda: unknown key; did you mean 'knn.lam'?\n"
    assert not (tmp_path / "runs").exists()


def test_bad_value_in_sequence_defaults_names_the_yaml_field(tmp_path):
    text = (ROOT / "tasks" / "synth.yaml").read_text().replace("vocab/", f"{ROOT / 'tasks' / 'vocab'}/")
    path = tmp_path / "mine.yaml"
    path.write_text(text.replace("n_segments: 64", "n_segments: 0"))
    with pytest.raises(ConfigError, match=r"^.*mine\.yaml: defaults\.proposals\.n_segments: must be an integer "
                                          r">= 1, got 0$"):
        build_config([f"SEQ={path}"])


def test_other_bounds_and_the_edges_that_are_allowed():
    cfg = RunConfig()
    for key, raw in [("eval_limit", "-1"), ("batch_size", "0"), ("num_workers", "-1"), ("devices", "0"),
                     ("finetune.epochs", "0"), ("finetune.lr", "0"), ("finetune.weight_decay", "-0.1"),
                     ("finetune.replay_per_class", "-1"), ("knn.nprobe", "0"), ("knn.nlist", "-1"),
                     ("knn.threshold", ".inf"), ("seed", "-1"), ("knn", "3")]:
        with pytest.raises(ConfigError, match=f"^{key}: "):
            set_value(cfg, key, raw)
    for key, raw in [("knn.lam", "0"), ("knn.lam", "1"), ("knn.k", "1"), ("max_steps", "0"), ("knn.nlist", "0"),
                     ("knn.threshold", "-0.25"), ("knn.k", "16.0")]:
        set_value(cfg, key, raw)
    assert (cfg.knn.lam, cfg.knn.k) == (1.0, 16) and isinstance(cfg.knn.lam, float)


def test_index_knob_bounds_have_one_definition():
    """KnnConfig's least value of each index knob is bench.memory.spec.KNOB_MIN, the one IndexSpec.check uses."""
    for name, least in KNOB_MIN.items():
        with pytest.raises(ValueError):
            KnnConfig(**{name: least - 1})
        KnnConfig(**{name: least})


def test_config_stays_a_dataclass():
    knn = dataclasses.replace(KnnConfig(), lam=0.25)
    assert knn.lam == 0.25 and to_dict(RunConfig())["knn"]["k"] == 16
    with pytest.raises(ValueError):
        dataclasses.replace(knn, lam=2.0)


# Measured with the dataclass config before the checks were added, whose memory index was ivf-flat (4096 lists,
# 8 probed, trained at 65,536): the runs and references named before the auto index are named by these.
HASHES = {"default": "d9f6dd0d25", "synth:knn": "871cef69a5", "synth:zeroshot": "31b1ab2950",
          "synth-shift:knn": "6b5e279eb4", "synth-shift:zeroshot": "baadb3f868"}
# With the auto index, the default since issue 18 (another index is another run, as another inference mode is).
AUTO_HASHES = {"default": "b84bcad452", "synth:knn": "315d50966b", "synth:zeroshot": "1ba7820eeb",
               "synth-shift:knn": "fa57f860d8", "synth-shift:zeroshot": "d8699b4f4a"}


@pytest.mark.parametrize(("hashes", "index"), [(HASHES, "ivf-flat"), (AUTO_HASHES, "auto")])
def test_config_hashes_are_unchanged(hashes, index):
    """Keys added later (inference, text, precision, the memory's target_recall, shard, on_disk, budget, ...) at
    the values that do what the first runs did leave the hash as it was: with knn.index=ivf-flat every run is
    named as before the auto index; the default config now evaluates with sliding windows, which is another run."""
    whole = RunConfig()
    whole.inference.mode = "whole"
    whole.knn.index = index
    assert config_hash(whole) == hashes["default"] != config_hash(RunConfig())
    whole.precision = "bf16-mixed"
    assert config_hash(whole) != hashes["default"]
    for name, expected in hashes.items():
        if name != "default":
            seq, method = name.split(":")
            cfg = build_config([f"SEQ={seq}", f"METHOD={method}", f"knn.index={index}"])[0]
            assert config_hash(cfg) == expected, name
    # where the memory lives never renames a run
    cfg = build_config(["SEQ=synth", "METHOD=knn", "knn.shard=true", "knn.on_disk=true"])[0]
    assert config_hash(cfg) == AUTO_HASHES["synth:knn"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_forwards_only_config_keys():
    out = subprocess.run(["make", "-n", "bench", "PYTHON=python3.11", "SEQ=synth", "knn.k=3", "QUICK=1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if "-m bench run" in x)
    assert sorted(line.split("-m bench run", 1)[1].split()) == ["SEQ=synth", "knn.k=3"]
