"""Run flow: for each task, adapt once, save the memory, evaluate every task seen so far, record R[t][j]."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from bench import continual, resume
from bench.config import (
    RunConfig,
    apply_mapping,
    base_from_config,
    config_hash,
    parse_overrides,
    proposer_from_config,
    set_value,
    task_inference,
    to_dict,
    validate,
)
from bench.devices import placement
from bench.distributed import barrier, is_rank_zero
from bench.errors import ConfigError, DamagedStateError
from bench.inference import background_class
from bench.io import atomic_write_json, atomic_write_text, write_sidecar
from bench.methods import Method, RunContext, get_method, methods
from bench.protocols import PQ_METRICS, _pq_summary, _record_pq, _summarize  # noqa: F401 (tests import them here)
from bench.record import RunRecord, Summary, load_record
from bench.results import format_cumulative, format_matrix, git_commit, package_versions
from datamodules.check import preflight
from datamodules.sequence import SequenceSpec, content_changes, load_sequence
from datamodules.sequence_schema import safe_folder_name

log = logging.getLogger("bench")


def build_config(args: list[str]) -> tuple[RunConfig, SequenceSpec]:
    """Defaults, then the sequence YAML's ``defaults``, then ``key=value`` arguments; every value is checked
    where it enters (errors name the command-line key or the YAML file and field) and the whole config again
    at the end, before any model loads or run folder is made."""
    from bench.memory import INDEX_KINDS

    overrides = parse_overrides(args)
    cfg = RunConfig()
    for key in ("SEQ", "sequence"):
        if key in overrides:
            set_value(cfg, key, overrides[key], f"command line: {key}")
    spec = load_sequence(cfg.sequence)
    try:  # as the user would type it
        shown = spec.path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = spec.path
    apply_mapping(cfg, spec.defaults, where=f"{shown}: defaults")
    for key, value in overrides.items():
        set_value(cfg, key, value, f"command line: {key}")
    validate(cfg)
    for task in spec.tasks:  # a bad per-task inference block stops here, naming the YAML task
        task_inference(cfg, task, str(shown))
    get_method(cfg.method)
    INDEX_KINDS.get(cfg.knn.index)  # an unknown kind stops here rather than at the first memory
    return cfg, spec


def default_run_id(cfg: RunConfig, spec: SequenceSpec) -> str:
    """The model name and a hash of the config and of the sequence's content (its tasks, classes, splits and
    vocabularies, :meth:`SequenceSpec.content_hash`): editing the sequence YAML starts another run."""
    key = hashlib.sha1(f"{config_hash(cfg)}:{spec.content_hash()}".encode()).hexdigest()[:10]
    return f"{safe_folder_name(cfg.model.name)}-{key}"


def run_dir(cfg: RunConfig, spec: SequenceSpec) -> Path:
    """``<output_dir>/<sequence>/<method>/<run id>``; ``RUN_ID=`` names the last folder, one path component."""
    if cfg.run_id and safe_folder_name(cfg.run_id) != cfg.run_id:
        raise ConfigError(f"command line: RUN_ID must be one folder name (letters, digits, '.', '_', '+', '-'; "
                          f"no path separator, not starting with '.'), got {cfg.run_id!r}")
    return Path(cfg.output_dir) / safe_folder_name(spec.name) / cfg.method / (cfg.run_id or default_run_id(cfg, spec))


def _percent(x: torch.Tensor) -> float | None:
    value = float(x) * 100.0
    return None if math.isnan(value) else round(value, 4)


def _checkpoint(checkpoint_dir: Path) -> Any:
    """Lightning's checkpoint of every epoch, each file followed by its ``.sha256`` (checked before resuming)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    class ChecksummedCheckpoint(ModelCheckpoint):
        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            Path(filepath + ".sha256").unlink(missing_ok=True)
            super()._save_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                write_sidecar(filepath)

        def _remove_checkpoint(self, trainer: Any, filepath: str) -> None:
            super()._remove_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                Path(filepath + ".sha256").unlink(missing_ok=True)

    return ChecksummedCheckpoint(dirpath=checkpoint_dir, save_last="link", save_top_k=1, every_n_epochs=1,
                                 enable_version_counter=False, save_on_train_epoch_end=True)


def _trainer(cfg: RunConfig, max_epochs: int = 1, checkpoint_dir: Path | None = None) -> Any:
    import lightning as L

    # Lightning's start-up notes (no GPU, tips) repeat for every step; keep the output to what the run says.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    callbacks = []
    if checkpoint_dir is not None:  # fine-tuning: resumable mid-step from the last finished epoch
        callbacks.append(_checkpoint(checkpoint_dir))
    where = placement(cfg)
    ddp = where.world > 1
    if cfg.progress and not ddp:  # one bar per adapt / eval dataloader, in images (images/s, ETA)
        from bench.loggers import progress_bar

        callbacks.append(progress_bar())
    # Deterministic algorithms on the CPU (records are reproducible bit for bit); on GPUs an operation without a
    # deterministic CUDA kernel warns instead of stopping the run (records agree within the gpu-check tolerance).
    return L.Trainer(accelerator=where.accelerator, devices=where.devices, num_nodes=where.num_nodes,
                     precision=where.precision, strategy="ddp" if ddp else "auto",
                     use_distributed_sampler=False,  # the datamodule shards without padding (bench.sampling)
                     logger=False, enable_checkpointing=checkpoint_dir is not None,
                     callbacks=callbacks, enable_model_summary=False, enable_progress_bar=cfg.progress and not ddp,
                     max_epochs=max_epochs, deterministic=True if where.accelerator == "cpu" else "warn")


