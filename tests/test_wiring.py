"""Known answers through the real adapt pass (MemoryWriter) and evaluation (ContinualSegmenter with the kNN head):
a hand-built world where every pixel's prediction is known.

Two stub backbones look their dense features up per pixel from a table indexed by the image's red channel, at
image resolution, so mask pooling is exact and every pooled embedding, retrieval score and class distribution
below can be written down by hand. Three classes (cat and dog are things, grass is stuff), 4×4 images.

Memory (embedder space, 8 dims), filled by adapting on :func:`adapt_images` (ground-truth segments):

    id  class  unit embedding                 from
    0   cat    (-1, 1, 1, 1, 0, 0, 0, 0) / 2   adapt image 1, segment 1
    1   dog    ( 1, 1, 1, 1, 0, 0, 0, 0) / 2   adapt image 1, segment 2
    2   grass  e4                              adapt image 1, segment 3
    3   grass  e5                              adapt image 2, segment 1
    --  cat    e7 (crowd: never added)         adapt image 2, segment 2
    --  dog    (segment with no pixel)         adapt image 2, segment 3

The *fusion query* (embedding e0) scores 0.5 (dog), 0, 0 (grass), -0.5 (cat) against it: with k = 3 its
neighbours are dog, grass, grass and its confidence is exactly 0.5, a float every stage represents exactly. Its
base embedding is the cat text embedding, so with logit scale 1 ``P_base = (e, 1, 1) / (e + 2)``. Every other
query embeds to e6, orthogonal to every entry (confidence 0: never fused at T > 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from bench.config import KnnConfig
from bench.fusion import fuse, retrieval_distribution
from bench.heads import KnnHead
from bench.memory import Memory
from bench.methods.knn import MemoryWriter
from bench.module import ContinualSegmenter
from bench.proposals import build_proposer
from datamodules.vocabulary import Vocabulary

CAT, DOG, GRASS = 0, 1, 2
VOCAB = Vocabulary.from_names("pets", ["cat", "dog", "grass"], things=["cat", "dog"])
E_DIM, B_DIM = 8, 3
GROUND_TRUTH = build_proposer("gt")  # proposals are instances: panoptic inference must not merge them


def _e(i: int, dim: int = E_DIM) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(dim)]


# color (red channel) -> (base feature [B_DIM], embedder feature [E_DIM]); features need not be unit.
COLORS: dict[int, tuple[list[float], list[float]]] = {
    1: (_e(CAT, B_DIM), [-1, 1, 1, 1, 0, 0, 0, 0]),  # memory cat
    2: (_e(DOG, B_DIM), [1, 1, 1, 1, 0, 0, 0, 0]),  # memory dog
    3: (_e(GRASS, B_DIM), _e(4)),  # memory grass a
    4: (_e(GRASS, B_DIM), _e(5)),  # memory grass b
    5: (_e(CAT, B_DIM), _e(7)),  # crowd cat
    10: (_e(CAT, B_DIM), _e(6)),  # eval cat: base says cat, retrieval never confident
    11: (_e(DOG, B_DIM), _e(6)),  # eval dog
    12: (_e(GRASS, B_DIM), _e(6)),  # eval grass
    13: (_e(CAT, B_DIM), _e(0)),  # the fusion query: base says cat, retrieval says dog with confidence 0.5
}
MEMORY_VECTORS = np.array([[-0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0], [0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0], _e(4), _e(5)],
                          dtype=np.float32)
MEMORY_CLASSES = [CAT, DOG, GRASS, GRASS]


class LookupBackbone:
    """A DenseBackbone whose ``D×H×W`` features are ``table[red channel]``, at image resolution."""

    def __init__(self, column: int, dim: int, identity: str) -> None:
        self.dim, self.identity = dim, identity
        self.table = torch.zeros(256, dim)
        for color, features in COLORS.items():
            self.table[color] = torch.tensor(features[column], dtype=torch.float32)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        return image.float()

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.table[images[:, 0].long()].permute(0, 3, 1, 2)


class LookupBase(LookupBackbone):
    """A BaseSegmenter whose text embedding of class ``c`` is the one-hot e_c of the base feature space."""

    logit_scale = 1.0

    def __init__(self) -> None:
        super().__init__(0, B_DIM, "stub-base")

    def text_embeddings(self, class_names: list[str]) -> torch.Tensor:
        return torch.eye(B_DIM)[[VOCAB.classes.index(n) for n in class_names]]


def make_sample(colors: Sequence[Sequence[int]], semantic: Sequence[Sequence[int]],
                segments: Sequence[Sequence[int]], classes: Sequence[int],
                crowd: Sequence[bool] | None = None) -> dict[str, Any]:
    red = torch.tensor(colors, dtype=torch.uint8)
    return {"image": red.expand(3, *red.shape).clone(), "semantic": torch.tensor(semantic, dtype=torch.long),
            "segments": torch.tensor(segments, dtype=torch.long),
            "segment_classes": torch.tensor(classes, dtype=torch.long),
            "segment_iscrowd": torch.tensor(crowd or [False] * len(classes), dtype=torch.bool),
            "meta": {"dataset": "stub", "file_id": "x", "source": "hand-built", "size": red.shape}}


def adapt_images() -> list[dict[str, Any]]:
    """Image 1: cat, dog, grass. Image 2: grass, a crowd cat, a dog segment with no pixel, and void."""
    one = make_sample(colors=[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]],
                      semantic=[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]],
                      segments=[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]],
                      classes=[CAT, DOG, GRASS])
    two = make_sample(colors=[[4, 4, 4, 4], [4, 4, 4, 4], [5, 5, 0, 0], [5, 5, 0, 0]],
                      semantic=[[2, 2, 2, 2], [2, 2, 2, 2], [0, 0, -1, -1], [0, 0, -1, -1]],
                      segments=[[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]],
                      classes=[GRASS, CAT, DOG], crowd=[False, True, False])
    return [one, two]


def ignore_image() -> dict[str, Any]:
    """cat | dog on top, grass bottom right; bottom left is ignore (-1): row 2 covered by a proposal predicted
    dog (segment 4), row 3 uncovered (predicted 'no class')."""
    return make_sample(colors=[[10, 10, 11, 11], [10, 10, 11, 11], [11, 11, 12, 12], [0, 0, 12, 12]],
                       semantic=[[0, 0, 1, 1], [0, 0, 1, 1], [-1, -1, 2, 2], [-1, -1, 2, 2]],
                       segments=[[1, 1, 2, 2], [1, 1, 2, 2], [4, 4, 3, 3], [0, 0, 3, 3]],
                       classes=[CAT, DOG, GRASS, DOG])


def two_cats_image() -> dict[str, Any]:
    """Two touching cat instances (2×2 each) on top, grass below: ground-truth proposals are instances."""
    return make_sample(colors=[[10, 10, 10, 10], [10, 10, 10, 10], [12, 12, 12, 12], [12, 12, 12, 12]],
                       semantic=[[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2], [2, 2, 2, 2]],
                       segments=[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]],
                       classes=[CAT, CAT, GRASS])


def one_cat_image() -> dict[str, Any]:
    """One cat instance (2×4) on top, grass below."""
    return make_sample(colors=[[10, 10, 10, 10], [10, 10, 10, 10], [12, 12, 12, 12], [12, 12, 12, 12]],
                       semantic=[[0, 0, 0, 0], [0, 0, 0, 0], [2, 2, 2, 2], [2, 2, 2, 2]],
                       segments=[[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]],
                       classes=[CAT, GRASS])


def fusion_image() -> dict[str, Any]:
    """Top half: the fusion query (labelled dog, 8 pixels); bottom half: grass."""
    return make_sample(colors=[[13, 13, 13, 13], [13, 13, 13, 13], [12, 12, 12, 12], [12, 12, 12, 12]],
                       semantic=[[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]],
                       segments=[[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]],
                       classes=[DOG, GRASS])


class SuperpixelsOfOneCat:
    """A class-agnostic over-segmentation of :func:`one_cat_image`: the cat cut into a left and a right half
    (touching), the grass into two rows. Fragments, not instances: panoptic inference must join them."""

    instances, runs_on = False, "loader"

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor:
        return torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]])


EMBEDDER = LookupBackbone(1, E_DIM, "stub-embedder")


def adapted_memory() -> Memory:
    """The memory after the adapt pass over both adapt images (one batch), by a direct predict_step call."""
    memory = Memory(E_DIM, EMBEDDER.identity, "flat")
    with torch.no_grad():
        MemoryWriter(EMBEDDER, memory, VOCAB).predict_step(adapt_images(), 0)
    return memory


def make_module(memory: Memory, knn: KnnConfig | None = None,
                proposer: Callable[[dict[str, Any]], torch.Tensor] = GROUND_TRUTH) -> ContinualSegmenter:
    base = LookupBase()
    return ContinualSegmenter(base, proposer, KnnHead(base, EMBEDDER, memory, knn or KnnConfig(k=3)))


def adapted(knn: KnnConfig | None = None,
            proposer: Callable[[dict[str, Any]], torch.Tensor] = GROUND_TRUTH) -> ContinualSegmenter:
    """The evaluation module (kNN head) over the adapted memory."""
    return make_module(adapted_memory(), knn, proposer)


def evaluate(module: ContinualSegmenter, images: list[dict[str, Any]], panoptic: bool = False,
             vocabulary: Vocabulary = VOCAB) -> dict[str, Any]:
    """Scores of one vocabulary (``miou``, ``per_class_iou``, ``pixel_accuracy``, ``pq``) after one test batch."""
    module.begin_eval([vocabulary], [panoptic])
    with torch.no_grad():
        module.test_step(images, 0, 0)
    module.on_test_epoch_end()
    return module.scores[0]


def probabilities(module: ContinualSegmenter, sample: dict[str, Any], vocabulary: Vocabulary = VOCAB
                  ) -> torch.Tensor:
    """float ``Q×C``: the module's class distribution of each proposal of ``sample``."""
    module.begin_eval([vocabulary])
    base_feats, memory_feats = module.eval_features([sample])
    with torch.no_grad():
        return module.head(module.proposer(sample), base_feats[0], memory_feats[0], 0)


