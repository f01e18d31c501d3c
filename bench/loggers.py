"""Lightning loggers for a run: CSV always, W&B online with a login and offline without one.

W&B must never cost a run: no prompt, no blocking on the network when there is no login, and any exception
from wandb turns into a warning after which the run goes on with the CSV logger alone. An offline W&B run
lies in ``<run dir>/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``.

Call order from a run: ``make_loggers`` once, ``log_results`` after each step, ``log_final`` when the run is
complete, ``finish`` always (in a ``finally``).
"""

from __future__ import annotations

import hashlib
import math
import netrc
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.runs import memory_entries

WANDB_PROJECT = "knnclip-bench"
_OFF_MODES = ("offline", "disabled", "dryrun")


def _wandb_hosts(env: Mapping[str, str]) -> set[str]:
    if env.get("WANDB_BASE_URL"):
        return {urlsplit(env["WANDB_BASE_URL"]).netloc}
    hosts = {"api.wandb.ai"}
    try:  # recent wandb releases default to another host that accepts the same keys
        from wandb.sdk.lib.urls import DEFAULT_BASE_URL

        hosts.add(urlsplit(DEFAULT_BASE_URL).netloc)
    except Exception:
        pass
    return hosts


def wandb_login_configured(env: Mapping[str, str] | None = None) -> bool:
    """True when W&B credentials exist without asking anyone: ``WANDB_API_KEY``, or a netrc entry (``$NETRC``
    or ``~/.netrc``) for the W&B host (``WANDB_BASE_URL``, default api.wandb.ai)."""
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY", "").strip():
        return True
    path = Path(env["NETRC"]) if env.get("NETRC") else Path(env.get("HOME") or Path.home()) / ".netrc"
    try:
        entries = netrc.netrc(str(path))
    except (OSError, netrc.NetrcParseError):
        return False
    return any((entry := entries.authenticators(host)) and entry[2] for host in _wandb_hosts(env))


def wandb_mode(env: Mapping[str, str] | None = None) -> str:
    """``online`` only with a login and WANDB_MODE not offline/disabled; ``disabled`` when asked for, else
    ``offline``."""
    env = os.environ if env is None else env
    asked = env.get("WANDB_MODE", "").strip().lower()
    if asked == "disabled":
        return "disabled"
    if asked in _OFF_MODES or not wandb_login_configured(env):
        return "offline"
    return "online"


def _wandb_run_id(run_dir: Path, sequence: str, method: str, run_id: str) -> str:
    """Stable for one run folder, so a resumed run continues the same W&B run."""
    key = f"{sequence}\0{method}\0{run_id}\0{run_dir.resolve()}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _is_wandb(logger: Any) -> bool:
    # By name, so that wandb is only imported when a W&B logger exists (and tests can stand one in).
    return type(logger).__name__ == "WandbLogger"


def _drop_on_error(loggers: list[Any], logger: Any, what: str, fn: Callable[[], Any]) -> None:
    """Run ``fn``; if W&B fails, warn, close that logger as well as it can and remove it from ``loggers``."""
    try:
        fn()
    except Exception as e:
        if not _is_wandb(logger):
            raise
        warnings.warn(f"W&B {what} failed ({type(e).__name__}: {e}); continuing with the CSV log only",
                      RuntimeWarning, stacklevel=3)
        try:
            logger.experiment.finish(exit_code=1)
        except Exception:  # already broken; nothing more to save
            pass
        if logger in loggers:
            loggers.remove(logger)


