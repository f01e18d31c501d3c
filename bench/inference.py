"""Semantic maps from per-proposal class distributions."""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = 255


def semantic_from_proposals(label_map: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Each pixel takes the most probable class of the proposal covering it.

    label_map: int64 ``H×W``, 0 = not covered, k = proposal k (1-based); probs: float ``Q×C``.
    Returns int64 ``H×W`` with local class ids, ``IGNORE_INDEX`` where no proposal covers the pixel (which the
    metric counts as a miss, never as a correct pixel).
    """
    best = probs.argmax(1)
    lut = torch.cat([torch.tensor([IGNORE_INDEX], device=best.device), best])
    return lut[label_map]


def _same_class_neighbours(label_map: torch.Tensor, classes: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Pairs ``[E, 2]`` of kept proposals (1-based) of the same class that touch (4-connectivity)."""
    pairs = torch.cat([torch.stack([label_map[:, :-1].reshape(-1), label_map[:, 1:].reshape(-1)], 1),
                       torch.stack([label_map[:-1, :].reshape(-1), label_map[1:, :].reshape(-1)], 1)])
    a, b = pairs.unbind(1)
    touching = (a != b) & keep[a] & keep[b] & (classes[a] == classes[b])
    return pairs[touching].unique(dim=0)


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
    device = label_map.device
    num_proposals = probs.shape[0]
    label_map = label_map.long()
    if label_map.numel() and (int(label_map.min()) < 0 or int(label_map.max()) > num_proposals):
        raise ValueError(f"label_map holds ids up to {int(label_map.max())}, expected 0..{num_proposals} "
                         f"(one per row of probs)")
    scores, best = probs.max(1) if num_proposals else (probs.new_zeros(0), torch.zeros(0, dtype=torch.long))
    best = best.to(device)
    area = torch.bincount(label_map.reshape(-1), minlength=num_proposals + 1)[1:]
    # Hard masks: every pixel already belongs to one proposal, so a proposal keeps all of its area.
    kept_area = area
    keep = (scores.to(device) > object_mask_threshold) & (area > 0)
    keep &= kept_area.double() >= overlap_threshold * area.double()

    # Group kept proposals into segments: one group per stuff class, per connected set of thing proposals.
    n = num_proposals + 1  # node 0 = uncovered
    thing = is_thing.to(device)[best] & keep
    classes = torch.cat([best.new_zeros(1), best])
    keep0 = torch.cat([keep.new_zeros(1), keep])
    group = torch.arange(n, device=device)
    stuff_ids = torch.nonzero(keep & ~thing).flatten() + 1
    if len(stuff_ids):  # each stuff proposal joins the first proposal of its class
        first = {}
        for k, c in zip(stuff_ids.tolist(), classes[stuff_ids].tolist()):
            group[k] = first.setdefault(c, k)
    if merge_things and bool(thing.any()):
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        thing0 = torch.cat([thing.new_zeros(1), thing])
        edges = _same_class_neighbours(label_map, classes, thing0).cpu().numpy()
        graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
        _, component = connected_components(graph, directed=False)
        component = torch.from_numpy(component).to(device)
        # The group of a thing proposal: the lowest-numbered proposal of its component.
        lowest = torch.full((n,), n, device=device).scatter_reduce(0, component, torch.arange(n, device=device),
                                                                   "amin")
        thing_ids = torch.nonzero(thing).flatten() + 1
        group[thing_ids] = lowest[component[thing_ids]]

    # Number segments by their first proposal: group representatives in increasing order.
    reps = torch.unique(group[keep0])
    segment_of = torch.zeros(n, dtype=torch.long, device=device)
    segment_of[reps] = torch.arange(1, len(reps) + 1, device=device)
    lut = torch.where(keep0, segment_of[group], 0)
    return lut[label_map], classes[reps].clone()