# -- reference: the method written out in numpy, independent of bench ---------------------------------------------
def reference_probabilities(color: int, knn: KnnConfig, allowed: Sequence[int] = (CAT, DOG, GRASS),
                            logit_scale: float = 1.0) -> np.ndarray:
    """``λ·P_ret + (1−λ)·P_base`` where the best of the k nearest allowed entries scores above T, else P_base,
    for a proposal whose every pixel has colour ``color``."""
    base, emb = (np.asarray(v, dtype=np.float64) for v in COLORS[color])
    logits = logit_scale * base / np.linalg.norm(base)  # text embeddings are the one-hot rows
    p_base = np.exp(logits - logits.max())
    p_base /= p_base.sum()
    q = emb / np.linalg.norm(emb)
    candidates = [i for i, c in enumerate(MEMORY_CLASSES) if c in allowed]
    scores = {i: float(MEMORY_VECTORS[i].astype(np.float64) @ q) for i in candidates}
    top = sorted(candidates, key=lambda i: -scores[i])[: knn.k]
    if not top or max(scores[i] for i in top) <= knn.threshold:
        return p_base
    w = np.exp(np.array([scores[i] for i in top]) / knn.temperature)
    w /= w.sum()
    p_ret = np.zeros(3)
    for i, wi in zip(top, w):
        p_ret[MEMORY_CLASSES[i]] += wi
    return knn.lam * p_ret + (1 - knn.lam) * p_base


