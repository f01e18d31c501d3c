"""Per-image time of the evaluate and adapt passes of a realistic model, split by stage (for benchmarks/perf.py).

The model: open_clip ViT-B-16 as the base and DINOv2 ViT-S/14 as the memory embedder, both at 224 (their default
resolution here) with random weights, which time like trained ones. Images are 512×683 (ADE20K's typical size)
synthetic scenes of smooth regions, so superpixels and JPEG decoding cost what they cost on photographs.

Stages are timed by wrapping what :class:`bench.module.ContinualSegmenter` calls (its backbones' preprocessing
and forward passes, proposer, pooling, memory, fusion, inference functions and metrics; :func:`patched`); the
module's own code runs unchanged and "other" is the remainder. The first batch is a warm-up and not counted.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import bench.dense as dense
import bench.heads.knn as knn_head
import bench.heads.zeroshot as zeroshot_head
import bench.module as bm
from bench.config import KnnConfig
from bench.heads import KnnHead
from bench.memory import Memory
from bench.methods.knn import MemoryWriter
from bench.models import build_base, build_embedder
from bench.proposals import build_proposer
from datamodules.vocabulary import Vocabulary

BASE, EMBEDDER = "ViT-B-16", "dinov2-vits14-random"
IMAGE_HW = (512, 683)
REPO = Path(__file__).resolve().parents[1]


class Stages:
    """Accumulated seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - tick

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.time(stage):
                return fn(*args, **kwargs)

        return timed


class TimedMemory:
    """The memory, with search / label lookups / adds timed; everything else passes through."""

    def __init__(self, memory: Memory, stages: Stages) -> None:
        self._memory, self._stages = memory, stages

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        with self._stages.time("retrieval"):
            return self._memory.search(*args, **kwargs)

    def label_codes(self, ids: np.ndarray) -> np.ndarray:
        with self._stages.time("fusion"):
            return self._memory.label_codes(ids)

    def add(self, *args: Any, **kwargs: Any) -> Any:
        with self._stages.time("memory_add"):
            return self._memory.add(*args, **kwargs)


