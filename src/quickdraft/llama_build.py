"""llama.cpp's own programs (rpc-server, llama-speculative-simple, llama-server), built once from the same
llama.cpp source that llama-cpp-python compiled, and cached.

A program already on PATH wins. Otherwise the llama-cpp-python sdist of the installed version is fetched
with pip (from pip's cache when it is there), its vendored llama.cpp is configured with CMake (RPC on), the
asked-for targets are built, and the binaries are kept in ~/.cache/quickdraft/llama.cpp-<version>/bin
(QUICKDRAFT_CACHE moves it). The build prints its progress; it never runs silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

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
    """Whether the installed llama-cpp-python was built with llamafile's kernels (a stock build is; ours is
    not). llama.cpp's programs are built the same way, so an rpc-server worker computes what this process
    would (README, "Exactness")."""
    return "LLAMAFILE = 1" in system_info()["system_info"]


def tools_dir() -> Path:
    suffix = "" if wheel_has_llamafile() else "-nollamafile"
    return cache_dir() / f"llama.cpp-{llama_cpp_python_version()}{suffix}"


def find_tool(name: str) -> Path | None:
    """A built or installed program, without building anything. QUICKDRAFT_LLAMA_BIN names a folder of
    llama.cpp programs to use first (e.g. a stock build, to compare against llama.cpp at its defaults)."""
    override = os.environ.get("QUICKDRAFT_LLAMA_BIN")
    if override and os.access(Path(override) / name, os.X_OK):
        return Path(override) / name
    cached = tools_dir() / "bin" / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return cached
    for candidate in (name, CMAKE_TARGETS.get(name, name)):
        on_path = shutil.which(candidate)
        if on_path:
            return Path(on_path)
    return None


def ensure_tool(name: str, *, log=None) -> Path:
    """Path to a llama.cpp program, building it (and caching it) if needed."""
    found = find_tool(name)
    if found:
        return found
    build_tools([name], log=log)
    found = find_tool(name)
    if not found:
        raise BuildError(f"built llama.cpp but {name} is not among its programs")
    return found


def _log(msg: str) -> None:
    print(f"[quickdraft build] {msg}", file=sys.stderr, flush=True)


def _source_dir(log) -> Path:
    root = tools_dir()
    src = root / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    root.mkdir(parents=True, exist_ok=True)
    ver = llama_cpp_python_version()
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        log(f"fetching the llama-cpp-python {ver} source (pip download)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={ver}", "-d", tmp]
        if subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode != 0:
            raise BuildError(f"could not download the llama-cpp-python {ver} source with pip")
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"), None)
        if archive is None:
            raise BuildError("pip downloaded no llama-cpp-python source archive")
        log(f"unpacking {archive.name}")
        with tarfile.open(archive) as tar:
            prefix = f"{archive.name[: -len('.tar.gz')]}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(Path(tmp) / "llama.cpp", members=[m for m in members if m.name], filter="data")
        os.replace(Path(tmp) / "llama.cpp", src)
    return src


def build_tools(targets: list[str], *, log=None, jobs: int | None = None) -> None:
    log = log or _log
    if not shutil.which("cmake"):
        raise BuildError("cmake is not installed (apt-get install cmake); it is needed to build llama.cpp programs")
    src = _source_dir(log)
    build = tools_dir() / "build"
    jobs = jobs or os.cpu_count() or 2
    if not (build / "CMakeCache.txt").is_file():
        log("configuring llama.cpp (cmake)")
        cfg = [
            "cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON",
            "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON",
            "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF",
        ] + ([] if wheel_has_llamafile() else ["-DGGML_LLAMAFILE=OFF"])
        _run(cfg, log)
    log(f"building {', '.join(targets)} with {jobs} jobs (a few minutes on 2 cores; done once)")
    cmake_targets = [CMAKE_TARGETS.get(t, t) for t in targets]
    _run(["cmake", "--build", str(build), "--target", *cmake_targets, "-j", str(jobs)], log)
    bin_dir = tools_dir() / "bin"
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
