"""Where datasets and generated data live."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Generated data and cached embeddings: ``$BENCH_CACHE``, else ``$XDG_CACHE_HOME/knnclip-bench``."""
    if os.environ.get("BENCH_CACHE"):
        path = Path(os.environ["BENCH_CACHE"])
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knnclip-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def expand_root(root: str, data_root: str | Path) -> Path:
    """A task's ``root`` from its YAML: ``{cache}`` expands to :func:`cache_dir`; relative paths are under
    ``data_root`` (the ``DATA_ROOT`` setting)."""
    if "{cache}" in root:
        return Path(root.replace("{cache}", str(cache_dir())))
    path = Path(root).expanduser()
    return path if path.is_absolute() else Path(data_root) / path
