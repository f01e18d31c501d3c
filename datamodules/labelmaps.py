"""Semantic label-map datasets: one image file and one label image per sample, paired by file name.

Shared by the ADE20K, ADE20K-847, PASCAL Context and Cityscapes readers, and registered on its own as
``label_map`` for a user's dataset in the same shape::

    {root}/{image_dir}/<stem>{image_ext}       images (any PIL format; ``{split}`` in a template is the split)
    {root}/{label_dir}/<stem>{label_ext}       label maps: 8- or 16-bit single-channel PNG / TIFF

A label value ``v`` becomes class ``v - offset`` of the task vocabulary (in file order); values listed in
``ignore_values`` (default ``[255]``: ``PNG_IGNORE``, the usual 8-bit convention) and values below ``offset``
become ignore (-1 in the samples). A value past the vocabulary is an error naming the file. With more than 255
classes the value 255 is a class, so the default is refused: give ``ignore_values`` explicitly (``[]``, or
``[65535]`` for 16-bit maps). Each class present becomes one segment (semantic data has no instances), never crowd.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
from PIL import Image

from datamodules.contract import IGNORE_INDEX, DataError
from datamodules.ignore import PNG_IGNORE
from datamodules.registry import register_reader
from datamodules.vocabulary import Vocabulary

# PIL signals bad files with several exception types depending on the plugin and the stage of decoding.
PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Label images must hold integer ids in one channel: palette PNGs (ADE, PASCAL) hold the index, not a colour.
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass(frozen=True)
class LayoutEntry:
    """One path a reader needs, for ``bench data check``: where it is and what it holds."""

    path: Path
    what: str
    kind: str = "dir"  # "dir" or "file"

    def exists(self) -> bool:
        return self.path.is_dir() if self.kind == "dir" else self.path.is_file()


def decode_rgb(source: Path | BinaryIO, name: Path | str, what: str, modes: Sequence[str] | None = None,
               expected: str | None = None) -> np.ndarray:
    """An ``H×W×3`` uint8 array of an encoded image (a file or a byte stream); errors begin with ``name``.

    ``modes`` restricts the image modes accepted (panoptic ids need true RGB); ``expected`` says what is wanted.
    """
    try:
        with Image.open(source) as im:
            mode, rgb = im.mode, np.asarray(im.convert("RGB"))
    except PIL_ERRORS as e:
        raise DataError(f"{name}: cannot decode {what} ({e})") from e
    if modes is not None and mode not in modes:
        raise DataError(f"{name}: {what} has mode {mode}; expected {expected or 'mode ' + ' or '.join(modes)}")
    return rgb


def load_rgb(path: Path, what: str = "image", modes: Sequence[str] | None = None,
             expected: str | None = None) -> np.ndarray:
    """An ``H×W×3`` uint8 array; :class:`DataError` naming the file when it is missing or undecodable."""
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    return decode_rgb(path, path, what, modes, expected)


def load_label_map(path: Path, what: str = "label map") -> np.ndarray:
    """An ``H×W`` int64 array of the raw label values of a single-channel 8- or 16-bit image."""
    if not path.is_file():
        raise DataError(f"{path}: {what} missing")
    return decode_label_map(path, path, what)


def decode_label_map(source: Path | BinaryIO, name: Path | str, what: str = "label map") -> np.ndarray:
    """:func:`load_label_map` of a file or a byte stream; errors begin with ``name``."""
    try:
        with Image.open(source) as im:
            if im.mode not in LABEL_MODES:
                raise DataError(f"{name}: {what} has mode {im.mode}; expected a single-channel 8- or 16-bit "
                                "image of class ids (mode L, P or I;16)")
            return np.asarray(im).astype(np.int64)
    except PIL_ERRORS as e:
        raise DataError(f"{name}: cannot decode {what} ({e})") from e


def image_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``3×H×W`` uint8 tensor from an ``H×W×3`` array."""
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path,
                    what: str = "label map") -> None:
    if image.shape[:2] != label.shape[:2]:
        h, w = image.shape[:2]
        raise DataError(f"{label_path}: {what} is {label.shape[1]}×{label.shape[0]} (W×H) but image "
                        f"{image_path} is {w}×{h}; expected the same size")


def check_listed_size(image: np.ndarray, size: tuple[int, int] | None, image_path: Path, listed_in: Path) -> None:
    """The image must have the ``(H, W)`` size that the annotation file ``listed_in`` gives, when it gives one."""
    h, w = image.shape[:2]
    if size is not None and size != (h, w):
        raise DataError(f"{image_path}: image is {w}×{h} (W×H) but {listed_in} gives {size[1]}×{size[0]}")


def check_root(root: Path, entries: Sequence[LayoutEntry], required: Sequence[LayoutEntry] | None = None) -> str:
    """The expected layout in words, once ``root`` and the ``required`` entries (default: all) exist."""
    layout = describe(entries)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist; {layout}")
    require_dirs(entries if required is None else required, layout)
    return layout


