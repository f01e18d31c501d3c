"""knn.on_disk: IVF inverted lists in a memory-mapped file (bench.memory.ondisk) search exactly like in RAM."""

from __future__ import annotations

import gc
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from bench.errors import ConfigError, DamagedStateError
from bench.memory import IndexSpec, Memory
from bench.memory.ondisk import LISTS_FILE, ListsFolder, lists_bytes, on_disk_lists

DIM = 16
NAMES = [f"class{i}" for i in range(7)]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, [NAMES[i] for i in rng.integers(0, len(NAMES), n)]


def _spec(kind: str = "ivf-flat", **kw: object) -> IndexSpec:
    knobs = {"nlist": 8, "train_size": 600, "nprobe": 3, **kw}
    if kind == "ivf-pq":
        knobs["pq_m"] = 4
    return IndexSpec(kind, **knobs)


def _add_in_parts(memory: Memory, x: np.ndarray, names: list[str], part: int = 250) -> None:
    for start in range(0, len(x), part):  # several adds; the one crossing train_size trains the index
        memory.add(x[start:start + part], names[start:start + part])


def _same(a: Memory, b: Memory, queries: np.ndarray) -> None:
    for allowed in (None, NAMES[:2], NAMES[3:4], []):
        sa, ia = a.search(queries, 12, allowed)
        sb, ib = b.search(queries, 12, allowed)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(sa, sb)


def faiss_ivf(memory: Memory):
    import faiss

    return faiss.extract_index_ivf(memory.index)


def _lists_kind(memory: Memory) -> str:
    import faiss

    return type(faiss.downcast_InvertedLists(faiss_ivf(memory).invlists)).__name__


@pytest.mark.parametrize("kind,pca", [("ivf-flat", 0), ("ivf-pq", 0), ("ivf-flat", 8)])
def test_search_equals_in_ram(tmp_path: Path, kind: str, pca: int) -> None:
    x, names = _data(2000)
    ram = Memory(DIM, "e", _spec(kind, pca_dim=pca))
    disk = Memory(DIM, "e", _spec(kind, pca_dim=pca, on_disk=True), lists_dir=tmp_path)
    _add_in_parts(ram, x, names)
    _add_in_parts(disk, x, names)
    assert _lists_kind(ram) == "ArrayInvertedLists" and _lists_kind(disk) == "OnDiskInvertedLists"
    lists = on_disk_lists(disk.index)
    assert Path(lists.filename).parent.parent == tmp_path  # in the memory's own folder inside lists_dir
    code_size = faiss_ivf(disk).code_size  # the saved size counts every entry's code and id once
    assert lists_bytes(disk.index) == len(x) * (code_size + 8) and lists_bytes(ram.index) == 0
    _same(ram, disk, _data(50, seed=1)[0])


def test_untrained_buffer_stays_exact_then_moves_to_disk(tmp_path: Path) -> None:
    x, names = _data(900)
    disk = Memory(DIM, "e", _spec(on_disk=True), lists_dir=tmp_path)
    disk.add(x[:500], names[:500])
    assert not disk.trained and on_disk_lists(disk.index) is None
    assert not list(tmp_path.iterdir())  # nothing on disk before there are lists
    disk.add(x[500:], names[500:])
    assert disk.trained and on_disk_lists(disk.index) is not None


def test_save_load_keeps_lists_on_disk(tmp_path: Path) -> None:
    x, names = _data(1500)
    ram = Memory(DIM, "e", _spec())
    disk = Memory(DIM, "e", _spec(on_disk=True), lists_dir=tmp_path / "work")
    _add_in_parts(ram, x, names)
    _add_in_parts(disk, x, names)
    disk.save(tmp_path / "step-1")
    meta = json.loads((tmp_path / "step-1" / "meta.json").read_text())
    assert meta["on_disk"] is True and set(meta["sha256"]) == {"index.faiss", "labels.npy", LISTS_FILE}
    # the saved copy is compact: the entries' codes and ids, nothing else
    assert (tmp_path / "step-1" / LISTS_FILE).stat().st_size == len(x) * (4 * DIM + 8)

    loaded = Memory.load(tmp_path / "step-1", "e", DIM, _spec(on_disk=True), lists_dir=tmp_path / "work")
    lists = on_disk_lists(loaded.index)
    assert lists is not None and not lists.read_only
    assert Path(lists.filename).parent.parent == tmp_path / "work"  # a working copy, not the saved file
    _same(ram, loaded, x[:40])
    assert Memory.load(tmp_path / "step-1").spec.on_disk  # no spec given: as it was saved


def test_resume_from_a_step_leaves_it_unchanged(tmp_path: Path) -> None:
    x, names = _data(2400)
    spec = _spec(on_disk=True)
    run = Memory(DIM, "e", spec, lists_dir=tmp_path)
    _add_in_parts(run, x[:1200], names[:1200])
    run.save(tmp_path / "step-1")
    before = {p.name: p.read_bytes() for p in (tmp_path / "step-1").iterdir()}
    _add_in_parts(run, x[1200:], names[1200:])
    run.save(tmp_path / "step-2")

    resumed = Memory.load(tmp_path / "step-1", "e", DIM, spec, lists_dir=tmp_path)
    _add_in_parts(resumed, x[1200:], names[1200:])
    assert {p.name: p.read_bytes() for p in (tmp_path / "step-1").iterdir()} == before
    assert len(Memory.load(tmp_path / "step-1", spec=spec)) == 1200  # checksums still hold
    _same(run, resumed, x[:40])
    _same(Memory.load(tmp_path / "step-2", spec=spec), resumed, x[:40])


