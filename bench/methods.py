"""Methods: how a step adapts. A method is a registry entry, never a branch on its name elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    uses_memory: bool  # adapt fills the kNN memory; evaluation fuses retrieval with the base model
    description: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("knn", True, "kNN-CLIP: ground-truth masks of each task embedded into a memory; retrieval fused "
                            "with the base model"),
        Method("zeroshot", False, "the base open-vocabulary model alone (lower bound, nothing adapts)"),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown METHOD {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]
