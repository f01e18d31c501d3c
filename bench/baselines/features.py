"""Pooled ground-truth mask embeddings of an adapt split, cached on disk per base model and split.

Fine-tuning only ever sees these vectors, so the expensive backbone pass happens once per (model, split), and
every later epoch, method and rerun reads the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch
import torch.nn.functional as F

from bench.dense import WHOLE, dense_features
from bench.heads.zeroshot import project_pooled
from bench.io import cache_dir, read_cache, write_state_bytes


def _key(identity: str, dataset: Any, protocol: Any) -> str:
    task = dataset.task
    desc = {"model": identity, "task": task.name, "format": task.format, "root": task.root,
            "options": task.options, "classes": list(dataset.vocabulary.classes), "length": len(dataset),
            "split": getattr(dataset.reader, "split", None)}
    if protocol.mode != "whole":
        desc["inference"] = [protocol.mode, protocol.short_side, protocol.max_long_side, protocol.crop,
                             protocol.stride]
    return hashlib.sha1(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


@torch.no_grad()
def mask_embeddings(base: Any, dataset: Any, batch_size: int = 8, protocol: Any = WHOLE
                    ) -> tuple[torch.Tensor, list[str]]:
    """float32 ``N×D`` L2-normalised embeddings of every non-crowd ground-truth segment, and their class names.

    ``base`` is a base segmenter (its dense features, the ones classified against text); ``dataset`` a
    :class:`datamodules.sequence.TaskDataset`; ``protocol`` the task's inference protocol. Cached under
    ``<cache>/features/``.
    """
    path = cache_dir() / "features" / f"{_key(base.identity, dataset, protocol)}.pt"
    cached = read_cache(path, "mask-embedding cache", ("embeddings", "names"))
    if cached is not None:
        return cached["embeddings"], cached["names"]
    embeddings, names = [], []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        features = dense_features([base], [s["image"] for s in batch], protocol, getattr(base, "image_size", None))
        for sample, feats in zip(batch, features[0]):
            pooled, classes = feats.segments(sample)
            embeddings.append(F.normalize(project_pooled(base, pooled), dim=1))
            names += [dataset.vocabulary.classes[c] for c in classes.tolist()]
    out = torch.cat(embeddings).float() if embeddings else torch.zeros(0, base.dim)
    buf = io.BytesIO()
    torch.save({"embeddings": out, "names": names}, buf)
    write_state_bytes(path, buf.getvalue())
    return out, names