def make_loggers(run_dir: Path, sequence: str, method: str, run_id: str, config: dict[str, Any], *,
                 use_wandb: bool = True) -> list[Any]:
    """``[CSVLogger, WandbLogger]`` for a run (the W&B one left out when it cannot start or
    ``use_wandb=False``). CSV: ``<run_dir>/logs/version_<n>/metrics.csv`` (a new version per resume) and
    ``hparams.yaml``. W&B: project knnclip-bench, group = sequence, name = ``method/run_id``, files under
    ``<run_dir>/wandb``; online only with a login (see ``wandb_mode``)."""
    from lightning.pytorch.loggers import CSVLogger

    run_dir = Path(run_dir)
    csv_logger = CSVLogger(save_dir=str(run_dir), name="logs")
    csv_logger.log_hyperparams(config)
    loggers: list[Any] = [csv_logger]
    mode = wandb_mode()
    if not use_wandb or mode == "disabled":
        return loggers
    try:
        loggers.append(_make_wandb(run_dir, sequence, method, run_id, config, mode))
    except Exception as e:
        warnings.warn(f"W&B could not start ({type(e).__name__}: {e}); continuing with the CSV log only",
                      RuntimeWarning, stacklevel=2)
    return loggers


def _make_wandb(run_dir: Path, sequence: str, method: str, run_id: str, config: dict[str, Any], mode: str) -> Any:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(mode=mode, silent=True, console="off", save_code=False, disable_git=True,
                              init_timeout=60)
    # wandb.init here rather than inside WandbLogger: a failure stays within make_loggers' guard, and
    # "create_new" leaves any other W&B run of the process alone.
    run = wandb.init(project=WANDB_PROJECT, group=sequence, name=f"{method}/{run_id}", job_type=method,
                     tags=[sequence, method], id=_wandb_run_id(run_dir, sequence, method, run_id),
                     resume="allow", reinit="create_new", config=config, dir=str(run_dir), mode=mode,
                     settings=settings)
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return WandbLogger(experiment=run, save_dir=str(run_dir), project=WANDB_PROJECT, name=f"{method}/{run_id}")


