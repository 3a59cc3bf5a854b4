"""llama.cpp's own programs (rpc-server, llama-speculative-simple, llama-server), built once from the same
llama.cpp source that llama-cpp-python compiled, and cached.

A program already on PATH wins. Otherwise the llama-cpp-python sdist of the installed version is fetched
with pip (from pip's cache when it is there) and patched as the wheel was (`llama_source`), its vendored
llama.cpp is configured with CMake (RPC on), the asked-for targets are built, and the binaries are kept in
~/.cache/quickdraft/llama.cpp-<version>/bin (QUICKDRAFT_CACHE moves it): an rpc-server worker then rounds
as this process does. `stock=True` builds the same llama.cpp version without quickdraft's patches, at its
default flags, into ~/.cache/quickdraft/llama.cpp-<version without the label>: the llama.cpp that
`bench --against llama.cpp` compares with. The build prints its progress; it never runs silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from quickdraft import llama_source
from quickdraft.errors import QuickdraftError
from quickdraft.llama_model import system_info
from quickdraft.model_store import cache_dir


# program name -> its CMake target (and binary) name, where they differ
CMAKE_TARGETS = {"rpc-server": "ggml-rpc-server"}


class BuildError(QuickdraftError):
    """A llama.cpp program could not be found or built here."""


def llama_cpp_python_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def wheel_has_llamafile() -> bool:
    """Whether the installed llama-cpp-python was built with llamafile's kernels (a stock build is, and ours,
    patched). llama.cpp's programs are built the same way, so an rpc-server worker computes what this process
    would (docs/exactness.md)."""
    return "LLAMAFILE = 1" in system_info()["system_info"]


def tools_dir(*, stock: bool = False) -> Path:
    """Where programs built from the installed wheel's source are kept, or (stock) those built from the same
    llama.cpp unpatched, at its default flags: what `bench --against llama.cpp` compares with."""
    version = llama_cpp_python_version()
    if stock:
        return cache_dir() / f"llama.cpp-{llama_source.base_version(version)}"
    suffix = "" if wheel_has_llamafile() else "-nollamafile"
    return cache_dir() / f"llama.cpp-{version}{suffix}"


def find_tool(name: str, *, stock: bool = False) -> Path | None:
    """A built or installed program, without building anything. QUICKDRAFT_LLAMA_BIN names a folder of
    llama.cpp programs to use first."""
    override = os.environ.get("QUICKDRAFT_LLAMA_BIN")
    if override and os.access(Path(override) / name, os.X_OK):
        return Path(override) / name
    cached = tools_dir(stock=stock) / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    for candidate in (name, CMAKE_TARGETS.get(name, name)):
        on_path = shutil.which(candidate)
        if on_path:
            return Path(on_path)
    return None


def ensure_tool(name: str, *, log=None, stock: bool = False) -> Path:
    """Path to a llama.cpp program, building it (and caching it) if needed."""
    found = find_tool(name, stock=stock)
    if found:
        return found
    build_tools([name], log=log, stock=stock)
    found = find_tool(name, stock=stock)
    if not found:
        raise BuildError(f"built llama.cpp but {name} is not among its programs")
    return found


def _log(msg: str) -> None:
    print(f"[quickdraft build] {msg}", file=sys.stderr, flush=True)


def _source_dir(log, stock: bool) -> Path:
    """llama.cpp's source as the installed wheel was built from it: llama-cpp-python's sdist, with quickdraft's
    patches when the installed version carries their label (0.3.36+quickdraft.pXXXXXXXX) and stock is False.
    A wheel built from another patch set than this checkout's is refused: its programs would round otherwise."""
    root = tools_dir(stock=stock)
    src = root / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    ver = llama_cpp_python_version()
    try:
        patched = not stock and llama_source.is_patched(ver)
    except llama_source.SourceError as exc:
        raise BuildError(str(exc)) from exc
    if not stock and not patched and llama_source.is_quickdraft_build(ver):
        raise BuildError(f"the installed llama-cpp-python {ver} was built from other llama.cpp patches than "
                         f"this checkout's ({llama_source.local_label()}): `make install` rebuilds it")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        log(f"fetching the llama-cpp-python {llama_source.base_version(ver)} source (pip download)")
        try:
            sdist = llama_source.fetch_sdist(ver, Path(tmp))
            if patched:
                log(f"applying quickdraft's {llama_source.local_label()} patches (llama/patches) to its llama.cpp")
                llama_source.patch_llama_cpp(sdist / "vendor" / "llama.cpp")
        except llama_source.SourceError as exc:
            raise BuildError(str(exc)) from exc
        os.replace(sdist / "vendor" / "llama.cpp", src)
    return src


def build_tools(targets: list[str], *, log=None, jobs: int | None = None, stock: bool = False) -> None:
    log = log or _log
    if not shutil.which("cmake"):
        raise BuildError("cmake is not installed (apt-get install cmake); it is needed to build llama.cpp programs")
    src = _source_dir(log, stock)
    build = tools_dir(stock=stock) / "build"
    jobs = jobs or os.cpu_count() or 2
    if not (build / "CMakeCache.txt").is_file():
        log("configuring llama.cpp (cmake)")
        cfg = [
            "cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON",
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF",
        ] + ([] if stock or wheel_has_llamafile() else ["-DGGML_LLAMAFILE=OFF"])
        _run(cfg, log)
    log(f"building {', '.join(targets)} with {jobs} jobs (a few minutes on 2 cores; done once)")
    cmake_targets = [CMAKE_TARGETS.get(t, t) for t in targets]
    _run(["cmake", "--build", str(build), "--target", *cmake_targets, "-j", str(jobs)], log)
    bin_dir = tools_dir(stock=stock) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for t in targets:
        built = build / "bin" / CMAKE_TARGETS.get(t, t)
        if not built.is_file():
            raise BuildError(f"the build finished without producing {built}")
        shutil.copy2(built, bin_dir / t)
        log(f"ready: {bin_dir / t}")


def _run(cmd: list[str], log) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-30:]
        if line.startswith("[") and "%]" in line[:8]:  # cmake progress lines: "[ 42%] Building ..."
            log(line)
    if proc.wait() != 0:
        raise BuildError("llama.cpp build failed:\n" + "\n".join(tail))
