"""Typed run configuration: dataclass defaults < the sequence YAML's ``defaults`` < command-line overrides.

Every setting is checked where it enters (``set_value``), and the whole configuration once more before a run
starts (``validate``); an error is one line naming where the value came from, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import field, fields
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from bench.errors import ConfigError
from bench.memory.spec import KNOB_MIN, RUN_INDEX

# Pydantic dataclasses: one declaration per setting gives its type, its range, finite floats only
# (allow_inf_nan=False) and no unknown names (extra="forbid"), checked on construction and on every assignment
# (validate_assignment), so a bad value stops where it enters, before any model loads or run folder is made.
# They are still dataclasses: dataclasses.replace / asdict / fields, to_dict and config_hash work as before.
_CHECKED = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

AtLeastOne = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # outside this, Lightning's seed_everything swaps in another seed


@dataclass(config=_CHECKED)
class ModelConfig:
    name: str = "tiny-random"  # an open_clip model name or a suite config
    pretrained: str = ""  # open_clip pretrained tag, or a path to a checkpoint file; empty = the default weights
    seed: Seed = 0  # weights of random-init models


@dataclass(config=_CHECKED)
class BaseConfig:
    kind: str = "maskclip"  # the base segmenter (bench.models registry; python -m bench list)


@dataclass(config=_CHECKED)
class EmbedderConfig:
    kind: str = "clip"  # bench.models registry: clip (the base model's visual tower) or dinov2 (timm)
    name: str = "vit_small_patch14_dinov2"  # for dinov2 (dinov2-tiny-random in tests)
    image_size: NonNegative = 0  # 0 = the embedder's default
    pretrained: str = ""  # dinov2: empty = timm's hub weights; a path = a checkpoint file (named by sha256)


@dataclass(config=_CHECKED)
class ProposalConfig:
    kind: str = "superpixel"  # bench.proposals registry: gt (oracle), superpixel (SLIC), mask2former, sam
    n_segments: AtLeastOne = 64
    compactness: Annotated[float, Field(ge=0)] = 10.0
    # superpixel: 0 = SLIC on the full image; n = SLIC on the image scaled so its long side is at most n, the
    # labels scaled back (nearest): faster, coarser boundaries (README, "Performance")
    max_side: NonNegative = 0
    # mask2former, sam: a hub name or local folder (empty = the proposer's default checkpoint; tiny-random in tests)
    model: str = ""
    min_area: NonNegative = 0  # mask2former, sam: pixels a kept mask must cover after overlaps are resolved


@dataclass(config=_CHECKED)
class InferenceConfig:
    """How an image becomes dense features, for the base and the memory embedder alike, at adapt and at eval time.

    ``whole``: resized to the backbone's square input, aspect ratio dropped (the suite's first behaviour).
    ``slide``: resized keeping the aspect ratio (short side ``short_side``, long side at most ``max_long_side``),
    cut into ``crop``-sized windows ``stride`` apart, features averaged where windows overlap; as the dense-CLIP
    harness evaluates (SCLIP, wangf3014/SCLIP@b56bd30, clip_segmentor.py forward_slide and configs/cfg_*.py;
    the same harness in ClearCLIP and NACLIP). A sequence task may carry its own ``inference:`` block.
    """

    mode: Literal["whole", "slide"] = "slide"
    short_side: AtLeastOne = 336  # the harness's ADE20K, VOC, PASCAL Context and COCO-Object setting
    max_long_side: AtLeastOne = 2048
    crop: NonNegative = 0  # window side in pixels; 0 = the base model's input size (224 for ViT-B/16)
    stride: NonNegative = 0  # 0 = half the window


@dataclass(config=_CHECKED)
class TextConfig:
    """Prompts and class names for the text embeddings (each opt-in; the defaults are the suite's first ones)."""

    templates: Literal["short", "imagenet80"] = "short"  # 7 scene templates, or CLIP's 80 ImageNet templates
    synonyms: bool = False  # "building, edifice": embed each comma-separated name, average (key stays the line)
    # > 0: a proposal whose top class probability is below this is labelled with the vocabulary's background
    # class (a class named "background"); the harness uses 0.1 on VOC-21, PASCAL Context 60 and COCO-Object
    background_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.0


@dataclass(config=_CHECKED)
class KnnConfig:
    k: AtLeastOne = 16  # neighbours per proposal
    temperature: Positive = 0.05  # softmax temperature of the similarity-weighted votes
    threshold: float = 0.5  # T: retrieval is used where the best cosine similarity exceeds it
    lam: Annotated[float, Field(ge=0, le=1)] = 0.5  # λ: weight of the retrieval distribution where it is used
    # The memory's index: the kind (registered in bench.memory.kinds) and its knobs, defaults from
    # bench.memory.RUN_INDEX (exact until 65,536 entries, then 4096 IVF lists, 8 probed; see the README) and
    # least values from bench.memory.spec.KNOB_MIN (IndexSpec.check applies the same ones).
    index: str = RUN_INDEX.kind
    pca_dim: Annotated[int, Field(ge=KNOB_MIN["pca_dim"])] = RUN_INDEX.pca_dim  # 0 = no PCA; else project first
    nlist: Annotated[int, Field(ge=KNOB_MIN["nlist"])] = RUN_INDEX.nlist  # IVF lists; 0 = one per 64 vectors
    pq_m: Annotated[int, Field(ge=KNOB_MIN["pq_m"])] = RUN_INDEX.pq_m  # ivf-pq bytes per entry; 0 = automatic
    hnsw_m: Annotated[int, Field(ge=KNOB_MIN["hnsw_m"])] = RUN_INDEX.hnsw_m  # HNSW links per node
    ef_construction: Annotated[int, Field(ge=KNOB_MIN["ef_construction"])] = RUN_INDEX.ef_construction
    # IVF/PQ/PCA: entries kept exact (flat) until the index trains on them
    train_size: Annotated[int, Field(ge=KNOB_MIN["train_size"])] = RUN_INDEX.train_size
    nprobe: Annotated[int, Field(ge=KNOB_MIN["nprobe"])] = RUN_INDEX.nprobe  # IVF lists scanned per query
    ef_search: Annotated[int, Field(ge=KNOB_MIN["ef_search"])] = RUN_INDEX.ef_search  # HNSW search candidates
    gpu: bool = RUN_INDEX.gpu  # index on GPU 0; needs a GPU build of faiss (an error otherwise, never a CPU fallback)
    # index=auto: the recall@k (restricted search against exact search) the probe count is tuned to reach
    target_recall: Annotated[float, Field(gt=0, le=1)] = RUN_INDEX.target_recall
    # Several processes: each keeps 1/n of the entries and searches are merged across them (same neighbours as one
    # process). None = on when more than one process runs.
    shard: bool | None = None
    on_disk: bool = False  # IVF kinds: inverted lists in a memory-mapped file next to the run, not in RAM
    # A memory budget while adapting (0 = none): at most this many entries per class / in all, kept by a
    # deterministic reservoir; the record says how many were dropped
    max_per_class: NonNegative = 0
    max_entries: NonNegative = 0


@dataclass(config=_CHECKED)
class FinetuneConfig:
    """Fine-tuning baselines (finetune, replay, joint): the adapter's optimiser and the replay buffer."""

    epochs: AtLeastOne = 30
    lr: Positive = 1e-2
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    batch_size: AtLeastOne = 64
    replay_per_class: NonNegative = 10  # exemplars kept per class of each earlier task (replay only)


@dataclass(config=_CHECKED)
class RunConfig:
    sequence: str = "synth-shift"  # the embedded default (tiny-clip-synth); "synth" (tiny-random) is the fast one
    method: str = "knn"
    model: ModelConfig = field(default_factory=ModelConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    text: TextConfig = field(default_factory=TextConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: Seed = 0
    batch_size: AtLeastOne = 8
    # "32" on CPU; "bf16-mixed" or "16-mixed" (autocast) on GPU only. Part of the run id: it can change results.
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    data_root: str = "data"
    # every task scored at every step (the result matrix's upper triangle) and once before the first step with
    # the base alone: forward transfer, and what the memory does to vocabularies it holds no entries of
    eval_future: bool = False
    adapt_limit: NonNegative = 0  # 0 = the sequence's own limits; n = at most n adapt images per task
    eval_limit: NonNegative = 0
    # Where and how to run; these never change results, so they are left out of the run id.
    output_dir: str = "results/runs"
    run_id: str = ""  # empty = derived from the model and a hash of the config
    max_steps: NonNegative = 0  # 0 = all; n = stop after n steps (resume later with the same command)
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"  # auto = a GPU when one is visible, else the CPU
    devices: AtLeastOne = 1  # processes per node (GPUs, or CPU processes over gloo); > 1 = DDP; knn and zeroshot
    num_nodes: AtLeastOne = 1  # machines; one command per node (torchrun / SLURM, README "Running on GPUs")
    num_workers: NonNegative = field(default_factory=lambda: default_workers())  # decoding and CPU proposals
    progress: bool = True
    wandb: bool = True  # W&B logging (online with a login, offline without); CSV logs are always written
    wandb_memory: bool = False  # upload the final memory as a W&B artifact (knn)


# Upper-case names as the Makefile passes them.
ALIASES = {"SEQ": "sequence", "METHOD": "method", "MODEL": "model.name", "PRETRAINED": "model.pretrained",
           "BASE": "base.kind", "EMBEDDER": "embedder.kind", "PROPOSALS": "proposals.kind", "DATA_ROOT": "data_root",
           "SEED": "seed", "RUN_ID": "run_id", "DEVICES": "devices", "ACCELERATOR": "accelerator",
           "PRECISION": "precision", "NUM_NODES": "num_nodes"}
RUN_ONLY_KEYS = ("output_dir", "run_id", "max_steps", "progress", "num_workers", "wandb", "wandb_memory",
                 "devices", "accelerator", "num_nodes")
_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
          bool | None: "true, false or null (automatic)"}


def default_workers() -> int:
    """DataLoader workers when none are asked for: one per core but one (kept for the main process), at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        keys += _leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return keys


def _resolve(cfg: RunConfig, key: str) -> tuple[Any, str] | None:
    """The config object holding ``key``'s last part, and that part; None when a part is not a field."""
    *path, leaf = key.split(".")
    target: Any = cfg
    for part in path:
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in fields(target)}:
            return None
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in fields(target)}:
        return None
    return target, leaf


