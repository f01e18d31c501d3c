"""Deterministic contrastive pretraining of ``tiny-clip-synth`` on the captioned scenes of :mod:`.world`.

Three InfoNCE-style terms share one pass of the visual tower:

- *region*: the MaskCLIP dense features (value path of the last block, exactly as
  :meth:`bench.models.clip.OpenClipBase.dense_features` computes them) pooled in each ground-truth segment,
  against one caption per concept of the batch (both directions; a caption's positives are all its segments);
- *patch*: each grid cell that one segment covers for the most part, against the same captions, so that the
  small superpixels the suite pools over are classified well too;
- *scene*: the ordinary CLIP image embedding (average-pooled tokens after the full last block) against a scene
  caption, which also trains the tokens the memory embedder reads.

The region and patch terms play the part of the mask-classification training of the paper's base (FC-CLIP on
COCO panoptic); the scene term is plain CLIP. Determinism: deterministic algorithms, the weights' initial
values from the seed, and every data decision (scene order, flips, captions) from a numpy generator seeded by
(seed, step). Training runs on one thread: on a shared 2-core machine two threads were four times slower (their
kernels wait for each other while a neighbour holds a core), and one thread's reduction order does not depend
on the machine's core count. Vectorised kernels still round by the CPU's instruction set, so
scripts/pretrain_tiny_clip.py pins them (MKL_CBWR=COMPATIBLE, ATEN_CPU_CAPABILITY=default, oneDNN at SSE4.1)
before torch loads; then the same torch build gave the same bytes with MKL's AVX-512 and AVX2 paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.inputs import resize_normalize
from bench.io import atomic_write_bytes, atomic_write_text
from bench.models import clip
from bench.pretrain import world as W


@dataclass(frozen=True)
class PretrainConfig:
    model: str = "tiny-clip-synth"
    seed: int = 0
    pool_size: int = 4000  # scenes generated once, then reused with horizontal flips
    scene_size: int = 128  # as the suite's synth tasks; resized to the model's input like at evaluation
    steps: int = 800
    batch_size: int = 48
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    patch_purity: float = 0.75  # a grid cell is a patch sample when one segment covers this share of it
    scene_weight: float = 0.5
    threads: int = 1  # one thread: see the module docstring


# -- the text tower's vocabulary -----------------------------------------------------------------------------------
class CompactTokens:
    """The BPE tokens the captions can use, renumbered 0..V-1 in id order.

    Training embeds only these rows (the other 49k would never receive a gradient); the saved weights keep the
    ids so the loader can put the rows back into open_clip's full table, with zeros for every unseen token.
    Renumbering keeps the order, so the end-of-text token stays the largest id (open_clip pools the text there).
    """

    def __init__(self, tokenizer: Any, texts: list[str]) -> None:
        ids = torch.unique(torch.cat([tokenizer([t])[0] for t in texts] + [torch.tensor([0])]))
        self.tokenizer, self.ids = tokenizer, ids
        self.lut = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        self.lut[ids] = torch.arange(len(ids))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        full = self.tokenizer(texts)
        compact = self.lut[full.clamp_max(len(self.lut) - 1)]
        if (compact < 0).any() or (full >= len(self.lut)).any():
            raise ValueError(f"caption token outside the pretraining vocabulary in {texts!r}")
        return compact


def build_model(cfg: PretrainConfig) -> tuple[torch.nn.Module, CompactTokens]:
    import open_clip

    clip._register_configs()
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that a model without weights is random
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = open_clip.create_model(cfg.model, pretrained=None)
    finally:
        logging.getLogger().setLevel(quiet)
    tokens = CompactTokens(open_clip.get_tokenizer(cfg.model), W.lexicon())
    full = model.token_embedding.weight.detach()
    model.token_embedding = torch.nn.Embedding.from_pretrained(full[tokens.ids].clone(), freeze=False)
    return model, tokens


# -- forward --------------------------------------------------------------------------------------------------------
def image_forward(visual: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float ``B×3×S×S`` → (CLIP image embeddings ``B×D``, MaskCLIP dense features ``B×D×g×g``), unnormalised.

    The trunk runs once; the last block runs fully for the pooled embedding and as its value path for the
    dense features, as in :meth:`bench.models.clip.OpenClipBase.tokens`.
    """
    if not getattr(visual.transformer, "batch_first", True):
        raise ValueError("pretraining expects a batch-first open_clip transformer")
    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    pooled = visual.ln_post(last(x)[:, 1:]).mean(1) @ visual.proj
    width = x.shape[-1]
    value = F.linear(last.ln_1(x), last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
    dense = visual.ln_post(last.attn.out_proj(value)[:, 1:]) @ visual.proj
    grid = images.shape[-1] // visual.patch_size[0]
    return pooled, dense.transpose(1, 2).reshape(len(images), -1, grid, grid)


def _cell_counts(segments: torch.Tensor, num: int, grid: int) -> torch.Tensor:
    """Pixels of segment 0..num (0 = void) in each grid cell, float ``(num+1)×grid²``.

    Cells are assigned exactly as :func:`bench.proposals.pool_features` assigns pixels to feature cells, so a
    region's pooled feature here is the one the suite computes for the same mask.
    """
    H, W_ = segments.shape
    rows = (torch.arange(H) * grid // H).view(H, 1)
    cols = (torch.arange(W_) * grid // W_).view(1, W_)
    cell = (rows * grid + cols).expand(H, W_)
    counts = torch.bincount((segments * grid * grid + cell).flatten(), minlength=(num + 1) * grid * grid)
    return counts.view(num + 1, grid * grid).float()


def _multi_positive_ce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a uniform distribution over each row's positives (bool, same shape)."""
    target = positive.float() / positive.sum(1, keepdim=True)
    return -(target * F.log_softmax(logits, 1)).sum(1).mean()


@dataclass
class PreparedPool:
    """The scene pool as the model sees it, for both horizontal orientations: preprocessed images, the pixel
    count of each segment in each grid cell, and the grid cells one segment covers for the most part."""

    images: torch.Tensor  # float N×3×S×S (flipped on the fly: resizing commutes with flipping)
    counts: list[tuple[torch.Tensor, torch.Tensor]]  # per scene, (as drawn, flipped): float (K+1)×g²
    concepts: list[list[int]]

    @classmethod
    def build(cls, pool: W.ScenePool, size: int, grid: int, mean: torch.Tensor, std: torch.Tensor) -> PreparedPool:
        images = torch.stack([resize_normalize(im, size, mean, std) for im in pool.images])
        counts = []
        for seg, cs in zip(pool.segments, pool.segment_concepts):
            seg = seg.long()
            counts.append((_cell_counts(seg, len(cs), grid), _cell_counts(seg.flip(-1), len(cs), grid)))
        return cls(images, counts, pool.segment_concepts)


@dataclass
class Batch:
    images: torch.Tensor  # float B×3×S×S, preprocessed
    counts: list[torch.Tensor]  # float (K+1)×g² per image, oriented like it
    concepts: list[list[int]]  # world concept of each segment
    region_texts: list[str]  # one caption per concept of the batch
    region_concepts: list[int]  # the world concept of each of those captions
    scene_texts: list[str]


def make_batch(pool: PreparedPool, world: list[W.Concept], indices: np.ndarray, rng: np.random.Generator) -> Batch:
    images, counts, concepts, scene_texts = [], [], [], []
    for i in indices.tolist():
        flip = bool(rng.random() < 0.5)
        images.append(pool.images[i].flip(-1) if flip else pool.images[i])
        counts.append(pool.counts[i][int(flip)])
        cs = pool.concepts[i]
        concepts.append(cs)
        area = counts[-1].sum(1)[1:]
        things = [world[c] for c in dict.fromkeys(cs) if world[c].isthing]
        grounds = [(float(area[k]), c) for k, c in enumerate(cs) if not world[c].isthing and world[c].key != "sky"]
        ground = world[max(grounds)[1]] if grounds else None
        sky = any(world[c].key == "sky" for c in cs)
        scene_texts.append(W.scene_caption(things, ground, sky, rng))
    present = sorted({c for cs in concepts for c in cs})
    region_texts = [W.region_caption(world[c], rng) for c in present]
    return Batch(torch.stack(images), counts, concepts, region_texts, present, scene_texts)


def encode_text(model: torch.nn.Module, tokens: CompactTokens, texts: list[str]) -> torch.Tensor:
    """Normalised ``N×D`` text embeddings, as ``model.encode_text`` computes them on the compact token ids.

    The padding after the longest caption is cut: causal attention never lets it reach the end-of-text token
    that open_clip pools at, so the result is the same, for a third of the work on short captions.
    """
    if model.text_pool_type != "argmax":
        raise ValueError(f"pretraining expects argmax text pooling, got {model.text_pool_type!r}")
    ids = tokens(texts)
    n = int((ids > 0).sum(1).max())  # compact id 0 is padding
    ids = ids[:, :n]
    x = model.token_embedding(ids) + model.positional_embedding[:n]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = x[torch.arange(len(x)), ids.argmax(-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def losses(model: torch.nn.Module, tokens: CompactTokens, batch: Batch, purity: float) -> dict[str, torch.Tensor]:
    pooled, dense = image_forward(model.visual, batch.images)
    region_text = encode_text(model, tokens, batch.region_texts)
    scene_text = encode_text(model, tokens, batch.scene_texts)
    scale = model.logit_scale.exp().clamp(max=100.0)
    column = {c: j for j, c in enumerate(batch.region_concepts)}

    cells = dense.flatten(2).transpose(1, 2)  # B×g²×D
    most = max(len(cs) for cs in batch.concepts)
    weights = torch.zeros(len(cells), most, cells.shape[1])
    for b, c in enumerate(batch.counts):
        weights[b, : len(c) - 1] = c[1:]
    regions = torch.bmm(weights, cells)[weights.sum(2) > 0]  # area-weighted sums, as pool_features (up to scale)
    region_labels = torch.tensor([column[c] for cs, cnt in zip(batch.concepts, batch.counts)
                                  for k, c in enumerate(cs) if cnt[k + 1].sum() > 0])
    patches, patch_labels = [], []
    for feats, cnt, cs in zip(cells, batch.counts, batch.concepts):
        share, owner = (cnt / cnt.sum(0, keepdim=True)).max(0)
        keep = (owner > 0) & (share >= purity)
        patches.append(feats[keep])
        patch_labels.append(torch.tensor([column[c] for c in cs])[owner[keep] - 1])
    region_logits = scale * F.normalize(regions, dim=-1) @ region_text.T
    positive = region_labels.view(1, -1) == torch.arange(len(region_text)).view(-1, 1)
    patch_logits = scale * F.normalize(torch.cat(patches), dim=-1) @ region_text.T
    scene_logits = scale * F.normalize(pooled, dim=-1) @ scene_text.T
    target = torch.arange(len(scene_logits))
    return {
        "region": (F.cross_entropy(region_logits, region_labels) + _multi_positive_ce(region_logits.T, positive)) / 2,
        "patch": F.cross_entropy(patch_logits, torch.cat(patch_labels)),
        "scene": (F.cross_entropy(scene_logits, target) + F.cross_entropy(scene_logits.T, target)) / 2,
    }


# -- training -------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic kernels for the block; the previous settings come back after."""
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    no_decay = ("embedding", "logit_scale")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not any(k in n for k in no_decay)]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and not any(k in n for k in no_decay))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _order(cfg: PretrainConfig, count: int) -> Iterator[np.ndarray]:
    """Batches of pool indices: a fresh permutation per epoch, from the seed only."""
    epoch = 0
    while True:
        perm = np.random.default_rng(np.random.SeedSequence([cfg.seed, 11, epoch])).permutation(count)
        for start in range(0, count - cfg.batch_size + 1, cfg.batch_size):
            yield perm[start: start + cfg.batch_size]
        epoch += 1


def train(cfg: PretrainConfig, log_every: int = 25) -> tuple[torch.nn.Module, CompactTokens, dict[str, Any]]:
    """Pretrain from scratch; returns the model, its token table and a log (losses, timings)."""
    with deterministic(cfg.threads):
        tick = time.perf_counter()
        world = W.concepts()
        pool = W.build_pool(world, cfg.pool_size, cfg.seed, cfg.scene_size)
        pool_s = time.perf_counter() - tick
        print(f"scene pool: {len(pool)} scenes, {len(world)} concepts in {pool_s:.0f} s", flush=True)
        model, tokens = build_model(cfg)
        model.train()
        import open_clip

        visual = model.visual
        mean, std = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
        prepared = PreparedPool.build(pool, visual.image_size[0], visual.grid_size[0], mean, std)
        optimizer = _optimizer(model, cfg)
        history, start = [], time.perf_counter()
        for step, indices in zip(range(cfg.steps), _order(cfg, len(pool))):
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 13, step]))
            batch = make_batch(prepared, world, indices, rng)
            parts = losses(model, tokens, batch, cfg.patch_purity)
            loss = parts["region"] + parts["patch"] + cfg.scene_weight * parts["scene"]
            for group in optimizer.param_groups:
                group["lr"] = _lr(cfg, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100.0))
            if step % log_every == 0 or step == cfg.steps - 1:
                elapsed = time.perf_counter() - start
                rate = (step + 1) * cfg.batch_size / elapsed
                eta = (cfg.steps - step - 1) * cfg.batch_size / rate
                row = {"step": step, **{k: round(float(v.detach()), 4) for k, v in parts.items()}}
                history.append(row)
                print(f"step {step:4d}/{cfg.steps}  " + "  ".join(f"{k} {row[k]:.3f}" for k in parts)
                      + f"  scale {float(model.logit_scale.detach().exp()):.1f}  {rate:.0f} img/s  ETA {eta:.0f} s",
                      flush=True)
        model.eval()
        log = {"pool_s": round(pool_s, 1), "train_s": round(time.perf_counter() - start, 1), "history": history}
    return model, tokens, log