def check_index(index: int, length: int, where: Path | str, unit: str = "samples") -> None:
    """:class:`IndexError` for an index outside ``-length .. length - 1``, naming where the samples come from."""
    if not -length <= index < length:
        raise IndexError(f"sample {index} out of range for {length} {unit} in {where}")


PAST_VOCABULARY = -2  # marks raw values that would name a class the vocabulary does not have


def value_lut(num_values: int, offset: int, ignore_values: Iterable[int], num_classes: int) -> np.ndarray:
    """Raw label value → local class id (``IGNORE_INDEX`` for ignore, ``PAST_VOCABULARY`` past its end)."""
    classes = np.arange(num_values, dtype=np.int64) - offset
    lut = np.where(classes >= num_classes, PAST_VOCABULARY, classes)
    lut[classes < 0] = IGNORE_INDEX
    for v in ignore_values:
        if 0 <= v < num_values:
            lut[v] = IGNORE_INDEX
    return lut


def check_default_ignore(reader: str, ignore_values: Iterable[int], offset: int, vocabulary: Vocabulary,
                         option: str = "ignore_values") -> None:
    """A default ignore value that would name a class of ``vocabulary`` is refused (255 is a class of ADE-847)."""
    shadowed = [v for v in ignore_values if 0 <= v - offset < len(vocabulary)]
    if shadowed:
        v = shadowed[0]
        raise DataError(f"{reader}: label value {v} means ignore by default, but it is class {v - offset} "
                        f"({vocabulary.classes[v - offset]!r}) of the {len(vocabulary)} classes of vocabulary "
                        f"{vocabulary.name!r}; set option {option!r} to the values that mean ignore in your label "
                        "maps ([] for none, [65535] for 16-bit maps)")


def apply_lut(raw: np.ndarray, lut: np.ndarray, path: Path, num_classes: int) -> np.ndarray:
    """Map raw values through ``lut``; a value outside it or past the vocabulary is a :class:`DataError`."""
    if raw.size and (int(raw.min()) < 0 or int(raw.max()) >= len(lut)):
        raise DataError(f"{path}: label value {int(raw.max())} is outside the {len(lut)} values expected")
    out = lut[raw]
    if bool((out == PAST_VOCABULARY).any()):
        value = int(raw[out == PAST_VOCABULARY][0])
        raise DataError(f"{path}: label value {value} maps past the {num_classes} classes of the vocabulary")
    return out


