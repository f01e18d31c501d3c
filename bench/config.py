"""Typed run configuration: dataclass defaults < the sequence YAML's ``defaults`` < command-line overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.memory.spec import RUN_INDEX


@dataclass
class ModelConfig:
    name: str = "tiny-random"  # an open_clip model name or a suite config
    pretrained: str = ""  # open_clip pretrained tag; empty = the model's default weights
    seed: int = 0  # weights of random-init models


@dataclass
class BaseConfig:
    kind: str = "maskclip"  # the base segmenter (bench.models registry; python -m bench list)


@dataclass
class EmbedderConfig:
    kind: str = "clip"  # bench.models registry: clip (the base model's visual tower) or dinov2 (timm)
    name: str = "vit_small_patch14_dinov2"  # for dinov2 (dinov2-tiny-random in tests)
    image_size: int = 0  # 0 = the embedder's default


@dataclass
class ProposalConfig:
    kind: str = "superpixel"  # bench.proposals registry: gt (oracle) or superpixel (SLIC)
    n_segments: int = 64
    compactness: float = 10.0


@dataclass
class KnnConfig:
    k: int = 16  # neighbours per proposal
    temperature: float = 0.05  # softmax temperature of the similarity-weighted votes
    threshold: float = 0.5  # T: retrieval is used where the best cosine similarity exceeds it
    lam: float = 0.5  # λ: weight of the retrieval distribution where it is used
    # The memory's index: the kind (registered in bench.memory.kinds) and its knobs, defaults from
    # bench.memory.RUN_INDEX (exact until 65,536 entries, then 4096 IVF lists, 8 probed; see the README).
    index: str = RUN_INDEX.kind
    pca_dim: int = RUN_INDEX.pca_dim  # 0 = no PCA; else project to this many dims before indexing (trained)
    nlist: int = RUN_INDEX.nlist  # IVF lists; 0 = one per 64 training vectors
    pq_m: int = RUN_INDEX.pq_m  # ivf-pq bytes per entry; 0 = the largest divisor of the dim up to 64
    hnsw_m: int = RUN_INDEX.hnsw_m  # HNSW links per node
    ef_construction: int = RUN_INDEX.ef_construction  # HNSW build-time candidate list
    train_size: int = RUN_INDEX.train_size  # IVF/PQ/PCA: entries kept exact (flat) until the index trains on them
    nprobe: int = RUN_INDEX.nprobe  # IVF lists scanned per query
    ef_search: int = RUN_INDEX.ef_search  # HNSW search-time candidate list
    gpu: bool = RUN_INDEX.gpu  # index on GPU 0; needs a GPU build of faiss (an error otherwise, never a CPU fallback)


@dataclass
class FinetuneConfig:
    """Fine-tuning baselines (finetune, replay, joint): the adapter's optimiser and the replay buffer."""

    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 64
    replay_per_class: int = 10  # exemplars kept per class of each earlier task (replay only)


@dataclass
class RunConfig:
    sequence: str = "synth-shift"  # the embedded default (tiny-clip-synth); "synth" (tiny-random) is the fast one
    method: str = "knn"
    model: ModelConfig = field(default_factory=ModelConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    batch_size: int = 8
    num_workers: int = 0
    data_root: str = "data"
    adapt_limit: int = 0  # 0 = the sequence's own limits; n = at most n adapt images per task
    eval_limit: int = 0
    # Where and how to run; these never change results, so they are left out of the run id.
    output_dir: str = "results/runs"
    run_id: str = ""  # empty = derived from the model and a hash of the config
    max_steps: int = 0  # 0 = all; n = stop after n steps (resume later with the same command)
    devices: int = 1  # n > 1: n processes on this machine (CPU DDP over gloo); knn and zeroshot only
    progress: bool = True
    wandb: bool = True  # W&B logging (online with a login, offline without); CSV logs are always written
    wandb_memory: bool = False  # upload the final memory as a W&B artifact (knn)


# Upper-case names as the Makefile passes them.
ALIASES = {"SEQ": "sequence", "METHOD": "method", "MODEL": "model.name", "PRETRAINED": "model.pretrained",
           "BASE": "base.kind", "EMBEDDER": "embedder.kind", "PROPOSALS": "proposals.kind", "DATA_ROOT": "data_root",
           "SEED": "seed", "RUN_ID": "run_id", "DEVICES": "devices"}
RUN_ONLY_KEYS = ("output_dir", "run_id", "max_steps", "progress", "num_workers", "wandb", "wandb_memory",
                 "devices")


def _leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        keys += _leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


def set_value(cfg: RunConfig, key: str, raw: Any) -> None:
    """Set a dotted key (``knn.k``) from a string or YAML value, converted to the field's type."""
    key = ALIASES.get(key, key)
    *path, leaf = key.split(".")
    target = cfg
    for part in path:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            break
    names = {f.name: f for f in fields(target)} if dataclasses.is_dataclass(target) else {}
    if leaf not in names or dataclasses.is_dataclass(getattr(target, leaf)):
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(_leaf_keys(cfg))} "
                          f"(and {', '.join(ALIASES)})")
    current = getattr(target, leaf)
    value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    if value is None:
        value = ""
    try:
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ValueError
        elif isinstance(current, (int, float)):
            if isinstance(value, bool) or (isinstance(current, int) and float(value) != int(value)):
                raise ValueError
            value = type(current)(value)
        else:
            value = str(raw if isinstance(raw, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r} expects a {type(current).__name__}, got {raw!r}") from None
    setattr(target, leaf, value)


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (as written in a sequence YAML's ``defaults``)."""
    for key, value in mapping.items():
        if isinstance(value, dict):
            apply_mapping(cfg, value, f"{prefix}{key}.")
        else:
            set_value(cfg, prefix + key, value)


def parse_overrides(args: list[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        if "=" not in arg:
            raise ConfigError(f"expected key=value, got {arg!r}")
        key, value = arg.split("=", 1)
        out[key.strip()] = value
    return out


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that can change results (not where or how the run is stored)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