def _clean(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _state(record: Mapping[str, Any], step: int) -> dict[str, float]:
    """``memory_size`` (entries) and the method's other ``state_size`` numbers after ``step`` (1-based)."""
    out: dict[str, float] = {}
    entries = memory_entries(record, step)
    if entries is not None:
        out["memory_size"] = float(entries)
    states = record.get("state_size") or []
    if 0 < step <= len(states) and isinstance(states[step - 1], Mapping):
        out.update({f"state/{k}": float(v) for k, v in states[step - 1].items()
                    if k != "memory_entries" and isinstance(v, int | float)})
    return out


def step_metrics(record: Mapping[str, Any], step: int) -> dict[str, float]:
    """Scalars of row ``step`` (1-based) of every metric: ``<metric>/<task>`` for the tasks seen,
    ``<metric>/average`` over them, plus ``memory_size`` and the step's times when recorded."""
    tasks, t = record["tasks"], step - 1
    out: dict[str, float] = {}
    for metric, rows in (record.get("matrix") or {}).items():
        if t >= len(rows):
            continue
        seen = [_clean(v) for v in rows[t][: t + 1]]
        for task, v in zip(tasks, seen):
            if v is not None:
                out[f"{metric}/{task}"] = v
        if seen and all(v is not None for v in seen):
            out[f"{metric}/average"] = math.fsum(seen) / len(seen)  # type: ignore[arg-type]
    out.update(_state(record, step))
    timing = next((s for s in (record.get("timings") or {}).get("steps", []) if s.get("step") == step), {})
    for key in ("adapt_s", "eval_s"):
        if timing.get(key) is not None:
            out[f"time/{key}"] = float(timing[key])
    return out


def summary_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """``<metric>/<summary>`` for final average, average incremental, mean forgetting, BWT, and
    ``<metric>/forgetting/<task>``; plus the final memory size and total times."""
    out: dict[str, float] = {}
    for metric, s in (record.get("summary") or {}).items():
        for key in ("final_average", "average_incremental", "mean_forgetting", "bwt"):
            v = _clean(s.get(key))
            if v is not None:
                out[f"{metric}/{key}"] = v
        for task, f in zip(record["tasks"], s.get("forgetting") or []):
            if _clean(f) is not None:
                out[f"{metric}/forgetting/{task}"] = float(f)
    out.update(_state(record, int(record.get("steps_done", 0))))
    steps = (record.get("timings") or {}).get("steps", [])
    for key in ("adapt_s", "eval_s"):
        values = [s[key] for s in steps if s.get(key) is not None]
        if values:
            out[f"time/{key}_total"] = math.fsum(values)
    return out


def log_results(loggers: list[Any], record: Mapping[str, Any], step: int | None = None) -> None:
    """Log the scalars of the row just filled (``step``, 1-based, default ``record["steps_done"]``) to
    every logger; the CSV file is flushed at once so a crash loses nothing logged."""
    step = int(record.get("steps_done", 0)) if step is None else step
    if step < 1:
        return
    metrics = step_metrics(record, step)
    for logger in list(loggers):
        if _is_wandb(logger):
            _drop_on_error(loggers, logger, "log", lambda lg=logger: lg.experiment.log({**metrics, "step": step}))
        else:
            logger.log_metrics(metrics, step=step)
            logger.save()


def _matrix_rows(record: Mapping[str, Any], metric: str) -> list[list[Any]]:
    tasks = record["tasks"]
    return [[f"{t + 1} {tasks[t]}", *(_clean(v) for v in row)] for t, row in enumerate(record["matrix"][metric])]


def _per_class_rows(record: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for t, per_task in enumerate(record.get("per_class_iou") or []):
        for task, classes in per_task.items():
            rows += [[t + 1, task, name, _clean(iou)] for name, iou in classes.items()]
    return rows


def _log_final_wandb(logger: Any, record: Mapping[str, Any], heatmap_png: Path | Mapping[str, Path] | None,
                     memory_dir: Path | None) -> None:
    import wandb

    run = logger.experiment
    payload: dict[str, Any] = {}
    for metric in record.get("matrix") or {}:
        payload[f"result_matrix/{metric}"] = wandb.Table(columns=["after step", *record["tasks"]],
                                                         data=_matrix_rows(record, metric))
    per_class = _per_class_rows(record)
    if per_class:
        payload["per_class_iou"] = wandb.Table(columns=["step", "task", "class", "iou"], data=per_class)
    pngs = {"miou": heatmap_png} if isinstance(heatmap_png, (str, Path)) else dict(heatmap_png or {})
    for metric, png in pngs.items():
        if png is not None and Path(png).is_file():
            payload[f"heatmap/{metric}"] = wandb.Image(str(png), caption=f"R[t][j], {metric}")
    run.log(payload)
    run.summary.update({**summary_metrics(record), "steps_done": int(record.get("steps_done", 0)),
                        "complete": bool(record.get("complete"))})
    if memory_dir is not None and Path(memory_dir).is_dir():
        artifact = wandb.Artifact(name=f"memory-{logger.experiment.id}", type="memory",
                                  metadata={"sequence": record["sequence"], "method": record["method"],
                                            "memory_size": memory_entries(record)})
        artifact.add_dir(str(memory_dir))
        run.log_artifact(artifact)


def log_final(loggers: list[Any], record: Mapping[str, Any],
              heatmap_png: Path | Mapping[str, Path] | None = None, *, memory_dir: Path | None = None,
              log_memory: bool = False) -> None:
    """At the end of a run: to W&B the result matrix per metric (``wandb.Table``), the per-class IoU table
    (step, task, class, iou), the heatmap image(s) made by ``bench.plots.heatmap`` (one path = mIoU, or
    ``{metric: path}``), and the summary metrics into ``run.summary``; with ``log_memory`` the memory folder
    (``memory_dir``, e.g. ``<run dir>/memory/step-<T>``) as an artifact. To CSV the same summary scalars as
    one more row at ``step = steps_done``."""
    summary = summary_metrics(record)
    step = int(record.get("steps_done", 0))
    memory = memory_dir if log_memory else None
    for logger in list(loggers):
        if _is_wandb(logger):
            _drop_on_error(loggers, logger, "final log",
                           lambda lg=logger: _log_final_wandb(lg, record, heatmap_png, memory))
        elif summary:
            logger.log_metrics({f"summary/{k}": v for k, v in summary.items()}, step=step)
            logger.save()


def finish(loggers: list[Any], success: bool = True) -> None:
    """Flush the CSV log and close the W&B run (exit code 1 when ``success`` is False). Never raises for W&B."""
    for logger in list(loggers):
        if _is_wandb(logger):
            def close(lg: Any = logger) -> None:
                lg.experiment.finish(exit_code=0 if success else 1)

            _drop_on_error(loggers, logger, "finish", close)
        else:
            logger.finalize("success" if success else "failed")


# ---------------------------------------------------------------- progress


def _loader_images(loader: Any) -> int | None:
    """Images one pass over ``loader`` serves on this process: its sampler's length (a shard under DDP), else its
    dataset's; None when neither is known."""
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        try:
            return len(part)  # type: ignore[arg-type]
        except TypeError:
            continue
    return None


def _task_name(trainer: Any, stage: str, index: int) -> str:
    """The task a dataloader serves (the suite's DataModule knows), else its index."""
    dm = getattr(trainer, "datamodule", None)
    try:
        task = dm.tasks[dm.step] if stage == "adapt" else dm.evaluated()[index]
        return str(task.name)
    except (AttributeError, IndexError, TypeError):
        return f"dataloader {index}"


def progress_bar() -> Any:
    """Lightning's tqdm progress bar with one bar per adapt and eval dataloader, counted in images (total known
    from the sampler, so each bar shows images/s and the ETA) and named by its task; fine-tuning epochs keep
    Lightning's own bar, one line redrawn from epoch to epoch (not left behind: a baseline fits 30 epochs a
    task)."""
    from lightning.pytorch.callbacks import TQDMProgressBar
    from tqdm import tqdm

    class ImageProgressBar(TQDMProgressBar):
        def __init__(self) -> None:
            super().__init__(leave=False)
            self._bar: Any = None
            self._open_key: tuple[str, int] | None = None

        # Fine-tuning (the baselines): Lightning's epoch bar, without the empty "Training: 0/?" lines it prints
        # when the bar is made and at each epoch's reset before the batch count is set.
        def init_train_tqdm(self) -> Any:
            from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

            return Tqdm(desc="fit", position=2 * self.process_position, disable=self.is_disabled, leave=False,
                        dynamic_ncols=True, file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT,
                        delay=3600)  # nothing drawn until the first epoch sets its total

        def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
            from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf

            bar = self.train_progress_bar
            bar.set_description(f"fit: epoch {trainer.current_epoch}", refresh=False)
            bar.reset(total=convert_inf(self.total_train_batches))
            bar.initial = 0

        def _start(self, trainer: Any, stage: str, index: int) -> None:
            if self._open_key == (stage, index):
                return
            self._finish()
            loaders = trainer.predict_dataloaders if stage == "adapt" else trainer.test_dataloaders
            loader = loaders[index] if isinstance(loaders, list | tuple) else loaders
            self._bar = tqdm(total=_loader_images(loader), desc=f"{stage} {_task_name(trainer, stage, index)}",
                             unit="img", dynamic_ncols=True, leave=True, smoothing=0.3)
            self._open_key = (stage, index)

        def _advance(self, batch: Any) -> None:
            if self._bar is not None:
                self._bar.update(len(batch) if isinstance(batch, list | tuple) else 1)

        def _finish(self, *_: Any) -> None:
            if self._bar is not None:
                self._bar.close()
            self._bar, self._open_key = None, None

        # Lightning's predict/test bars (one for all dataloaders, counted in batches) are replaced, not drawn.
        def on_predict_start(self, *_: Any) -> None:
            pass

        def on_predict_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                   dataloader_idx: int = 0) -> None:
            self._start(trainer, "adapt", dataloader_idx)

        def on_predict_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                 dataloader_idx: int = 0) -> None:
            self._advance(batch)

        on_predict_end = _finish

        def on_test_start(self, *_: Any) -> None:
            pass

        def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
            self._start(trainer, "eval", dataloader_idx)

        def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                              dataloader_idx: int = 0) -> None:
            self._advance(batch)

        on_test_end = _finish

    return ImageProgressBar()
