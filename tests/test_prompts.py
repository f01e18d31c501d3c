"""Opt-in prompts and class names (``text.*``): template sets, synonym lines and the background fallback, each
checked against a direct computation on the tiny random open_clip model (offline, CPU, seconds)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from bench.config import KnnConfig
from bench.errors import ConfigError
from bench.heads import KnnHead, ZeroShotHead
from bench.inference import background_class, background_fallback, semantic_from_proposals
from bench.models import BASES, build_base
from bench.models.prompts import TEMPLATE_SETS
from bench.module import ContinualSegmenter
from datamodules.vocabulary import Vocabulary, synonyms

# The suite's prompts before text.templates existed: the default must keep embedding with exactly these.
TODAYS_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)
NAMES = ["ball", "sky", "grass"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty text-embedding cache: every test computes its embeddings."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    return tmp_path / "text"


@pytest.fixture(scope="module")
def base():
    return build_base("tiny-random")


@torch.no_grad()
def direct(base, names: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """CLIP's prompt ensemble written out: per name, the normalised mean of its normalised prompt embeddings."""
    tokens = base._tokenizer([t.format(n) for n in names for t in templates])
    encoded = F.normalize(base.model.encode_text(tokens).float(), dim=-1)
    return F.normalize(encoded.view(len(names), len(templates), -1).mean(1), dim=-1)


def test_defaults_embed_as_before(base, cache):
    assert TEMPLATE_SETS["short"] == TODAYS_TEMPLATES and (base.templates, base.synonyms) == ("short", False)
    assert torch.equal(base.text_embeddings(NAMES), direct(base, NAMES, TODAYS_TEMPLATES))
    # The cache file keeps the key it had, so caches written before the option existed are still used.
    key = hashlib.sha1("\n".join([base.identity, *TODAYS_TEMPLATES, "", *NAMES]).encode()).hexdigest()
    assert [p.name for p in cache.glob("*.pt")] == [f"tiny-random-random-init-{key[:16]}.pt"]


def test_imagenet80_is_the_harness_ensemble(cache):
    imagenet = TEMPLATE_SETS["imagenet80"]
    assert len(imagenet) == len(set(imagenet)) == 80 and all(t.count("{}") == 1 for t in imagenet)
    assert imagenet[0] == "a bad photo of a {}." and imagenet[-1] == "a tattoo of the {}."
    assert "a origami {}." in imagenet  # verbatim, grammar and all
    base = build_base("tiny-random", templates="imagenet80")
    emb = base.text_embeddings(NAMES)
    assert torch.allclose(emb, direct(base, NAMES, imagenet), atol=1e-6)
    assert not torch.allclose(emb, direct(base, NAMES, TODAYS_TEMPLATES), atol=1e-3)
    assert len(list(cache.glob("*.pt"))) == 1
    build_base("tiny-random").text_embeddings(NAMES)  # the short set is cached apart
    assert len(list(cache.glob("*.pt"))) == 2


def test_synonyms_average_the_per_name_ensembles(cache):
    """The chosen averaging: each name is its own template ensemble (normalised), the class is the normalised
    mean of its names' normalised embeddings. The row stays the whole line's."""
    base = build_base("tiny-random", synonyms=True)
    emb = base.text_embeddings(["building, edifice", "sky"])
    per_name = direct(base, ["building", "edifice"], TODAYS_TEMPLATES)
    assert torch.allclose(emb[0], F.normalize(per_name.mean(0), dim=0), atol=1e-6)
    assert torch.allclose(emb[1], direct(base, ["sky"], TODAYS_TEMPLATES)[0], atol=1e-6)
    plain = build_base("tiny-random").text_embeddings(["building, edifice", "sky"])  # the line as one prompt
    assert torch.allclose(plain[0], direct(base, ["building, edifice"], TODAYS_TEMPLATES)[0], atol=1e-6)
    assert not torch.allclose(plain[0], emb[0], atol=1e-3)
    assert len(list(cache.glob("*.pt"))) == 2  # synonyms on and off are cached apart


def test_the_memory_and_the_head_keep_the_whole_line(cache):
    base = build_base("tiny-random", synonyms=True)
    vocabulary = Vocabulary.from_names("v", ["building, edifice", "sky"], things=["building, edifice"])
    memory = SimpleNamespace(names=["sky", "building, edifice", "building"])  # memory class codes 0, 1, 2
    head = KnnHead(base, None, memory, KnnConfig())
    head.begin([vocabulary])
    assert head.vocabularies[0].classes == ("building, edifice", "sky") and head.text[0].shape[0] == 2
    assert head._luts[0].tolist() == [1, 0, -1, -1]  # "building" alone is another class


def test_synonym_lines_parse():
    assert synonyms("building, edifice") == ("building", "edifice")
    assert synonyms("chest of drawers, chest, bureau, dresser")[0] == "chest of drawers"
    assert synonyms("sky") == ("sky",)
    ade = Vocabulary.from_file("tasks/vocab/ade150-synonyms.txt")
    plain = Vocabulary.from_file("tasks/vocab/ade150.txt")
    assert len(ade) == 150 and ade.is_thing == plain.is_thing
    assert ade.classes[1] == "building, edifice" and ade.classes[12].startswith("person, individual")
    # Every name of the plain file's line is among the synonyms of the same class.
    assert all(set(synonyms(p)) <= set(synonyms(a)) or synonyms(p)[0] in a for p, a in zip(plain.classes, ade.classes))


