"""Registry of dataset readers: a new format is a new module that registers itself, never an if/elif on names."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol

from datamodules.contract import DataError

# Modules imported on first lookup so that each registers its reader(s).
_READER_MODULES = (
    "datamodules.coco_panoptic",
    "datamodules.synth",
    "datamodules.labelmaps",
    "datamodules.ade20k",
    "datamodules.pascal_context",
    "datamodules.cityscapes",
    "datamodules.lvis",
    "datamodules.hf_parquet",
)

READERS: dict[str, Callable[..., Reader]] = {}


class Reader(Protocol):
    """A split of one dataset in its native format, read lazily one sample at a time.

    Built as ``Reader(root=Path, split=str, vocabulary=Vocabulary, **options)``; yields contract samples
    (see :mod:`datamodules.contract`) with class ids local to ``vocabulary``. A reader whose segments are real
    instances and stuff regions (not one segment per class) sets ``panoptic = True``, and PQ is scored on it.
    """

    panoptic: bool

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def register_reader(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        READERS[name] = cls
        return cls

    return deco


def get_reader(name: str) -> Callable[..., Reader]:
    for mod in _READER_MODULES:
        importlib.import_module(mod)
    if name not in READERS:
        raise DataError(f"unknown dataset format {name!r}; known formats: {', '.join(sorted(READERS))}")
    return READERS[name]
