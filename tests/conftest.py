"""Test set-up: offline, a private cache, quiet logs. Slow tests are marked and left out of `make test`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# W&B costs seconds per run; the logger tests turn it back on where they check it.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: its threads otherwise spin while they wait, and on a small shared machine (2 cores,
# a loader worker, other jobs) that made tests/test_run.py 4x slower (238 s against 56 s; README "Performance").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Generated data is shared across tests (and across runs, in CI's workspace); text embeddings too.
os.environ.setdefault("BENCH_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache"))


import pytest

# A run shrunk to seconds: the fast sequence, a few images per split, no progress bars, no W&B, no loader workers
# (starting one per loader costs more than it saves on a few images).
SMALL_RUN = ("SEQ=synth", "adapt_limit=16", "eval_limit=6", "progress=false", "wandb=false", "num_workers=0")


@pytest.fixture
def small_run(tmp_path):
    """``small_run(*overrides)`` runs the fast sequence shrunk to seconds in this test's folder; returns the
    record (later ``key=value`` arguments override the shrinking ones)."""
    from bench.run import build_config, run

    def go(*overrides: str):
        cfg, spec = build_config([*SMALL_RUN, f"output_dir={tmp_path}", *overrides])
        return run(cfg, spec)

    return go