def _is_group(cfg: RunConfig, key: str) -> bool:
    found = _resolve(cfg, key)
    return found is not None and dataclasses.is_dataclass(getattr(*found))


def _expected(cls: type, name: str) -> str:
    """What a field takes, from its declaration: 'an integer >= 1', 'a finite number in [0, 1]'."""
    info = cls.__pydantic_fields__[name]
    bound = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    low = f"[{bound['ge']}" if "ge" in bound else f"({bound['gt']}" if "gt" in bound else None
    high = f"{bound['le']}]" if "le" in bound else f"{bound['lt']})" if "lt" in bound else None
    if low and high:
        span = f" in {low}, {high}"
    elif low:
        span = f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
    else:
        span = f" {'<=' if high and high[-1] == ']' else '<'} {high[:-1]}" if high else ""
    if get_origin(info.annotation) is Literal:
        return "one of " + ", ".join(str(v) for v in get_args(info.annotation))
    return _KINDS.get(info.annotation, str(info.annotation)) + span


def _unknown_key(cfg: RunConfig, key: str, label: str) -> ConfigError:
    known = _leaf_keys(cfg) + list(ALIASES)
    groups = [f.name for f in fields(cfg) if _is_group(cfg, f.name)]  # knnn: {k: 3} in a YAML finds knn
    lowered = {k.lower(): k for k in known + groups}  # seq=synth finds SEQ
    close = difflib.get_close_matches(key.lower(), lowered, n=1)
    hint = f"did you mean {lowered[close[0]]!r}?" if close else f"expected one of: {', '.join(known)}"
    return ConfigError(f"{label}: unknown key; {hint}")


