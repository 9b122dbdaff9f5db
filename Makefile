# tmlab: `make test` and `make lab` need nothing but Python ≥ 3.11 and a C/C++ toolchain.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# llama-cpp-python is published as source only. A native build uses Intel AMX kernels that
# crash on these machines (ggml_backend_amx_mul_mat), so pin the instruction sets instead.
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install test lint format lab demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar off -e '.[local,plot,dev,demo]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/pytest --nbval-lax tests notebooks

# JupyterLab refuses to run as root without --allow-root (containers, CI machines).
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) $(LABARGS) notebooks/

# The Explorer as a Voilà app (no code cells) on http://127.0.0.1:8866/; a room: DEMOARGS='--host 0.0.0.0'.
demo: $(STAMP)
	$(BIN)/tmlab demo $(DEMOARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
