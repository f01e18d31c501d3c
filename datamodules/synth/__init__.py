"""The embedded synthetic dataset: procedural scenes written once in the COCO panoptic layout, then read.

Each scene has stuff regions (a sky band on top when sky is the vocabulary's first stuff class, then one or
two regions with wavy boundaries) and 2–5 thing instances (a shape, a colour and a texture per class)
occluding one another; 20% of the scenes also hold a blob of unlabelled clutter (void). Every class has its
own look, so a segmenter or a kNN memory can learn it, and nothing is downloaded.

A *domain* (option ``domain``, :data:`DOMAINS`) renders the same classes another way: other textures for some
classes, or another lighting of the whole scene. Tasks built on a domain test what a model pretrained on the
default look makes of a shift; ``default`` is the look every earlier version generated, byte for byte.

Data for a task is generated on first use into ``root`` (a cache folder) together with ``spec.json``: the
generation parameters and :data:`GENERATOR_VERSION`. A folder whose spec differs from the one requested is
never reused nor overwritten: the reader raises :class:`DataError` saying what differs (delete the folder or
give the task another root). Generation writes into a temporary sibling folder that is renamed into place in
one step, so a crash leaves no half dataset, and of two concurrent generators the second to finish drops its
copy.

Everything random comes from one ``numpy`` generator per image, seeded from (scene_seed, split, index) without
Python's ``hash()``, so scenes are identical on every run and machine and can be made one at a time.

Modules: :mod:`~datamodules.synth.looks` (the appearance catalog and palette), :mod:`~datamodules.synth.domains`,
:mod:`~datamodules.synth.scene` (one scene) and :mod:`~datamodules.synth.dataset` (writing a split, the cache
spec and the ``synth`` reader). Their public names are importable from here.
"""

from datamodules.synth.dataset import (
    DEFAULT_NUM_IMAGES,
    GENERATOR_VERSION,
    MIN_SIZE,
    SynthReader,
    dataset_spec,
    ensure_dataset,
    write_split,
)
from datamodules.synth.domains import DOMAINS, Domain, get_domain
from datamodules.synth.looks import APPEARANCE, PALETTE, Appearance, check_catalog, recolour
from datamodules.synth.scene import MIN_THING_AREA, THING_SIZE, VOID_PROBABILITY, Scene, make_scene, scene_rng

__all__ = [
    "APPEARANCE", "DEFAULT_NUM_IMAGES", "DOMAINS", "GENERATOR_VERSION", "MIN_SIZE", "MIN_THING_AREA", "PALETTE",
    "THING_SIZE", "VOID_PROBABILITY", "Appearance", "Domain", "Scene", "SynthReader", "check_catalog",
    "dataset_spec", "ensure_dataset", "get_domain", "make_scene", "recolour", "scene_rng", "write_split",
]