def scene(rng: np.random.Generator, regions: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``H×W×3`` image of smooth coloured regions (Voronoi cells with shading and mild noise) and its
    int64 ``H×W`` region map."""
    h, w = IMAGE_HW
    yy, xx = np.mgrid[:h, :w]
    seeds = rng.integers(0, (h, w), (regions, 2))
    cell = np.argmin((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2, 0)
    colours = rng.integers(30, 225, (regions, 3)).astype(np.float32)
    shade = 0.85 + 0.3 * (yy / h)[..., None]
    rgb = colours[cell] * shade + rng.normal(0, 6, (h, w, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), cell


def _text_stand_in(dim: int) -> Callable[[list[str]], torch.Tensor]:
    # Text embeddings are computed once per vocabulary and evaluation (and cached on disk), never per image;
    # random unit vectors stand in so that 150 prompts × 7 templates through the text tower are not waited for.
    return lambda names: F.normalize(torch.randn(len(names), dim), dim=1)


def build_model(memory: Memory) -> bm.ContinualSegmenter:
    torch.manual_seed(0)
    base = build_base(BASE, "random-init")
    base.text_embeddings = _text_stand_in(base.dim)
    embedder = build_embedder("dinov2", base, EMBEDDER)
    if embedder.dim != memory.dim:
        raise ValueError(f"memory of dim {memory.dim}, but {EMBEDDER} embeds in {embedder.dim}")
    return bm.ContinualSegmenter(base, build_proposer("superpixel", 64, 10.0),
                                 KnnHead(base, embedder, memory, KnnConfig()))


@contextlib.contextmanager
def patched(module: bm.ContinualSegmenter, stages: Stages) -> Iterator[None]:
    """Time the module's collaborators in place (after ``begin_eval``, which makes the metrics); restore them
    afterwards. Stages: windows (the inputs: resize and normalise, ``bench.dense._input``, which calls a
    backbone's ``preprocess`` under ``whole``; under ``slide`` also the cut into windows), base_forward,
    embedder_forward, pooling, text_scores (the base's text classification), retrieval, fusion, inference
    (``semantic_from_proposals``), metric_update, and proposals when the module makes them itself."""
    base, embedder, head = module.base, module.head.embedder, module.head
    backbones = [(base, "base_forward")] + ([(embedder, "embedder_forward")] if embedder is not None else [])
    functions = [(bm, "semantic_from_proposals", "inference"), (dense, "_input", "windows"),
                 (dense, "_windows", "windows"), (zeroshot_head, "pool_regions", "pooling"),
                 (knn_head, "pool_regions", "pooling"),
                 (knn_head, "retrieval_distribution", "fusion"), (knn_head, "fuse", "fusion")]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in functions]
    saved_memory, saved_proposer = getattr(head, "memory", None), module.proposer
    saved_updates = [m.update for m in module.metrics]
    for owner, name, stage in functions:
        setattr(owner, name, stages.wrap(stage, getattr(owner, name)))
    for backbone, stage in backbones:  # instance attributes over the methods; deleted again below
        backbone.dense_features = stages.wrap(stage, backbone.dense_features)
    head.text_probabilities = stages.wrap("text_scores", head.text_probabilities)
    for m in module.metrics:
        m.update = stages.wrap("metric_update", m.update)
    if saved_memory is not None:
        head.memory = TimedMemory(saved_memory, stages)
    module.proposer = stages.wrap("proposals", saved_proposer)
    try:
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        for backbone, _ in backbones:
            del backbone.dense_features
        del head.text_probabilities
        for m, update in zip(module.metrics, saved_updates):
            m.update = update
        if saved_memory is not None:
            head.memory = saved_memory
        module.proposer = saved_proposer


def _per_image(stages: Stages, total: float, images: int) -> dict[str, Any]:
    ms = {k: 1000 * v / images for k, v in sorted(stages.seconds.items())}
    ms["other"] = 1000 * total / images - sum(ms.values())
    return {"images_timed": images, "ms_per_image_total": round(1000 * total / images, 2),
            "ms_per_image": {k: round(v, 2) for k, v in ms.items()}}


def predict_timing(module: bm.ContinualSegmenter, vocabulary: list[str], images: int, batch_size: int,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluation of one vocabulary, per image by stage; ``retrieval_fraction`` = (retrieval + fusion) / total."""
    from datamodules.contract import IGNORE_INDEX

    rng = np.random.default_rng(0)
    samples = []
    for _ in range(images + batch_size):
        rgb, cell = scene(rng)
        semantic = torch.from_numpy(cell % len(vocabulary)).long()
        semantic[:4] = IGNORE_INDEX
        samples.append({"image": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), "semantic": semantic,
                        "segments": torch.from_numpy(cell + 1), "segment_classes": torch.arange(int(cell.max()) + 1)
                        % len(vocabulary), "segment_iscrowd": torch.zeros(int(cell.max()) + 1, dtype=torch.bool),
                        "meta": {"dataset": "perf", "file_id": "", "size": IMAGE_HW}})
    module.begin_eval([Vocabulary.from_names("perf", vocabulary)])
    stages = Stages()
    total = 0.0
    with torch.no_grad(), patched(module, stages):
        module.test_step(samples[:batch_size], 0, 0)  # warm-up
        stages.seconds.clear()
        for i in range(batch_size, len(samples), batch_size):
            tick = time.perf_counter()
            module.test_step(samples[i:i + batch_size], i, 0)
            total += time.perf_counter() - tick
            log(f"  predict: {i} of {images} images timed, {total / i:.2f} s/image")
    out = _per_image(stages, total, images)
    ms = out["ms_per_image"]
    knn = ms.get("retrieval", 0) + ms.get("fusion", 0)
    out["retrieval_fraction"] = round(knn / out["ms_per_image_total"], 5)
    # The stricter view: against the two backbones' forward passes alone (no superpixels, no pooling).
    out["retrieval_fraction_of_forward"] = round(knn / (ms["base_forward"] + ms["embedder_forward"]), 5)
    return out


def adapt_overhead(run: dict[str, Any], forward_of: dict[str, Any]) -> float:
    """What an adapt ``run`` (an :func:`adapt_timing` result) spends per image besides the embedder forward, over
    the forward of ``forward_of``: the run itself, or for a run with loader workers the in-process run (no worker
    taking CPU from its forward), the suite's overhead against the model's own cost."""
    outside = run["ms_per_image_total"] - run["ms_per_image"]["embedder_forward"]
    return round(outside / forward_of["ms_per_image"]["embedder_forward"], 5)


def write_ade_folder(root: Path, images: int) -> None:
    """An ADE20K-format split (JPEG images, 8-bit PNG label maps with values 1..150) of synthetic scenes."""
    rng = np.random.default_rng(1)
    for split in ("training", "validation"):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
    for i in range(images):
        rgb, cell = scene(rng)
        labels = rng.choice(np.arange(1, 151), int(cell.max()) + 1)
        for split in ("training", "validation") if i == 0 else ("training",):
            stem = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(rgb).save(root / "images" / split / f"{stem}.jpg", quality=90)
            Image.fromarray(labels[cell].astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


def adapt_timing(module: bm.ContinualSegmenter, images: int, batch_size: int, num_workers: int = 0,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The adapt pass over an ADE20K-format folder through the suite's own reader and data module, per image by
    stage: data (read, decode, validate, and the loader transform of a knn run: the embedder's inputs resized
    and normalised, the segments' pixels counted per cell of its grid; with workers, the time spent waiting for
    them), preprocess (inputs the loader did not prepare, made in the main process), embedder forward, pooling
    (the rest of ``predict_step``: the means from the counts, normalised), memory add.
    ``adapt_overhead_fraction`` = everything but the forward / the forward."""
    from datamodules import SequenceDataModule
    from datamodules.sequence import load_sequence

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ade"
        write_ade_folder(root, images + batch_size)
        yaml = Path(tmp) / "perf-ade.yaml"
        yaml.write_text(f"name: perf-ade\ntasks:\n  - name: ade\n    format: ade20k\n    root: {root}\n"
                        f"    vocabulary: {REPO / 'tasks' / 'vocab' / 'ade150.txt'}\n"
                        "    adapt: {split: train}\n    eval: {split: val}\n")
        spec = load_sequence(str(yaml))
        dm = SequenceDataModule(spec, tmp, batch_size=batch_size, num_workers=num_workers)
        dm.set_step(0)
        embedder = module.head.embedder
        stages = Stages()
        added, timed, total = 0, 0, 0.0
        writer = MemoryWriter(embedder, TimedMemory(module.head.memory, stages), spec.tasks[0].vocabulary)
        dm.adapt_transform = writer.loader_transform()  # as the knn method's adapt pass
        embedder.preprocess = stages.wrap("preprocess", embedder.preprocess)
        embedder.dense_features = stages.wrap("embedder_forward", embedder.dense_features)
        try:
            with torch.no_grad():
                batches = iter(dm.predict_dataloader())
                for i in range(images // batch_size + 1):
                    tick = time.perf_counter()
                    batch = next(batches)
                    loaded = time.perf_counter()
                    entries = writer.predict_step(batch, i)
                    if i == 0:  # warm-up
                        stages.seconds.clear()
                        continue
                    added += entries
                    stages.seconds["data"] += loaded - tick
                    total += time.perf_counter() - tick
                    timed += len(batch)
                    log(f"  adapt ({num_workers} workers): {timed} of {images} images timed")
        finally:
            del embedder.preprocess, embedder.dense_features
    out = _per_image(stages, total, timed)
    out["ms_per_image"]["pooling"] = out["ms_per_image"].pop("other")
    out["entries_added_per_image"] = round(added / timed, 2)
    out["num_workers"] = num_workers
    out["adapt_overhead_fraction"] = adapt_overhead(out, out)
    return out
