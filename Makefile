# Two newcomer commands:  `make demo` (offline end-to-end reproduction) and `make test`.
# Both create .venv and install everything on a fresh machine first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Never touch the Hugging Face hub or telemetry: everything runs on local tiny models/data.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export AXOLOTL_DO_NOT_TRACK := 1
export WANDB_DISABLED := true
export WANDB_MODE := disabled
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on these machines, the CUDA build on a GPU box.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
