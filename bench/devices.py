"""Where a run computes: the accelerator, process count, nodes and precision, checked before any model loads.

``accelerator=auto`` takes a GPU when torch sees one, else the CPU. A GPU asked for and not there, more GPUs than
are visible, or mixed precision on the CPU is a one-line error naming the key and what was found; nothing is
substituted. Lightning launches and connects the processes (NCCL between GPUs, gloo between CPU processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    accelerator: str  # "cpu" or "gpu"
    devices: int  # processes per node
    num_nodes: int
    precision: str  # Lightning's precision string

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes

    def describe(self) -> str:
        """What the run ran on, for the record's timings (never part of its identity)."""
        if self.accelerator == "cpu":
            where = f"cpu ({os.cpu_count()} cores)"
        else:
            import torch

            where = f"gpu ({torch.cuda.get_device_name(0)})"
        return f"{where} x{self.devices} per node x{self.num_nodes} nodes, precision {self.precision}"


def _visible_gpus() -> tuple[int, str]:
    """How many GPUs torch sees, and a phrase saying what was found (for errors)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    env = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return count, f"torch {torch.__version__} ({build}) sees {count} GPU{'s' if count != 1 else ''}{env}"


def placement(cfg: Any) -> Placement:
    """The run's placement from its config (``accelerator``, ``devices``, ``num_nodes``, ``precision``)."""
    count, found = _visible_gpus()
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if count else "cpu"
    if accelerator == "gpu":
        if count == 0:
            raise ConfigError(f"accelerator=gpu: no GPU found ({found}); use accelerator=cpu or auto")
        if cfg.devices > count:
            raise ConfigError(f"devices={cfg.devices}: more GPUs than this node has ({found})")
    elif cfg.precision != "32":
        raise ConfigError(f"precision={cfg.precision}: mixed precision runs on GPUs only and this run is on the CPU "
                          f"(accelerator={cfg.accelerator}; {found}); use precision=32")
    precision = "32-true" if cfg.precision == "32" else cfg.precision
    return Placement(accelerator, cfg.devices, cfg.num_nodes, precision)
