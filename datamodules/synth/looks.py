"""The synth appearance catalog: how each class looks (a shape, a colour and a texture), and the palette.

Stuff painters get (rng, y, x) pixel grids; thing painters and shapes get (rng, u, v), the grids centred on the
instance and divided by its half extent, so the shape lies in [-1, 1]². Every draw comes from the ``rng`` passed
in, so a scene depends only on its seed (see :mod:`datamodules.synth.scene`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from datamodules.contract import DataError
from datamodules.vocabulary import Vocabulary

Array = np.ndarray


@dataclass(frozen=True)
class Appearance:
    isthing: bool
    paint: Callable[[np.random.Generator, Array, Array], Array]  # -> H×W×3 float colours
    shape: Callable[[Array, Array], Array] | None = None  # things: (u, v) -> H×W bool


def _c(r: float, g: float, b: float) -> Array:
    return np.array([r, g, b], dtype=np.float64)


def _fill(colour: Array, like: Array) -> Array:
    return np.broadcast_to(colour, (*like.shape, 3)).copy()


def _lum_noise(rng: np.random.Generator, like: Array, std: float) -> Array:
    """Grey-level noise (same on all channels), shaped H×W×1."""
    return rng.normal(0.0, std, like.shape)[..., None]


def _mix(a: Array, b: Array, t: Array) -> Array:
    return a * (1.0 - t[..., None]) + b * t[..., None]


def _sky(rng, y, x):
    return _mix(_c(105, 160, 230), _c(185, 215, 245), y / y.shape[0]) + _lum_noise(rng, y, 1.5)


def _grass(rng, y, x):
    return _c(60, 145, 50) + rng.normal(0.0, 1.0, y.shape)[..., None] * _c(10, 24, 8)


def _road(rng, y, x):
    speckle = (rng.random(y.shape) < 0.06) * rng.choice([-35.0, 35.0], y.shape)
    return _c(112, 112, 116) + _lum_noise(rng, y, 5.0) + speckle[..., None]


def _sand(rng, y, x):
    dots = (rng.random(y.shape) < 0.08)[..., None] * _c(-40, -45, -50)
    return _c(222, 200, 150) + _lum_noise(rng, y, 4.0) + dots


def _water(rng, y, x):
    period, phase = rng.uniform(6.0, 10.0), rng.uniform(0.0, 2 * np.pi)
    wave = np.sin(2 * np.pi * y / period + phase + 1.2 * np.sin(2 * np.pi * x / 40.0))
    return _c(40, 95, 185) + wave[..., None] * _c(13, 18, 22) + _lum_noise(rng, y, 2.0)


def _cells(rng: np.random.Generator, index: Array, std: float) -> Array:
    """One random offset per cell (brick, plank, tile) of an integer cell-index map."""
    table = rng.normal(0.0, std, 4096)
    return table[index % 4096][..., None]


def _wall(rng, y, x):
    h, w = rng.integers(6, 10), rng.integers(14, 19)
    yy, xx = y + rng.integers(h), x + rng.integers(w)
    row = yy // h
    xs = xx + (row % 2) * (w // 2)
    mortar = ((yy % h) < 1.5) | ((xs % w) < 1.5)
    brick = _c(150, 65, 45) + _cells(rng, (row * 97 + xs // w).astype(np.int64), 10.0)
    return np.where(mortar[..., None], _c(195, 185, 170), brick) + _lum_noise(rng, y, 3.0)


def _snow(rng, y, x):
    return _c(240, 244, 250) + _lum_noise(rng, y, 3.0)


def _floor(rng, y, x):
    pw = rng.integers(10, 15)
    xx = x + rng.integers(pw)
    grain = 10.0 * np.sin(2 * np.pi * xx / (pw / 3.0))[..., None]
    plank = _c(150, 95, 55) + _cells(rng, (xx // pw).astype(np.int64), 12.0) + grain
    return np.where(((xx % pw) < 1)[..., None], _c(90, 55, 30), plank) + _lum_noise(rng, y, 3.0)


def _mountain(rng, y, x):
    stripes = 10.0 * np.sin(2 * np.pi * (x + y) / 12.0 + rng.uniform(0, 2 * np.pi))
    return _c(120, 110, 128) + stripes[..., None] + _lum_noise(rng, y, 5.0)


def _blocks(rng: np.random.Generator, like: Array, cell: int, std: float) -> Array:
    """Blocky low-frequency noise: one value per cell×cell block."""
    n = like.shape[0] // cell + 1
    coarse = rng.normal(0.0, std, (n, n))
    return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[: like.shape[0], : like.shape[1]][..., None]


def _dirt(rng, y, x):
    return _c(110, 80, 50) + _blocks(rng, y, 8, 15.0) + _lum_noise(rng, y, 6.0)


def _ceiling(rng, y, x):
    tile = ((y % 16) < 1) | ((x % 16) < 1)
    return np.where(tile[..., None], _c(170, 168, 160), _c(228, 225, 212)) + _lum_noise(rng, y, 2.0)


def _clutter(rng, y, x):
    """Unlabelled clutter (void): neutral grey blocks with colour specks, unlike any class."""
    return 128.0 + _blocks(rng, y, 3, 30.0) + rng.normal(0.0, 12.0, (*y.shape, 3))


def _disk(u, v):
    return u * u + v * v <= 1.0


def _ball(rng, u, v):
    return _c(205, 35, 35) * (1.15 - 0.3 * (u * u + v * v))[..., None]


def _kite_shape(u, v):
    return np.abs(u) / 0.7 + np.abs(v) <= 1.0


def _kite(rng, u, v):
    spars = (np.abs(u) < 0.06) | (np.abs(v) < 0.06)
    return np.where(spars[..., None], _c(140, 110, 20), _c(240, 215, 40))


def _person_shape(u, v):
    return (u / 0.42) ** 2 + v * v <= 1.0


def _person(rng, u, v):
    return _c(130, 40, 150) * (1.0 - 0.15 * v)[..., None]


def _tree_shape(u, v):
    return (np.abs(v) <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)


def _tree(rng, u, v):
    return _c(25, 95, 35) + _lum_noise(rng, u, 12.0)


def _umbrella_shape(u, v):
    return _disk(u, v) & (v <= 0.0)


def _umbrella(rng, u, v):
    sector = np.floor((np.arctan2(v, u) + np.pi) / (np.pi / 4.0)).astype(np.int64) % 2
    return np.where(sector[..., None] == 0, _c(210, 30, 40), _c(245, 245, 245))


def _star_shape(u, v):
    # Radius bound swinging between the tips (1) and the notches (0.42), five tips, one pointing up.
    frac = np.mod(np.arctan2(v, u) + np.pi / 2, 2 * np.pi / 5) / (2 * np.pi / 5)
    return np.sqrt(u * u + v * v) <= 0.42 + 0.58 * np.abs(2.0 * frac - 1.0)


def _crab(rng, u, v):
    return _c(240, 130, 30) + _lum_noise(rng, u, 5.0)


def _boat_shape(u, v):
    return (np.abs(v) <= 0.5) & (np.abs(u) <= 1.0 - 0.5 * (v + 0.5))


def _boat(rng, u, v):
    return np.where((v < -0.1)[..., None], _c(240, 240, 235), _c(120, 70, 35))


def _car_shape(u, v):
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.5)


def _car(rng, u, v):
    return np.where((np.abs(v + 0.05) < 0.15)[..., None], _c(30, 30, 45), _c(35, 70, 200))


def _octagon(u, v):
    au, av = np.abs(u), np.abs(v)
    return (au <= 1.0) & (av <= 1.0) & (au + av <= np.sqrt(2.0))


def _sign(rng, u, v):
    bar = (np.abs(v) < 0.15) & (np.abs(u) < 0.6)
    return np.where(bar[..., None], _c(245, 245, 245), _c(210, 25, 30))


def _square(u, v):
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)


def _window(rng, u, v):
    grid = (np.abs(u) < 0.08) | (np.abs(v) < 0.08) | (np.maximum(np.abs(u), np.abs(v)) > 0.88)
    return np.where(grid[..., None], _c(35, 45, 55), _c(70, 200, 220))


def _flower_shape(u, v):
    return np.sqrt(u * u + v * v) <= 0.55 + 0.45 * np.abs(np.cos(3.0 * np.arctan2(v, u)))


def _flower(rng, u, v):
    return np.where((u * u + v * v < 0.09)[..., None], _c(250, 220, 40), _c(225, 80, 170))


def _bottle_shape(u, v):
    return (np.abs(v) <= 1.0) & (np.abs(u) <= np.where(v < -0.4, 0.12, 0.3))


def _bottle(rng, u, v):
    shine = (u > -0.22) & (u < -0.1)
    return np.where(shine[..., None], _c(120, 210, 150), _c(40, 140, 80))


# Named colours shared by the catalog's recoloured classes and by whoever captions these scenes.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (205, 35, 35), "orange": (240, 130, 30), "yellow": (240, 215, 40), "green": (50, 170, 60),
    "blue": (40, 80, 210), "purple": (130, 40, 150), "pink": (230, 110, 180),
}


def _recoloured(paint, source, target, rng, u, v):
    rgb = paint(rng, u, v)
    return rgb.mean(-1, keepdims=True) * (np.asarray(target, float) / np.mean(source))


def recolour(look: Appearance, source: tuple[float, float, float], target: tuple[float, float, float]) -> Appearance:
    """The same shape, pattern and shading in another colour.

    Each painted pixel keeps its brightness relative to ``source`` (the look's main colour), times ``target``.
    """
    return Appearance(look.isthing, functools.partial(_recoloured, look.paint, source, target), look.shape)


APPEARANCE: dict[str, Appearance] = {
    # stuff
    "sky": Appearance(False, _sky),
    "grass": Appearance(False, _grass),
    "road": Appearance(False, _road),
    "sand": Appearance(False, _sand),
    "water": Appearance(False, _water),
    "wall": Appearance(False, _wall),
    "snow": Appearance(False, _snow),
    "floor": Appearance(False, _floor),
    "mountain": Appearance(False, _mountain),
    "dirt": Appearance(False, _dirt),
    "ceiling": Appearance(False, _ceiling),
    # things
    "ball": Appearance(True, _ball, _disk),
    "kite": Appearance(True, _kite, _kite_shape),
    "person": Appearance(True, _person, _person_shape),
    "tree": Appearance(True, _tree, _tree_shape),
    "umbrella": Appearance(True, _umbrella, _umbrella_shape),
    "crab": Appearance(True, _crab, _star_shape),
    "boat": Appearance(True, _boat, _boat_shape),
    "car": Appearance(True, _car, _car_shape),
    "sign": Appearance(True, _sign, _octagon),
    "window": Appearance(True, _window, _square),
    "flower": Appearance(True, _flower, _flower_shape),
    "bottle": Appearance(True, _bottle, _bottle_shape),
    # colour-qualified things: the same ball in two colours, told apart only by the colour word
    "red ball": Appearance(True, _ball, _disk),
    "blue ball": Appearance(True, functools.partial(_recoloured, _ball, PALETTE["red"], PALETTE["blue"]), _disk),
}


def check_catalog(vocabulary: Vocabulary) -> None:
    """Every class must be in :data:`APPEARANCE` with the same thing/stuff flag."""
    missing = [c for c in vocabulary.classes if c not in APPEARANCE]
    if missing:
        things = ", ".join(n for n, a in APPEARANCE.items() if a.isthing)
        stuff = ", ".join(n for n, a in APPEARANCE.items() if not a.isthing)
        raise DataError(f"vocabulary {vocabulary.name!r}: class(es) {', '.join(map(repr, missing))} not in "
                        f"the synth catalog; known things: {things}; known stuff: {stuff}")
    for name, isthing in zip(vocabulary.classes, vocabulary.is_thing):
        if APPEARANCE[name].isthing != isthing:
            kind = "thing" if APPEARANCE[name].isthing else "stuff"
            raise DataError(f"vocabulary {vocabulary.name!r}: class {name!r} is {kind} in the synth catalog "
                            f"but flagged {'thing' if isthing else 'stuff'} in the vocabulary")

