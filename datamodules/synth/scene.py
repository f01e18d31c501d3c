"""One synth scene: stuff regions, thing instances occluding one another and sometimes a blob of void clutter,
composed from one ``numpy`` generator seeded from (scene_seed, split, index).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from datamodules.synth.domains import Domain, get_domain
from datamodules.synth.looks import Array, _clutter
from datamodules.vocabulary import Vocabulary

VOID_PROBABILITY = 0.2
MIN_THING_AREA = 30  # px; a thing occluded below this is dropped (its pixels show what lies beneath)
THING_SIZE = (12.0, 40.0)  # px extent at size 128, scaled with the image size
_MAX_TRIES = 20  # scene redraws until it shows enough classes (deterministic: the same rng continues)


@dataclass
class Scene:
    image: Array  # H×W×3 uint8
    ids: Array  # H×W int64 panoptic segment ids: 0 = void, k = segment k
    classes: list[str]  # class name of segment k at k-1


@dataclass
class _Layer:
    name: str | None  # None = void
    mask: Array
    rgb: Array
    isthing: bool = False


def scene_rng(scene_seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image; the split enters through CRC-32 (stable across runs, unlike ``hash``)."""
    return np.random.default_rng(np.random.SeedSequence([scene_seed, zlib.crc32(split.encode()), index]))


def _wave(rng: np.random.Generator, n: int) -> Array:
    """A wavy boundary offset for each of n rows or columns, in whole pixels (robust to float ulps)."""
    amp, freq, phase = rng.uniform(2.0, 6.0), rng.uniform(1.0, 3.0), rng.uniform(0.0, 2 * np.pi)
    return np.rint(amp * np.sin(2 * np.pi * freq * np.arange(n) / n + phase))


def _stuff_layers(rng: np.random.Generator, stuff: tuple[str, ...], y: Array, x: Array,
                  domain: Domain) -> list[_Layer]:
    size = y.shape[0]
    rest, top, candidates, regions = np.ones(y.shape, bool), 0.0, list(stuff), []
    if stuff and stuff[0] == "sky":
        candidates = candidates[1:]
        height = rng.uniform(0.25, 0.45) * size
        sky = y < np.rint(height) + _wave(rng, size)[None, :] if candidates else np.ones(y.shape, bool)
        regions.append(("sky", sky))
        rest, top = ~sky, height
    if candidates:
        k = min(len(candidates), 1 if rng.random() < 0.35 else 2)
        chosen = [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)]
        if k == 1:
            regions.append((chosen[0], rest))
        else:
            if rng.random() < 0.5:  # two bands below the sky
                first = y < np.rint(top + (size - top) * rng.uniform(0.35, 0.65)) + _wave(rng, size)[None, :]
            else:  # left and right
                first = x < np.rint(size * rng.uniform(0.3, 0.7)) + _wave(rng, size)[:, None]
            regions += [(chosen[0], rest & first), (chosen[1], rest & ~first)]
    return [_Layer(name, mask, domain.look(name).paint(rng, y, x)) for name, mask in regions]


def _thing_layers(rng: np.random.Generator, things: tuple[str, ...], y: Array, x: Array,
                  domain: Domain) -> list[_Layer]:
    size, layers = y.shape[0], []
    for _ in range(rng.integers(2, 6)):
        name = things[rng.integers(len(things))]
        half = rng.uniform(*THING_SIZE) * size / 128 / 2
        cx, cy = rng.uniform(half / 2, size - half / 2, 2)
        # Paint only the instance's bounding window (a tenth of the image or less), then embed it.
        win = np.s_[max(int(cy - half) - 1, 0): int(cy + half) + 2,
                    max(int(cx - half) - 1, 0): int(cx + half) + 2]
        u, v = (x[win] - cx) / half, (y[win] - cy) / half
        look = domain.look(name)
        mask, rgb = np.zeros(y.shape, bool), np.zeros((*y.shape, 3))
        mask[win] = look.shape(u, v)
        # Per-instance brightness and colour jitter so instances of a class are alike but not identical.
        rgb[win] = look.paint(rng, u, v) * rng.uniform(0.85, 1.15) + rng.normal(0.0, 6.0, 3)
        layers.append(_Layer(name, mask, rgb, isthing=True))
    return layers


