"""Clear errors for bad input: each names what was given, where, and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError
from bench.models.clip import resolve_pretrained
from bench.run import build_config
from datamodules.contract import IGNORE_INDEX, DataError, validate_sample
from datamodules.registry import register_reader
from datamodules.sequence import TaskDataset, load_sequence
from datamodules.vocabulary import Vocabulary


def test_unknown_sequence_lists_the_known_ones(capsys):
    assert main(["run", "SEQ=no-such-seq"]) == 2
    err = capsys.readouterr().err
    assert "no-such-seq" in err and "synth" in err


def test_unknown_method_lists_the_known_ones(capsys):
    assert main(["run", "METHOD=lora"]) == 2
    err = capsys.readouterr().err
    assert "'lora'" in err and "knn" in err and "zeroshot" in err


def test_unknown_model_and_tag():
    with pytest.raises(ConfigError, match="unknown MODEL 'ViT-Q-99'.*tiny-random"):
        resolve_pretrained("ViT-Q-99", "")
    with pytest.raises(ConfigError, match="unknown PRETRAINED 'nope' for MODEL ViT-B-16.*laion2b_s34b_b88k"):
        resolve_pretrained("ViT-B-16", "nope")
    with pytest.raises(ConfigError, match="random-init suite config"):
        resolve_pretrained("tiny-random", "openai")


def test_unknown_config_key_and_bad_value():
    with pytest.raises(ConfigError, match="^command line: knn.kk: unknown key; did you mean 'knn.k'[?]$"):
        build_config(["knn.kk=3"])
    with pytest.raises(ConfigError, match="^command line: knn.k: must be an integer >= 1, got 'many'$"):
        build_config(["knn.k=many"])


def test_empty_vocabulary_names_the_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# only a comment\n\n")
    with pytest.raises(DataError, match=f"{path}: vocabulary is empty"):
        Vocabulary.from_file(path)
    seq = tmp_path / "mine.yaml"
    seq.write_text("tasks:\n  - {name: a, format: synth, root: x, vocabulary: empty.txt, adapt: train, eval: val}\n")
    with pytest.raises(DataError, match="empty.txt: vocabulary is empty"):
        load_sequence(str(seq))


def test_bad_vocabulary_line_names_file_and_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("sky\tstuff\nball thing\n")
    with pytest.raises(DataError, match=r"v.txt:2: expected 'class name<TAB>thing\|stuff'"):
        Vocabulary.from_file(path)


def _sample(h: int = 4, w: int = 5, mask_hw: tuple[int, int] | None = None) -> dict:
    mh, mw = mask_hw or (h, w)
    return {"image": torch.zeros(3, h, w, dtype=torch.uint8), "semantic": torch.zeros(mh, mw, dtype=torch.long),
            "segments": torch.ones(mh, mw, dtype=torch.long), "segment_classes": torch.tensor([0]),
            "segment_iscrowd": torch.tensor([False]), "meta": {"source": "/data/img_007.png"}}


def test_mask_class_outside_vocabulary():
    sample = _sample()
    sample["semantic"][1, 2] = 9
    with pytest.raises(DataError, match=r"/data/img_007.png: field 'semantic' has class id 9, outside .* 7 classes"):
        validate_sample(sample, 7)
    sample = _sample()
    sample["semantic"][0, 0] = IGNORE_INDEX  # ignore is fine
    validate_sample(sample, 7)


def test_mask_and_image_of_different_sizes():
    with pytest.raises(DataError, match=r"/data/img_007.png: field 'semantic' has size \(4, 6\) but the image is"):
        validate_sample(_sample(mask_hw=(4, 6)), 3)


@register_reader("test-bad-ids")
class _BadIdsReader:
    """A reader that yields a class id its vocabulary does not have, to check that TaskDataset catches it."""

    def __init__(self, root: Path, split: str, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        sample = _sample()
        sample["semantic"][:] = len(self.vocabulary)
        return sample


def test_task_dataset_checks_samples_as_they_enter(tmp_path):
    (tmp_path / "v.txt").write_text("a\tstuff\nb\tthing\n")
    (tmp_path / "s.yaml").write_text(
        "tasks:\n  - {name: t, format: test-bad-ids, root: x, vocabulary: v.txt, adapt: train, eval: val}\n")
    spec = load_sequence(str(tmp_path / "s.yaml"))
    dataset = TaskDataset(spec.tasks[0], spec.tasks[0].adapt, tmp_path)
    with pytest.raises(DataError, match="img_007.png: field 'semantic' has class id 2"):
        dataset[0]


def test_unreadable_image_names_the_file(tmp_path):
    # A synthetic split written to disk, then one image replaced by garbage bytes.
    from datamodules.synth import SynthReader

    vocab = Vocabulary.from_names("v", ["sky", "grass", "ball"], things=["ball"])
    reader = SynthReader(tmp_path / "d", "val", vocab, num_images={"val": 2})
    image = reader.root / "val" / "000001.png"
    image.write_bytes(b"not a png at all")
    reader = SynthReader(tmp_path / "d", "val", vocab, num_images={"val": 2})
    reader[0]
    with pytest.raises(DataError, match="000001.png"):
        reader[1]
