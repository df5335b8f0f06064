# Every target sets up .venv itself; torch is pinned first so pip takes the local CPU wheel
# instead of pulling the CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Idle OpenMP threads spinning on a small CPU shared with other processes slow torch several-fold,
# so the tests (which start subprocesses) and the benchmarks let them sleep. The demo runs alone and
# keeps OpenMP's default: on the quiet 2-core machine it took 146 s that way and 326 s with PASSIVE.
PASSIVE := OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}

.PHONY: demo test bench bench-gpu fidelity venv dev clean world

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: $(VENV)/.installed
	$(BIN)/knowpack demo configs/demo.yaml --out runs/demo

test: $(VENV)/.dev-installed
	$(PASSIVE) $(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	@for b in $(filter-out bench/gpu.py bench/fidelity.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PASSIVE) $(BIN)/python $$b || exit 1; done

# KVA on an 8B-shaped and probing on a 1B-shaped random Llama; needs a CUDA GPU (exits 2 without one)
bench-gpu: $(VENV)/.installed
	$(BIN)/python bench/gpu.py

# the papers' findings on the embedded world, 3 seeds (hours on a 2-core CPU; cached and resumable in
# runs/fidelity); `.venv/bin/python bench/fidelity.py --reduced` is the few-minute form
fidelity: $(VENV)/.installed
	$(PASSIVE) $(BIN)/python bench/fidelity.py

world: $(VENV)/.installed
	$(BIN)/knowpack world build --out src/knowpack/data/world --force

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
