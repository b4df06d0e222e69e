# The two commands a new user needs:  `make demo`  and  `make test`.
# Both create ./.venv on first use. On a machine without a GPU the CPU build of
# torch is pinned so pip never pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

$(BIN)/gptforge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; else $(BIN)/pip install -q $(TORCH); fi
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: install demo test test-all
install: $(BIN)/gptforge

demo: $(BIN)/gptforge
	$(BIN)/gptforge demo

test: $(BIN)/gptforge
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-all: $(BIN)/gptforge
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m ''
