"""Semantic maps from per-proposal class distributions (and the background fallback applied to them first)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bench.errors import ConfigError
from datamodules.contract import IGNORE_INDEX

BACKGROUND = "background"  # the class name text.background_threshold falls back to


def background_class(classes: Sequence[str], threshold: float, where: str) -> int | None:
    """The index of the class named ``background`` when ``threshold`` > 0 (None when the fallback is off);
    ``where`` names the task in the error raised when the vocabulary has no such class."""
    if threshold <= 0:
        return None
    if BACKGROUND not in classes:
        raise ConfigError(f"text.background_threshold={threshold:g} needs a class named {BACKGROUND!r}, but {where} "
                          f"has none; set text.background_threshold=0 or use a vocabulary with a background class")
    return list(classes).index(BACKGROUND)


def background_fallback(probs: torch.Tensor, background: int | None, threshold: float) -> torch.Tensor:
    """Proposals whose top class probability is below ``threshold`` take the background class.

    probs: float ``Q×C``, the head's final distribution per proposal (after fusion); background: the class
    index, None = off. Returns ``probs`` itself when off, else float ``Q×C`` where each such row is one-hot on
    the background class, so semantic and panoptic inference both read it as background (the dense-CLIP
    harness does the same per pixel with ``prob_thd``: ``max < prob_thd`` → class 0).
    """
    if background is None or threshold <= 0:
        return probs
    one_hot = torch.zeros(probs.shape[1], dtype=probs.dtype, device=probs.device)
    one_hot[background] = 1
    return torch.where((probs.max(1).values < threshold)[:, None], one_hot, probs)


def semantic_from_proposals(label_map: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Each pixel takes the most probable class of the proposal covering it.

    label_map: int64 ``H×W``, 0 = not covered, k = proposal k (1-based); probs: float ``Q×C``.
    Returns int64 ``H×W`` with local class ids, ``IGNORE_INDEX`` where no proposal covers the pixel (which the
    metric counts as a miss, never as a correct pixel).
    """
    best = probs.argmax(1)
    lut = torch.cat([torch.tensor([IGNORE_INDEX], device=best.device), best])
    return lut[label_map]


def _touching_pairs(label_map: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Distinct pairs ``[E, 2]`` of different labels in ``[0, num_labels)`` that touch (4-connectivity)."""
    keys = []
    for a, b in ((label_map[:, :-1], label_map[:, 1:]), (label_map[:-1, :], label_map[1:, :])):
        edge = a != b
        keys.append(a[edge] * num_labels + b[edge])
    keys = torch.cat(keys).unique()
    return torch.stack([keys // num_labels, keys % num_labels], 1)


def _join_stuff(group: torch.Tensor, stuff: torch.Tensor, classes: torch.Tensor) -> None:
    """Each stuff proposal joins the group of the first stuff proposal of its class (in place)."""
    first: dict[int, int] = {}
    ids = torch.nonzero(stuff).flatten()
    for k, c in zip(ids.tolist(), classes[ids].tolist()):
        group[k] = first.setdefault(c, k)


def _join_touching_things(group: torch.Tensor, label_map: torch.Tensor, thing: torch.Tensor,
                          classes: torch.Tensor) -> None:
    """Thing proposals of one class that touch, directly or through others, join one group (in place), named
    by its lowest proposal."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(group)
    a, b = _touching_pairs(label_map, n).unbind(1)
    edges = torch.stack([a, b], 1)[thing[a] & thing[b] & (classes[a] == classes[b])].cpu().numpy()
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    component = torch.from_numpy(connected_components(graph, directed=False)[1]).to(group.device)
    lowest = torch.full((n,), n, device=group.device).scatter_reduce(0, component, torch.arange(n, device=group.device),
                                                                     "amin")
    group[thing] = lowest[component[thing]]


def panoptic_from_proposals(label_map: torch.Tensor, probs: torch.Tensor, is_thing: torch.Tensor,
                            object_mask_threshold: float = 0.5, overlap_threshold: float = 0.8,
                            merge_things: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Panoptic segments from hard (non-overlapping) proposals, after Mask2Former's ``panoptic_inference``.

    label_map: int64 ``H×W``, 0 = not covered, k = proposal k (1-based); probs: float ``Q×C`` class distribution
    per proposal; is_thing: bool ``[C]``. A proposal is kept when its top probability exceeds
    ``object_mask_threshold`` and it keeps at least ``overlap_threshold`` of its area (always true for hard masks,
    where no other proposal can take pixels from it; the check is there for overlapping masks). Kept stuff
    proposals of one class form one segment. Kept thing proposals become instances; with ``merge_things``,
    proposals of the same class that touch (4-connectivity) form one instance, since a class-agnostic
    over-segmentation such as superpixels cuts every object into several pieces. Merging goes by proposal, not by
    pixel: a proposal is never split, even when its own pixels are not connected. Ground-truth (instance-level)
    proposals want ``merge_things=False``, or two touching objects of one class would become one.

    Returns the segment map (int64 ``H×W``, 0 = void, k = segment k) and the segment classes (int64 ``[S]``),
    segments numbered in the order of their first proposal.
    """
    device, label_map = label_map.device, label_map.long()
    n = probs.shape[0] + 1  # node 0 = not covered, node k = proposal k
    if label_map.numel():
        low, high = (int(v) for v in torch.aminmax(label_map))
        if low < 0 or high >= n:
            raise ValueError(f"label_map holds ids in [{low}, {high}], expected 0..{n - 1} (0 = not covered, "
                             "k = row k-1 of probs)")
    scores = torch.zeros(n, dtype=torch.float64, device=device)
    classes = torch.zeros(n, dtype=torch.long, device=device)
    if n > 1:
        top, best = probs.max(1)
        scores[1:], classes[1:] = top.to(device, torch.float64), best.to(device)
    area = torch.bincount(label_map.reshape(-1), minlength=n)
    kept_area = area  # hard masks: no other proposal can take pixels from a kept one
    keep = (scores > object_mask_threshold) & (area > 0) & (kept_area >= overlap_threshold * area)
    keep[0] = False
    thing = keep & is_thing.to(device)[classes]

    group = torch.arange(n, device=device)  # a segment is a group of proposals, named by its lowest member
    _join_stuff(group, keep & ~thing, classes)
    if merge_things and bool(thing.any()):
        _join_touching_things(group, label_map, thing, classes)
    names = torch.unique(group[keep])
    segment_of = torch.zeros(n, dtype=torch.long, device=device)
    segment_of[names] = torch.arange(1, len(names) + 1, device=device)
    return torch.where(keep, segment_of[group], 0)[label_map], classes[names]
