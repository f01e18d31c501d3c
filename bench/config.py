"""Typed run configuration: dataclass defaults < the sequence YAML's ``defaults`` < command-line overrides.

Every setting is checked where it enters (``set_value``), and the whole configuration once more before a run
starts (``validate``); an error is one line naming where the value came from, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import field, fields
from typing import Annotated, Any

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
    pretrained: str = ""  # open_clip pretrained tag; empty = the model's default weights
    seed: Seed = 0  # weights of random-init models


@dataclass(config=_CHECKED)
class BaseConfig:
    kind: str = "maskclip"  # the base segmenter (bench.models registry; python -m bench list)


@dataclass(config=_CHECKED)
class EmbedderConfig:
    kind: str = "clip"  # bench.models registry: clip (the base model's visual tower) or dinov2 (timm)
    name: str = "vit_small_patch14_dinov2"  # for dinov2 (dinov2-tiny-random in tests)
    image_size: NonNegative = 0  # 0 = the embedder's default


@dataclass(config=_CHECKED)
class ProposalConfig:
    kind: str = "superpixel"  # bench.proposals registry: gt (oracle) or superpixel (SLIC)
    n_segments: AtLeastOne = 64
    compactness: Annotated[float, Field(ge=0)] = 10.0


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
    knn: KnnConfig = field(default_factory=KnnConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: Seed = 0
    batch_size: AtLeastOne = 8
    num_workers: NonNegative = 0
    data_root: str = "data"
    adapt_limit: NonNegative = 0  # 0 = the sequence's own limits; n = at most n adapt images per task
    eval_limit: NonNegative = 0
    # Where and how to run; these never change results, so they are left out of the run id.
    output_dir: str = "results/runs"
    run_id: str = ""  # empty = derived from the model and a hash of the config
    max_steps: NonNegative = 0  # 0 = all; n = stop after n steps (resume later with the same command)
    devices: AtLeastOne = 1  # n > 1: n processes on this machine (CPU DDP over gloo); knn and zeroshot only
    progress: bool = True
    wandb: bool = True  # W&B logging (online with a login, offline without); CSV logs are always written
    wandb_memory: bool = False  # upload the final memory as a W&B artifact (knn)


# Upper-case names as the Makefile passes them.
ALIASES = {"SEQ": "sequence", "METHOD": "method", "MODEL": "model.name", "PRETRAINED": "model.pretrained",
           "BASE": "base.kind", "EMBEDDER": "embedder.kind", "PROPOSALS": "proposals.kind", "DATA_ROOT": "data_root",
           "SEED": "seed", "RUN_ID": "run_id", "DEVICES": "devices"}
RUN_ONLY_KEYS = ("output_dir", "run_id", "max_steps", "progress", "num_workers", "wandb", "wandb_memory",
                 "devices")
_KINDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


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


def config_hash(cfg: RunConfig) -> str:
    """Hash of everything that can change results (not where or how the run is stored)."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
