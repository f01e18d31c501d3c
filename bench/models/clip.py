"""open_clip models as a MaskCLIP-style dense open-vocabulary base, and their visual tower as a memory embedder."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.errors import ConfigError, WeightsUnavailable, first_line
from bench.inputs import InputPrep
from bench.io import cache_dir, read_cache, write_state_bytes
from bench.models import BASES, EMBEDDERS
from bench.models.checkpoint import FILE_TAG, file_weights, mismatch, names_file, read_state_dict, weights_file
from bench.models.prompts import DEFAULT_TEMPLATES, TEMPLATE_SETS, ensemble, prompt_names, templates

CONFIG_DIR = Path(__file__).parent / "configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
# Suite configs whose weights are pretrained in this repository (scripts/pretrain_tiny_clip.py) and committed
# with a checksum; every other suite config is a random-init model, never presented as pretrained.
SUITE_WEIGHTS = {"tiny-clip-synth": WEIGHTS_DIR / "tiny-clip-synth.safetensors"}
SUITE_MODELS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
RANDOM_INIT_MODELS = tuple(m for m in SUITE_MODELS if m not in SUITE_WEIGHTS)
RANDOM_TAG = "random-init"
IN_REPO_TAG = "in-repo"
PRETRAINED_KEY = "model.pretrained"
# The weights file keeps only the token-table rows its captions used, with their BPE ids.
TOKEN_ROWS, TOKEN_IDS = "token_embedding.rows", "token_embedding.ids"

# The default prompt ensemble (text.templates=short); bench.pretrain captions its images with the same.
PROMPT_TEMPLATES = TEMPLATE_SETS[DEFAULT_TEMPLATES]


def _register_configs() -> None:
    import open_clip

    if not set(SUITE_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def resolve_pretrained(name: str, pretrained: str) -> str:
    """Check model name and pretrained tag; an empty tag means the model's default weights. A checkpoint file
    (:func:`bench.models.checkpoint.names_file`) resolves to its absolute path, which no tag can be."""
    import open_clip

    _register_configs()
    if name not in open_clip.list_models():
        known = [m for m in open_clip.list_models() if m.startswith("ViT")][:12]
        raise ConfigError(f"unknown MODEL {name!r}: not an open_clip model name. Suite models: "
                          f"{', '.join(SUITE_MODELS)}; open_clip ViTs include {', '.join(known)}, ...")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if names_file(pretrained, [*tags, RANDOM_TAG, IN_REPO_TAG]):
        return str(weights_file(PRETRAINED_KEY, pretrained))
    if name in SUITE_WEIGHTS:
        if pretrained not in ("", IN_REPO_TAG, RANDOM_TAG):
            raise ConfigError(f"MODEL {name} ships its weights in the repository; PRETRAINED must be empty (or "
                              f"{IN_REPO_TAG}), or {RANDOM_TAG} for the same architecture untrained; "
                              f"got {pretrained!r}")
        return pretrained or IN_REPO_TAG
    if name in RANDOM_INIT_MODELS:
        if pretrained not in ("", RANDOM_TAG):
            raise ConfigError(f"MODEL {name} is a random-init suite config; PRETRAINED must be empty, "
                              f"got {pretrained!r}")
        return RANDOM_TAG
    if pretrained == "":
        if not tags:
            raise ConfigError(f"MODEL {name} has no pretrained weights in open_clip; pass "
                              f"PRETRAINED={RANDOM_TAG} to use random weights on purpose")
        return "openai" if "openai" in tags else tags[0]
    if pretrained != RANDOM_TAG and pretrained not in tags:
        raise ConfigError(f"unknown PRETRAINED {pretrained!r} for MODEL {name}; known tags: "
                          f"{', '.join(tags) or '(none)'}, or {RANDOM_TAG}")
    return pretrained


def checksum_path(weights: Path) -> Path:
    return weights.with_name(weights.name + ".sha256")


def suite_checksum(name: str) -> str:
    """The committed sha256 of a suite model's weights file (from ``<file>.sha256``)."""
    path = checksum_path(SUITE_WEIGHTS[name])
    try:
        digest = path.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError) as e:
        raise WeightsUnavailable(f"{path}: cannot read the checksum of MODEL {name}'s weights ({e}); rebuild them "
                                 f"with `python scripts/pretrain_tiny_clip.py`") from e
    if len(digest) != 64:
        raise WeightsUnavailable(f"{path}: expected a sha256 hex digest first, got {digest!r}")
    return digest


