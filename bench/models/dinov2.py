"""DINOv2 from timm as a memory embedder (the backbone kNN-CLIP uses to embed instances)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from bench.errors import ConfigError, WeightsUnavailable, first_line
from bench.inputs import InputPrep
from bench.models import EMBEDDERS
from bench.models.checkpoint import file_weights, mismatch, read_state_dict, weights_file

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406))
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225))

DEFAULT_IMAGE_SIZE = 224
PRETRAINED_KEY = "embedder.pretrained"
# Suite configs built with random weights, never presented as pretrained: a tiny one for tests, and ViT-S/14 at
# full size for timing (benchmarks/perf.py). Name -> (timm architecture, overrides of its config, input size).
TINY_CONFIGS = {
    "dinov2-tiny-random": ("vit_small_patch14_dinov2", {"depth": 2, "embed_dim": 32, "num_heads": 2}, 126),
    "dinov2-vits14-random": ("vit_small_patch14_dinov2", {}, DEFAULT_IMAGE_SIZE),
}


class Dinov2Embedder(torch.nn.Module):
    """``pretrained``: empty for timm's hub weights, or a checkpoint file (``embedder.pretrained``; named by its
    sha256 in ``identity``). Suite configs are random-init and take no file."""

    def __init__(self, name: str, pretrained: str = "", image_size: int | None = None, seed: int = 0):
        super().__init__()
        import timm

        size = image_size or (TINY_CONFIGS[name][2] if name in TINY_CONFIGS else DEFAULT_IMAGE_SIZE)
        if name in TINY_CONFIGS:
            if pretrained:
                raise ConfigError(f"{PRETRAINED_KEY}={pretrained!r}: embedder.name {name} is a random-init suite "
                                  f"config and takes no weights; name its timm architecture "
                                  f"({TINY_CONFIGS[name][0]}) to load a file")
            arch, kwargs, _ = TINY_CONFIGS[name]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = timm.create_model(arch, pretrained=False, img_size=size, num_classes=0,
                                               dynamic_img_size=True, **kwargs)
            weights = f"random-init(seed={seed})"
        else:
            if name not in timm.list_models("*dinov2*"):
                raise ConfigError(f"unknown embedder.name {name!r}; DINOv2 models in timm: "
                                  f"{', '.join(timm.list_models('*dinov2*'))}, or {', '.join(TINY_CONFIGS)}")
            if pretrained:  # no tags here: any value is a file
                path = weights_file(PRETRAINED_KEY, pretrained)
                weights = file_weights(PRETRAINED_KEY, path)
                self.model = _from_file(name, path, size)
            else:
                try:
                    self.model = timm.create_model(name, pretrained=True, img_size=size, num_classes=0,
                                                   dynamic_img_size=True)
                except Exception as e:
                    hint = " (HF_HUB_OFFLINE=1 is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
                    raise WeightsUnavailable(f"could not load pretrained weights for embedder {name}{hint}: "
                                             f"{first_line(e)}. Random weights are never substituted; use "
                                             "embedder.kind=clip to run offline") from e
                weights = "pretrained"
        self.model.eval().requires_grad_(False)
        # dynamic_img_size: windows of another size get the positional embedding resized (exact at `size`)
        self.patch = self.patch_size = self.model.patch_embed.patch_size[0]
        if size % self.patch:
            raise ConfigError(f"embedder.image_size {size} must be a multiple of the patch size {self.patch}")
        self.image_size = size
        self.dim = self.model.embed_dim
        self.identity = f"timm:{name}/{weights}@{size}"

    @property
    def input_prep(self) -> InputPrep:
        """Input side, ImageNet mean and std, patch: what ``preprocess`` and ``normalize`` do."""
        return InputPrep.of(self.image_size, IMAGENET_MEAN, IMAGENET_STD, self.patch_size)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self.input_prep.preprocess(image)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_prep.normalize(x)

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(images)[:, self.model.num_prefix_tokens:]
        grid = images.shape[-1] // self.patch
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)


def _from_file(name: str, path: Path, size: int) -> torch.nn.Module:
    """timm ``name`` at input ``size`` with the weights of checkpoint ``path``: a timm state dict, or one of
    facebookresearch/dinov2 (hub ``*_pretrain.pth``; a training checkpoint's teacher backbone), converted
    by timm's own filter (key names, positional embedding resized to ``size``)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    with torch.random.fork_rng(devices=[]):  # the random init the file replaces must not move the caller's RNG
        model = timm.create_model(name, pretrained=False, img_size=size, num_classes=0, dynamic_img_size=True)
    state = read_state_dict(PRETRAINED_KEY, path)
    for prefix in ("teacher.backbone.", "backbone."):  # DINOv2 training checkpoints: the teacher, heads dropped
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            break
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # a state dict of another architecture can trip the conversion itself
        raise WeightsUnavailable(f"{PRETRAINED_KEY}: {path}: does not fit embedder {name}: {first_line(e)}") from e
    why = mismatch(model, state)
    if why:
        raise WeightsUnavailable(f"{PRETRAINED_KEY}: {path}: does not fit embedder {name}: {why}. Random weights "
                                 "are never substituted")
    model.load_state_dict(state, strict=True)
    return model


@EMBEDDERS.register("dinov2", "a DINOv2 ViT from timm (embedder.name; the kNN-CLIP paper's embedder)")
def dinov2_embedder(base: object, name: str = "", pretrained: str = "", image_size: int | None = None,
                    seed: int = 0) -> Dinov2Embedder:
    return Dinov2Embedder(name or "vit_small_patch14_dinov2", pretrained, image_size, seed)
