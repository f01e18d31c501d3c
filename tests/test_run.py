"""End-to-end runs on the embedded sequence: kNN vs zero-shot, no forgetting, resume, determinism."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures.references import assert_reproduces, differences, load_reference

from bench.methods.knn import MemoryWriter
from bench.run import build_config, run

REQUIRED_KEYS = ("sequence", "method", "model", "tasks", "matrix", "summary", "per_class_iou", "config", "seed",
                 "versions", "git_commit", "timings")


def _run(out: Path, *args: str) -> dict[str, Any]:
    """A run of the fast sequence (``synth``, tiny-random) unless ``args`` name another."""
    cfg, spec = build_config(["SEQ=synth", f"output_dir={out}", "progress=false", *args])
    return run(cfg, spec)


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what legitimately differs between two runs of the same config."""
    out = {k: v for k, v in record.items() if k not in ("timings", "git_commit", "versions")}
    out["config"] = {k: v for k, v in record["config"].items() if k not in ("output_dir", "max_steps")}
    return out


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("runs")
    # accelerator=cpu in whole mode (synth.yaml): the records the suite made before devices and windows existed
    return {m: _run(out, f"METHOD={m}", "accelerator=cpu") for m in ("knn", "zeroshot")}


def test_record_has_the_contract_keys_and_is_on_disk(full_runs):
    record = full_runs["knn"]
    for key in REQUIRED_KEYS:
        assert key in record, key
    assert record["tasks"] == ["park", "beach", "city"]
    assert record["model"]["name"] == "tiny-random" and "random-init" in record["model"]["weights"]
    matrix = record["matrix"]["miou"]
    assert all(matrix[t][j] is None for t in range(3) for j in range(3) if j > t)
    assert all(0 <= matrix[t][j] <= 100 for t in range(3) for j in range(3) if j <= t)
    path = Path(record["config"]["output_dir"]) / "synth" / "knn"
    on_disk = json.loads(next(path.glob("*/record.json")).read_text())
    assert on_disk["matrix"] == record["matrix"] and on_disk["complete"]
    assert set(record["per_class_iou"][-1]) == {"park", "beach", "city"}
    for metric in ("pq", "sq", "rq", "pq_things", "pq_stuff"):  # synth has panoptic annotations
        pq = record["matrix"][metric]
        assert all(0 <= pq[t][j] <= 100 for t in range(3) for j in range(t + 1)), (metric, pq)
        assert record["summary"][metric]["final_average"] is not None
    assert record["matrix"]["pq"][2][0] > 0
    sizes = [s["memory_entries"] for s in record["state_size"]]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("method", ["knn", "zeroshot"])
def test_synth_records_equal_the_committed_references(full_runs, method):
    """Every matrix cell and summary value of the full ``synth`` runs equals ``results/reference/synth-<method>
    .json`` (to 1e-6; cells as stored). Guards any wiring bug that moves a number at all: the fusion weight λ
    ignored (``bench/fusion.py`` ``fuse``), ignore pixels scored as a class (``bench/module.py`` ``test_step``),
    the memory not accumulated, a wrong k or temperature reaching retrieval, PQ summaries mis-averaged. After an
    intended change of the numbers, regenerate the references with ``make reference`` and commit them."""
    assert_reproduces(full_runs[method], load_reference("synth", method))


def test_the_reference_comparison_is_tighter_than_the_regress_gate():
    """The exact comparison above must not lean on ``bench.regress``: a 0.01-point change of one cell passes the
    gate (tolerance 0.5) but not :func:`differences`."""
    import copy

    from bench.regress import compare

    reference = load_reference("synth", "knn")
    nudged = copy.deepcopy(reference)
    nudged["matrix"]["miou"][2][0] -= 0.01
    assert not any(row.failed for row in compare(nudged, reference))
    assert differences(nudged, reference) == [f"matrix.miou[2][0]: {reference['matrix']['miou'][2][0] - 0.01!r} "
                                               f"!= {reference['matrix']['miou'][2][0]!r}"]
    nudged = copy.deepcopy(reference)
    nudged["summary"]["pq"]["final_average"] = max(nudged["matrix"]["pq"][-1])
    assert differences(nudged, reference) == [f"summary.pq.final_average: {max(reference['matrix']['pq'][-1])!r} "
                                               f"!= {reference['summary']['pq']['final_average']!r}"]


