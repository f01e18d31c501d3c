"""Dataset readers and the sequence DataModule. Knows nothing of models, memory or metrics.

The names below are loaded on first use (PEP 562), so importing one light module of the package (say
:mod:`datamodules.ignore` for the command line) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"IGNORE_INDEX": "datamodules.contract", "DataError": "datamodules.contract",
         "validate_sample": "datamodules.contract", "Vocabulary": "datamodules.vocabulary",
         "SequenceDataModule": "datamodules._datamodule"}

__all__ = ["IGNORE_INDEX", "DataError", "SequenceDataModule", "Vocabulary", "validate_sample"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