# What a record says of the base's weights, by tag (a file's sha256 is in model.identity, its path in pretrained).
WEIGHTS_NOTES = {"random-init": "random-init, not pretrained", "file": "from a checkpoint file"}


def new_record(cfg: RunConfig, spec: SequenceSpec, method: Method, base: Any, embedder: Any) -> RunRecord:
    tasks = [t.name for t in spec.tasks]
    return RunRecord(
        sequence=spec.name, method=method.name,
        model={"name": cfg.model.name, "pretrained": getattr(base, "pretrained", base.tag), "identity": base.identity,
               "weights": WEIGHTS_NOTES.get(base.tag, "pretrained")},
        base=cfg.base.kind, proposer=cfg.proposals.kind,
        embedder=embedder.identity if embedder is not None else None,
        tasks=tasks, vocabulary_sizes=[len(t.vocabulary) for t in spec.tasks], protocol=spec.protocol,
        matrix={"miou": [[None] * len(tasks) for _ in tasks]},
        config=to_dict(cfg), config_hash=config_hash(cfg), seed=cfg.seed,
        sequence_hash=spec.content_hash(), sequence_content=spec.content(),
        versions=package_versions(), git_commit=git_commit(), timings={"steps": []})


def run(cfg: RunConfig, spec: SequenceSpec, recompute_from: int | None = None) -> RunRecord:
    """Run (or resume) a sequence; returns the record, also written to ``<run dir>/record.json``.

    ``recompute_from=t`` deletes the state and record rows of steps >= t and resumes from step t-1's state. The
    run folder is created and locked first (:func:`bench.resume.claim`): an unwritable output folder or a second
    command on the same run stops here, before a model loads."""
    resume.check_recompute_from(recompute_from, len(spec.tasks))
    placement(cfg)  # accelerator / precision errors before the run folder is made
    for task in spec.tasks:  # text.background_threshold > 0 needs a background class in every vocabulary
        background_class(task.vocabulary.classes, cfg.text.background_threshold, f"task {task.name!r} ({spec.path})")
    with resume.claim(run_dir(cfg, spec)):
        return _run(cfg, spec, recompute_from)


