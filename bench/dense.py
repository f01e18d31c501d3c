"""Dense features of images under an inference protocol, pooled inside regions at each image's own resolution.

``whole``: the image resized to the backbone's square input (aspect ratio dropped), one forward pass.
``slide``: the image resized keeping its aspect ratio (scale = min(short_side / short, max_long_side / long)),
then cut into square windows of ``crop`` pixels placed ``stride`` apart, the last window of a row or column moved
back to end at the border; every window is one forward pass (windows of a batch run together). Features are
averaged where windows overlap. This is the sliding-window evaluation of the dense-CLIP harness (SCLIP,
wangf3014/SCLIP@b56bd30, ``clip_segmentor.py: forward_slide``; windows placed by the same rule), with two
differences, both because this suite classifies pooled regions rather than pixels: what is averaged is the feature
map (the harness averages per-pixel class logits, which for a linear classifier is the same up to the
normalisation of the pooled feature), and a pixel takes the feature cell it falls in (the harness upsamples
logits bilinearly). A window that would stick out of a resized image shorter than ``crop`` (a very elongated image
under ``max_long_side``) is zero-padded; the harness feeds the smaller window instead.

Regions (a label map at the image's original size) are pooled from all windows: each original pixel is placed in
the resized image (nearest: ``y * H' // H``), and in every window covering it, it adds its window's feature cell
with weight 1 / (number of windows covering it); a region's feature is the weighted mean. With one window that
covers the whole image this is exactly :func:`bench.pooling.pool_features` (``pool_with_area``), which ``whole``
uses as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.inputs import input_key, model_input
from bench.pooling import pool_cells, pool_with_area

WINDOW_BATCH = 32  # windows per forward pass


@dataclass(frozen=True)
class Protocol:
    """The inference settings :mod:`bench.config`'s ``InferenceConfig`` carries (any object with these fields)."""

    mode: str = "whole"
    short_side: int = 336
    max_long_side: int = 2048
    crop: int = 0  # 0 = the base model's input size
    stride: int = 0  # 0 = half the window


WHOLE = Protocol("whole")


@dataclass(frozen=True)
class Layout:
    """Where one image's windows lie: its original ``size`` (H, W), its ``resized`` size, the ``window`` side and
    the windows' top rows and left columns (in resized pixels). Windows are ordered row by row."""

    size: tuple[int, int]
    resized: tuple[int, int]
    window: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def window_starts(length: int, window: int, stride: int) -> tuple[int, ...]:
    """Start of each window along one side: every ``stride`` pixels, the last moved back to end at the border
    (the harness's rule); one window at 0 when the side is no longer than the window."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return tuple(max(min(i * stride + window, length) - window, 0) for i in range(count))


def window_side(protocol: Any, input_size: int) -> tuple[int, int]:
    """The window side and stride of a slide protocol for a base of input size ``input_size``."""
    crop = protocol.crop or input_size
    return crop, protocol.stride or max(crop // 2, 1)


def check_protocol(protocol: Any, input_size: int, where: str = "inference") -> None:
    """Refuse settings that cannot describe a window grid, naming the key."""
    if protocol.mode != "slide":
        return
    crop, stride = window_side(protocol, input_size)
    if crop > protocol.short_side:
        default = "" if protocol.crop else " (the base model's input size)"
        raise ConfigError(f"{where}.crop: a window of {crop} pixels{default} is larger than "
                          f"{where}.short_side={protocol.short_side}; set a short side of at least {crop} or a "
                          "smaller crop")
    if stride > crop:
        raise ConfigError(f"{where}.stride: {stride} is larger than the window ({crop}); windows would leave gaps")


def layout(height: int, width: int, protocol: Any, input_size: int) -> Layout:
    """The window layout of an ``height × width`` image (``input_size``: the base model's square input)."""
    if protocol.mode == "whole":
        return Layout((height, width), (input_size, input_size), input_size, (0,), (0,))
    crop, stride = window_side(protocol, input_size)
    scale = min(protocol.short_side / min(height, width), protocol.max_long_side / max(height, width))
    rh, rw = max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)  # rounded as mmcv.rescale_size
    return Layout((height, width), (rh, rw), crop, window_starts(rh, crop, stride), window_starts(rw, crop, stride))