def test_placement_is_the_loaders_choice(tmp_path: Path) -> None:
    x, names = _data(1500)
    ram, disk = Memory(DIM, "e", _spec()), Memory(DIM, "e", _spec(on_disk=True))
    _add_in_parts(ram, x, names)
    _add_in_parts(disk, x, names)
    ram.save(tmp_path / "ram")
    disk.save(tmp_path / "disk")
    to_disk = Memory.load(tmp_path / "ram", spec=_spec(on_disk=True), lists_dir=tmp_path / "work")
    to_ram = Memory.load(tmp_path / "disk", spec=_spec())
    assert _lists_kind(to_disk) == "OnDiskInvertedLists" and _lists_kind(to_ram) == "ArrayInvertedLists"
    _same(ram, to_disk, x[:40])
    _same(ram, to_ram, x[:40])


@pytest.mark.parametrize("kind", ["flat", "flat-fp16", "hnsw"])
def test_on_disk_needs_an_ivf_kind(kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"knn.on_disk=true .* knn.index={kind}"):
        Memory(DIM, "e", IndexSpec(kind, on_disk=True))


def test_on_disk_excludes_gpu() -> None:
    with pytest.raises(ConfigError, match="knn.on_disk=true and knn.gpu=true"):
        Memory(DIM, "e", _spec(on_disk=True, gpu=True))


def test_from_config_copies_on_disk() -> None:
    from bench.config import KnnConfig

    assert IndexSpec.from_config(KnnConfig(index="ivf-pq", on_disk=True)).on_disk
    assert not IndexSpec.from_config(KnnConfig()).on_disk


def _saved(tmp_path: Path) -> Path:
    x, names = _data(800)
    memory = Memory(DIM, "e", _spec(on_disk=True))
    memory.add(x, names)
    memory.save(tmp_path / "step-1")
    return tmp_path / "step-1"


def test_damaged_lists_file_is_named(tmp_path: Path) -> None:
    step = _saved(tmp_path)
    data = bytearray((step / LISTS_FILE).read_bytes())
    data[10] ^= 1
    (step / LISTS_FILE).write_bytes(bytes(data))
    with pytest.raises(DamagedStateError, match=rf"{LISTS_FILE} is damaged \(checksum mismatch\)"):
        Memory.load(step)


def test_short_lists_file_is_named_without_checksums(tmp_path: Path) -> None:
    step = _saved(tmp_path)
    meta = json.loads((step / "meta.json").read_text())
    del meta["sha256"]  # as if saved before checksums: the size check still stops a crash on mapping
    (step / "meta.json").write_text(json.dumps(meta))
    os.truncate(step / LISTS_FILE, 100)
    with pytest.raises(DamagedStateError, match=rf"{LISTS_FILE} is damaged \(holds 100 bytes"):
        Memory.load(step)
    (step / LISTS_FILE).unlink()
    with pytest.raises(DamagedStateError, match=rf"{LISTS_FILE} is damaged \(cannot be read"):
        Memory.load(step)


def test_lists_folder_goes_with_the_memory(tmp_path: Path) -> None:
    orphan = tmp_path / f".lists-999999999-{socket.gethostname()}-abc"  # a pid that cannot be running
    orphan.mkdir()
    other_host = tmp_path / ".lists-999999999-elsewhere.example-abc"
    other_host.mkdir()
    x, names = _data(800)
    memory = Memory(DIM, "e", _spec(on_disk=True), lists_dir=tmp_path)
    memory.add(x, names)
    folder = Path(on_disk_lists(memory.index).filename).parent
    assert folder.is_dir() and not orphan.exists() and other_host.exists()
    del memory
    gc.collect()
    assert not folder.exists()


def test_lists_folder_defaults_to_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = ListsFolder()
    assert folder.path.parent == tmp_path and folder.path.name.startswith(f".lists-{os.getpid()}-")


def test_auto_kind_keeps_its_ivf_lists_on_disk(tmp_path: Path) -> None:
    from bench.memory.policy import EXACT_UNTIL

    x, names = _data(EXACT_UNTIL + 2000)
    ram = Memory(DIM, "e", "auto")
    disk = Memory(DIM, "e", "auto", on_disk=True, lists_dir=tmp_path)
    _add_in_parts(ram, x, names, part=6000)
    _add_in_parts(disk, x, names, part=6000)
    assert on_disk_lists(ram.index) is None and on_disk_lists(disk.index) is not None  # past the exact phase
    _same(ram, disk, x[:30])
    disk.save(tmp_path / "step-1")
    _same(ram, Memory.load(tmp_path / "step-1", lists_dir=tmp_path), x[:30])