def class_segments(semantic: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """One segment per class present: (``H×W`` int64 segment map, 1-based; class of each segment)."""
    # One counting pass instead of a sort or hash (np.unique): ids are small and IGNORE_INDEX is -1, so
    # shifting by one puts ignore at 0 and every class c at c + 1.
    assert IGNORE_INDEX == -1
    shifted = semantic.ravel() + 1
    present = np.flatnonzero(np.bincount(shifted)[1:])
    seg_of = np.zeros(int(present[-1]) + 2 if len(present) else 1, dtype=np.int64)  # ignore → segment 0
    seg_of[present + 1] = np.arange(1, len(present) + 1)
    return seg_of[shifted].reshape(semantic.shape), present.tolist()


def panoptic_sample(rgb: np.ndarray, semantic: np.ndarray, segments: np.ndarray, classes: list[int],
                    crowd: list[bool], dataset: str, file_id: str, source: Path | str) -> dict[str, Any]:
    """A contract sample from an image, its semantic and segment maps and the class and crowd flag per segment."""
    return {
        "image": image_tensor(rgb),
        "semantic": torch.from_numpy(semantic),
        "segments": torch.from_numpy(segments),
        "segment_classes": torch.tensor(classes, dtype=torch.int64),
        "segment_iscrowd": torch.tensor(crowd, dtype=torch.bool),
        "meta": {"dataset": dataset, "file_id": file_id, "source": str(source), "size": tuple(rgb.shape[:2])},
    }


def semantic_sample(rgb: np.ndarray, semantic: np.ndarray, dataset: str, file_id: str,
                    source: Path | str) -> dict[str, Any]:
    """A contract sample from an image and a semantic map of local class ids, one segment per class."""
    segments, classes = class_segments(semantic)
    return panoptic_sample(rgb, semantic, segments, classes, [False] * len(classes), dataset, file_id, source)


def pair_files(image_dir: Path, label_dir: Path, image_ext: str, label_ext: str,
               label_suffix: str = "", image_suffix: str = "") -> list[tuple[Path, Path]]:
    """Images in name order, each with its label file; an image without one is a :class:`DataError`.

    ``image_suffix`` is stripped from the image stem and ``label_suffix`` appended to find the label
    (Cityscapes: ``_leftImg8bit`` → ``_gtFine_labelIds``).
    """
    pairs = []
    for image in sorted(image_dir.glob(f"*{image_suffix}{image_ext}")):
        stem = image.name[: len(image.name) - len(image_suffix + image_ext)]
        label = label_dir / f"{stem}{label_suffix}{label_ext}"
        if not label.is_file():
            raise DataError(f"{image}: image has no annotation; expected {label}")
        pairs.append((image, label))
    return pairs


def require_dirs(entries: Sequence[LayoutEntry], layout: str) -> None:
    """Raise :class:`DataError` for the first missing entry, naming it and the expected layout."""
    for e in entries:
        if not e.exists():
            raise DataError(f"{e.path}: {e.what} missing; {layout}")


def describe(entries: Sequence[LayoutEntry]) -> str:
    return "expected " + ", ".join(f"{e.path}{'/' if e.kind == 'dir' else ''} ({e.what})" for e in entries)


class ListedReader:
    """Sequence access for a reader that lists its samples up front.

    A subclass sets ``_records`` (one entry per sample, in order) and ``_where`` (the folder or file that an
    out-of-range index is reported against), and reads one entry in ``_sample``.
    """

    _records: Sequence[Any]
    _where: Path

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        check_index(index, len(self), self._where)
        return self._sample(self._records[index])

    def _sample(self, record: Any) -> dict[str, Any]:
        raise NotImplementedError


class LabelMapReader(ListedReader):
    """Images paired with single-channel label maps by name; see the module docstring.

    ``limit`` keeps the first N samples in name order (None or 0 = all).
    """

    #: split aliases (e.g. ``train`` → ``training``) applied before formatting the templates
    split_aliases: ClassVar[dict[str, str]] = {}
    defaults: ClassVar[dict[str, Any]] = {
        "image_dir": "images/{split}", "label_dir": "annotations/{split}", "image_ext": ".jpg", "label_ext": ".png",
        "offset": 0, "ignore_values": (PNG_IGNORE,)}
    expected_classes: int | None = None  # the label space the preset is for, when it has one

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary, limit: int | None = None,
                 **options: Any) -> None:
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise DataError(f"{type(self).__name__}: unknown option(s) {sorted(unknown)}; "
                            f"known: {sorted(self.defaults)}, limit")
        opts = {**self.defaults, **options}
        self.root, self.split, self.vocabulary = Path(root), self.split_aliases.get(split, split), vocabulary
        self.offset, self.ignore_values = int(opts["offset"]), tuple(opts["ignore_values"])
        self.image_ext, self.label_ext = opts["image_ext"], opts["label_ext"]
        if "ignore_values" not in options:
            check_default_ignore(type(self).__name__, self.ignore_values, self.offset, vocabulary)
        if self.expected_classes is not None and len(vocabulary) != self.expected_classes:
            raise DataError(f"{type(self).__name__}: vocabulary {vocabulary.name!r} has {len(vocabulary)} classes; "
                            f"this format's labels index {self.expected_classes} classes in dataset order")
        entries = self.expected_layout(self.root, split, vocabulary, **options)
        layout = check_root(self.root, entries)
        self.image_dir, self.label_dir = entries[0].path, entries[1].path
        self._where = self.image_dir
        self._records = pair_files(self.image_dir, self.label_dir, self.image_ext, self.label_ext)
        if not self._records:
            raise DataError(f"{self.image_dir}: no '*{self.image_ext}' images; {layout}")
        if limit:
            self._records = self._records[:limit]
        # 16-bit maps hold up to 65535; the table is small either way (65536 int64 = 512 KiB, built once).
        self._lut = value_lut(65536, self.offset, self.ignore_values, len(vocabulary))

    @classmethod
    def expected_layout(cls, root: Path, split: str, vocabulary: Vocabulary | None = None,
                        **options: Any) -> list[LayoutEntry]:
        """The image folder, then the label folder, for ``split`` (templates formatted)."""
        opts = {**cls.defaults, **options}
        split = cls.split_aliases.get(split, split)
        return [LayoutEntry(Path(root) / opts["image_dir"].format(split=split),
                            f"image folder ('<name>{opts['image_ext']}')"),
                LayoutEntry(Path(root) / opts["label_dir"].format(split=split),
                            f"label folder ('<name>{opts['label_ext']}' per image)")]

    def _sample(self, record: tuple[Path, Path]) -> dict[str, Any]:
        image_path, label_path = record
        rgb = load_rgb(image_path)
        raw = load_label_map(label_path)
        check_same_size(rgb, raw, image_path, label_path)
        semantic = apply_lut(raw, self._lut, label_path, len(self.vocabulary))
        return semantic_sample(rgb, semantic, self.root.name, image_path.stem, image_path)


register_reader("label_map", "images with single-channel label maps paired by name")(LabelMapReader)
