# kNN-CLIP continual segmentation benchmark. `make help` lists the targets.
# Every NAME=value given on the command line (SEQ, METHOD, MODEL, knn.k, ...) is passed on to `python -m bench`,
# except this Makefile's own variables (MAKE_VARS: PYTHON=, QUICK=, ...), which only make reads; any other name
# reaches the run, so a misspelt key is an error there (with a suggestion), never silently dropped.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TOKENIZERS_PARALLELISM := false
MAKE_VARS := PYTHON VENV PY STAMP SHELL QUICK MUTATE_FAIL_UNDER MUTATE_ARGS REGRESS_RUNS ARGS \
  CI_HISTORY REGRESS_SUMMARY HISTORY_EXTRA
OVERRIDES := $(filter-out $(foreach v,$(MAKE_VARS),$(v)=% $(v):=% $(v)::=%),$(MAKEOVERRIDES))

.DEFAULT_GOAL := help
.PHONY: help install bench compare report reference regress perf stages gpu-check mutate test test-all lint clean memory-curve history

help:  ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: SEQ=<name|file.yaml> METHOD=<method> BASE=<base> EMBEDDER=<embedder> PROPOSALS=<proposer>"
	@echo "             MODEL=<open_clip name> PRETRAINED=<tag> DATA_ROOT=<dir>, and any config key, e.g. knn.k=32"
	@if test -f $(STAMP); then echo "  choices (from the registries; python -m bench list describes each):"; \
	  $(PY) -m bench run --help | sed -n '/^choices/,$$p' | tail -n +2; \
	else echo "  (make install, then make help lists the methods, bases, proposers, ... from the registries)"; fi

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the suite (fast when nothing changed)

bench: $(STAMP)  ## run a sequence: make bench [SEQ=synth-shift] [METHOD=knn] [MODEL=...] [key=value ...]
	$(PY) -m bench run $(OVERRIDES)

compare: $(STAMP)  ## every method on one sequence, finished runs reused: make compare [SEQ=synth-shift] [key=value ...]
	$(PY) -m bench compare $(OVERRIDES)

report: $(STAMP)  ## dashboard from every record under results/runs: results/README.md, results/index.html, results/report/
	$(PY) -m bench report results/runs --out results/report --dashboard results/README.md --html results/index.html \
	  --perf results/perf/latest.json --memory results/memory --history results/history.jsonl $(HISTORY_EXTRA)

history: $(STAMP)  ## rebuild results/history.jsonl (scores across commits) from the git log of results/reference
	$(PY) -m bench history

# The regression runs, <sequence>:<method>: the fast sequence (tiny-random) and the default one (tiny-clip-synth,
# where the base model's zero-shot knowledge meets the memory), each with knn and zeroshot. On 2 quiet cores with
# an empty data cache the synth-shift pair adds about a minute (29.8 s and 28.1 s run alone) to synth's 32 s.
REGRESS_RUNS := synth:knn synth:zeroshot synth-shift:knn synth-shift:zeroshot

reference: $(STAMP)  ## re-run the regression runs (REGRESS_RUNS) and overwrite their committed references
	for r in $(REGRESS_RUNS); do s=$${r%%:*}; m=$${r##*:}; rm -rf results/runs/$$s/$$m/reference; \
	  $(PY) -m bench run SEQ=$$s METHOD=$$m RUN_ID=reference progress=false $(OVERRIDES) && \
	  $(PY) -m bench reference results/runs/$$s/$$m/reference --out results/reference/$$s-$$m.json || exit 1; \
	done
	$(PY) -m bench history

# make regress writes each run's history line (source ci) here; CI uploads it (never commits it).
CI_HISTORY ?= results/runs/ci-history.jsonl

regress: $(STAMP)  ## run the regression runs (synth, synth-shift; knn, zeroshot) and compare with their references
	rm -f $(CI_HISTORY)
	for r in $(REGRESS_RUNS); do s=$${r%%:*}; m=$${r##*:}; rm -rf results/runs/$$s/$$m/ci; \
	  $(PY) -m bench run SEQ=$$s METHOD=$$m RUN_ID=ci progress=false $(OVERRIDES) && \
	  $(PY) -m bench regress --reference results/reference/$$s-$$m.json results/runs/$$s/$$m/ci \
	    --history-out $(CI_HISTORY) $(if $(REGRESS_SUMMARY),--summary $(REGRESS_SUMMARY)) || exit 1; \
	done

perf: $(STAMP)  ## memory at scale + pipeline timings -> results/perf/latest.json and plot (~12-27 min; QUICK=1: ~2-4 min)
	$(PY) benchmarks/perf.py $(if $(QUICK),--quick)

stages: $(STAMP)  ## per-image evaluation time by stage, workers, SLIC max_side -> results/perf/stages.json (~3 min; QUICK=1: ~2)
	$(PY) benchmarks/stages.py $(if $(QUICK),--quick)

memory-curve: $(STAMP)  ## final mIoU of a finished knn run against memory size -> results/memory/<seq>-knn.{json,png,md}: make memory-curve SEQ=synth-shift [ARGS="--fractions 0.1,1"]
	$(PY) -m bench memory-curve $(OVERRIDES) $(ARGS)

compare-bases: $(STAMP)  ## zero-shot vs knn for every base (and proposer) -> results/bases/<seq>.md: make compare-bases [ARGS="--proposers gt superpixel"]
	$(PY) benchmarks/bases.py $(ARGS)

gpu-check: $(STAMP)  ## the same short runs on GPU and CPU, records compared, stages timed -> results/perf/gpu_check.json (skips without a GPU)
	$(PY) benchmarks/gpu_check.py $(if $(PRECISION),--precision $(PRECISION))

# The gate: the run fails below this mutation score (killed / non-equivalent mutants).
MUTATE_FAIL_UNDER ?= 0.90

mutate: $(STAMP)  ## mutation testing of the core modules (mutmut) -> results/perf/mutation.json (~11-14 min on 2 shared cores; fails below 0.90)
	$(PY) benchmarks/mutation.py --fail-under $(MUTATE_FAIL_UNDER) $(MUTATE_ARGS)

test: $(STAMP)  ## run the tests (without those marked slow)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)  ## run every test, slow ones included
	$(PY) -m pytest -q

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

clean:  ## remove run outputs and caches (keeps .venv and committed results)
	rm -rf results/runs .pytest_cache .ruff_cache lightning_logs wandb
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