def test_head_path_uses_the_configured_templates(cache, monkeypatch):
    """text.templates=imagenet80 goes from the command line to the base the run builds, and from there to the
    head's text embeddings."""
    import bench.models
    from bench.run import build_config, run

    cfg, spec = build_config(["SEQ=synth", "text.templates=imagenet80", "text.synonyms=true",
                              f"output_dir={cache.parent / 'runs'}"])
    seen = {}

    def record_and_stop(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise RuntimeError("stop after the base's arguments")

    monkeypatch.setattr(bench.models, "build_base", record_and_stop)
    monkeypatch.setattr("bench.run.preflight", lambda *args, **kwargs: None)  # the data are not the point
    with pytest.raises(RuntimeError, match="stop after"):
        run(cfg, spec)
    assert seen["args"][-2:] == ("imagenet80", True)
    base = build_base(*seen["args"])  # the original, not the stand-in
    head = ZeroShotHead(base)
    head.begin([spec.tasks[0].vocabulary])
    names = list(spec.tasks[0].vocabulary.classes)
    assert torch.allclose(head.text[0], direct(base, names, TEMPLATE_SETS["imagenet80"]), atol=1e-6)


class PlainBase:
    """A base that embeds class names its own way (no ``set_prompts``)."""

    def __init__(self, name: str, pretrained: str, seed: int) -> None:
        self.name = name


def test_a_base_without_prompt_settings_takes_the_defaults_only():
    BASES.register("toy-plain")(PlainBase)
    try:
        assert isinstance(build_base("x", kind="toy-plain"), PlainBase)
        with pytest.raises(ConfigError, match=r"base.kind 'toy-plain' does not take text.templates"):
            build_base("x", kind="toy-plain", templates="imagenet80")
    finally:
        BASES.unregister("toy-plain")


# -- background fallback ---------------------------------------------------------------------------------------
PROBS = torch.tensor([[0.05, 0.90, 0.05],   # confident: class 1 stays
                      [0.30, 0.35, 0.35],   # top 0.35 < 0.4: background (class 0), not class 1
                      [0.10, 0.20, 0.70],   # class 2 stays
                      [0.20, 0.40, 0.40]])  # top exactly 0.4 is not below it: class 1 stays


def test_background_fallback_by_hand():
    out = background_fallback(PROBS, 0, 0.4)
    assert torch.equal(out[1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(out[[0, 2, 3]], PROBS[[0, 2, 3]])
    label_map = torch.tensor([[1, 2], [3, 4]])
    assert semantic_from_proposals(label_map, out).tolist() == [[1, 0], [2, 1]]
    assert semantic_from_proposals(label_map, PROBS).tolist() == [[1, 1], [2, 1]]
    assert background_fallback(PROBS, None, 0.4) is PROBS and background_fallback(PROBS, 0, 0.0) is PROBS
    assert background_fallback(torch.zeros(0, 3), 0, 0.4).shape == (0, 3)  # an image with no proposals


def test_background_class_must_exist():
    assert background_class(["a", "background"], 0.1, "task 't'") == 1
    assert background_class(["a"], 0.0, "task 't'") is None  # off: no class needed
    with pytest.raises(ConfigError, match=r"text.background_threshold=0.1 needs a class named 'background', "
                                          r"but task 't' has none"):
        background_class(["a", "b"], 0.1, "task 't'")


def test_a_run_without_a_background_class_stops_at_the_start(tmp_path):
    from bench.run import build_config, run

    cfg, spec = build_config(["SEQ=synth", "text.background_threshold=0.1", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"text.background_threshold=0.1 .* but task 'park' \(.*synth.yaml\)"):
        run(cfg, spec)
    assert not any(tmp_path.iterdir())  # stopped before the run folder was made


class FixedHead(torch.nn.Module):
    embedder = None

    def begin(self, vocabularies) -> None:
        pass

    def forward(self, label_map, base_feats, memory_feats, task):
        return PROBS[:3]


def test_test_step_applies_the_fallback():
    vocabulary = Vocabulary.from_names("v", ["background", "a", "b"])
    sample = {"proposals": torch.tensor([[1, 1, 2], [2, 3, 3]]), "semantic": torch.tensor([[1, 1, 0], [0, 2, 2]])}
    scores = []
    for threshold in (0.4, 0.0):
        module = ContinualSegmenter(SimpleNamespace(), SimpleNamespace(), FixedHead(), threshold)
        module.begin_eval([vocabulary])
        module.eval_features = lambda batch, task=0: ([torch.zeros(1)], None)
        module.test_step([sample], 0, 0)
        module.on_test_epoch_end()
        scores.append(float(module.scores[0]["miou"]))
    assert scores[0] == 1.0 and scores[1] < 1.0
    with pytest.raises(ConfigError, match="vocabulary 'w' has none"):
        ContinualSegmenter(SimpleNamespace(), SimpleNamespace(), FixedHead(), 0.4).begin_eval(
            [Vocabulary.from_names("w", ["a", "b"])])
