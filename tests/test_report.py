"""`bench.report`: tables and plots read back and checked against the records they came from."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bench.continual import summarize
from bench.io import atomic_write_json
from bench.report import build_report, heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ["park", "beach", "city"]


def make_record(method: str, miou: list[list[Any]], pq: list[list[Any]] | None = None,
                memory: list[int] | None = None, state_size: bool = False) -> dict[str, Any]:
    """A record as bench.run writes it; the memory as ``state_size`` dicts (current runs) or as the older
    ``memory_size`` list."""
    matrix = {"miou": miou} | ({"pq": pq} if pq else {})
    steps = sum(1 for t, row in enumerate(miou) if row[t] is not None)
    sizes = ({"state_size": [{"memory_entries": n, "memory_bytes": 4 * n} for n in memory or []]} if state_size
             else {"memory_size": memory or []})
    return sizes | {
        "record_version": 1, "sequence": "synth", "method": method,
        "model": {"name": "tiny-random", "pretrained": "random-init", "identity": "tiny",
                  "weights": "random-init, not pretrained"},
        "embedder": None, "tasks": TASKS, "vocabulary_sizes": [3, 3, 3], "steps_done": steps,
        "complete": steps == 3, "matrix": matrix,
        "summary": {m: summarize(R) for m, R in matrix.items()},
        "per_class_iou": [{"park": {"sky": 90.0, "tree": 40.0}} for _ in range(steps)],
        "config": {"method": method}, "config_hash": method, "seed": 0,
        "versions": {}, "git_commit": "abc",
        "timings": {"steps": [{"step": t + 1, "adapt_s": 1.25 * (t + 1), "eval_s": 0.5} for t in range(steps)]},
    }


KNN = make_record("knn", [[68.2, None, None], [68.2, 68.8, None], [68.1, 68.8, 73.7]],
                  pq=[[40.0, None, None], [39.0, 45.5, None], [38.5, math.nan, 50.25]],
                  memory=[600, 1200, 1850], state_size=True)
ZEROSHOT = make_record("zeroshot", [[2.0, None, None], [2.0, 0.6, None], [2.0, 0.6, 5.1]], memory=[0, 0, 1])


def _entries(record: dict[str, Any]) -> int:
    if "state_size" in record:
        return record["state_size"][-1]["memory_entries"]
    return record["memory_size"][-1]


def _write(root: Path, record: dict[str, Any], run_id: str) -> Path:
    run_dir = root / record["sequence"] / record["method"] / run_id
    atomic_write_json(run_dir / "record.json", record)
    return run_dir


def _md_rows(md: str, section: str) -> list[list[str]]:
    """Body rows of the first table after the heading ``section``."""
    lines = md.splitlines()
    start = lines.index(section)
    table = []
    for line in lines[start + 1:]:
        if line.startswith("|---"):
            continue
        if line.startswith("| "):
            table.append([c.strip() for c in line.strip("|").split("|")])
        elif table:
            break
    return table[1:]  # drop the header


def _pixels(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    _write(runs, KNN, "run-a")
    _write(runs, ZEROSHOT, "run-b")
    out = root / "report"
    return build_report([runs], out), out


def test_csv_holds_the_records_summaries(report):
    written, out = report
    rows = {r["method"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"knn", "zeroshot"}
    for record in (KNN, ZEROSHOT):
        row = rows[record["method"]]
        assert row["model"] == "tiny-random (random-init)" and row["sequence"] == "synth"
        for metric, summary in record["summary"].items():
            for key in ("final_average", "average_incremental", "mean_forgetting", "bwt"):
                value = float(row[f"{metric}_{key}"])
                assert value == summary[key] or (math.isnan(value) and math.isnan(summary[key])), (metric, key)
        assert int(row["memory_size"]) == _entries(record)
        assert float(row["adapt_s"]) == pytest.approx(sum(s["adapt_s"] for s in record["timings"]["steps"]))
    assert rows["zeroshot"]["pq_final_average"] == ""  # no PQ in that record: blank, not zero
    assert int(rows["knn"]["state_memory_bytes"]) == KNN["state_size"][-1]["memory_bytes"]
    assert written["rows"][0]["miou_final_average"] == KNN["summary"]["miou"]["final_average"]


def test_markdown_tables_match_records_and_link_existing_pngs(report):
    _, out = report
    md = (out / "summary.md").read_text()
    by_method = {row[0]: row for row in _md_rows(md, "## synth")}
    assert list(by_method) == ["zeroshot", "knn"]  # the comparison's order
    for record in (KNN, ZEROSHOT):
        row = by_method[record["method"]]
        s = record["summary"]["miou"]
        assert row[1:4] == ["tiny-random (random-init)", "maskclip", ""]
        link = re.fullmatch(r"\[(run-[ab])\]\((.+\.md)\)", row[4])
        assert link and (out / link.group(2)).is_file()
        assert row[5:9] == [f"{s[k]:.1f}".replace("-0.0", "0.0")
                            for k in ("final_average", "average_incremental", "mean_forgetting", "bwt")]
        pq = record["summary"].get("pq", {}).get("final_average")
        assert row[9] == ("" if pq is None else f"{pq:.1f}")
        assert row[10] == str(_entries(record))
        assert row[12:] == [f"{v:.1f}" for v in record["matrix"]["miou"][2]]  # final mIoU per task
    # the per-run page: every R cell as recorded, '–' above the diagonal, and its heatmaps
    page = (out / "synth-knn-run-a.md").read_text()
    matrix = _md_rows(page, "## mIoU")
    assert matrix[2] == ["3 city", "68.1", "68.8", "73.7"] and matrix[0][2:] == ["–", "–"]
    assert _md_rows(page, "## PQ")[2] == ["3 city", "38.5", "nan", "50.2"]
    for text in (md, page):
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert images and all((out / p).is_file() for p in images)
    assert {"synth-miou-steps.png", "memory-vs-miou.png"} <= set(re.findall(r"\]\(([^)]+\.png)\)", md))
    assert "synth-knn-run-a-miou.png" in page and "synth-knn-run-a-miou.png" not in md


def test_pngs_are_written_and_heatmaps_show_their_matrix(report):
    written, out = report
    expected = {f"synth-knn-run-a-{m}.png" for m in ("miou", "pq")} | {"synth-zeroshot-run-b-miou.png",
                                                                      "synth-miou-steps.png",
                                                                      "synth-pq-steps.png", "memory-vs-miou.png"}
    assert expected <= {p.name for p in out.glob("*.png")}
    assert Path(written["scatter"]).name == "memory-vs-miou.png"
    assert set(written["curves"]) == {"synth/miou", "synth/pq"}
    knn, zeroshot = (_pixels(Path(written["heatmaps"][k])) for k in ("synth-knn-run-a/miou",
                                                                       "synth-zeroshot-run-b/miou"))
    assert knn.shape != zeroshot.shape or np.abs(knn.astype(int) - zeroshot).sum() > 0
    _pixels(out / "synth-miou-steps.png")
    _pixels(out / "memory-vs-miou.png")


def test_heatmap_pixels_depend_on_the_matrix_only(tmp_path):
    a = _pixels(heatmap(KNN, "miou", tmp_path / "a.png", title="same"))
    again = _pixels(heatmap(KNN, "miou", tmp_path / "again.png", title="same"))
    other = _pixels(heatmap(ZEROSHOT, "miou", tmp_path / "b.png", title="same"))
    assert np.array_equal(a, again)
    assert a.shape == other.shape and (a != other).any(axis=-1).mean() > 0.05
    # A cell without a score is left blank: removing R[3][park] changes only that cell, which turns white.
    for missing in (None, math.nan):
        rows = [list(r) for r in KNN["matrix"]["miou"]]
        rows[2][0] = missing
        hole = _pixels(heatmap({**KNN, "matrix": {"miou": rows}}, "miou", tmp_path / "hole.png", title="same"))
        assert hole.shape == a.shape
        ys, xs = np.nonzero((hole != a).any(axis=-1))
        cell = hole[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        assert (cell == 255).all(axis=-1).mean() > 0.97
        assert (ys.max() - ys.min()) < a.shape[0] / 3 and (xs.max() - xs.min()) < a.shape[1] / 3


def test_partial_run_and_no_scatter_with_one_memory(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, make_record("knn", [[50.0, None, None], [48.0, 60.0, None], [None, None, None]],
                             memory=[5, 9]), "partial")
    _write(runs, make_record("zeroshot", [[2.0, None, None], [2.0, 1.0, None], [2.0, 1.0, 3.0]]), "zs")
    written = build_report([runs], tmp_path / "out")
    assert written["scatter"] is None
    row = next(r for r in written["rows"] if r["method"] == "knn")
    assert row["steps"] == "2/3" and row["memory_size"] == 9 and not row["complete"]


def test_no_records_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no record.json"):
        build_report([tmp_path], tmp_path / "out")


def _table_after(md: str, prefix: str) -> list[list[str]]:
    """Body rows of the first table after the first line starting with ``prefix``."""
    line = next(x for x in md.splitlines() if x.startswith(prefix))
    return _md_rows(md, line)


def test_final_scores_per_task_with_the_gain_over_zeroshot(report):
    _, out = report
    page = (out / "synth-knn-run-a.md").read_text()
    assert _table_after(page, "Final mIoU per task") == [["knn", "run-a", "68.1 (+66.1)", "68.8 (+68.2)",
                                                          "73.7 (+68.6)"]]
    zeroshot = (out / "synth-zeroshot-run-b.md").read_text()
    assert _table_after(zeroshot, "Final mIoU per task") == [["zeroshot", "run-b", "2.0", "0.6", "5.1"]]
    pq = _table_after(page, "Final PQ per task")  # no zero-shot PQ: plain scores, a missing one shown as 'nan'
    assert pq == [["knn", "run-a", "38.5", "nan", "50.2"]]
    # The sequence's description comes from its YAML (tasks/synth.yaml), the numbers only from the records.
    md = (out / "summary.md").read_text()
    assert "three synthetic domains (park, beach, city), 7 classes each, things and stuff" in md


def test_what_each_task_tests_comes_from_the_sequence_yaml(tmp_path):
    seq = tmp_path / "mine.yaml"
    seq.write_text("name: synth\ndescription: my own\ntasks:\n"
                   "  - {name: park, about: \"seen classes\"}\n  - {name: city, about: \"a domain\\n  shift\"}\n")
    runs = tmp_path / "runs"
    _write(runs, {**KNN, "config": {"sequence": str(seq)}}, "run-a")
    md = Path(build_report([runs], tmp_path / "out")["summary_md"]).read_text()
    assert "my own" in md
    assert _md_rows(md, "tasks: park → beach → city") == [["park", "seen classes"], ["beach", ""],
                                                           ["city", "a domain shift"]]
    # A YAML that names another sequence, or none found: no notes, and no error.
    seq.write_text("name: other\ndescription: not this one\ntasks: []\n")
    md = Path(build_report([runs], tmp_path / "out2")["summary_md"]).read_text()
    assert "not this one" not in md and "what it tests" not in md


@pytest.mark.slow
def test_report_on_two_real_runs(tmp_path):
    """Short knn and zeroshot runs on the embedded sequence, then a report on their folders (15-30 s)."""
    from bench.run import build_config, run

    records = {}
    for method in ("knn", "zeroshot"):
        cfg, spec = build_config(["SEQ=synth", f"output_dir={tmp_path / 'runs'}", "progress=false", "adapt_limit=8",
                                  "eval_limit=4", f"METHOD={method}"])
        records[method] = run(cfg, spec)
    written = build_report([tmp_path / "runs"], tmp_path / "report")
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "report" / "summary.csv").open())}
    for method, record in records.items():
        assert float(rows[method]["miou_final_average"]) == record["summary"]["miou"]["final_average"]
        assert float(rows[method]["miou_bwt"]) == record["summary"]["miou"]["bwt"]
    assert int(rows["knn"]["memory_size"]) == _entries(records["knn"])
    assert rows["zeroshot"]["memory_size"] == ""
    assert written["scatter"] is None  # only one run has a memory
    for path in [*written["heatmaps"].values(), *written["curves"].values()]:
        _pixels(Path(path))


def test_csv_columns_are_the_union_of_the_runs_state():
    from bench.report import _csv_text

    text = _csv_text([{"method": "zeroshot"}, {"method": "knn", "state_memory_entries": 10},
                      {"method": "finetune", "state_trainable_params": 5}])
    lines = text.strip().splitlines()
    assert lines[0] == "method,state_memory_entries,state_trainable_params"
    assert lines[1:] == ["zeroshot,,", "knn,10,", "finetune,,5"]


def _perf_result(recall_1m: float) -> dict[str, Any]:
    """A JSON shaped as benchmarks/perf.py writes it, small: two kinds at two sizes, one skipped row."""
    rows = []
    for n, flat_ms, ivf_ms, ivf_recall in ((10_000, 2.0, 1.0, 0.9), (1_000_000, 200.0, 5.0, recall_1m)):
        rows.append({"dim": 384, "n": n, "kind": "flat", "build_s": 0.1, "bytes_per_entry": 1544.0,
                     "sweep": [{"ms_per_image": flat_ms, "recall_at_16": 1.0}]})
        rows.append({"dim": 384, "n": n, "kind": "ivf-flat", "build_s": 3.0, "bytes_per_entry": 1560.0,
                     "sweep": [{"nprobe": 4, "ms_per_image": ivf_ms / 2, "recall_at_16": 0.5},
                               {"nprobe": 8, "ms_per_image": ivf_ms, "recall_at_16": ivf_recall}]})
    rows.append({"dim": 384, "n": 1_000_000, "skipped": "hnsw: too slow to build here"})
    return {"retrieval_fraction_1m": 0.0116, "recall_at_16_1m": recall_1m, "bytes_per_entry": 87.83,
            "miou_loss_compressed": -0.12, "adapt_overhead_fraction": 0.2, "pq_speedup_vs_torchmetrics": 290.0,
            "quick": False, "default_index": {"index": "ivf-flat"}, "compressed_index": {"index": "ivf-pq"},
            "memory": {"rows": rows}}


def test_perf_section_reads_the_benchmark_json_and_checks_each_bound(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, KNN, "run-a")
    perf = tmp_path / "latest.json"
    atomic_write_json(perf, _perf_result(recall_1m=0.9956))
    written = build_report([runs], tmp_path / "report", perf=perf)
    md = Path(written["summary_md"]).read_text()
    headline = {row[0].strip("`"): row for row in _md_rows(md, "## Memory at scale")}
    assert headline["recall_at_16_1m"][2:] == ["0.9956", ">= 0.95", "met"]
    assert headline["adapt_overhead_fraction"][2:] == ["0.2000", "<= 0.1", "NOT met"]
    assert headline["bytes_per_entry"][2] == "87.8" and headline["pq_speedup_vs_torchmetrics"][3] == ""
    # Latency/recall rows are the default index's setting (nprobe 8), one per built kind and size.
    section = md[md.index("## Memory at scale"):]
    table = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
             if line.startswith("| 384 |")]
    assert ["384", "1,000,000", "ivf-flat", "5.00", "0.9956", "1560.0", "3.0"] in table
    assert len([r for r in table if r[2] in ("flat", "ivf-flat")]) == 4
    png = tmp_path / "report" / "perf-latency-recall.png"
    assert f"]({png.name})" in md
    assert _pixels(png).shape[0] > 100


def test_perf_json_that_cannot_be_read_names_the_file(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, KNN, "run-a")
    bad = tmp_path / "latest.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="latest.json"):
        build_report([runs], tmp_path / "report", perf=bad)
