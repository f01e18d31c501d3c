"""Retrieval class distribution from k neighbours, and its fusion with the base model's distribution."""

from __future__ import annotations

import torch


def retrieval_distribution(scores: torch.Tensor, classes: torch.Tensor, num_classes: int,
                           temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity-weighted votes of the neighbours.

    scores: float ``Q×k`` cosine similarities; classes: int64 ``Q×k`` local class ids, -1 for a missing
    neighbour (fewer than k entries, or a class outside the vocabulary). Each neighbour votes for its class with
    weight ``softmax(score / temperature)`` over the valid neighbours of its query.
    Returns ``P_ret`` float ``Q×C`` (rows sum to 1, or to 0 when a query has no valid neighbour) and the
    confidence float ``[Q]``: the highest valid similarity, ``-inf`` when there is none.
    """
    valid = classes >= 0
    logits = torch.where(valid, scores / temperature, torch.full_like(scores, -torch.inf))
    has_any = valid.any(1, keepdim=True)
    weights = torch.where(has_any, torch.softmax(torch.where(has_any, logits, 0.0), dim=1), 0.0) * valid
    p_ret = torch.zeros(scores.shape[0], num_classes, dtype=scores.dtype, device=scores.device)
    p_ret.scatter_add_(1, classes.clamp_min(0), weights)
    confidence = torch.where(valid, scores, torch.full_like(scores, -torch.inf)).amax(1)
    return p_ret, confidence


def fuse(p_base: torch.Tensor, p_ret: torch.Tensor, confidence: torch.Tensor, threshold: float,
         lam: float) -> torch.Tensor:
    """``λ·P_ret + (1−λ)·P_base`` where retrieval is confident (confidence > threshold), else ``P_base``.

    p_base, p_ret: float ``Q×C``; confidence: float ``[Q]``. Returns float ``Q×C``.
    """
    confident = (confidence > threshold).unsqueeze(1)
    return torch.where(confident, lam * p_ret + (1.0 - lam) * p_base, p_base)
