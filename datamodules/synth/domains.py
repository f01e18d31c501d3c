"""Synth domains: the same classes drawn another way (other textures for some classes, or another lighting of the
whole scene). Only non-default domains draw anything differently; ``default`` is the catalog's own look.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from datamodules.contract import DataError
from datamodules.synth.looks import (
    APPEARANCE,
    Appearance,
    Array,
    _blocks,
    _c,
    _cells,
    _lum_noise,
    _mix,
    _tree_shape,
)


def _leaf_litter(rng, y, x):
    """Autumn ground under the grass label: orange, red and brown leaves in small blocks."""
    leaves = np.array([[200, 110, 30], [170, 60, 30], [120, 80, 40], [215, 160, 50]], dtype=np.float64)
    n = y.shape[0] // 3 + 1
    pick = rng.integers(len(leaves), size=(n, n))
    cells = leaves[np.repeat(np.repeat(pick, 3, 0), 3, 1)[: y.shape[0], : y.shape[1]]]
    return cells + _lum_noise(rng, y, 6.0)


def _overcast(rng, y, x):
    return _mix(_c(150, 152, 158), _c(205, 205, 210), y / y.shape[0]) + _blocks(rng, y, 12, 8.0)


def _cobblestone(rng, y, x):
    h, w = rng.integers(6, 9), rng.integers(7, 11)
    yy, xx = y + rng.integers(h), x + rng.integers(w)
    row = yy // h
    xs = xx + (row % 3) * (w // 3)
    gap = ((yy % h) < 1.5) | ((xs % w) < 1.5)
    stone = _c(125, 110, 95) + _cells(rng, (row * 131 + xs // w).astype(np.int64), 18.0)
    return np.where(gap[..., None], _c(55, 50, 45), stone) + _lum_noise(rng, y, 4.0)


def _autumn_tree(rng, u, v):
    return _c(205, 95, 25) + _lum_noise(rng, u, 14.0)


def _night(rgb: Array) -> Array:
    """Dim, blue-tinted light: every colour loses about half its brightness, red and green more than blue."""
    return rgb * np.array([0.5, 0.55, 0.7]) + np.array([3.0, 6.0, 15.0])


@dataclass(frozen=True)
class Domain:
    """How a domain draws its scenes: appearance overrides per class, and a lighting of the final colours."""

    looks: Mapping[str, Appearance] = field(default_factory=dict)
    light: Callable[[Array], Array] | None = None
    description: str = ""

    def look(self, name: str) -> Appearance:
        return self.looks.get(name) or APPEARANCE[name]


DOMAINS: dict[str, Domain] = {
    "default": Domain(description="the catalog's own look"),
    "autumn": Domain(looks={"grass": Appearance(False, _leaf_litter), "sky": Appearance(False, _overcast),
                            "road": Appearance(False, _cobblestone),
                            "tree": Appearance(True, _autumn_tree, _tree_shape)},
                     description="new textures for grass (leaf litter), sky (overcast), road (cobblestone) "
                                 "and tree (orange foliage); other classes as usual"),
    "night": Domain(light=_night, description="every class as usual, under dim blue light"),
}


def get_domain(domain: str | Domain) -> Domain:
    if isinstance(domain, Domain):
        return domain
    if domain not in DOMAINS:
        raise DataError(f"synth: option 'domain' must be one of {', '.join(DOMAINS)}, got {domain!r}")
    return DOMAINS[domain]