class DenseFeatures:
    """One image's dense features: ``features`` float ``N×D×g×g``, one grid per window of ``layout``, each grid
    covering ``extent`` resized pixels (the window, padded up to a multiple of the backbone's patch)."""

    def __init__(self, layout: Layout, features: torch.Tensor, extent: int) -> None:
        self.layout, self.features, self.extent = layout, features, extent

    @property
    def device(self) -> torch.device:
        return self.features.device

    @property
    def spans_image(self) -> bool:
        """One grid covering the whole image (``whole``): pixels map to its cells by plain scaling."""
        lay = self.layout
        return lay.count == 1 and lay.resized == (lay.window, lay.window) == (self.extent, self.extent)

    def pool(self, label_map: torch.Tensor, num_regions: int) -> torch.Tensor:
        """float ``num_regions×D``: row ``k-1`` is the mean feature of region ``k`` of ``label_map`` (int64 at the
        image's own size, 0 = none); a region with no pixels gets a zero row. Pooled in float32 whatever the
        features' precision (pixel counts do not fit bf16's 8-bit mantissa)."""
        return self.pool_with_area(label_map, num_regions)[0]

    def segments(self, sample: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean features (float ``K×D``) of a sample's ground-truth segments that are not crowd and have
        pixels, and their class ids (int64 ``K``): what a memory or a classifier learns from."""
        classes = sample["segment_classes"]
        cells = sample.get("segment_cells", {}).get(tuple(self.features.shape[-2:])) if self.spans_image else None
        if cells is not None:  # counted by the loader's worker on this grid (bench.inputs.PreparedInputs)
            pooled, area = pool_cells(self.features[0].float(), cells)
        elif "segments" in sample:
            pooled, area = self.pool_with_area(sample["segments"], len(classes))
        else:
            raise ValueError(f"sample {sample.get('meta', {}).get('file_id', '?')!r} has no segment map and no "
                             f"segment cell counts on a {tuple(self.features.shape[-2:])} grid spanning the image")
        keep = ~sample["segment_iscrowd"] & (area > 0)
        return pooled[keep], classes[keep]

    def pool_with_area(self, label_map: torch.Tensor, num_regions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`pool`, and each region's area (``num_regions``; > 0 exactly where the region has pixels: under
        ``slide`` pixels weigh 1 / the windows covering them, and every pixel is covered)."""
        lay = self.layout
        features = self.features.float()
        if self.spans_image:
            return pool_with_area(features[0], label_map, num_regions)  # whole: the grid spans the image
        H, W = label_map.shape
        (rh, rw), win, g = lay.resized, lay.window, features.shape[-1]
        device = label_map.device
        ry = torch.arange(H, device=device) * rh // H  # each pixel's place in the resized image
        rx = torch.arange(W, device=device) * rw // W
        wy = 1.0 / _cover(lay.rows, win, max(rh, win), device)[ry]
        wx = 1.0 / _cover(lay.cols, win, max(rw, win), device)[rx]
        d = features.shape[1]
        sums = torch.zeros(num_regions, d, dtype=features.dtype, device=device)
        area = torch.zeros(num_regions, dtype=torch.float64, device=device)
        k = 0
        for top in lay.rows:
            r0, r1 = (int(v) for v in torch.searchsorted(ry, torch.tensor([top, top + win], device=device)))
            cy = (ry[r0:r1] - top) * g // self.extent
            for left in lay.cols:
                c0, c1 = (int(v) for v in torch.searchsorted(rx, torch.tensor([left, left + win], device=device)))
                cx = (rx[c0:c1] - left) * g // self.extent
                index = label_map[r0:r1, c0:c1] * (g * g) + (cy.view(-1, 1) * g + cx.view(1, -1))
                weight = (wy[r0:r1].view(-1, 1) * wx[c0:c1].view(1, -1)).to(torch.float64)
                counts = torch.zeros((num_regions + 1) * g * g, dtype=torch.float64, device=device)
                counts = counts.index_add_(0, index.flatten(), weight.flatten()).view(num_regions + 1, g * g)[1:]
                sums += counts.to(features.dtype) @ features[k].reshape(d, g * g).T
                area += counts.sum(1)
                k += 1
        return torch.where(area.view(-1, 1) > 0, sums / area.clamp_min(1e-12).view(-1, 1).to(sums.dtype), 0), area


def _cover(starts: tuple[int, ...], window: int, length: int, device: torch.device) -> torch.Tensor:
    """How many windows cover each position along one side (float ``[length]``)."""
    cover = torch.zeros(length, dtype=torch.float64, device=device)
    for s in starts:
        cover[s:s + window] += 1
    return cover


def _windows(x: torch.Tensor, lay: Layout, extent: int) -> torch.Tensor:
    """float ``N×3×extent×extent``: the windows of one resized, normalised image ``3×h×w`` (:func:`model_input`)."""
    rh, rw = lay.resized
    side_h, side_w = max(rh, lay.window), max(rw, lay.window)
    x = F.pad(x, (0, side_w - rw, 0, side_h - rh))  # only for a side shorter than the window
    crops = [x[:, t:t + lay.window, s:s + lay.window] for t in lay.rows for s in lay.cols]
    pad = extent - lay.window
    return torch.stack([F.pad(c, (0, pad, 0, pad)) if pad else c for c in crops])


def _input(backbone: Any, image: torch.Tensor, resized: tuple[int, int] | None,
           prepared: dict[Any, torch.Tensor] | None) -> torch.Tensor:
    """The backbone's input for one image: the one the loader's workers prepared when there is one
    (:class:`bench.inputs.PreparedInputs`), else made here (the same function on the same values)."""
    key = input_key(backbone, resized)
    if prepared is not None and key is not None and key in prepared:
        return prepared[key]
    return model_input(backbone, image, resized)


def extent_of(backbone: Any, window: int) -> int:
    """The window side rounded up to the backbone's patch size (what its grid then covers)."""
    patch = getattr(backbone, "patch_size", 1)
    return math.ceil(window / patch) * patch


def dense_features(backbones: list[Any], images: list[torch.Tensor], protocol: Any, input_size: int | None = None,
                   joint: Any = None, inputs: list[Any] | None = None) -> list[list[DenseFeatures]]:
    """Features of ``images`` (uint8 ``3×H×W`` each) from each backbone: ``out[b][i]`` for backbone b, image i.

    ``whole``: each backbone's own ``preprocess`` and input size. ``slide``: the same windows for every backbone
    (side from ``protocol.crop`` or ``input_size``, the base's input). ``joint``: a callable computing all
    backbones' features from one batch of windows at once (the base and its own visual tower share a pass).
    ``inputs``: per image, the inputs the loader's workers prepared (``sample.get("inputs")``; None: make them)."""
    inputs = inputs or [None] * len(images)
    if protocol.mode == "whole":
        out = []
        batches = [torch.stack([_input(b, image, None, ready) for image, ready in zip(images, inputs)])
                   for b in backbones]
        if joint is not None:
            maps = list(joint(batches[0]))
        else:
            maps = [b.dense_features(x) for b, x in zip(backbones, batches)]
        for x, grids in zip(batches, maps):
            side = x.shape[-1]
            out.append([DenseFeatures(layout(*im.shape[-2:], protocol, side), grids[i:i + 1], side)
                        for i, im in enumerate(images)])
        return out
    if input_size is None:
        raise ValueError("slide inference needs the base model's input size")
    layouts = [layout(*im.shape[-2:], protocol, input_size) for im in images]
    extents = [extent_of(b, layouts[0].window) for b in backbones]
    if joint is not None and len(set(extents)) != 1:
        raise ValueError("a joint pass needs backbones with one patch size")
    grids: list[list[torch.Tensor]] = [[] for _ in backbones]
    for b, (backbone, extent) in enumerate(zip(backbones, extents)):
        if joint is not None and b > 0:
            break
        windows = torch.cat([_windows(_input(backbone, im, lay.resized, ready), lay, extent)
                             for im, lay, ready in zip(images, layouts, inputs)])
        for start in range(0, len(windows), WINDOW_BATCH):
            chunk = windows[start:start + WINDOW_BATCH]
            results = joint(chunk) if joint is not None else (backbone.dense_features(chunk),)
            for j, r in enumerate(results):
                grids[b + j].append(r)
    out = []
    for b, extent in enumerate(extents):
        every = torch.cat(grids[b])
        per_image, start = [], 0
        for lay in layouts:
            per_image.append(DenseFeatures(lay, every[start:start + lay.count], extent))
            start += lay.count
        out.append(per_image)
    return out
