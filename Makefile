# Two commands do everything: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench lint clean gpu-check

install: $(STAMP)

# torch is installed alone and only when missing: the pinned CPU build lies on this machine's disk,
# and any other spec lets pip pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	command -v bwrap >/dev/null || apt-get install -y -qq bubblewrap || (apt-get update -qq && apt-get install -y -qq bubblewrap)
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

# DEMO_ARGS: extra `ilm demo` flags, e.g. `make demo DEMO_ARGS=--quick` (a few steps per stage; .ci/run)
demo: install
	$(BIN)/ilm demo $(DEMO_ARGS)

# TRL's PPO trainer (benchmarks/bench_ppo.py) was removed in trl 1.13, so the last release with it goes into
# its own directory (no other trl can shadow it there; its dependencies come from the `bench` extra), which
# the benchmark puts first on sys.path in a child process.
TRL_PPO := trl==1.12.0
# datatrove (benchmarks/bench_data_pipeline.py) and the spaCy tokenizer it uses for English also get their own
# directory, put first on sys.path of the benchmark's child processes.
DATATROVE := datatrove==0.10.1 spacy==3.8.18 orjson==3.13.0

bench: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	test -d $(VENV)/trl-ppo/trl || $(BIN)/pip install -q --no-deps --target $(VENV)/trl-ppo $(TRL_PPO)
	test -d $(VENV)/datatrove/datatrove || $(BIN)/pip install -q --target $(VENV)/datatrove $(DATATROVE)
	$(BIN)/python -m benchmarks.run

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# The one prepared GPU check (benchmarks/gpu_check.py, docs/benchmarks.md "GPU check"): on a device machine with
# its own torch, no install step; the raw output goes to GPU_CHECK_OUT (copy it to docs/device-runs/).
GPU_PY ?= python3
GPU_CHECK_OUT ?= out/gpu-check

gpu-check:
	PYTHONPATH=src:. $(GPU_PY) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT)
