"""The dashboard: one row per method × model × base × proposer (latest run), pages per run, the history and
memory-size plots, links from results/README.md, the self-contained HTML page (DOM, and a headless Chromium when
one is installed), and the committed dashboard itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bench.history import history_line, with_statuses, write_history
from bench.html_page import write_html
from bench.io import atomic_write_json
from bench.report import build_report, write_dashboard
from tests.test_report import KNN, ZEROSHOT, _md_rows, _write

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same knn run under ci, reference and a hash id (ci written last), a zeroshot run, two history versions
    and a CI line that regressed, one memory-size plot; report, README page and HTML page."""
    root = tmp_path_factory.mktemp("dash")
    runs = root / "runs"
    for run_id in ("reference", "tiny-random-abc", "ci"):
        _write(runs, KNN, run_id)
        time.sleep(0.02)  # the latest record is the one written last
    _write(runs, ZEROSHOT, "zs")
    lines = [history_line({**KNN, "tolerances": {}}, commit=c, date=c, source="reference")
             for c in ("c1" * 4, "c2" * 4)]
    lowered = {**KNN, "summary": {**KNN["summary"], "miou": {**KNN["summary"]["miou"], "final_average": 60.0}}}
    lines.append(history_line(lowered, commit="c3" * 4, date="c3", source="ci", status="regression"))
    history = root / "history.jsonl"
    write_history(history, with_statuses(lines))
    memory = root / "memory"
    memory.mkdir()
    (memory / "synth-knn.png").write_bytes((REPO / "results/perf/quick-latency-recall.png").read_bytes())
    (memory / "synth-knn.md").write_text("# table\n")
    out = root / "out" / "report"
    written = build_report([runs], out, history=[history], memory_dir=memory)
    page = root / "out" / "README.md"
    write_dashboard(Path(written["summary_md"]), page)
    html = write_html(page, root / "out" / "index.html")
    return {"root": root, "out": out, "written": written, "md": page.read_text(), "page": page, "html": html}


def test_one_row_per_configuration_and_the_others_linked(dashboard):
    md = dashboard["md"]
    rows = _md_rows(md, "## synth")
    assert [(r[0], r[4]) for r in rows] == [("zeroshot", "[zs](report/synth-zeroshot-zs.md)"),
                                            ("knn", "[ci](report/synth-knn-ci.md)")]
    others = next(x for x in md.splitlines() if x.startswith("Other runs"))
    assert "[knn · reference](report/synth-knn-reference.md)" in others
    assert "[knn · tiny-random-abc](report/synth-knn-tiny-random-abc.md)" in others
    assert md.count("knn · reference") == 1


def test_links_resolve_from_the_readme_and_the_page_lists_every_local_target(dashboard):
    page = dashboard["page"]
    targets = re.findall(r"\]\(([^)]+)\)", dashboard["md"])
    assert targets and all((page.parent / t).is_file() for t in targets if not t.startswith("http"))


def test_history_and_memory_sections(dashboard):
    md = dashboard["md"]
    assert "regressions: knn at c3c3c3c3 (ci)" in md
    assert "![synth: final scores across commits](report/synth-history.png)" in md
    assert (dashboard["out"] / "synth-history.png").read_bytes()[:8] == PNG
    section = md[md.index("## Accuracy against memory size"):]
    assert "![synth-knn](../memory/synth-knn.png) ([table](../memory/synth-knn.md))" in section