def load_suite_weights(model: torch.nn.Module, name: str) -> str:
    """Load a suite model's committed weights into ``model`` after checking their checksum; returns it."""
    from safetensors.torch import load

    path = SUITE_WEIGHTS[name]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsUnavailable(f"{path}: MODEL {name}'s weights are missing ({e.strerror}); rebuild them "
                                 f"with `python scripts/pretrain_tiny_clip.py`") from e
    expected, found = suite_checksum(name), hashlib.sha256(data).hexdigest()
    if found != expected:
        raise WeightsUnavailable(f"{path}: sha256 {found} does not match {checksum_path(path).name} ({expected}); "
                                 f"the weights were changed or are incomplete. Restore them from git or rebuild with "
                                 f"`python scripts/pretrain_tiny_clip.py`")
    state = load(data)
    rows, ids = state.pop(TOKEN_ROWS), state.pop(TOKEN_IDS)
    table = torch.zeros_like(model.token_embedding.weight)  # tokens never seen in pretraining carry nothing
    table[ids] = rows
    state["token_embedding.weight"] = table
    model.load_state_dict(state, strict=True)
    return found


def load_open_clip(name: str, pretrained: str, seed: int) -> torch.nn.Module:
    import open_clip

    tag = resolve_pretrained(name, pretrained)
    if tag in (RANDOM_TAG, IN_REPO_TAG):
        model = _random_model(name, seed)
        if tag == IN_REPO_TAG:  # every random value is replaced by the committed weights
            load_suite_weights(model, name)
    elif os.path.isabs(tag):  # a checkpoint file: open_clip reads it (state_dict key, module. prefix, conversions)
        try:
            with torch.random.fork_rng(devices=[]):  # the random init it replaces must not move the caller's RNG
                model = open_clip.create_model(name, pretrained=tag, require_pretrained=True)
        except Exception as e:
            raise WeightsUnavailable(_file_error(name, Path(tag), e)) from e
    else:
        try:
            model = open_clip.create_model(name, pretrained=tag, require_pretrained=True)
        except Exception as e:  # network, hub or file errors all mean: the weights are not here
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_HUB_OFFLINE=1 is set)" if offline else ""
            raise WeightsUnavailable(f"could not load pretrained weights {name}/{tag}{hint}: {first_line(e)}. "
                                     "Random weights are never substituted; use "
                                     f"MODEL={RANDOM_INIT_MODELS[0]} to run offline") from e
    return model.eval()


def _random_model(name: str, seed: int) -> torch.nn.Module:
    """Model ``name`` with random weights that depend only on ``seed``, never on the caller's RNG state."""
    import open_clip

    _register_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # open_clip warns that random init is random
        try:
            return open_clip.create_model(name, pretrained=None)
        finally:
            logging.getLogger().setLevel(quiet)


def _file_error(name: str, path: Path, e: Exception) -> str:
    """Why open_clip could not load checkpoint ``path`` into MODEL ``name``, in one line: the file is not a
    checkpoint (raised from here), or its keys and shapes do not fit (read as open_clip reads them)."""
    state = read_state_dict(PRETRAINED_KEY, path, wrappers=("state_dict",), prefixes=("module.",))
    why = mismatch(_random_model(name, 0), state)
    what = f"does not fit MODEL {name}: {why}" if why else f"could not be loaded into MODEL {name}: {first_line(e)}"
    return f"{PRETRAINED_KEY}: {path}: {what}. Random weights are never substituted"


def weights_identity(name: str, pretrained: str = "", seed: int = 0) -> str:
    """What names a base model's weights in records: the tag, the seed of random weights, the checksum of in-repo
    ones (so rebuilt weights are a different model), the sha256 of a checkpoint file (hashed once per process).
    Cheap: no model is built."""
    tag = resolve_pretrained(name, pretrained)
    weights = f"{tag}(seed={seed})" if tag == RANDOM_TAG else tag
    if tag == IN_REPO_TAG:
        weights = f"{IN_REPO_TAG}(sha256={suite_checksum(name)[:16]})"
    elif os.path.isabs(tag):
        weights = file_weights(PRETRAINED_KEY, Path(tag))
    return f"open_clip:{name}/{weights}"


