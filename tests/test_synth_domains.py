"""Synth domains and colour-qualified classes: new looks for shifted tasks, the default look byte for byte."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from datamodules.contract import DataError
from datamodules.synth import APPEARANCE, DOMAINS, PALETTE, SynthReader, make_scene
from datamodules.vocabulary import Vocabulary

TASKS = Path(__file__).resolve().parents[1] / "tasks"
PARK = Vocabulary.from_file(TASKS / "vocab" / "synth-park.txt", name="park")
CITY = Vocabulary.from_file(TASKS / "vocab" / "synth-city.txt", name="city")
NOVEL = Vocabulary.from_file(TASKS / "vocab" / "synth-beach-novel.txt", name="beach-novel")
# Raw pixels, ids and classes of 36 default scenes, taken before domains existed (generator version 1).
DEFAULT_GOLDEN = "d62123da561749033b6e0b9838ad7c2518ff1b7fc376c4263ba9b4b658d5ecc8"


def test_default_domain_draws_what_version_1_drew() -> None:
    h = hashlib.sha256()
    for name, seed in [("park", 1), ("beach", 2), ("city", 3)]:
        vocab = Vocabulary.from_file(TASKS / "vocab" / f"synth-{name}.txt", name=name)
        for split in ("train", "val"):
            for i in range(6):
                s = make_scene(vocab, seed, split, i)
                h.update(s.image.tobytes())
                h.update(s.ids.astype("int64").tobytes())
                h.update(repr(s.classes).encode())
    assert h.hexdigest() == DEFAULT_GOLDEN


def test_domains_keep_layout_and_change_looks() -> None:
    night = make_scene(CITY, 4, "val", 0, domain="night")
    day = make_scene(CITY, 4, "val", 0)
    # Lighting changes colours only, after the layout is drawn: same segments, much darker pixels.
    assert np.array_equal(night.ids, day.ids) and night.classes == day.classes
    assert night.image.mean() < 0.7 * day.image.mean()
    scenes = [make_scene(PARK, 4, "val", i, domain="autumn") for i in range(4)]
    grass = [s.image[s.ids == s.classes.index("grass") + 1] for s in scenes if "grass" in s.classes]
    r, g, _ = np.concatenate(grass).mean(0)
    assert r > g + 30  # leaf litter, not green grass


def test_domain_is_part_of_the_spec_and_refused_elsewhere(tmp_path: Path) -> None:
    counts = {"train": 2}
    reader = SynthReader(tmp_path / "night", "train", CITY, num_images=counts, domain="night")
    assert json.loads((reader.root / "spec.json").read_text())["domain"] == "night"
    plain = SynthReader(tmp_path / "plain", "train", CITY, num_images=counts)
    assert "domain" not in json.loads((plain.root / "spec.json").read_text())  # old caches stay valid
    with pytest.raises(DataError, match="domain: folder has 'night', requested None"):
        SynthReader(tmp_path / "night", "train", CITY, num_images=counts)
    with pytest.raises(DataError, match="option 'domain' must be one of default, autumn, night"):
        SynthReader(tmp_path / "x", "train", CITY, num_images=counts, domain="winter")


def test_colour_qualified_balls_differ_only_in_colour() -> None:
    assert set(NOVEL.classes) <= set(APPEARANCE) and set(DOMAINS) == {"default", "autumn", "night"}
    red, blue = {}, {}
    for i in range(12):
        s = make_scene(NOVEL, 3, "val", i)
        for k, name in enumerate(s.classes, 1):
            if name in ("red ball", "blue ball"):
                (red if name == "red ball" else blue).setdefault(i, s.image[s.ids == k].mean(0))
    assert red and blue
    r, b = np.mean(list(red.values()), 0), np.mean(list(blue.values()), 0)
    assert r[0] > r[2] + 100 and b[2] > b[0] + 100
    assert np.argmax(b) == np.argmax(PALETTE["blue"])