# -- adapt -------------------------------------------------------------------------------------------------------
def test_adapt_memory_holds_exactly_the_non_crowd_segments():
    """Guards: crowd segments added to the memory (the crowd test dropped from ``keep`` in
    ``DenseFeatures.segments``, which ``MemoryWriter.predict_step`` calls).

    Exact memory: 4 entries (cat, dog, grass, grass) in insertion order with their unit embeddings; the crowd cat
    (embedding e7) and the dog segment with no pixel are not there."""
    memory = Memory(E_DIM, EMBEDDER.identity, "flat")
    with torch.no_grad():
        assert MemoryWriter(EMBEDDER, memory, VOCAB).predict_step(adapt_images(), 0) == 4
    assert len(memory) == 4
    assert memory.names == ["cat", "dog", "grass"]
    assert memory.labels.tolist() == [0, 1, 2, 2]
    assert [n for row in memory.class_names_of(np.arange(4)[None]) for n in row] == ["cat", "dog", "grass", "grass"]
    np.testing.assert_array_equal(memory.index.reconstruct_n(0, memory.index.ntotal), MEMORY_VECTORS)
    # The crowd cat's embedding e7 has no entry: it scores 0 against everything stored, never 1.
    scores, ids = memory.search(np.array([_e(7)], np.float32), 4)
    assert scores.max() < 0.5 and sorted(ids[0].tolist()) == [0, 1, 2, 3]


