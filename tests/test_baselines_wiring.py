"""Replay wiring: the buffer is really trained on at later steps, and holds exactly its per-class cap.

One small replay run of the fast sequence (``synth``, tiny-random): 6 adapt images per task, 2 eval images, one
epoch, ``replay_per_class=7``. With those numbers some classes have more than 7 segments in a task and some fewer
(kite 2, window 1), and the shared classes come back in later tasks with the buffer below the cap (sky 6 → 7 at
step 2, road 5 → 7 and person 6 → 7 at step 3) or at it (ball), so both sides of ``min(cap, available)`` and the
top-up of a reappearing class are exercised. Expected values come from the mask embeddings of the adapt splits,
read here independently of the method.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.run import build_config, run

CAP = 7
ARGS = ("SEQ=synth", "METHOD=replay", "adapt_limit=6", "eval_limit=2", "finetune.epochs=1",
        f"finetune.replay_per_class={CAP}", "progress=false")


@pytest.fixture(scope="module")
def adapt_data() -> list[tuple[torch.Tensor, list[str]]]:
    """Per task: the float ``N×D`` mask embeddings of its adapt split and their class names."""
    from bench.baselines.features import mask_embeddings
    from bench.models import build_base
    from datamodules import SequenceDataModule
    from datamodules.sequence import load_sequence

    base = build_base("tiny-random")
    dm = SequenceDataModule(load_sequence("synth"), adapt_limit=6)
    return [mask_embeddings(base, dm.adapt_dataset(t)) for t in range(3)]


@pytest.fixture(scope="module")
def text_of() -> dict[str, torch.Tensor]:
    from bench.models import build_base
    from datamodules.sequence import load_sequence

    names = sorted({c for task in load_sequence("synth").tasks for c in task.vocabulary.classes})
    return dict(zip(names, build_base("tiny-random").text_embeddings(names)))


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The record, the run folder, and per step every training batch: (x, the target's text embedding)."""
    from bench.baselines.adapter import AdapterTraining

    out = tmp_path_factory.mktemp("replay")
    steps: list[tuple[Any, list[tuple[torch.Tensor, torch.Tensor]]]] = []  # (training module, its batches)
    original = AdapterTraining.training_step

    def spy(self, batch, batch_idx):
        if not steps or steps[-1][0] is not self:  # every step trains a new AdapterTraining
            steps.append((self, []))
        x, y = batch
        steps[-1][1].append((x.detach().clone(), self.text[y].detach().clone()))
        return original(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AdapterTraining, "training_step", spy)
        cfg, spec = build_config([f"output_dir={out}", *ARGS])
        record = run(cfg, spec)
    (folder,) = out.glob("synth/replay/*")
    return {"record": record, "folder": folder, "steps": [batches for _, batches in steps]}


def _expected_buffers(adapt_data) -> list[tuple[torch.Tensor, list[str]]]:
    """The buffer after each step, as documented: the first ``CAP`` embeddings of each class, counted over all
    tasks so far (a class seen again later is only topped up to the cap)."""
    rows: list[torch.Tensor] = []
    names: list[str] = []
    out = []
    for x, task_names in adapt_data:
        for i, n in enumerate(task_names):
            if names.count(n) < CAP:
                rows.append(x[i])
                names.append(n)
        out.append((torch.stack(rows), list(names)))
    return out


def _load_buffer(folder: Path, step: int) -> tuple[torch.Tensor, list[str]]:
    state = torch.load(folder / "adapter" / f"step-{step}.pt", weights_only=True)
    return state["buffer_embeddings"], state["buffer_names"]


def test_replay_buffer_holds_exactly_min_cap_available_per_class(replay_run, adapt_data):
    """Guards: the per-class cap dropped or miscounted in ``_update_buffer`` (every embedding kept, or the cap
    applied per task instead of over the buffer, or a reappearing class not topped up)."""
    available: Counter[str] = Counter()
    sizes = []
    for t, (_, task_names) in enumerate(adapt_data):
        available.update(task_names)
        buffer_x, buffer_names = _load_buffer(replay_run["folder"], t + 1)
        assert Counter(buffer_names) == {c: min(CAP, n) for c, n in available.items()}, t
        assert len(buffer_x) == len(buffer_names)
        sizes.append(len(buffer_names))
    # The numbers the module docstring promises: kite and window below the cap, sky/road/person topped up.
    final = Counter(_load_buffer(replay_run["folder"], 3)[1])
    assert final["kite"] == 2 and final["window"] == 1 and final["sky"] == final["road"] == final["person"] == CAP
    assert sizes == [34, 34 + 25, 34 + 25 + 22]
    assert [s["replay_buffer"] for s in replay_run["record"]["state_size"]] == sizes


def test_replay_buffer_keeps_the_first_embeddings_of_each_class(replay_run, adapt_data):
    """Guards: the buffer holding other vectors than the documented ones (the first ``replay_per_class`` per
    class, in split order), or names detached from their embeddings."""
    for t, (x, names) in enumerate(_expected_buffers(adapt_data)):
        buffer_x, buffer_names = _load_buffer(replay_run["folder"], t + 1)
        assert buffer_names == names, t
        assert torch.equal(buffer_x, x), t


def _sorted_pairs(x: torch.Tensor, names: list[str]) -> tuple[np.ndarray, list[str]]:
    a = x.numpy()
    order = np.lexsort(a.T[::-1])
    return a[order], [names[i] for i in order]


def _decode(text: torch.Tensor, text_of: dict[str, torch.Tensor]) -> list[str]:
    """The class name whose text embedding each target row ``N×D`` is."""
    names = list(text_of)
    sims = text @ torch.stack([text_of[n] for n in names]).T
    assert torch.all(sims.max(1).values > 0.999)
    return [names[i] for i in sims.argmax(1).tolist()]


def test_replay_trains_on_the_buffer_at_later_steps(replay_run, adapt_data, text_of):
    """Guards: the buffer never replayed (``_training_data`` not appending it), replayed before it is updated
    (task t's own exemplars twice), or replayed with the wrong class targets. The training batches of step t,
    seen by ``AdapterTraining.training_step``, are exactly task t's mask embeddings plus the buffer after step
    t − 1, each against its own class's text embedding."""
    steps = replay_run["steps"]
    assert len(steps) == 3 and all(steps)
    buffers = _expected_buffers(adapt_data)
    for t, batches in enumerate(steps):
        x = torch.cat([b[0] for b in batches])
        seen = _decode(torch.cat([b[1] for b in batches]), text_of)
        task_x, task_names = adapt_data[t]
        if t == 0:
            want_x, want_names = task_x, task_names
        else:
            want_x = torch.cat([task_x, buffers[t - 1][0]])
            want_names = task_names + buffers[t - 1][1]
            assert len(buffers[t - 1][1]) > 0
        got_rows, got_names = _sorted_pairs(x, seen)
        want_rows, want_sorted_names = _sorted_pairs(want_x, want_names)
        assert got_rows.shape == want_rows.shape, (t, got_rows.shape, want_rows.shape)
        assert np.array_equal(got_rows, want_rows), t
        assert got_names == want_sorted_names, t
    # Earlier tasks' classes that the later task lacks are trained on only through replay.
    assert "kite" in _decode(torch.cat([b[1] for b in steps[2]]), text_of)
