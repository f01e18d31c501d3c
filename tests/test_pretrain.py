"""tiny-clip-synth: the committed weights, their checksum, what pretraining held out, and that they know things."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bench.errors import ConfigError
from bench.models import build_base, clip
from bench.pretrain import train, world
from bench.run import build_config, run

NAME = "tiny-clip-synth"
TASKS = Path(__file__).resolve().parents[1] / "tasks"


@pytest.fixture(scope="module")
def base():
    return build_base(NAME)


def test_committed_weights_load_and_name_their_checksum(base):
    path = clip.SUITE_WEIGHTS[NAME]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert clip.suite_checksum(NAME) == digest
    assert base.identity == f"open_clip:{NAME}/in-repo(sha256={digest[:16]})"
    assert base.tag == "in-repo" and NAME not in clip.RANDOM_INIT_MODELS and "tiny-random" in clip.RANDOM_INIT_MODELS
    assert path.stat().st_size < 8_000_000  # a few MB: only the token rows the captions use are stored
    from safetensors.torch import load_file

    stored = load_file(path)
    assert torch.equal(base.model.visual.proj, stored["visual.proj"])
    # A word pretraining never saw has no embedding at all (the held-out "crab"), a seen one has.
    table = base.model.token_embedding.weight
    crab, ball = (int(base._tokenizer([w])[0][1]) for w in ("crab", "ball"))
    assert not table[crab].any() and table[ball].any()


def test_pretrained_tag_rules():
    assert clip.resolve_pretrained(NAME, "") == clip.resolve_pretrained(NAME, "in-repo") == "in-repo"
    assert clip.resolve_pretrained(NAME, "random-init") == "random-init"  # the same architecture, untrained
    with pytest.raises(ConfigError, match="ships its weights in the repository"):
        clip.resolve_pretrained(NAME, "openai")


def test_changed_or_missing_weights_are_refused(tmp_path, monkeypatch):
    copy = tmp_path / f"{NAME}.safetensors"
    data = bytearray(clip.SUITE_WEIGHTS[NAME].read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    shutil.copy(clip.checksum_path(clip.SUITE_WEIGHTS[NAME]), clip.checksum_path(copy))
    monkeypatch.setitem(clip.SUITE_WEIGHTS, NAME, copy)
    with pytest.raises(RuntimeError, match=r"does not match tiny-clip-synth\.safetensors\.sha256.*rebuild"):
        build_base(NAME)
    copy.unlink()
    with pytest.raises(RuntimeError, match="weights are missing"):
        build_base(NAME)


def test_pretraining_computes_what_the_suite_computes(base):
    """The features and text embeddings pretraining optimises are the suite's, for the same weights."""
    images = torch.stack([base.preprocess(torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8))
                          for _ in range(2)])
    pooled, dense = train.image_forward(base.model.visual, images)
    assert torch.allclose(dense, base.dense_features(images), atol=1e-5)
    assert torch.allclose(pooled, base.model.encode_image(images), atol=1e-5)
    model, tokens = train.build_model(train.PretrainConfig())
    texts = ["a photo of a red ball.", "there is a yellow diamond-shaped kite in the scene.", "grass"]
    full = torch.nn.functional.normalize(model.encode_text(tokens(texts)), dim=-1)
    assert torch.allclose(train.encode_text(model, tokens, texts), full, atol=1e-5)


def test_held_out_words_and_combinations_never_appear():
    concepts = world.concepts()
    assert {("ball", "blue"), ("kite", "green")} <= world.HELD_OUT_COMBINATIONS
    assert not {(c.noun, c.colour) for c in concepts} & world.HELD_OUT_COMBINATIONS
    rng = np.random.default_rng(0)
    captions = [world.region_caption(c, rng) for c in concepts for _ in range(20)]
    things = [c for c in concepts if c.isthing]
    captions += [world.scene_caption(things[i:i + 3], concepts[1], True, rng) for i in range(len(things))]
    words = {w.strip(".,") for text in captions + world.lexicon() for w in text.split()}
    assert not words & world.HELD_OUT_WORDS
    assert any("star-shaped" in c for c in captions)  # crabs are there, described but never named


def _one_task_sequence(tmp_path: Path, task: str) -> Path:
    doc = yaml.safe_load((TASKS / "synth-shift.yaml").read_text())
    [entry] = [t for t in doc["tasks"] if t["name"] == task]
    entry["vocabulary"] = str(TASKS / entry["vocabulary"])
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"name": f"one-{task}", "defaults": doc["defaults"], "tasks": [entry]}))
    return path


