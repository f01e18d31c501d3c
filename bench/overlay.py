"""A label map drawn over its image for a person to look at: a colour per class, boundaries and a legend."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ALPHA = 0.5  # weight of the class colour against the image
EDGE = (255, 255, 255)


def palette(num_classes: int) -> np.ndarray:
    """uint8 ``C×3``: PASCAL VOC's colour map (the bits of the id spread over R, G and B, high bits first), from
    its entry 1 on, so class 0 is not black; distinct for any number of classes."""
    ids = np.arange(1, num_classes + 1)
    colours = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


def overlay(rgb: np.ndarray, semantic: np.ndarray, classes: Sequence[str]) -> Image.Image:
    """The uint8 ``H×W×3`` image blended with the class colours of the int ``H×W`` map (negative = uncovered,
    left as it is), white lines where the class changes, and a legend of the classes present, largest first."""
    colours = palette(len(classes))
    covered = semantic >= 0
    out = rgb.astype(np.float32)
    out[covered] = (1 - ALPHA) * out[covered] + ALPHA * colours[semantic[covered]]
    edge = np.zeros(semantic.shape, dtype=bool)
    edge[:, 1:] |= semantic[:, 1:] != semantic[:, :-1]
    edge[1:, :] |= semantic[1:, :] != semantic[:-1, :]
    out[edge] = EDGE
    image = Image.fromarray(np.round(out).astype(np.uint8))
    area = np.bincount(semantic[covered], minlength=len(classes))
    present = [int(c) for c in np.argsort(-area, kind="stable") if area[c] > 0]
    _legend(image, [(classes[c], tuple(int(v) for v in colours[c])) for c in present])
    return image


def _legend(image: Image.Image, entries: list[tuple[str, tuple[int, ...]]], pad: int = 4) -> None:
    """A swatch and a name per entry in a translucent box at the top left, as many rows as fit (``+n more`` for
    the rest); nothing where not even one row and its name fit."""
    if not entries:
        return
    draw = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.load_default()
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    line = bottom - top + pad
    rows = (image.height - 2 * pad) // line
    if rows < len(entries):
        entries = [*entries[:max(rows - 1, 0)], (f"+{len(entries) - max(rows - 1, 0)} more", ())]
    width = 3 * pad + line + max(int(draw.textlength(name, font=font)) for name, _ in entries)
    if rows < 1 or width > image.width:
        return
    draw.rectangle((0, 0, width, 2 * pad + line * len(entries)), fill=(0, 0, 0, 160))
    for i, (name, colour) in enumerate(entries):
        y = pad + i * line
        if colour:
            draw.rectangle((pad, y + 1, pad + line - pad, y + line - pad), fill=colour, outline=EDGE)
        draw.text((2 * pad + line, y - top), name, fill=(255, 255, 255, 255), font=font)


def overlay_png(rgb: np.ndarray, semantic: np.ndarray, classes: Sequence[str]) -> bytes:
    """PNG bytes of :func:`overlay` (RGB, the image's size)."""
    buf = io.BytesIO()
    overlay(rgb, semantic, classes).save(buf, format="PNG")
    return buf.getvalue()