# -- ignore pixels -----------------------------------------------------------------------------------------------
def test_ignore_pixels_are_not_scored():
    """Guards: ignore pixels (semantic == -1) scored as class 0 (e.g. ``semantic.clamp_min(0)`` in test_step).

    Bottom-left 4 pixels are ignore: 2 are covered by a proposal predicted dog, 2 by no proposal. Neither counts:
    the confusion matrix is the diagonal 4, 4, 4 and every IoU is exactly 1. Scored as cat, they would add
    cat→dog 2 and cat→none 2 (cat IoU 4/8, dog IoU 4/6)."""
    module = adapted()
    result = evaluate(module, [ignore_image()])
    assert module.metrics[0].confmat.tolist() == [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]]
    assert result["per_class_iou"].tolist() == [1.0, 1.0, 1.0]
    assert float(result["miou"]) == 1.0 and float(result["pixel_accuracy"]) == 1.0


# -- fusion: T, λ, τ reach it ------------------------------------------------------------------------------------
FUSION_CASES = {
    # name: (T, λ, τ, class of the fusion query's 8 pixels). P_base = (.576, .212, .212); confidence 0.5.
    "T equals the confidence: no fusion": (0.5, 0.5, 0.05, CAT),
    "T below: fused, retrieval wins": (0.25, 0.5, 0.05, DOG),  # .288, .606, .106
    "T above: no fusion": (0.75, 0.5, 0.05, CAT),
    "small lambda: base wins": (0.25, 0.2, 0.05, CAT),  # .461, .370, .170
    "large tau: the two grass votes win": (0.25, 0.5, 10.0, GRASS),  # .288, .278, .434
}


@pytest.mark.parametrize("case", FUSION_CASES)
def test_fusion_parameters_reach_the_prediction(case):
    """Guards: fusion at ``confidence >= T`` instead of ``> T`` (the "T equals the confidence" case), and T / λ / τ
    not reaching ``fuse`` (each case changes one of them from the "T below" case and the prediction changes).

    The fusion query's 8 pixels (labelled dog) land in the confusion-matrix column of the predicted class; its
    class distribution equals the numpy reference to float32 precision."""
    threshold, lam, temperature, expected = FUSION_CASES[case]
    knn = KnnConfig(k=3, threshold=threshold, lam=lam, temperature=temperature)
    module = adapted(knn)
    evaluate(module, [fusion_image()])
    row = module.metrics[0].confmat[DOG].tolist()
    assert row == [8 if c == expected else 0 for c in range(4)], row
    assert module.metrics[0].confmat[GRASS].tolist() == [0, 0, 8, 0]
    ref = reference_probabilities(13, knn)
    assert int(np.argmax(ref)) == expected
    probs = probabilities(module, fusion_image())
    np.testing.assert_allclose(probs[0].numpy(), ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs[1].numpy(), reference_probabilities(12, knn), rtol=0, atol=1e-6)


