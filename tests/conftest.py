"""Test set-up: offline, a private cache, quiet logs. Slow tests are marked and left out of `make test`."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# W&B costs seconds per run; the logger tests turn it back on where they check it.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Generated data is shared across tests (and across runs, in CI's workspace); text embeddings too.
os.environ.setdefault("BENCH_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache"))