def set_value(cfg: RunConfig, key: str, raw: Any, label: str | None = None) -> None:
    """Set a dotted key (``knn.k``, or an alias such as ``SEQ``) from a string or YAML value, checked against the
    field's type and range. ``label`` says where the value came from in errors (default: the key)."""
    label = label or key
    name = ALIASES.get(key, key)
    found = _resolve(cfg, name)
    if found is None:
        raise _unknown_key(cfg, name, label)
    target, leaf = found
    if dataclasses.is_dataclass(getattr(target, leaf)):
        keys = [k for k in _leaf_keys(cfg) if k.startswith(f"{name}.")]
        raise ConfigError(f"{label}: is a group of settings, not one; set one of {', '.join(keys)}")
    try:
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
    except yaml.YAMLError:
        value = raw
    kind = type(target).__pydantic_fields__[leaf].annotation
    wrong = f"{label}: must be {_expected(type(target), leaf)}, got {raw!r}"
    if get_origin(kind) is Literal:  # a choice of words (precision "32" is a word, not a number)
        kind = str
    if set(get_args(kind)) == {bool, type(None)}:  # an optional switch: true, false, or null (automatic)
        if value is None:
            setattr(target, leaf, None)
            return
        kind = bool
    if kind is str and not isinstance(value, (dict, list)):
        value = "" if value is None else str(raw if isinstance(raw, str) else value)
    elif isinstance(value, bool) != (kind is bool):  # only true/false for a switch, never as a number
        raise ConfigError(wrong)
    try:
        setattr(target, leaf, value)
    except ValidationError:
        raise ConfigError(wrong) from None


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any], prefix: str = "", where: str = "") -> None:
    """Apply a nested mapping (as written in a sequence YAML's ``defaults``). ``where`` names the mapping in
    errors, e.g. ``tasks/my.yaml: defaults`` gives ``tasks/my.yaml: defaults.knn.lam: ...``."""
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and _is_group(cfg, path):
            apply_mapping(cfg, value, f"{path}.", where)
        else:
            set_value(cfg, path, value, f"{where}.{path}" if where else path)