def test_no_memory_plots_no_section_and_stale_files_removed(dashboard, tmp_path):
    runs = tmp_path / "runs"
    _write(runs, KNN, "a")
    _write(runs, ZEROSHOT, "b")
    out = tmp_path / "report"
    first = build_report([runs], out, memory_dir=tmp_path / "no-such-folder")
    assert "Accuracy against memory size" not in Path(first["summary_md"]).read_text()
    assert "## synth" in Path(first["summary_md"]).read_text()  # no history given: no trend, no error
    (out / "notes.txt").write_text("mine")
    shutil.rmtree(runs / "synth" / "zeroshot")
    build_report([runs], out)
    assert not list(out.glob("synth-zeroshot-b*")) and (out / "synth-knn-a.md").is_file()
    assert (out / "notes.txt").read_text() == "mine"  # only what a report wrote is removed


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def test_html_page_is_self_contained_with_tables_images_and_the_sort_script(dashboard):
    text = dashboard["html"].read_text()
    dom = _Dom()
    dom.feed(text)
    tags = [t for t, _ in dom.tags]
    assert tags.count("table") == dashboard["md"].count("\n|---") and tags.count("th") > 10
    images = [a["src"] for t, a in dom.tags if t == "img"]
    assert len(images) == len(re.findall(r"!\[", dashboard["md"])) >= 4
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not [a for t, a in dom.tags if t in ("script", "link") and (a.get("src") or a.get("href"))]
    assert "sortTable" in "".join(dom.scripts) and "http" not in "".join(dom.scripts)
    assert 'href="report/synth-knn-ci.md"' in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (Debian: apt-get install chromium); the DOM test "
                                                "above still checks the page")
def test_html_page_in_headless_chromium_offline(dashboard, tmp_path):
    """Chromium with every host unresolvable: the script ran (tables sortable), every image decoded, and
    ``#sort=0:5:desc`` opens the first table sorted by final mIoU, highest first; a screenshot is taken."""
    html = dashboard["html"]
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9", "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}"]
    env = {**os.environ, "HOME": str(tmp_path)}
    url = html.resolve().as_uri()
    dom = subprocess.run([*args, "--dump-dom", url + "#sort=0:5:desc"], capture_output=True, text=True, env=env,
                         timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_images = len(re.findall(r"!\[", dashboard["md"]))
    assert f'data-images-loaded="{n_images}/{n_images}"' in body
    assert re.search(r'data-sortable="\d+"', body)
    first = dom[dom.index('data-table="0"'):]
    first = first[:first.index("</table>")]
    methods = re.findall(r"<tr>\s*<td[^>]*>(\w+)</td>", first)
    assert methods == ["knn", "zeroshot"] and 'data-dir="desc"' in first
    shot = tmp_path / "shot.png"
    subprocess.run([*args, "--window-size=1200,900", f"--screenshot={shot}", url], capture_output=True, env=env,
                   timeout=120)
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 10_000


def test_committed_dashboard_is_short_and_shows_the_history():
    """results/README.md as committed: under 300 lines, the history plot of synth and synth-shift, its links
    resolve, and results/index.html is there."""
    readme = REPO / "results" / "README.md"
    text = readme.read_text()
    assert len(text.splitlines()) < 300
    for seq in ("synth", "synth-shift"):
        assert f"![{seq}: final scores across commits](report/{seq}-history.png)" in text
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (readme.parent / target).is_file(), target
    assert (REPO / "results" / "index.html").is_file()


def test_report_cli_writes_the_html_page(tmp_path):
    from bench.cli import main

    runs = tmp_path / "runs"
    _write(runs, KNN, "a")
    history = tmp_path / "h.jsonl"
    atomic_write_json(tmp_path / "unused.json", {})
    write_history(history, [history_line({**KNN, "tolerances": {}}, commit="c" * 8, date="d", source="reference")])
    assert main(["report", str(runs), "--out", str(tmp_path / "report"), "--dashboard", str(tmp_path / "README.md"),
                 "--html", str(tmp_path / "index.html"), "--history", str(history)]) == 0
    assert "data:image/png;base64," in (tmp_path / "index.html").read_text()
    assert main(["report", str(runs), "--out", str(tmp_path / "r2"), "--history", str(tmp_path / "missing")]) == 2


def test_an_unfinished_run_does_not_hide_the_finished_one(tmp_path):
    from tests.test_report import make_record

    runs = tmp_path / "runs"
    _write(runs, KNN, "done")
    time.sleep(0.02)
    _write(runs, make_record("knn", [[50.0, None, None], [None, None, None], [None, None, None]], memory=[5]),
           "running")
    md = Path(build_report([runs], tmp_path / "out")["summary_md"]).read_text()
    assert [r[4] for r in _md_rows(md, "## synth")] == ["[done](synth-knn-done.md)"]
    assert "[knn · running](synth-knn-running.md)" in md
