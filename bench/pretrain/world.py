"""The pretraining world of ``tiny-clip-synth``: what is drawn, and what the captions say about it.

A *concept* is a synth catalog class in its own look (``ball``: red, round) or a thing recoloured from the
palette (``yellow ball``, ``blue kite``). Scenes are drawn by :func:`datamodules.synth.make_scene` in the default
domain, each with its own random little vocabulary of concepts, so that every word is seen with many others.
Captions name colour, shape, texture and place: per segment (``a photo of a red ball.``, ``a yellow diamond -
shaped thing``) and per scene (``a red ball and a blue car on the grey road under the sky``).

Held out on purpose (the sequence ``tasks/synth-shift.yaml`` tests them):

- the word ``crab``: crabs are drawn, but captions only ever call them by their attributes (``an orange
  star-shaped thing``), so the text tower never sees the word;
- the combinations ``blue ball`` and ``green kite``: never drawn nor said, while balls of five other colours and
  blue or green things of other shapes are;
- the ``autumn`` and ``night`` domains of the generator: only the default look is drawn, and no photometric
  augmentation is applied, so new textures and lighting are a real shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.models.clip import PROMPT_TEMPLATES
from datamodules.synth import APPEARANCE, PALETTE, Domain, make_scene, recolour
from datamodules.vocabulary import Vocabulary

# Colour, shape and texture words of each catalog class in its own look (stuff has no shape).
STUFF_WORDS = {
    "sky": ("blue", "clear"), "grass": ("green", "grassy"), "road": ("grey", "speckled"),
    "sand": ("beige", "sandy"), "water": ("blue", "wavy"), "wall": ("red", "brick"), "snow": ("white", "smooth"),
    "floor": ("brown", "wooden"), "mountain": ("grey", "striped"), "dirt": ("brown", "muddy"),
    "ceiling": ("white", "tiled"),
}
THING_WORDS = {
    "ball": ("red", "round", "plain"), "kite": ("yellow", "diamond-shaped", "crossed"),
    "person": ("purple", "oval", "plain"), "tree": ("green", "triangular", "leafy"),
    "umbrella": ("red", "half-round", "striped"), "crab": ("orange", "star-shaped", "plain"),
    "boat": ("brown", "long", "wooden"), "car": ("blue", "rectangular", "striped"),
    "sign": ("red", "octagonal", "barred"), "window": ("cyan", "square", "gridded"),
    "flower": ("pink", "petalled", "spotted"), "bottle": ("green", "narrow", "glossy"),
}
# Things also drawn in other palette colours, with the main colour of their synth painter.
RECOLOURABLE = {"ball": (205, 35, 35), "kite": (240, 215, 40), "car": (35, 70, 200), "person": (130, 40, 150),
                "bottle": (40, 140, 80)}
HELD_OUT_WORDS = frozenset({"crab"})
HELD_OUT_COMBINATIONS = frozenset({("ball", "blue"), ("kite", "green")})

THING_PHRASES = ("{n}", "{c} {n}", "{s} {n}", "{c} {s} {n}", "{t} {n}", "{c} {t} {n}")
STUFF_PHRASES = ("{n}", "{c} {n}", "{t} {n}", "{t} {c} {n}")
ATTRIBUTE_PHRASES = ("{c} {s} thing", "{c} {s} object", "{s} {c} thing")
ATTRIBUTE_ONLY = 0.15  # share of thing captions that leave the noun out, so attributes are learnt as words too
REGION_TEMPLATES = ("{}", "a {}", "the {}", "a photo of a {}.", "some {}", "a close-up of a {}.",
                    *PROMPT_TEMPLATES)
SCENE_TEMPLATES = ("a photo of {things} on the {ground}{sky}.", "{things} on the {ground}{sky}",
                   "there is {things} on the {ground}.")


@dataclass(frozen=True)
class Concept:
    key: str  # the name the scene generator draws it by
    noun: str | None  # None: the class word is held out; captions say only its attributes
    colour: str
    shape: str  # "" for stuff
    texture: str
    isthing: bool


def concepts() -> list[Concept]:
    """Every concept of the world, in a fixed order: stuff, things in their own look, recoloured things."""
    out = [Concept(name, name, colour, "", texture, False) for name, (colour, texture) in STUFF_WORDS.items()]
    for name, (colour, shape, texture) in THING_WORDS.items():
        out.append(Concept(name, None if name in HELD_OUT_WORDS else name, colour, shape, texture, True))
    for name in RECOLOURABLE:
        _, shape, texture = THING_WORDS[name]
        for colour in PALETTE:
            if colour != THING_WORDS[name][0] and (name, colour) not in HELD_OUT_COMBINATIONS:
                out.append(Concept(f"{colour} {name}", name, colour, shape, texture, True))
    return out


def world_domain(world: list[Concept]) -> Domain:
    """The generator's default look, plus the recoloured things under their concept keys."""
    looks = {}
    for c in world:
        if c.key not in APPEARANCE:
            looks[c.key] = recolour(APPEARANCE[c.noun], RECOLOURABLE[c.noun], PALETTE[c.colour])
    return Domain(looks=looks, description="pretraining world")


