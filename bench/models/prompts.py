"""How a vocabulary's class names become prompts: the template sets (``text.templates``) and synonym lines
(``text.synonyms``), and the ensemble that turns per-prompt text embeddings into one embedding per class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from datamodules.vocabulary import synonyms

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    # The suite's first ensemble, in the style of CLIP's ImageNet templates, trimmed to ones that suit scene parts.
    "short": (
        "a photo of a {}.",
        "a photo of the {}.",
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {}.",
        "a photo of a small {}.",
        "a photo of a large {}.",
    ),
    # CLIP's 80 ImageNet templates, in the order of the dense-CLIP harness that SCLIP, ClearCLIP and NACLIP
    # evaluate with (wangf3014/SCLIP@b56bd30, prompts/imagenet_template.py: openai_imagenet_template). The
    # strings are the protocol's data, kept verbatim ("a origami {}." included).
    "imagenet80": (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
    ),
}
DEFAULT_TEMPLATES = "short"


def templates(name: str) -> tuple[str, ...]:
    """The template set ``name`` (``text.templates``)."""
    if name not in TEMPLATE_SETS:
        raise ConfigError(f"unknown text.templates {name!r}; expected one of: {', '.join(TEMPLATE_SETS)}")
    return TEMPLATE_SETS[name]


def prompt_names(class_names: Sequence[str], use_synonyms: bool) -> tuple[list[str], list[int]]:
    """The names to put into the templates and, for each, the index of its class: every line as one name, or
    with ``use_synonyms`` each comma-separated name of a line (``"building, edifice"`` → two names, class 0)."""
    groups = [synonyms(c) if use_synonyms else (c,) for c in class_names]
    return [n for g in groups for n in g], [i for i, g in enumerate(groups) for _ in g]


def ensemble(encoded: torch.Tensor, num_templates: int, owner: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class embeddings from per-prompt ones.

    encoded: float ``(N·T)×D``, the prompts of name ``n`` in rows ``n·T .. n·T+T-1``; owner: the class of each of
    the ``N`` names. Each name is the normalised mean of its normalised prompt embeddings (CLIP's ensemble); a
    class with several names is the normalised mean of its names' embeddings. Returns float ``C×D``, rows of
    unit norm. Where every class has one name the second step is skipped, so the numbers are exactly CLIP's
    ensemble (normalising twice can move the last bit).
    """
    per_prompt = F.normalize(encoded, dim=-1).view(len(owner), num_templates, -1)
    per_name = F.normalize(per_prompt.mean(1), dim=-1)
    if len(owner) == num_classes:
        return per_name
    index = torch.as_tensor(list(owner), device=per_name.device)
    sums = torch.zeros(num_classes, per_name.shape[1], dtype=per_name.dtype, device=per_name.device)
    sums.index_add_(0, index, per_name)
    return F.normalize(sums, dim=-1)  # the mean's direction: normalising the sum is the same