def test_fusion_at_the_threshold_by_hand():
    """Guards: fusion at ``confidence >= T``. The numbers written out: at T = 0.5 = confidence the fusion query keeps
    P_base = (e, 1, 1) / (e + 2) exactly; just below, it gets λ·P_ret + (1−λ)·P_base with P_ret from weights
    softmax((0.5, 0, 0) / τ) over (dog, grass, grass)."""
    e = math.e
    p_base = np.array([e, 1, 1]) / (e + 2)
    for threshold in (0.5, 0.4999):
        knn = KnnConfig(k=3, threshold=threshold, lam=0.5, temperature=0.05)
        probs = probabilities(adapted(knn), fusion_image())[0]
        if threshold == 0.5:
            expected = p_base
        else:
            w = np.exp(np.array([0.5, 0.0, 0.0]) / 0.05)
            w /= w.sum()
            expected = 0.5 * np.array([0.0, w[0], w[1] + w[2]]) + 0.5 * p_base
        np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=1e-6)


def test_retrieval_is_restricted_to_the_evaluated_vocabulary():
    """Guards: the vocabulary not reaching the restricted search, or memory codes not mapped to local class ids.
    On a vocabulary (grass, cat) without dog, the fusion query's 3 neighbours are grass, grass, cat (scores 0, 0,
    -0.5, confidence 0); at T = -0.25 they are fused, so P_ret shows in the exact distribution."""
    vocab = VOCAB.subset(["grass", "cat"], "no-dog")  # local ids differ from the memory's codes on purpose
    knn = KnnConfig(k=3, threshold=-0.25, lam=0.5, temperature=0.05)  # fused, so P_ret shows
    probs = probabilities(adapted(knn), fusion_image(), vocab)[0]
    p_base = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    w = np.exp(np.array([0.0, 0.0, -0.5]) / 0.05)
    w /= w.sum()
    expected = 0.5 * np.array([w[0] + w[1], w[2]]) + 0.5 * p_base
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=1e-6)


# -- panoptic: merge superpixels, not instances ------------------------------------------------------------------
def test_ground_truth_instances_are_not_merged():
    """Guards: ``merge_things`` flipped in test_step. Two touching cats as ground-truth proposals stay two segments:
    cat tp 2, iou_sum 2; grass tp 1; PQ 1. Merged, the 8-pixel cat overlaps each 4-pixel cat with IoU 0.5 (not >
    0.5): cat fp 1, fn 2, PQ 0."""
    module = adapted()
    result = evaluate(module, [two_cats_image()], panoptic=True)
    assert module.pq_metrics[0].stats.tolist() == [[2, 0, 0, 2.0], [0, 0, 0, 0.0], [1, 0, 0, 1.0]]
    pq = result["pq"]
    assert pq["All"]["pq"] == 1.0 and pq["All"]["n"] == 2 and pq["Things"]["pq"] == 1.0
    assert result["miou"] == 1.0  # dog absent: NaN, left out


def test_superpixels_of_one_object_are_merged():
    """Guards: ``merge_things`` flipped in test_step. The cat cut into two touching superpixels becomes one instance
    (cat tp 1, IoU 1), the two grass rows one stuff segment: PQ 1. Unmerged, each half has IoU 0.5: cat fp 2, fn 1,
    PQ 0, All 0.5."""
    module = adapted(proposer=SuperpixelsOfOneCat())
    result = evaluate(module, [one_cat_image()], panoptic=True)
    assert module.pq_metrics[0].stats.tolist() == [[1, 0, 0, 1.0], [0, 0, 0, 0.0], [1, 0, 0, 1.0]]
    assert result["pq"]["All"]["pq"] == 1.0


