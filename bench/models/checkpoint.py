"""Weights from a checkpoint file the user names (``model.pretrained``, ``embedder.pretrained``): which values are
files, their sha256 (what records name them by), reading their state dict, and why one does not fit a model.

A value names a file when it contains a path separator, starts with ``~``, ends in a checkpoint suffix
(:data:`SUFFIXES`), or, not being a known tag, names something on disk. Tags never contain any of these, so a tag
such as ``laion2b_s34b_b88k`` is never taken for a file; ``./name`` makes a bare name in the current folder a file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from bench.errors import ConfigError, WeightsUnavailable, first_line

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
FILE_TAG = "file"  # the tag of weights from a file (the file itself is in the identity and the record)
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: each file hashed once


def names_file(value: str, tags: Collection[str] = ()) -> bool:
    """Whether a ``pretrained`` value is a checkpoint file rather than one of ``tags`` (module docstring)."""
    if not value:
        return False
    seps = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if any(s in value for s in seps) or value.startswith("~") or value.lower().endswith(SUFFIXES):
        return True
    return value not in tags and os.path.lexists(value)


def weights_file(key: str, value: str) -> Path:
    """The absolute path of the checkpoint file ``value`` of config key ``key``; a one-line ConfigError when there
    is no file there (nothing, a directory)."""
    path = Path(os.path.abspath(os.path.expanduser(value)))
    if path.is_dir():
        raise ConfigError(f"{key}: {path}: is a directory, expected a checkpoint file ({', '.join(SUFFIXES)})")
    if not path.is_file():
        raise ConfigError(f"{key}: {path}: no such file")
    return path


def file_sha256(key: str, path: Path) -> str:
    """The sha256 hex digest of ``path``, streamed in chunks; computed once per process per (path, size, mtime)."""
    try:
        stat = path.stat()
        cache_key = (str(path), stat.st_size, stat.st_mtime_ns)
        if cache_key not in _DIGESTS:
            with path.open("rb") as f:
                _DIGESTS[cache_key] = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise WeightsUnavailable(f"{key}: {path}: cannot be read ({e.strerror or first_line(e)})") from e
    return _DIGESTS[cache_key]


def file_weights(key: str, path: Path) -> str:
    """What an identity calls the weights of a file: ``file(sha256=<first 16 hex digits>)``."""
    return f"{FILE_TAG}(sha256={file_sha256(key, path)[:16]})"


def read_state_dict(key: str, path: Path, wrappers: tuple[str, ...] = ("state_dict", "model", "teacher"),
                    prefixes: tuple[str, ...] = ("module.", "_orig_mod.")) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (safetensors, or ``torch.save`` read with ``weights_only``): a plain state
    dict or one under the first of ``wrappers`` it has, with DDP / compile ``prefixes`` dropped."""
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, random bytes, a pickle of other objects: the file is not weights
        raise WeightsUnavailable(f"{key}: {path}: cannot be read as a checkpoint ({first_line(e)})") from e
    for wrapper in wrappers:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{key}: {path}: holds no state dict of tensors (also looked under "
                                 f"{', '.join(repr(w) for w in wrappers)})")
    for prefix in prefixes:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Why ``state`` does not load into ``model`` strictly, in a few words (empty when it does): counts of missing
    and unexpected keys and of tensors of another shape, with the first of each."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {_shape(state[k])} in the file, {_shape(own[k])} in the model"
              for k in own if k in state and state[k].shape != own[k].shape]
    parts = [f"{len(found)} {what} (first: {found[0]})"
             for what, found in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("tensors of another shape", shapes)) if found]
    return "; ".join(parts)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"