def history_agreement(committed: list[dict[str, float]], rebuilt: list[dict[str, float]]) -> dict[str, Any]:
    """How far two training logs (rows of step and losses, rounded to 4 decimals) agree: the last step up to which
    every loss is equal (-1: not even the first), and the largest absolute difference of any logged loss."""
    if [r["step"] for r in committed] != [r["step"] for r in rebuilt]:
        raise ValueError("the two training logs are of different steps: compare builds of the same config")
    if any(set(a) != set(b) for a, b in zip(committed, rebuilt)):
        raise ValueError("the two training logs log different losses: compare builds of the same code")
    through, diverged, largest = -1, False, 0.0
    for a, b in zip(committed, rebuilt):
        gap = max(abs(a[k] - b[k]) for k in a if k != "step")
        largest = max(largest, gap)
        diverged = diverged or gap > 5e-5  # the logs keep 4 decimals
        through = through if diverged else a["step"]
    return {"identical_through": through, "max_abs": round(largest, 4)}


# -- saving ---------------------------------------------------------------------------------------------------------
def weights_bytes(model: torch.nn.Module, tokens: CompactTokens, cfg: PretrainConfig) -> bytes:
    """The safetensors file: the state dict with the token table stored as its used rows and their ids."""
    from safetensors.torch import save

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    state[clip.TOKEN_ROWS] = state.pop("token_embedding.weight")
    state[clip.TOKEN_IDS] = tokens.ids.clone()
    about = {"model": cfg.model, "pretrain_config": dataclasses.asdict(cfg),
             "held_out_words": sorted(W.HELD_OUT_WORDS), "held_out_combinations": sorted(W.HELD_OUT_COMBINATIONS)}
    # One metadata entry: safetensors writes several in hash-map order, which differs from run to run.
    return save(state, metadata={"tiny_clip_synth": json.dumps(about, sort_keys=True)})


def save_weights(model: torch.nn.Module, tokens: CompactTokens, cfg: PretrainConfig, path: Path) -> str:
    """Write the weights and ``<path>.sha256`` (each atomically); returns the checksum."""
    data = weights_bytes(model, tokens, cfg)
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_text(clip.checksum_path(path), f"{digest}  {path.name}\n")
    return digest
