"""Adding a method, a base and a proposer is one new file each: here all three are registered from this test
file and run end to end through ``bench run`` (the toy entries are removed again afterwards)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench.methods import METHODS, Method, RunContext
from bench.models import BASES
from bench.models.clip import OpenClipBase
from bench.proposals import PROPOSERS


class MajorityHead(torch.nn.Module):
    """Predicts, for every proposal, the class with most adapt pixels (that the vocabulary holds)."""

    def __init__(self, counts: dict[str, int]) -> None:
        super().__init__()
        self.counts, self.embedder, self.vocabularies = counts, None, []

    def begin(self, vocabularies: list[Any]) -> None:
        self.vocabularies = list(vocabularies)

    def forward(self, label_map, base_feats, memory_feats, task):
        classes = self.vocabularies[task].classes
        best = max(range(len(classes)), key=lambda c: (self.counts.get(classes[c], 0), -c))
        probs = torch.zeros(int(label_map.max()), len(classes))
        probs[:, best] = 1.0
        return probs


class Majority(Method):
    name, description = "toy-majority", "predicts the most frequent adapt class (a test's toy)"

    def setup(self, ctx: RunContext, steps_done: int) -> None:
        self.counts: dict[str, int] = {}
        self._head = MajorityHead(self.counts)

    @property
    def head(self) -> torch.nn.Module:
        return self._head

    def adapt(self, ctx: RunContext, t: int) -> dict[str, Any]:
        dataset, vocabulary = ctx.dm.adapt_dataset(t), ctx.spec.tasks[t].vocabulary
        for i in range(len(dataset)):
            semantic = dataset[i]["semantic"]
            for c, n in zip(*torch.unique(semantic[semantic >= 0], return_counts=True)):
                name = vocabulary.classes[int(c)]
                self.counts[name] = self.counts.get(name, 0) + int(n)
        return {"classes_counted": len(self.counts)}


class HalfScaleBase(OpenClipBase):
    """MaskCLIP with its dense features halved (cosine classification is unchanged by the scale)."""

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().dense_features(images)


class Quadrants:
    """Four quadrant proposals, fragments (joined per class by panoptic inference)."""

    instances, runs_on = False, "loader"

    def __init__(self, **_: Any) -> None:
        pass

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        _, h, w = sample["image"].shape
        rows = (torch.arange(h) >= h // 2).long().view(h, 1)
        cols = (torch.arange(w) >= w // 2).long().view(1, w)
        return 1 + rows * 2 + cols


@pytest.fixture
def toys():
    METHODS.register("toy-majority")(Majority)
    BASES.register("toy-halfscale")(HalfScaleBase)
    PROPOSERS.register("toy-quadrants")(Quadrants)
    yield
    METHODS.unregister("toy-majority")
    BASES.unregister("toy-halfscale")
    PROPOSERS.unregister("toy-quadrants")


def test_a_toy_method_base_and_proposer_run_end_to_end(toys, small_run):
    record = small_run("METHOD=toy-majority", "BASE=toy-halfscale", "PROPOSALS=toy-quadrants", "max_steps=2")
    assert (record.method, record.base, record.proposer) == ("toy-majority", "toy-halfscale", "toy-quadrants")
    assert record.steps_done == 2 and record.timings["steps"][1]["classes_counted"] >= 7
    # Every pixel is predicted as one class, so exactly one class can score, and at most its pixel share.
    for task, ious in record.per_class_iou[-1].items():
        assert sum(v > 0 for v in ious.values() if v is not None) <= 1, (task, ious)


def test_a_registered_base_is_what_the_run_uses(toys, small_run):
    """Halving the features leaves cosine classification unchanged: the toy base scores exactly as MaskCLIP."""
    plain = small_run("METHOD=zeroshot", "PROPOSALS=gt", "max_steps=1", "RUN_ID=plain")
    halved = small_run("METHOD=zeroshot", "PROPOSALS=gt", "max_steps=1", "BASE=toy-halfscale", "RUN_ID=halved")
    assert halved.base == "toy-halfscale" and halved.config["base"]["kind"] == "toy-halfscale"
    assert halved.matrix["miou"][0] == pytest.approx(plain.matrix["miou"][0], abs=1e-3)
