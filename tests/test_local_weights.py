"""Weights from a checkpoint file (``model.pretrained`` / ``embedder.pretrained``): loaded exactly, named by sha256
in the identity and the record, and one-line errors naming the key and the file for anything else."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import torch

from bench.errors import ConfigError, WeightsUnavailable
from bench.models import build_base, build_embedder
from bench.models.checkpoint import names_file
from bench.models.clip import _random_model, weights_identity
from bench.run import build_config, run

DINO = "vit_small_patch14_dinov2"  # a real timm architecture: suite configs take no file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-random's architecture with weights of another seed, saved as a DDP checkpoint would be."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    state = _random_model("tiny-random", seed=7).state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm

    torch.manual_seed(5)
    model = timm.create_model(DINO, pretrained=False, img_size=56, num_classes=0, dynamic_img_size=True)
    path = tmp_path_factory.mktemp("weights") / "dino.pth"
    torch.save(model.state_dict(), path)
    return path


def test_which_values_name_files(tmp_path, monkeypatch):
    tags = ["laion2b_s34b_b88k", "openai"]
    assert not names_file("laion2b_s34b_b88k", tags) and not names_file("", tags)
    assert names_file("/abs/w.bin", tags) and names_file("rel/w", tags) and names_file("~/w", tags)
    assert names_file("w.safetensors", tags) and names_file("W.PT", tags)  # a checkpoint suffix: a file, even absent
    assert not names_file("nope", tags)  # not a tag, not on disk: the unknown-tag error says so
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_bytes(b"x")
    (tmp_path / "openai").write_bytes(b"x")
    assert names_file("mine", tags) and not names_file("openai", tags)  # a tag wins over a file of its name


def test_base_from_a_file_has_its_weights_and_sha256(tiny_file):
    base = build_base("tiny-random", str(tiny_file))
    saved = _random_model("tiny-random", seed=7).state_dict()
    for key, value in base.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert base.identity == f"open_clip:tiny-random/file(sha256={sha256(tiny_file)[:16]})"
    assert base.pretrained == str(tiny_file) and base.tag == "file"


def test_the_file_is_hashed_once_per_process_and_again_when_it_changes(tmp_path, monkeypatch):
    from bench.models import checkpoint

    path = tmp_path / "w.pt"
    torch.save(_random_model("tiny-random", seed=1).state_dict(), path)
    calls = []
    real = checkpoint.hashlib.file_digest
    monkeypatch.setattr(checkpoint.hashlib, "file_digest", lambda *a: calls.append(1) or real(*a))
    first = weights_identity("tiny-random", str(path))
    assert weights_identity("tiny-random", str(path)) == first and len(calls) == 1
    torch.save(_random_model("tiny-random", seed=2).state_dict(), path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # coarse clocks
    assert weights_identity("tiny-random", str(path)) == f"open_clip:tiny-random/file(sha256={sha256(path)[:16]})"
    assert len(calls) == 2 and weights_identity("tiny-random", str(path)) != first


def test_a_run_records_both_files_and_refuses_its_folder_once_a_file_changed(tiny_file, dino_file, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(tiny_file.read_bytes())
    args = ["SEQ=synth", "adapt_limit=2", "eval_limit=2", "progress=false", "wandb=false", f"output_dir={tmp_path}",
            f"PRETRAINED={weights}", "RUN_ID=file", "EMBEDDER=dinov2", f"embedder.name={DINO}",
            f"embedder.pretrained={dino_file}", "embedder.image_size=56"]
    record = run(*build_config(args))
    assert record["model"]["identity"] == f"open_clip:tiny-random/file(sha256={sha256(weights)[:16]})"
    assert record["model"]["pretrained"] == str(weights) and "file" in record["model"]["weights"]
    assert record["embedder"] == f"timm:{DINO}/file(sha256={sha256(dino_file)[:16]})@56"
    torch.save(_random_model("tiny-random", seed=8).state_dict(), weights)  # same path, other weights
    with pytest.raises(ConfigError, match="made with other weights.*file[(]sha256="):
        run(*build_config(args))


@pytest.mark.slow
def test_a_real_open_clip_architecture_from_a_file(tmp_path):
    path = tmp_path / "vitb16.pt"
    saved = _random_model("ViT-B-16", seed=3).state_dict()
    torch.save(saved, path)
    base = build_base("ViT-B-16", str(path))
    assert all(torch.equal(v, saved[k]) for k, v in base.model.state_dict().items())
    assert base.identity == f"open_clip:ViT-B-16/file(sha256={sha256(path)[:16]})"


def _bad_files(tmp_path: Path, other_architecture: Path) -> dict[str, tuple[Path, type, str]]:
    """name -> (path, error, what the message says after ``<key>: <path>: ``)."""
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(4096))
    (tmp_path / "folder").mkdir()
    return {"missing": (tmp_path / "no" / "such.pt", ConfigError, "no such file$"),
            "directory": (tmp_path / "folder", ConfigError, "is a directory"),
            "corrupt": (corrupt, WeightsUnavailable, "cannot be read as a checkpoint"),
            "other architecture": (other_architecture, WeightsUnavailable, "does not fit")}


@pytest.mark.parametrize("case", ["missing", "directory", "corrupt", "other architecture"])
def test_a_bad_model_file_is_one_line_naming_key_and_file(case, tmp_path, dino_file):
    path, error, says = _bad_files(tmp_path, dino_file)[case]
    with pytest.raises(error) as e:
        build_base("tiny-random", str(path))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"model.pretrained: {path}: "), message
    assert re.search(says, message), message


def test_a_file_of_another_architecture_says_which_keys_and_shapes(tmp_path):
    path = tmp_path / "synth.pt"
    torch.save(_random_model("tiny-clip-synth", seed=0).state_dict(), path)  # 3 layers at 96 px, tiny-random 2 at 128
    with pytest.raises(WeightsUnavailable) as e:
        build_base("tiny-random", str(path))
    message = str(e.value)
    assert "unexpected keys (first: visual.transformer.resblocks.2." in message
    assert "tensors of another shape (first: positional_embedding 24x64 in the file, 32x64 in the model)" in message


def test_the_cli_prints_the_one_line(tmp_path, capsys):
    from bench.cli import main

    missing = tmp_path / "x" / "y.pt"
    assert main(["run", "SEQ=synth", f"output_dir={tmp_path}", "wandb=false", f"PRETRAINED={missing}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: model.pretrained: {missing}: no such file"


# -- DINOv2 memory embedder -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    return build_base("tiny-random")


def test_dinov2_from_a_file_has_its_weights_and_sha256(base, dino_file):
    import timm

    emb = build_embedder("dinov2", base, DINO, str(dino_file), image_size=56)
    assert emb.identity == f"timm:{DINO}/file(sha256={sha256(dino_file)[:16]})@56"
    torch.manual_seed(5)
    same = timm.create_model(DINO, pretrained=False, img_size=56, num_classes=0, dynamic_img_size=True).eval()
    images = emb.preprocess(torch.randint(0, 256, (3, 60, 70), dtype=torch.uint8)).unsqueeze(0)
    with torch.no_grad():
        expected = same.forward_features(images)[:, same.num_prefix_tokens:]
        assert torch.equal(emb.dense_features(images).flatten(2).transpose(1, 2), expected)


def test_dinov2_reads_a_facebookresearch_training_checkpoint(base, dino_file, tmp_path):
    """The original repository's layout: a ``teacher`` with ``backbone.``/head keys and a ``mask_token``, its
    positional embedding at another size (resized by timm's filter)."""
    import timm

    torch.manual_seed(6)
    other = timm.create_model(DINO, pretrained=False, img_size=98, num_classes=0, dynamic_img_size=True)
    teacher = {f"backbone.{k}": v for k, v in other.state_dict().items()}
    teacher |= {"backbone.mask_token": torch.zeros(1, 384), "dino_head.last_layer.weight": torch.zeros(8, 384)}
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)
    emb = build_embedder("dinov2", base, DINO, str(path), image_size=56)
    assert torch.equal(emb.model.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)
    assert emb.model.pos_embed.shape[1] == 1 + 4 * 4  # class token and 4x4 patches at 56 px (7x7 in the file)


@pytest.mark.parametrize("case", ["missing", "directory", "corrupt", "other architecture"])
def test_a_bad_embedder_file_is_one_line_naming_key_and_file(case, base, tmp_path, tiny_file):
    path, error, says = _bad_files(tmp_path, tiny_file)[case]
    with pytest.raises(error) as e:
        build_embedder("dinov2", base, DINO, str(path), image_size=56)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"embedder.pretrained: {path}: "), message
    assert re.search(says, message), message


def test_embedder_pretrained_needs_a_dinov2_architecture(base, dino_file):
    with pytest.raises(ConfigError, match="embedder.pretrained=.*dinov2-tiny-random is a random-init suite config"):
        build_embedder("dinov2", base, "dinov2-tiny-random", str(dino_file))
    with pytest.raises(ConfigError, match="embedder.pretrained=.* is for embedder.kind=dinov2"):
        build_embedder("clip", base, pretrained=str(dino_file))