def validate(cfg: RunConfig) -> RunConfig:
    """Check every setting once more (a value may have been set around ``set_value``); raise a one-line
    :class:`ConfigError` naming the first bad key."""
    try:
        RunConfig.__pydantic_validator__.validate_python(to_dict(cfg))
    except ValidationError as e:
        loc = [str(p) for p in e.errors()[0]["loc"]]
        owner: Any = cfg
        for part in loc[:-1]:
            owner = getattr(owner, part)
        raise ConfigError(f"config: {'.'.join(loc)}: must be {_expected(type(owner), loc[-1])}, "
                          f"got {e.errors()[0]['input']!r}") from None
    return cfg


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


# Settings added after the first runs were named, at the values that do what those runs did: left out of the
# hash, so the runs and references named before them keep their names. ``inference`` is left out in ``whole``
# mode (the suite's first behaviour, where its other fields have no effect).
_LATER_NEUTRAL = {("precision",): "32", ("eval_future",): False, ("embedder", "pretrained"): "",
                  ("knn", "target_recall"): 0.95,
                  ("knn", "max_per_class"): 0, ("knn", "max_entries"): 0,
                  ("proposals", "max_side"): 0, ("proposals", "model"): "", ("proposals", "min_area"): 0,
                  ("text",): dataclasses.asdict(TextConfig())}


# Where the memory is kept, which never changes what a search returns (a sharded memory merges to the neighbours
# of one process, lists on disk are the lists in RAM): left out of the hash, so the same run resumes either way.
_PLACEMENT_KNN = ("shard", "on_disk")


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that can change results (not where or how the run is stored)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    for (*path, leaf), neutral in _LATER_NEUTRAL.items():
        holder = d
        for part in path:
            holder = holder[part]
        if holder[leaf] == neutral:
            del holder[leaf]
    if d["inference"]["mode"] == "whole":
        del d["inference"]
    for key in _PLACEMENT_KNN:
        del d["knn"][key]
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def task_inference(cfg: RunConfig, task: Any, where: str = "") -> InferenceConfig:
    """The inference settings of one task: the run's, with the task's own ``inference:`` block over them (a
    cross-dataset sequence mixes datasets with different published settings). Errors name the YAML task field."""
    if not getattr(task, "inference", None):
        return cfg.inference
    holder = RunConfig(inference=dataclasses.replace(cfg.inference))
    label = f"{where}: task {task.name!r}: inference" if where else f"task {task.name!r}: inference"
    for key, value in task.inference.items():
        set_value(holder, f"inference.{key}", value, f"{label}.{key}")
    return holder.inference


def base_from_config(cfg: RunConfig) -> Any:
    """The base segmenter the config names (model, weights, kind, prompts), as runs, sweeps and ``bench segment``
    build it."""
    from bench.models import build_base

    return build_base(cfg.model.name, cfg.model.pretrained, cfg.model.seed, cfg.base.kind, cfg.text.templates,
                      cfg.text.synonyms)


def proposer_from_config(cfg: RunConfig) -> Any:
    """The proposal generator the config's ``proposals`` group names, with every one of its settings."""
    from bench.proposals import build_proposer

    p = cfg.proposals
    return build_proposer(p.kind, p.n_segments, p.compactness, max_side=p.max_side, model=p.model,
                          min_area=p.min_area)
