"""History across commits (bench.history): lines from the git log of the references, statuses, CI lines from
``bench regress --history-out``, and what the trend plot draws."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.continual import summarize
from bench.history import (
    UNCOMMITTED,
    append_history,
    history_line,
    read_history,
    rebuild,
    trend_data,
    with_statuses,
    write_history,
)
from bench.io import atomic_write_json
from bench.regress import DEFAULT_TOLERANCES, regress_main

REPO = Path(__file__).resolve().parents[1]
TASKS = ["park", "beach", "city"]


def _record(miou: float, pq: float = 40.0, method: str = "knn") -> dict[str, Any]:
    """A complete record whose every cell of R is ``miou`` (and ``pq``), as bench.run writes it."""
    matrix = {m: [[v if j <= t else None for j in range(3)] for t in range(3)] for m, v in (("miou", miou),
                                                                                           ("pq", pq))}
    return {"record_version": 3, "sequence": "synth", "method": method,
            "model": {"name": "tiny-random", "pretrained": "random-init", "identity": "tiny",
                      "weights": "random-init, not pretrained"},
            "base": "maskclip", "proposer": "superpixel", "tasks": TASKS, "vocabulary_sizes": [7, 7, 7],
            "steps_done": 3, "complete": True, "matrix": matrix,
            "summary": {m: summarize(R) for m, R in matrix.items()}, "config": {"sequence": "synth", "method": method},
            "config_hash": "cafe", "git_commit": "0123456789abcdef", "seed": 0}


def _reference(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("record_version", "sequence", "method", "model", "tasks", "matrix", "summary", "config", "git_commit")
    return {**{k: copy.deepcopy(record[k]) for k in keys}, "tolerances": dict(DEFAULT_TOLERANCES)}


def test_a_line_holds_the_identity_and_the_headline_scores():
    line = history_line(_reference(_record(70.0, 60.0)), commit="abc", date="2026-01-01", source="reference",
                        path="results/reference/synth-knn.json")
    assert (line["sequence"], line["method"], line["model"]) == ("synth", "knn", "tiny-random (random-init)")
    assert line["scores"]["miou"] == {"final_average": 70.0, "average_incremental": 70.0, "bwt": 0.0,
                                      "mean_forgetting": 0.0}
    assert line["scores"]["pq"]["final_average"] == 60.0
    assert line["tolerance"] == {"miou": 0.5, "pq": 0.5}
    assert line["config_hash"]  # rebuilt from the reference's config (references carry no hash of their own)
    with pytest.raises(ValueError, match="status must be one of"):
        history_line(_record(1.0), commit="a", date="d", source="ci", status="bad")


def test_reference_versions_get_a_status_against_the_previous_one():
    lines = [history_line(_reference(_record(v)), commit=c, date=c, source="reference")
             for c, v in (("c1", 70.0), ("c2", 70.0), ("c3", 69.6), ("c4", 68.0), ("c5", 71.0))]
    ci = history_line(_record(60.0), commit="c6", date="c6", source="ci", status="regression")
    assert [x["status"] for x in with_statuses([*lines, ci])] == ["first", "ok", "ok", "regression", "better",
                                                                   "regression"]


def test_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "history.jsonl"
    with pytest.raises(FileNotFoundError, match="bench history"):
        read_history(path)
    assert read_history(path, missing_ok=True) == []
    line = history_line(_record(70.0), commit="a", date="d", source="ci")
    append_history(path, line)
    append_history(path, line)
    assert read_history(path) == [line, line]
    path.write_text('{"commit": "a"}\n')
    with pytest.raises(ValueError, match=r"history.jsonl:1: history line has no 'sequence' field"):
        read_history(path)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


def test_rebuild_names_each_commit_that_changed_a_reference(tmp_path):
    """Three commits of one reference (the second re-commits the same scores with another config key, the third
    lowers the score), then an uncommitted edit; a file renamed on the way is followed."""
    repo = tmp_path / "repo"
    ref_dir = repo / "results" / "reference"
    ref_dir.mkdir(parents=True)
    _git(repo, "init", "-q")
    commits = []
    for n, (name, miou, extra) in enumerate((("old-name.json", 70.0, {}), ("synth-knn.json", 70.0, {"seed": 1}),
                                             ("synth-knn.json", 68.0, {"seed": 1}))):
        ref = _reference(_record(miou))
        ref["config"].update(extra)
        if name != "old-name.json" and (ref_dir / "old-name.json").exists():
            _git(repo, "mv", "results/reference/old-name.json", f"results/reference/{name}")
        atomic_write_json(ref_dir / name, ref)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"v{n}", f"--date=2026-01-0{n + 1}T00:00:00Z")
        commits.append(_git(repo, "rev-parse", "HEAD").strip())
    lines = rebuild(repo)
    assert [x["commit"] for x in lines] == commits
    assert [x["status"] for x in lines] == ["first", "ok", "regression"]
    assert [x["file"] for x in lines] == ["results/reference/old-name.json", *["results/reference/synth-knn.json"] * 2]
    assert lines[2]["scores"]["miou"]["final_average"] == 68.0
    atomic_write_json(ref_dir / "synth-knn.json", _reference(_record(69.0)))  # make reference, not committed yet
    lines = rebuild(repo)
    assert [x["commit"] for x in lines] == [*commits, UNCOMMITTED]
    assert lines[-1]["status"] == "better"
    with pytest.raises(FileNotFoundError, match="no reference"):
        rebuild(repo, tmp_path / "empty")


def test_rebuild_of_this_repository_backfills_every_reference_commit(tmp_path):
    lines = rebuild(REPO)
    for seq in ("synth", "synth-shift"):
        for method in ("knn", "zeroshot"):
            path = f"results/reference/{seq}-{method}.json"
            log = _git(REPO, "log", "--follow", "--format=%H", "--", path).split()
            mine = [x["commit"] for x in lines if (x["sequence"], x["method"]) == (seq, method)]
            assert [c for c in mine if c != UNCOMMITTED] == log[::-1], path
            assert {x["status"] for x in lines if x["sequence"] == seq} <= {"first", "ok", "better"}


def test_a_lowered_score_fails_regress_and_is_marked_in_the_history_and_the_plot(tmp_path):
    """The must-show: a score lowered against its reference gives a failing regress, a history line with status
    regression, and a point marked as a regression in the trend plot's data."""
    from bench.plots import trend_plot

    reference = tmp_path / "synth-knn.json"
    atomic_write_json(reference, _reference(_record(70.0)))
    history = tmp_path / "history.jsonl"
    write_history(history, with_statuses([history_line(_reference(_record(70.0)), commit=c, date=c,
                                                       source="reference") for c in ("aaaaaaa1", "bbbbbbb2")]))
    ci_history = tmp_path / "ci-history.jsonl"
    summary = tmp_path / "summary.md"
    for name, miou, code in (("same", 70.0, 0), ("lowered", 68.0, 1)):
        record = tmp_path / name / "record.json"
        atomic_write_json(record, {**_record(miou), "git_commit": f"{name}-commit"})
        assert regress_main(reference, record, out=io.StringIO(), history_out=ci_history,
                            summary_out=summary) == code
    ci = read_history(ci_history)
    assert [(x["commit"], x["source"], x["status"]) for x in ci] == [("same-commit", "ci", "ok"),
                                                                      ("lowered-commit", "ci", "regression")]
    assert ci[1]["scores"]["miou"]["final_average"] == 68.0 and ci[1]["tolerance"]["miou"] == 0.5
    text = summary.read_text()
    assert "### synth · knn: ok" in text and "### synth · knn: **FAIL**" in text
    assert "| miou final_average | 70.00 | 68.00 | -2.00 | 0.50 | WORSE |" in text

    data = trend_data([*read_history(history), *ci], "synth", "miou")
    assert data["commits"] == ["aaaaaaa", "bbbbbbb", "same-co", "lowered"]
    points = data["methods"]["knn"]["points"]
    assert [(p["x"], p["value"], p["regression"]) for p in points] == [(0, 70.0, False), (1, 70.0, False),
                                                                       (2, 70.0, False), (3, 68.0, True)]
    assert data["methods"]["knn"]["band"] == [69.5, 70.5]  # the latest reference value ± its tolerance
    png = trend_plot([data, trend_data(ci, "synth", "pq")], tmp_path / "trend.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_cli_writes_the_file(tmp_path, monkeypatch):
    from bench.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "h.jsonl"
    assert main(["history", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {x["sequence"] for x in lines} >= {"synth", "synth-shift"}