def test_knn_beats_zeroshot_and_does_not_forget(full_runs):
    """Relations the reference numbers must keep, checked cell by cell and exactly rather than with a margin.

    Guards: retrieval not used at evaluation (kNN would score exactly like zero-shot: every cell below must
    differ, and kNN is ahead on every cell); the memory replaced instead of grown at each step (kNN would lose
    an earlier task: its forgetting must equal the reference's, hundredths of a point, not a margin of 0.5);
    state leaking into the base model (zero-shot rows must repeat the diagonal exactly)."""
    knn, zeroshot = (full_runs[m]["matrix"]["miou"] for m in ("knn", "zeroshot"))
    assert all(knn[t][j] > zeroshot[t][j] for t in range(3) for j in range(t + 1)), (knn, zeroshot)
    summary = full_runs["knn"]["summary"]["miou"]
    want = load_reference("synth", "knn")["summary"]["miou"]
    assert summary["forgetting"][-1] is None and want["forgetting"][-1] is None
    assert summary["forgetting"][:-1] == pytest.approx(want["forgetting"][:-1], abs=1e-6)
    assert summary["final_average"] == pytest.approx(want["final_average"], abs=1e-6)
    assert full_runs["zeroshot"]["summary"]["miou"]["final_average"] == pytest.approx(
        load_reference("synth", "zeroshot")["summary"]["miou"]["final_average"], abs=1e-6)
    # zero-shot never changes: every row repeats the diagonal
    assert all(zeroshot[t][j] == zeroshot[j][j] for t in range(3) for j in range(t + 1))
    assert full_runs["zeroshot"]["summary"]["miou"]["forgetting"] == [0.0, 0.0, None]


SMALL = ("adapt_limit=16", "eval_limit=6")


def test_same_seed_same_record(tmp_path):
    a = _run(tmp_path / "a", *SMALL)
    b = _run(tmp_path / "b", *SMALL)
    assert _comparable(a) == _comparable(b)


def test_interrupted_run_resumes_at_the_next_step(tmp_path, monkeypatch):
    reference = _run(tmp_path / "ref", *SMALL)

    adapted: list[str] = []
    original = MemoryWriter.__init__

    def spy(self, embedder, memory, vocabulary, *rest):
        adapted.append(vocabulary.name)
        if vocabulary.name == "beach" and crash["on"]:
            raise KeyboardInterrupt("killed during step 2")
        return original(self, embedder, memory, vocabulary, *rest)

    crash = {"on": True}
    monkeypatch.setattr(MemoryWriter, "__init__", spy)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", *SMALL)
    assert adapted == ["park", "beach"]
    record_path = next((tmp_path / "cut").glob("synth/knn/*/record.json"))
    partial = json.loads(record_path.read_text())
    assert partial["steps_done"] == 1 and not partial["complete"]
    assert (record_path.parent / "memory" / "step-1" / "index.faiss").exists()
    assert not (record_path.parent / "memory" / "step-2").exists()

    crash["on"] = False
    adapted.clear()
    resumed = _run(tmp_path / "cut", *SMALL)
    assert adapted == ["beach", "city"]  # step 1 was not recomputed
    assert _comparable(resumed) == _comparable(reference)


def test_max_steps_stops_and_the_same_command_resumes(tmp_path):
    partial = _run(tmp_path, *SMALL, "max_steps=1", "METHOD=zeroshot")
    assert partial["steps_done"] == 1 and partial["matrix"]["miou"][1] == [None, None, None]
    final = _run(tmp_path, *SMALL, "METHOD=zeroshot")
    assert final["complete"] and final["matrix"]["miou"][0] == partial["matrix"]["miou"][0]
    again = _run(tmp_path, *SMALL, "METHOD=zeroshot")  # complete: nothing recomputed
    assert again["timings"] == final["timings"]


def test_dinov2_embedder_and_gt_proposals_run_end_to_end(tmp_path):
    record = _run(tmp_path, *SMALL, "EMBEDDER=dinov2", "embedder.name=dinov2-tiny-random", "PROPOSALS=gt")
    assert record["embedder"] == "timm:dinov2-tiny-random/random-init(seed=0)@126"
    assert record["config"]["proposals"]["kind"] == "gt"
    memory = next(tmp_path.glob("synth/knn/*/memory/step-3/meta.json")).read_text()
    assert '"dim": 32' in memory and "dinov2-tiny-random" in memory
    assert record["complete"] and record["matrix"]["miou"][2][0] is not None


def test_resuming_with_another_embedder_refuses_the_saved_memory(tmp_path):
    first = _run(tmp_path, *SMALL, "max_steps=1", "RUN_ID=shared")
    assert first["steps_done"] == 1
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="another config"):
        _run(tmp_path, *SMALL, "RUN_ID=shared", "EMBEDDER=dinov2", "embedder.name=dinov2-tiny-random")


def test_a_task_with_no_scored_class_leaves_an_empty_cell_not_a_crash():
    from bench.run import _summarize

    matrix = [[50.0, None], [48.0, None]]  # task 2's eval split holds none of its classes
    summary = _summarize(matrix, 1)
    assert summary["forgetting"][0] == 2.0 and summary["final_average"] is None


def test_a_run_folder_made_with_other_weights_is_refused(tmp_path):
    """Rebuilt in-repo weights are a different model under the same name and config: the finished run of the old
    weights must not be handed back as if it were theirs."""
    from bench.errors import ConfigError

    _run(tmp_path, "max_steps=1", "adapt_limit=4", "eval_limit=2")
    (record_path,) = tmp_path.glob("synth/knn/*/record.json")
    record = json.loads(record_path.read_text())
    record["model"]["identity"] = "open_clip:tiny-random/random-init(seed=7)"
    record_path.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"other weights \(open_clip:tiny-random/random-init\(seed=7\); these are "
                                          r"open_clip:tiny-random/random-init\(seed=0\)\)"):
        _run(tmp_path, "max_steps=1", "adapt_limit=4", "eval_limit=2")
