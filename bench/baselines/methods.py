"""finetune / replay / joint: one adapter-training method with two switches, registered three times."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import torch

from bench.baselines.adapter import Adapter, AdapterTraining, count_parameters
from bench.baselines.features import mask_embeddings
from bench.config import task_inference
from bench.errors import DamagedStateError, first_line
from bench.heads import AdapterHead
from bench.io import read_state_bytes, verify_sidecar, write_state_bytes
from bench.methods import METHODS, Method, RunContext


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation per epoch, seeded by (seed, epoch): a run resumed mid-step sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def _union(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


class AdapterFinetune(Method):
    distributed = False  # training under DDP would change the batches and the result; one process only
    uses_seed = True  # SEED orders the training batches (EpochShuffle)
    replay = False  # keep an exemplar buffer of earlier tasks and train on it too
    joint = False  # retrain from the base model on every task so far

    def __init__(self) -> None:
        self.buffer: tuple[torch.Tensor, list[str]] = (torch.zeros(0), [])

    @property
    def head(self) -> AdapterHead:
        return self._head

    def state_path(self, out: Path, step: int) -> Path:
        return out / "adapter" / f"step-{step}.pt"

    def _load(self, ctx: RunContext, step: int) -> dict[str, Any]:
        path = self.state_path(ctx.out, step)
        try:
            state = torch.load(io.BytesIO(read_state_bytes(path)), weights_only=True)
            if not {"adapter", "buffer_embeddings", "buffer_names"} <= set(state):
                raise ValueError("not an adapter state")
        except DamagedStateError as e:
            raise DamagedStateError(e.path, e.reason, path, step) from e
        except Exception as e:  # torch reports a truncated or foreign file in many ways
            raise DamagedStateError(path, f"cannot be read: {first_line(e)}", path,
                                    step) from e
        return state

    def _resume_checkpoint(self, checkpoints: Path, step: int) -> str | None:
        """The last epoch's Lightning checkpoint of an interrupted step, checked against its sidecar."""
        last = checkpoints / "last.ckpt"
        if not last.exists():
            return None
        try:
            verify_sidecar(last.resolve())
            torch.load(last, map_location="cpu", weights_only=False)
        except DamagedStateError as e:
            raise DamagedStateError(last, e.reason, checkpoints, step) from e
        except Exception as e:
            raise DamagedStateError(last, f"cannot be read: {first_line(e)}",
                                    checkpoints, step) from e
        return str(last)

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        adapter = Adapter(ctx.base.dim)
        self.buffer = (torch.zeros(0, ctx.base.dim), [])
        if steps_done:
            state = self._load(ctx, steps_done)
            adapter.load_state_dict(state["adapter"])
            self.buffer = (state["buffer_embeddings"], state["buffer_names"])
        self._head = AdapterHead(ctx.base, adapter)

    def _training_data(self, ctx: RunContext, t: int) -> tuple[torch.Tensor, list[str]]:
        base, dm = ctx.base, ctx.dm
        tasks = range(t + 1) if self.joint else [t]
        parts = [mask_embeddings(base, dm.adapt_dataset(j), ctx.cfg.batch_size,
                                 task_inference(ctx.cfg, ctx.spec.tasks[j])) for j in tasks]
        if self.replay:
            parts.append(self.buffer)
        return torch.cat([p[0] for p in parts]), [n for p in parts for n in p[1]]

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        cfg, head, base = ctx.cfg.finetune, self._head, ctx.base
        if self.joint:  # the upper bound retrains from the base model on everything seen so far
            head.adapter = Adapter(base.dim)
        x, names = self._training_data(ctx, t)
        vocabulary = _union(names)
        y = torch.tensor([vocabulary.index(n) for n in names])
        text = base.text_embeddings(vocabulary)
        training = AdapterTraining(head.adapter, text, base.logit_scale, cfg.lr, cfg.weight_decay)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=cfg.batch_size,
                                             sampler=EpochShuffle(len(y), ctx.cfg.seed * 1000 + t))
        checkpoints = ctx.out / "checkpoints" / f"step-{t + 1}"
        trainer = ctx.trainer(max_epochs=cfg.epochs, checkpoint_dir=checkpoints)
        trainer.fit(training, loader, ckpt_path=self._resume_checkpoint(checkpoints, t + 1))
        if self.replay:
            self._update_buffer(ctx, t)
        self._save(ctx, t + 1)
        shutil.rmtree(checkpoints, ignore_errors=True)
        loss = trainer.callback_metrics.get("loss_epoch")
        return {"adapt_samples": len(y), "train_loss": None if loss is None else round(float(loss), 5),
                "epochs": cfg.epochs}

    def _update_buffer(self, ctx: RunContext, t: int) -> None:
        """Keep the first ``replay_per_class`` embeddings of each class of task t (a fixed, seedless choice)."""
        x, names = mask_embeddings(ctx.base, ctx.dm.adapt_dataset(t), ctx.cfg.batch_size,
                                   task_inference(ctx.cfg, ctx.spec.tasks[t]))
        per_class = ctx.cfg.finetune.replay_per_class
        counts: dict[str, int] = {}
        for n in self.buffer[1]:
            counts[n] = counts.get(n, 0) + 1
        keep = []
        for i, n in enumerate(names):
            if counts.get(n, 0) < per_class:
                counts[n] = counts.get(n, 0) + 1
                keep.append(i)
        self.buffer = (torch.cat([self.buffer[0], x[keep]]), self.buffer[1] + [names[i] for i in keep])

    def _save(self, ctx: RunContext, step: int) -> None:
        buf = io.BytesIO()
        torch.save({"adapter": self._head.adapter.state_dict(), "buffer_embeddings": self.buffer[0],
                    "buffer_names": self.buffer[1]}, buf)
        write_state_bytes(self.state_path(ctx.out, step), buf.getvalue())

    def state_size(self, ctx: RunContext) -> dict[str, int]:
        out = {"trainable_params": count_parameters(self._head.adapter)}
        if self.replay:
            out["replay_buffer"] = len(self.buffer[1])
        return out


@METHODS.register("finetune")
class Finetune(AdapterFinetune):
    name = "finetune"
    description = "sequential fine-tuning of a mask-embedding adapter (forgets)"


@METHODS.register("replay")
class Replay(AdapterFinetune):
    name, replay = "replay", True
    description = "fine-tuning with a small exemplar buffer of earlier tasks"


@METHODS.register("joint")
class Joint(AdapterFinetune):
    name, joint = "joint", True
    description = "fine-tuning on all tasks seen so far at once (upper bound of fine-tuning)"