# -- the same wiring under a Lightning Trainer, two vocabularies -----------------------------------------------------
def test_trainer_predict_and_test_known_answers():
    """Guards: all of the module's wiring bugs at once (crowd into memory, ignore scored, merge flipped), as a run
    drives the module: ``Trainer.predict`` fills the memory (one image per batch), ``Trainer.test`` scores two
    dataloaders, each with its own vocabulary (the second in another class order) and metric."""
    import lightning as L
    from torch.utils.data import DataLoader

    reordered = VOCAB.subset(["grass", "dog", "cat"], "reordered")

    def relabel(sample: dict[str, Any]) -> dict[str, Any]:
        to_local = torch.tensor([2, 1, 0])  # pets id -> reordered id
        semantic = sample["semantic"]
        return {**sample, "semantic": torch.where(semantic >= 0, to_local[semantic.clamp_min(0)], semantic),
                "segment_classes": to_local[sample["segment_classes"]]}

    def loader(samples: list[dict[str, Any]]) -> DataLoader:
        return DataLoader(samples, batch_size=1, collate_fn=list)

    def trainer() -> L.Trainer:
        return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)

    memory = Memory(E_DIM, EMBEDDER.identity, "flat")
    added = trainer().predict(MemoryWriter(EMBEDDER, memory, VOCAB), dataloaders=loader(adapt_images()))
    assert added == [3, 1] and len(memory) == 4 and memory.labels.tolist() == [0, 1, 2, 2]
    module = make_module(memory)
    module.begin_eval([VOCAB, reordered], panoptic=[False, True])
    trainer().test(module, dataloaders=[loader([ignore_image()]), loader([relabel(two_cats_image())])],
                 verbose=False)
    assert module.metrics[0].confmat.tolist() == [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]]
    # reordered: grass (8 px), dog (absent), cat (8 px)
    assert module.metrics[1].confmat.tolist() == [[8, 0, 0, 0], [0, 0, 0, 0], [0, 0, 8, 0]]
    assert module.scores[0]["pq"] is None
    assert module.pq_metrics[1].stats.tolist() == [[1, 0, 0, 1.0], [0, 0, 0, 0.0], [2, 0, 0, 2.0]]
    assert module.scores[1]["pq"]["All"]["pq"] == 1.0


# -- bench.fusion.fuse at the boundary -----------------------------------------------------------------------------
def test_fuse_is_strict_at_the_threshold():
    """Guards: fusion at ``confidence >= T``. Confidence equal to T (also in float32 for a T that float32 cannot
    hold exactly, and at T = -inf for a query with no neighbour) leaves P_base untouched; one float32 step above
    fuses."""
    p_base = torch.tensor([[0.7, 0.3]] * 3)
    p_ret = torch.tensor([[0.0, 1.0]] * 3)
    for threshold in (0.5, 0.3, -0.25):
        t32 = torch.tensor(threshold, dtype=torch.float32)
        up, down = torch.nextafter(t32, torch.tensor(2.0)), torch.nextafter(t32, torch.tensor(-2.0))
        confidence = torch.stack([t32, up, down])
        out = fuse(p_base, p_ret, confidence, threshold, lam=0.6)
        assert torch.equal(out[0], p_base[0]), threshold
        assert torch.allclose(out[1], torch.tensor([0.28, 0.72])), threshold
        assert torch.equal(out[2], p_base[2]), threshold
    # No valid neighbour: confidence -inf never exceeds any T, not even -inf.
    _, confidence = retrieval_distribution(torch.tensor([[0.9]]), torch.tensor([[-1]]), 2, 0.05)
    out = fuse(p_base[:1], torch.zeros(1, 2), confidence, -math.inf, lam=0.6)
    assert torch.equal(out, p_base[:1])


def test_fuse_lambda_endpoints():
    """Guards: λ not applied as the weight of P_ret. λ = 1 gives P_ret, λ = 0 gives P_base, above the threshold."""
    p_base, p_ret = torch.tensor([[0.7, 0.3]]), torch.tensor([[0.1, 0.9]])
    confidence = torch.tensor([0.9])
    assert torch.equal(fuse(p_base, p_ret, confidence, 0.5, lam=1.0), p_ret)
    assert torch.equal(fuse(p_base, p_ret, confidence, 0.5, lam=0.0), p_base)
