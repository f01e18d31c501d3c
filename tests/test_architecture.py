"""The shape of the code: layers import downward only, no import cycles, no oversized module, registries list
every family, and a method, a base and a proposer can each be added from one file (here: this test file)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "datamodules")

# Layers, lowest first; a module may import its own layer or lower ones. First matching prefix wins.
LAYERS = [
    ("data", ("datamodules",)),
    ("library", ("bench.errors", "bench.io", "bench.inputs", "bench.models", "bench.proposals", "bench.pooling",
                 "bench.dense",
                 "bench.bootstrap",
                 "bench.memory",
                 "bench.heads", "bench.fusion", "bench.inference", "bench.metrics", "bench.continual",
                 "bench.distributed", "bench.sampling")),
    ("engine", ("bench.config", "bench.record", "bench.module", "bench.methods", "bench.baselines",
                "bench.protocols")),
    ("harness", ("bench",)),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}


def layer(module: str) -> str:
    for name, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    raise AssertionError(f"{module} is in no layer")


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, name: str) -> set[str]:
    """Every suite module ``path`` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(path, name) if m in mods and m != name} for name, path in mods.items()}


def test_imports_point_down_only(graph):
    """Library never imports engine or harness; data never imports bench (checked statically, lazy imports too)."""
    upward = [(a, b) for a, targets in graph.items() for b in targets if RANK[layer(b)] > RANK[layer(a)]]
    assert not upward, upward


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components over module imports; a package importing its own submodules
    (re-exports in ``__init__``) and a submodule importing its package's ``__init__`` are one unit, not a cycle."""

    edges = {a: {b for b in bs if not (b.startswith(a + ".") or a.startswith(b + "."))} for a, bs in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_no_module_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_every_registry_lists_its_family():
    from bench.memory import INDEX_KINDS
    from bench.methods import METHODS
    from bench.models import BASES, EMBEDDERS
    from bench.proposals import PROPOSERS
    from datamodules.registry import READERS

    assert METHODS.names() == ["knn", "zeroshot", "finetune", "replay", "joint"]
    assert set(BASES.names()) == {"maskclip", "sclip", "clearclip", "naclip", "convnext"}
    assert set(EMBEDDERS.names()) == {"clip", "dinov2"}
    assert set(PROPOSERS.names()) == {"gt", "superpixel", "mask2former", "sam"}
    assert set(INDEX_KINDS.names()) == {"auto", "flat", "flat-fp16", "ivf-flat", "ivf-pq", "hnsw"}
    assert {"coco_panoptic", "ade20k", "lvis", "synth", "hf_parquet"} <= set(READERS.names())
    for registry in (METHODS, BASES, EMBEDDERS, PROPOSERS, INDEX_KINDS, READERS):
        assert all(entry.description for entry in registry.entries().values()), registry.family


def test_unknown_names_say_the_key_and_the_choices():
    from bench.errors import ConfigError
    from bench.methods import get_method
    from bench.proposals import build_proposer

    with pytest.raises(ConfigError, match=r"unknown method 'knnn' \(METHOD\) \(did you mean 'knn'\?\); "
                                          r"expected one of: knn, zeroshot"):
        get_method("knnn")
    with pytest.raises(ConfigError, match=r"unknown proposer 'slic' \(proposals.kind\).*gt"):
        build_proposer("slic")


def test_bench_list_prints_every_registry(capsys):
    from bench.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for heading in ("sequences:", "methods (METHOD=):", "bases (base.kind=):", "embedders (embedder.kind=):",
                    "proposers (proposals.kind=):", "index kinds (knn.index=):", "dataset formats (format=):"):
        assert heading in out, heading
    assert "kNN-CLIP" in out and "superpixel" in out and "ivf-pq" in out and "coco_panoptic" in out


def test_index_defaults_have_one_source():
    """Every IndexSpec field has a KnnConfig field of the same name whose default is the run index's."""
    import dataclasses

    from bench.config import KnnConfig
    from bench.memory import RUN_INDEX, IndexSpec

    knn = KnnConfig()
    assert IndexSpec.from_config(knn) == RUN_INDEX
    for f in dataclasses.fields(IndexSpec):
        assert getattr(knn, "index" if f.name == "kind" else f.name) == getattr(RUN_INDEX, f.name), f.name


def test_registry_order_does_not_depend_on_import_order():
    """A baseline imported before the registry is first read still lists after knn and zeroshot."""
    import subprocess
    import sys

    code = ("import bench.baselines.methods\nfrom bench.methods import METHODS\nprint(','.join(METHODS.names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "knn,zeroshot,finetune,replay,joint"