def _void_layer(rng: np.random.Generator, y: Array, x: Array) -> _Layer:
    size = y.shape[0]
    cx, cy = rng.uniform(10, size - 10, 2)
    mask = np.zeros(y.shape, bool)
    for _ in range(rng.integers(2, 5)):  # a blob: a few overlapping disks
        ox, oy = rng.normal(0.0, 4.0, 2)
        mask |= (x - cx - ox) ** 2 + (y - cy - oy) ** 2 <= rng.uniform(3.0, 7.0) ** 2
    return _Layer(None, mask, _clutter(rng, y, x))


def _owners(layers: list[_Layer]) -> Array:
    """Index of the top-most layer at each pixel (later layers occlude earlier ones)."""
    owner = np.full(layers[0].mask.shape, -1, dtype=np.int64)
    for i, layer in enumerate(layers):
        owner[layer.mask] = i
    return owner


def _compose(rng: np.random.Generator, vocabulary: Vocabulary, size: int, domain: Domain) -> Scene:
    y, x = np.indices((size, size)).astype(np.float64)
    layers = _stuff_layers(rng, vocabulary.stuff, y, x, domain)
    if not layers:  # a vocabulary of things only: the background is unlabelled clutter
        layers.append(_Layer(None, np.ones(y.shape, bool), _clutter(rng, y, x)))
    if vocabulary.things:
        layers += _thing_layers(rng, vocabulary.things, y, x, domain)
    if rng.random() < VOID_PROBABILITY:
        layers.append(_void_layer(rng, y, x))
    area = np.bincount(_owners(layers).ravel(), minlength=len(layers))
    # Dropping a thing only uncovers pixels, so the others keep at least their area: one pass suffices.
    layers = [la for la, a in zip(layers, area) if not (la.isthing and a < MIN_THING_AREA)]
    owner = _owners(layers)
    area = np.bincount(owner.ravel(), minlength=len(layers))
    lut, classes = np.zeros(len(layers), dtype=np.int64), []
    for i, layer in enumerate(layers):
        if layer.name is not None and area[i] > 0:
            classes.append(layer.name)
            lut[i] = len(classes)
    rgb = np.zeros((size, size, 3))
    for layer in layers:  # bottom to top, so each pixel ends with its owner's colour
        np.copyto(rgb, layer.rgb, where=layer.mask[..., None])
    if domain.light is not None:
        rgb = domain.light(rgb)
    rgb += rng.normal(0.0, 2.0, rgb.shape)  # sensor-like noise on every pixel
    return Scene(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), lut[owner], classes)


def _varied(scene: Scene, vocabulary: Vocabulary) -> bool:
    """At least three classes (or all, in a smaller vocabulary), with a thing and a stuff where possible."""
    present = set(scene.classes)
    kinds = {c in vocabulary.things for c in present}
    return (len(present) >= min(3, len(vocabulary))
            and (True in kinds or not vocabulary.things) and (False in kinds or not vocabulary.stuff))


def make_scene(vocabulary: Vocabulary, scene_seed: int, split: str, index: int, size: int = 128,
               domain: str | Domain = "default") -> Scene:
    """Image ``index`` of ``split``; depends only on its arguments.

    ``domain``: a name in :data:`DOMAINS` or a :class:`Domain` (whose looks may also name classes outside the
    catalog, as a pretraining world does).
    """
    rng = scene_rng(scene_seed, split, index)
    look = get_domain(domain)
    for _ in range(_MAX_TRIES):
        scene = _compose(rng, vocabulary, size, look)
        if _varied(scene, vocabulary):
            break
    return scene