def test_zeroshot_is_far_above_chance_on_a_seen_task(tmp_path):
    cfg, spec = build_config([f"SEQ={_one_task_sequence(tmp_path, 'city')}", "METHOD=zeroshot", "eval_limit=8",
                              f"output_dir={tmp_path / 'runs'}", "progress=false", "wandb=false"])
    record = run(cfg, spec)
    assert record["model"]["identity"].startswith(f"open_clip:{NAME}/in-repo(sha256=")
    # 7 classes: a uniform guess per superpixel scores about 8% mIoU; tiny-random scores 2-4%.
    assert record["matrix"]["miou"][0][0] > 50


def test_zeroshot_drops_under_a_domain_shift_and_the_memory_recovers_it(tmp_path):
    """city-night is city under dim blue light: the base model that scores > 50 on city falls far, and a memory of
    a few city-night images brings most of it back (a few images each way, a few seconds)."""
    seq = _one_task_sequence(tmp_path, "city-night")
    common = [f"SEQ={seq}", "eval_limit=8", f"output_dir={tmp_path / 'runs'}", "progress=false", "wandb=false"]
    zeroshot = run(*build_config([*common, "METHOD=zeroshot"]))["matrix"]["miou"][0][0]
    knn = run(*build_config([*common, "METHOD=knn", "adapt_limit=20"]))["matrix"]["miou"][0][0]
    assert zeroshot < 30 and knn > zeroshot + 30, (zeroshot, knn)


def test_the_default_run_is_synth_shift_on_tiny_clip_synth():
    cfg, spec = build_config([])
    assert (cfg.sequence, spec.name, cfg.model.name, cfg.model.pretrained) == ("synth-shift", "synth-shift", NAME, "")
    # Its fusion comes from its YAML (chosen on the tune splits, see tasks/synth-shift.yaml), not the global one.
    assert (cfg.knn.threshold, cfg.knn.lam, cfg.knn.temperature) == (0.0, 0.8, 0.2)
    assert all(t.eval.split == "val" for t in spec.tasks)


@pytest.mark.slow
def test_rebuilding_the_weights_reproduces_the_committed_checksum(tmp_path):
    """The committed script, as a user runs it (its own process, so it can pin the numerics before torch loads).
    On the CPU model and torch the weights were built with: the same bytes. Elsewhere the bytes are not promised
    (rounding differs between CPU vendors, see the script): the training log must then agree with the committed
    one to its 4 decimals for the first 100 steps, and within 0.01 to the end (an Intel Xeon here: through step
    125, 0.0028); a change to the data, the model or the losses moves the log from the first step, one to the
    optimiser by step 25."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_tiny_clip.py"
    start = time.perf_counter()
    log = tmp_path / "rebuilt.log.json"
    proc = subprocess.run([sys.executable, str(script), "--check", "--log", str(log)], capture_output=True,
                          text=True, timeout=3600)
    print(f"\nrebuilt {NAME} in {time.perf_counter() - start:.0f} s:\n{proc.stdout}")
    assert proc.returncode in (0, 1) and log.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    committed = json.loads(clip.SUITE_WEIGHTS[NAME].with_name(f"{NAME}.log.json").read_text())
    rebuilt = json.loads(log.read_text())
    same_machine = all(committed["built_with"][k] == rebuilt["built_with"][k] for k in ("cpu", "torch", "python"))
    if same_machine:
        assert proc.returncode == 0 and f"committed {clip.suite_checksum(NAME)}: same" in proc.stdout
    else:
        agree = train.history_agreement(committed["history"], rebuilt["history"])
        assert agree["identical_through"] >= 100 and agree["max_abs"] <= 0.01, agree


def test_history_agreement_finds_where_two_training_logs_part():
    a = [{"step": s, "region": 1.0 + s, "patch": 0.5} for s in (0, 25, 50, 75)]
    b = [dict(r) for r in a]
    assert train.history_agreement(a, b) == {"identical_through": 75, "max_abs": 0.0}
    b[2]["patch"] += 0.0001  # one unit of the log's last decimal
    b[3]["region"] -= 0.003
    assert train.history_agreement(a, b) == {"identical_through": 25, "max_abs": 0.003}
    b[0]["region"] += 0.2
    assert train.history_agreement(a, b)["identical_through"] == -1
    with pytest.raises(ValueError, match="different steps"):
        train.history_agreement(a, b[:3])
    with pytest.raises(ValueError, match="different losses"):
        train.history_agreement(a, [{k: v for k, v in r.items() if k != "patch"} for r in b])