@BASES.register("maskclip", "MaskCLIP: dense features of any open_clip ViT (value path of the last block)")
class OpenClipBase(torch.nn.Module):
    """MaskCLIP dense features: the last block's value path (no query-key attention) mapped into the joint space.

    Images are resized to the model's square input size; the positional embedding is used as trained.
    """

    def __init__(self, name: str, pretrained: str = "", seed: int = 0) -> None:
        super().__init__()
        import open_clip

        # What the record names (a tag, or a checkpoint file's absolute path) and the short tag ("file" for a
        # file: the tag is part of cache file names; the file's sha256 is in the identity).
        self.pretrained = resolve_pretrained(name, pretrained)
        self.tag = FILE_TAG if os.path.isabs(self.pretrained) else self.pretrained
        self.name = name
        self.model = load_open_clip(name, pretrained, seed)
        visual = self.model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            self._check_tower(name)
        self._setup_tower()
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
        self.std = torch.tensor(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
        self.logit_scale = float(self.model.logit_scale.detach().exp())
        self.identity = weights_identity(name, self.pretrained, seed)
        self._tokenizer = open_clip.get_tokenizer(name)
        self.templates, self.synonyms = DEFAULT_TEMPLATES, False
        self.requires_grad_(False)

    weights_identity = staticmethod(weights_identity)

    def _check_tower(self, name: str) -> None:
        """Called for a tower that is no open_clip ViT: refuse it (a base for other towers overrides this)."""
        from bench.models import BASES

        kind = next((n for n, e in BASES.entries().items() if e.obj is type(self)), type(self).__name__)
        vit_bases = [b for b in BASES.names() if b != "convnext"]
        raise ConfigError(f"base.kind={kind}: MODEL {name} has a {type(self.model.visual).__name__} image tower, "
                          f"not an open_clip ViT; the ViT bases are {', '.join(vit_bases)}; for a ConvNeXt model "
                          "use base.kind=convnext")

    def _setup_tower(self) -> None:
        """Input size and feature width of the tower."""
        visual = self.model.visual
        size = visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        self.dim = visual.proj.shape[1] if visual.proj is not None else visual.transformer.width

    def project_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Mask-pooled dense features into the joint space with text; the ViT bases' features already are."""
        return pooled

    # -- images -------------------------------------------------------------------------------------------------
    @property
    def input_prep(self) -> InputPrep:
        """Input side, mean, std and patch: what ``preprocess`` and ``normalize`` do (loader workers use it)."""
        return InputPrep.of(self.image_size, self.mean, self.std, self.patch_size)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self.input_prep.preprocess(image)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float ``3×H×W`` in [0, 1] → normalised as the model expects."""
        return self.input_prep.normalize(x)

    @property
    def patch_size(self) -> int:
        return self.model.visual.patch_size[0]

    def _embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Patch and class embeddings; at a size other than the trained one, with the positional embedding's grid
        resized (bicubic), as the dense-CLIP harness runs windows of other sizes."""
        visual = self.model.visual
        if images.shape[-1] == self.image_size and images.shape[-2] == self.image_size:
            return visual._embeds(images)
        x = visual.conv1(images)
        gh, gw = x.shape[-2:]
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self._positions(gh, gw).to(x.dtype)
        return visual.ln_pre(visual.patch_dropout(x))

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        pos = self.model.visual.positional_embedding
        side = self.image_size // self.patch_size
        grid = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid[0].permute(1, 2, 0).reshape(gh * gw, -1).to(pos.dtype)])

    def _trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after every block but the last, in the transformer's own layout (batch first or not)."""
        visual = self.model.visual
        x = self._embeds(images)
        x = x if getattr(visual.transformer, "batch_first", True) else x.transpose(0, 1)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        return x

    def _last(self, x: torch.Tensor, grid: int, last_block: str) -> torch.Tensor:
        """The last block on trunk tokens, as ``full`` or ``value``; patch tokens ``B×N×W`` after ln_post."""
        visual = self.model.visual
        last = visual.transformer.resblocks[-1]
        if last_block == "full":
            x = last(x)
        else:  # MaskCLIP: value embedding and output projection only, so each patch keeps its own content
            y = last.ln_1(x)
            width = y.shape[-1]
            w, b = last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:]
            x = last.attn.out_proj(F.linear(y, w, b))
        x = x if getattr(visual.transformer, "batch_first", True) else x.transpose(0, 1)
        return visual.ln_post(x[:, x.shape[1] - grid * grid:])

    def tokens(self, images: torch.Tensor, last_block: str) -> tuple[torch.Tensor, int]:
        """Patch tokens ``B×N×W`` after all blocks but the last, then the last one as ``full`` or ``value``."""
        grid = images.shape[-1] // self.patch_size
        return self._last(self._trunk(images), grid, last_block), grid

    def _dense(self, tokens: torch.Tensor, grid: int) -> torch.Tensor:
        if self.model.visual.proj is not None:
            tokens = tokens @ self.model.visual.proj
        return _grid(tokens, grid)

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.tokens(images, last_block="value")
        return self._dense(tokens, grid)

    def dense_and_token_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`dense_features` and :class:`ClipVisualEmbedder`'s features from one pass through the shared
        blocks (all but the last): the same numbers as the two calls, for about half the cost."""
        grid = images.shape[-1] // self.patch_size
        trunk = self._trunk(images)
        full = self._last(trunk, grid, "full")
        return self._dense(self._last(trunk, grid, "value"), grid), _grid(full, grid)

    # -- text ---------------------------------------------------------------------------------------------------
    def set_prompts(self, template_set: str, synonyms: bool) -> None:
        """How :meth:`text_embeddings` prompts class names (``text.templates``, ``text.synonyms``)."""
        templates(template_set)  # an unknown set stops here
        self.templates, self.synonyms = template_set, synonyms

    @torch.no_grad()
    def text_embeddings(self, class_names: list[str]) -> torch.Tensor:
        """Prompt-ensembled, L2-normalised ``C×D`` text embeddings, cached on disk by weights, prompts and
        vocabulary. With ``synonyms``, a line ``"building, edifice"`` is the normalised mean of its names'
        ensembles (:func:`bench.models.prompts.ensemble`); row ``i`` is always ``class_names[i]``."""
        chosen = templates(self.templates)
        # The default prompts keep the key they always had, so existing caches stay valid; the template strings
        # are in the key, and synonyms add a marker line no template can equal (templates hold "{}").
        marker = ["synonyms"] if self.synonyms else []
        key = hashlib.sha1("\n".join([self.identity, *marker, *chosen, "", *class_names]).encode()).hexdigest()
        path = cache_dir() / "text" / f"{self.name}-{self.tag}-{key[:16]}.pt"
        cached = read_cache(path, "text-embedding cache", ("identity", "classes", "embeddings"))
        if cached is not None and cached["classes"] == list(class_names) and cached["identity"] == self.identity:
            return cached["embeddings"]
        names, owner = prompt_names(class_names, self.synonyms)
        prompts = [t.format(name) for name in names for t in chosen]
        device = self.model.logit_scale.device
        # One batched pass over all prompts (chunked): per-class calls cost seconds on 1203 LVIS classes.
        encoded = torch.cat([self.model.encode_text(self._tokenizer(prompts[i:i + 512]).to(device)).float()
                             for i in range(0, len(prompts), 512)])
        embeddings = ensemble(encoded, len(chosen), owner, len(class_names)).cpu()
        buf = io.BytesIO()
        torch.save({"identity": self.identity, "classes": list(class_names), "embeddings": embeddings}, buf)
        write_state_bytes(path, buf.getvalue())
        return embeddings


class ClipVisualEmbedder(torch.nn.Module):
    """Memory embedder from the base model's visual tower: last-layer patch tokens (before the projection)."""

    def __init__(self, base: OpenClipBase, dim: int | None = None, part: str = "tokens") -> None:
        """``dim`` and ``part`` (what the identity says is embedded) for a tower other than a ViT's."""
        super().__init__()
        self.base = base
        self.dim = dim if dim is not None else base.model.visual.transformer.width
        self.identity = f"{base.identity}:{part}"
        self.image_size, self.patch_size = base.image_size, base.patch_size

    @property
    def input_prep(self) -> InputPrep:
        return self.base.input_prep

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return self.base.preprocess(image)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.normalize(x)

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.base.tokens(images, last_block="full")
        return _grid(tokens, grid)


@EMBEDDERS.register("clip", "the base model's visual tower: last-layer patch tokens")
def clip_embedder(base: OpenClipBase, pretrained: str = "", **_: object) -> torch.nn.Module:
    if pretrained:
        raise ConfigError(f"embedder.pretrained={pretrained!r} is for embedder.kind=dinov2; embedder.kind=clip "
                          "embeds with the base model's own weights (set those with model.pretrained)")
    own = getattr(base, "visual_embedder", None)  # a base whose tower is no ViT says what its tokens are
    return own() if own is not None else ClipVisualEmbedder(base)


def _grid(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """``B×N×W`` patch tokens → ``B×W×grid×grid``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)