def lexicon() -> list[str]:
    """Every word and template a caption can contain: their tokens are the text tower's vocabulary."""
    words = {"thing", "object", "and", "under", "sky"}
    for c in concepts():
        words |= {c.colour, c.shape, c.texture} | ({c.noun} if c.noun else set())
    return sorted(w for w in words if w) + list(REGION_TEMPLATES) + list(SCENE_TEMPLATES)


def _phrase(c: Concept, rng: np.random.Generator, forms: tuple[str, ...]) -> str:
    return str(rng.choice(forms)).format(n=c.noun, c=c.colour, s=c.shape, t=c.texture)


def region_caption(c: Concept, rng: np.random.Generator) -> str:
    """A caption of one segment of concept ``c``."""
    if c.noun is None or (c.isthing and rng.random() < ATTRIBUTE_ONLY):
        phrase = _phrase(c, rng, ATTRIBUTE_PHRASES)
    else:
        phrase = _phrase(c, rng, THING_PHRASES if c.isthing else STUFF_PHRASES)
    return str(rng.choice(REGION_TEMPLATES)).format(phrase)


def scene_caption(things: list[Concept], ground: Concept | None, sky: bool, rng: np.random.Generator) -> str:
    """A caption of a whole scene: up to two of its things, where they are, and the sky."""
    picked = [things[i] for i in rng.permutation(len(things))[:2]]
    names = [f"a {_phrase(c, rng, ('{c} {n}', '{n}') if c.noun else ATTRIBUTE_PHRASES)}" for c in picked]
    ground_words = _phrase(ground, rng, ("{n}", "{c} {n}")) if ground is not None else "ground"
    return str(rng.choice(SCENE_TEMPLATES)).format(things=" and ".join(names) or "nothing", ground=ground_words,
                                                   sky=" under the sky" if sky else "")


@dataclass
class ScenePool:
    """Generated scenes kept in memory: images, segment maps and the concept of every segment."""

    images: torch.Tensor  # uint8 N×3×H×W
    segments: torch.Tensor  # uint8 N×H×W, 0 = void, k = segment k
    segment_concepts: list[list[int]]  # index into the world's concepts of segment k at k-1

    def __len__(self) -> int:
        return len(self.segment_concepts)


def _scene_vocabulary(world: list[Concept], rng: np.random.Generator) -> Vocabulary:
    stuff = [c.key for c in world if not c.isthing and c.key != "sky"]
    own = [c.key for c in world if c.isthing and c.key in APPEARANCE]
    recoloured = [c.key for c in world if c.isthing and c.key not in APPEARANCE]
    chosen_stuff = (["sky"] if rng.random() < 0.6 else []) + [str(s) for s in rng.choice(stuff, rng.integers(1, 4),
                                                                                          replace=False)]
    things: list[str] = []
    while len(things) < 3:
        pick = str(rng.choice(own if rng.random() < 0.5 else recoloured))
        things += [] if pick in things else [pick]
    return Vocabulary.from_names("pretrain", [*chosen_stuff, *things], things=things)


def build_pool(world: list[Concept], count: int, seed: int, size: int = 128) -> ScenePool:
    """``count`` scenes, each depending only on (seed, index)."""
    domain, index_of = world_domain(world), {c.key: i for i, c in enumerate(world)}
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    segments = torch.empty(count, size, size, dtype=torch.uint8)
    segment_concepts = []
    for i in range(count):
        vocab = _scene_vocabulary(world, np.random.default_rng(np.random.SeedSequence([seed, 7, i])))
        scene = make_scene(vocab, seed, "pretrain", i, size, domain)
        images[i] = torch.from_numpy(scene.image).permute(2, 0, 1)
        segments[i] = torch.from_numpy(scene.ids.astype(np.uint8))
        segment_concepts.append([index_of[name] for name in scene.classes])
    return ScenePool(images, segments, segment_concepts)