def _run(cfg: RunConfig, spec: SequenceSpec, recompute_from: int | None) -> RunRecord:
    import lightning as L

    from bench.dense import check_protocol
    from bench.loggers import finish, log_final, log_results, make_loggers
    from bench.models import base_weights_identity
    from bench.module import ContinualSegmenter
    from bench.plots import heatmap
    from bench.proposals import loader_transform
    from datamodules import SequenceDataModule

    method = get_method(cfg.method)
    where = placement(cfg)  # a GPU asked for and not there stops here, before a model loads
    if where.world > 1 and not method.distributed:
        raise ConfigError(f"METHOD {method.name!r} runs in one process only (devices=1, num_nodes=1); "
                          f"devices={cfg.devices} x num_nodes={cfg.num_nodes} is supported by: "
                          f"{', '.join(n for n, m in methods().items() if m.distributed)}")
    out = run_dir(cfg, spec)
    record_path = out / "record.json"
    previous = load_record(record_path) if record_path.exists() else None
    if previous is not None and previous.config_hash != config_hash(cfg):
        raise ConfigError(f"{out} holds a run with another config (hash {previous.config_hash}, this one "
                          f"{config_hash(cfg)}); choose another RUN_ID or delete the folder")
    if previous is not None and previous.sequence_hash not in (None, spec.content_hash()):
        changed = content_changes(previous.sequence_content or {}, spec.content()) or ["content"]
        raise ConfigError(f"{out} holds a run made from other contents of sequence {spec.name!r} "
                          f"({'; '.join(changed)}; {spec.path}); choose another RUN_ID or delete the folder")
    if previous is not None:
        had, now = previous.model.identity, base_weights_identity(
            cfg.base.kind, cfg.model.name, cfg.model.pretrained, cfg.model.seed)
        if had != now:
            raise ConfigError(f"{out} holds a run made with other weights ({had}; these are {now}); choose "
                              "another RUN_ID or delete the folder")
    previous = resume.rewind(out, method, previous, recompute_from, len(spec.tasks), _resummarize)
    if previous is not None and previous.complete:
        say(f"already complete: {record_path}")
        say(_tables(previous))
        return previous

    readers: dict = {}  # shared with the DataModule: the files preflight parses are parsed once
    preflight(spec, cfg.data_root, readers=readers)  # a missing or broken eval file stops it before a model loads
    L.seed_everything(cfg.seed, verbose=False)
    start = time.perf_counter()
    base = base_from_config(cfg)
    for task in spec.tasks:  # windows need the base's input size: checked once it is known
        label = "inference" if not task.inference else f"{spec.path}: task {task.name!r}: inference"
        check_protocol(task_inference(cfg, task), base.image_size, label)
    proposer = proposer_from_config(cfg)
    # CPU proposals are made in the eval loaders' workers, beside decoding, off the main process.
    dm = SequenceDataModule(spec, cfg.data_root, cfg.batch_size, cfg.num_workers, cfg.adapt_limit,
                            cfg.eval_limit, readers, eval_transform=loader_transform(proposer),
                            pin_memory=where.accelerator == "gpu")
    ctx = RunContext(cfg, spec, base, dm, out, functools.partial(_trainer, cfg))
    first = previous.steps_done if previous else 0
    try:
        method.setup(ctx, first)
    except DamagedStateError as e:  # the message says what to delete to recompute from the damaged step
        if e.step is None:
            e.state, e.step = method.state_path(out, first), first
        raise
    module = ContinualSegmenter(base, proposer, method.head, cfg.text.background_threshold)
    record = previous or new_record(cfg, spec, method, base, method.head.embedder)
    record.git_commit, record.versions = git_commit(), package_versions()
    record.timings["model_load_s"] = round(time.perf_counter() - start, 3)
    record.timings["placement"] = where.describe()
    if first:
        say(f"resuming {out} after step {first} of {len(spec.tasks)}")
    last = len(spec.tasks) if not cfg.max_steps else min(len(spec.tasks), first + cfg.max_steps)
    # Only rank 0 writes, logs and prints; the other ranks (started by Lightning at the first Trainer call) compute.
    loggers = make_loggers(out, spec.name, method.name, out.name, to_dict(cfg), use_wandb=cfg.wandb) \
        if is_rank_zero() else []
    ok = False
    try:
        if cfg.eval_future and not record.initial and first == 0 and last > 0:
            from bench.protocols import evaluate_initial

            evaluate_initial(ctx, proposer, record)
        for t in range(first, last):
            _step(ctx, method, module, t, record)
            log_results(loggers, record, t + 1)
        # record.json says complete only once every artefact is written: a failure on the way (a full disk) leaves
        # it incomplete on disk, and the same command writes the artefacts again.
        record.complete = record.steps_done == len(spec.tasks)
        if record.complete and is_rank_zero():
            atomic_write_text(out / "table.txt", _tables(record) + "\n")
            pngs = {m: heatmap(record, m, out / f"heatmap-{m}.png") for m in record["matrix"]}
            log_final(loggers, record, pngs, memory_dir=out / "memory" / f"step-{len(spec.tasks)}",
                      log_memory=cfg.wandb_memory and method.name == "knn")
            atomic_write_json(record_path, record.to_json())
        ok = True
    finally:
        finish(loggers, success=ok)
    barrier()  # every rank has finished before rank 0 returns (a caller may read what the others computed)
    say(_tables(record))
    say(f"record: {record_path}")
    return record


def say(text: str) -> None:
    if is_rank_zero():
        print(text)


def _tables(record: RunRecord) -> str:
    tables = [format_matrix(record, m) for m in ("miou", "pq") if m in record["matrix"]]
    return "\n\n".join(t for t in (*tables, format_cumulative(record)) if t)


def _resummarize(record: RunRecord) -> None:
    """The summaries after the record's last finished step (also for a record cut back to an earlier step)."""
    t = record.steps_done - 1
    record.summary["miou"] = Summary(**_summarize(record.matrix["miou"], t))
    if record.initial.get("miou"):
        record.summary["miou"].forward_transfer = continual.forward_transfer(record.matrix["miou"][: t + 1],
                                                                             record.initial["miou"])
    for metric in PQ_METRICS:
        if metric in record.matrix:
            record.summary[metric] = _pq_summary(record.matrix[metric], t)


def _step(ctx: RunContext, method: Method, module: Any, t: int, record: RunRecord) -> None:
    from bench.protocols import evaluate_step, intervals

    spec, dm = ctx.spec, ctx.dm
    task = spec.tasks[t]
    say(f"step {t + 1}/{len(spec.tasks)}: adapt to {task.name!r} ({len(task.vocabulary)} classes)")
    dm.set_step(t)
    tick = time.perf_counter()
    timing: dict[str, Any] = {"step": t + 1, **method.adapt(ctx, t)}
    timing["adapt_s"] = round(time.perf_counter() - tick, 3)
    record.state_size.append(method.state_size(ctx))

    tick = time.perf_counter()
    timing.update(evaluate_step(ctx, module, t, record))
    timing["eval_s"] = round(time.perf_counter() - tick, 3)
    record.memory_classes.append(method.memory_classes(ctx))
    record.memory_index.append(method.index_report(ctx))
    record.timings["steps"].append(timing)
    record.steps_done = t + 1
    _resummarize(record)
    if is_rank_zero():
        record.intervals = intervals(ctx.out, record, record.vocabulary_sizes)
        atomic_write_json(ctx.out / "record.json", record.to_json())
