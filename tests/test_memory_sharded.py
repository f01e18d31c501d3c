"""The sharded memory (knn.shard): W processes over gloo give one process's neighbours (issue 18, part 2).

The processes are this file run as a script (``_worker``): each builds a :class:`ShardedMemory` from the same
seeded stream, searches a different number of times with different queries (as DDP ranks evaluating different
images do), saves its shard, reads it back and writes what it found; the test compares that with one
:class:`Memory` fed the same stream."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DIM = 32
REPO = Path(__file__).resolve().parents[1]
CLASSES = [f"c{i}" for i in range(12)]
ALLOWED = CLASSES[:5]
# kind -> (IndexSpec keyword arguments, entries, EXACT_UNTIL, SUBSET_WORK): small thresholds so that auto trains
# its lists (twice) and tunes probes within seconds
CASES = {
    "flat": ({"kind": "flat"}, 700, None, None),
    "flat-fp16": ({"kind": "flat-fp16"}, 700, None, None),
    "ivf-flat": ({"kind": "ivf-flat", "nlist": 16, "train_size": 300, "nprobe": 3}, 900, None, None),
    "ivf-pq": ({"kind": "ivf-pq", "nlist": 8, "pq_m": 8, "train_size": 400, "nprobe": 2}, 900, None, None),
    "auto-tuned": ({"kind": "auto"}, 2300, 512, 0),
    "auto-subset": ({"kind": "auto"}, 2300, 512, 2 ** 23),
    # with a memory budget (bench.memory.budget) removing old entries at every step
    "auto-budget": ({"kind": "auto"}, 2300, 512, 0),
    "ivf-pq-budget": ({"kind": "ivf-pq", "nlist": 8, "pq_m": 8, "train_size": 400, "nprobe": 2}, 1600, None, None),
}
BUDGET = {"max_per_class": 90, "max_entries": 700}
STEPS = 3


def _stream(n: int) -> list[tuple[np.ndarray, list[str]]]:
    """The global stream of adds: batches of unit vectors with class names (clustered by class, some ties)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((len(CLASSES), DIM))
    out, done = [], 0
    while done < n:
        size = min(n - done, int(rng.integers(1, 90)))
        labels = rng.integers(0, len(CLASSES), size)
        x = centres[labels] + 0.8 * rng.standard_normal((size, DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out.append((x.astype(np.float32), [CLASSES[c] for c in labels]))
        done += size
    return out


def _queries(rank: int, call: int) -> np.ndarray:
    q = np.random.default_rng([rank, call]).standard_normal((3 + 2 * call + rank, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _calls(rank: int) -> list[tuple[np.ndarray, int, list[str] | None]]:
    """Rank r's searches: rank 0 searches three times, rank 1 twice (different images per rank under DDP)."""
    return [(_queries(rank, c), 5 + c, ALLOWED if c % 2 == 0 else None) for c in range(3 - rank)]


def _thresholds(case: str) -> None:
    from bench.memory import policy

    _, _, exact_until, subset = CASES[case]
    if exact_until:
        policy.EXACT_UNTIL = exact_until
    if subset is not None:
        policy.SUBSET_WORK = subset


def _spec(case: str):
    from bench.memory import IndexSpec

    return IndexSpec(**CASES[case][0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, case: str, out: Path) -> None:
    import torch.distributed as dist

    from bench.memory.sharded import ShardedMemory

    _thresholds(case)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    memory = ShardedMemory(DIM, "synthetic", _spec(case))
    results = _fill(memory, case)
    for c, (q, k, allowed) in enumerate(_calls(rank)):
        results[f"s{c}"], results[f"i{c}"] = memory.search(q, k, allowed)
    memory.finish_searches()
    results["report"] = np.array(json.dumps(memory.index_report()))
    results["bytes"] = np.array(memory.nbytes)
    results["shard_entries"] = np.array(len(memory.local))
    memory.save(out / "memory")
    again = ShardedMemory.load(out / "memory", "synthetic", DIM, _spec(case))
    for c, (q, k, allowed) in enumerate(_calls(rank)):
        results[f"loaded_s{c}"], results[f"loaded_i{c}"] = again.search(q, k, allowed)
    again.finish_searches()
    np.savez(out / f"rank{rank}.npz", **results)
    dist.destroy_process_group()


def _run_processes(tmp_path: Path, case: str, world: int = 2) -> list[dict[str, np.ndarray]]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), case, str(tmp_path)],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(world)]


def _one_process(case: str):
    from bench.memory import Memory

    _thresholds(case)
    memory = Memory(DIM, "synthetic", _spec(case))
    _fill(memory, case)
    return memory


def _fill(memory, case: str) -> dict[str, np.ndarray]:
    """Feed the stream: in one go, or for a ``-budget`` case in STEPS steps through the adapt pass's reservoir
    (:class:`bench.methods.knn.MemoryWriter` without Lightning); returns the budget's figures."""
    stream = _stream(CASES[case][1])
    if not case.endswith("-budget"):
        for x, names in stream:
            memory.add(x, names)
        return {}
    from bench.memory.budget import Reservoir
    from bench.methods.knn import MemoryWriter

    reservoir = Reservoir(seed=3, **BUDGET)
    sizes = []
    for step in range(STEPS):
        writer = MemoryWriter(None, memory, None, reservoir=reservoir, step=step)
        for batch in writer._budget(stream[step::STEPS]):
            writer._add([batch])
        sizes.append(len(memory))
    return {"sizes": np.array(sizes), "dropped": np.array(reservoir.dropped), "labels": memory.labels.copy()}


@pytest.fixture
def restore_policy():
    from bench.memory import policy

    saved = policy.EXACT_UNTIL, policy.SUBSET_WORK
    yield
    policy.EXACT_UNTIL, policy.SUBSET_WORK = saved


def _check(case: str, tmp_path: Path) -> None:
    ranks = _run_processes(tmp_path, case)
    one = _one_process(case)
    for rank, found in enumerate(ranks):
        for c, (q, k, allowed) in enumerate(_calls(rank)):
            scores, ids = one.search(q, k, allowed)
            for prefix in ("", "loaded_"):
                np.testing.assert_array_equal(found[f"{prefix}i{c}"], ids, err_msg=f"{case} rank {rank} call {c}")
                np.testing.assert_array_equal(found[f"{prefix}s{c}"], scores)
        assert json.loads(str(found["report"])) == one.index_report()
        if case.startswith("auto"):
            assert one.index_report()["phase"] == "ivf-flat"
        if case.endswith("-budget"):  # the same entries kept, whatever the number of processes
            assert np.array_equal(found["labels"], one.labels) and len(one) <= BUDGET["max_entries"]
            assert int(found["dropped"]) == CASES[case][1] - len(one)
        assert int(found["bytes"]) == one.nbytes
    assert sum(int(r["shard_entries"]) for r in ranks) == len(one)
    if not case.endswith("-budget"):  # round robin; a budget's removals leave the shards as they fall
        assert abs(int(ranks[0]["shard_entries"]) - int(ranks[1]["shard_entries"])) <= 1
    shards = json.loads((tmp_path / "memory" / "shards.json").read_text())
    assert shards["world"] == 2 and shards["entries"] == len(one) and shards["bytes"] == one.nbytes


def test_two_shards_search_like_one_process_flat(tmp_path: Path, restore_policy) -> None:
    _check("flat", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["flat-fp16", "ivf-flat", "ivf-pq", "auto-tuned", "auto-subset", "auto-budget",
                                  "ivf-pq-budget"])
def test_two_shards_search_like_one_process(case: str, tmp_path: Path, restore_policy) -> None:
    _check(case, tmp_path)


def test_one_shard_without_a_process_group_is_one_process(restore_policy) -> None:
    from bench.memory.sharded import ShardedMemory

    one = _one_process("ivf-flat")
    sharded = ShardedMemory(DIM, "synthetic", _spec("ivf-flat"))
    for x, names in _stream(CASES["ivf-flat"][1]):
        sharded.add(x, names)
    for q, k, allowed in _calls(0):
        for a, b in zip(sharded.search(q, k, allowed), one.search(q, k, allowed)):
            np.testing.assert_array_equal(a, b)
    assert sharded.nbytes == one.nbytes and sharded.index_report() == one.index_report()


def test_hnsw_cannot_be_sharded() -> None:
    from bench.errors import ConfigError
    from bench.memory import IndexSpec
    from bench.memory.sharded import ShardedMemory

    with pytest.raises(ConfigError, match="knn.shard=true.*hnsw|HNSW"):
        ShardedMemory(DIM, "synthetic", IndexSpec(kind="hnsw"))


def test_a_sharded_step_resumes_with_its_number_of_processes_only(tmp_path: Path) -> None:
    from bench.errors import MemoryMismatchError
    from bench.memory.sharded import ShardedMemory

    memory = ShardedMemory(DIM, "synthetic", _spec("flat"))
    memory.add(*_stream(50)[0])
    memory.save(tmp_path / "step")
    meta = json.loads((tmp_path / "step" / "shards.json").read_text())
    (tmp_path / "step" / "shards.json").write_text(json.dumps({**meta, "world": 2}))
    with pytest.raises(MemoryMismatchError, match="saved in 2 shards.*devices x num_nodes = 2"):
        ShardedMemory.load(tmp_path / "step", "synthetic", DIM, _spec("flat")).search(_queries(0, 0), 3)


@pytest.mark.slow
def test_two_process_sharded_run_writes_the_record_of_one_process(tmp_path: Path) -> None:
    """knn.shard=true over 2 gloo processes against 1 process with the whole memory (tests/test_distributed.py's
    harness): the same record, the shards together the one-process memory."""
    from test_distributed import ARGS, RUN_FIELDS, _memory, _run_subprocess

    from bench.run import build_config, run

    cfg, spec = build_config([*ARGS, f"output_dir={tmp_path / 'one'}"])
    one = run(cfg, spec).to_json()
    two = _run_subprocess(tmp_path / "two", "DEVICES=2", "knn.shard=true")
    assert two["config"]["knn"]["shard"] is True and two["config"]["devices"] == 2
    for key in one:
        # config_hash: knn.shard=true is written in the config (knn.shard=null hashes as before)
        if key not in (*RUN_FIELDS, "config_hash"):
            assert two[key] == one[key], key
    (one_dir,) = (tmp_path / "one").glob("synth/knn/*")
    (two_dir,) = (tmp_path / "two").glob("synth/knn/*")
    for step in range(1, len(spec.tasks) + 1):
        x1, y1 = _memory(one_dir / "memory" / f"step-{step}")
        shards = [_memory(two_dir / "memory" / f"step-{step}" / f"shard-{r}-of-2") for r in range(2)]
        ids = [np.load(two_dir / "memory" / f"step-{step}" / f"shard-{r}-of-2.ids.npy") for r in range(2)]
        assert [list(i) for i in ids] == [list(range(r, len(y1), 2)) for r in range(2)]  # round robin
        for (x2, y2), i in zip(shards, ids):
            assert np.array_equal(y2, y1[i])
            np.testing.assert_allclose(x2, x1[i], rtol=0, atol=1e-6)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))
