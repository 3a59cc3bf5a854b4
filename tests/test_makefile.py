"""The Makefile picks llama.cpp's backend from the machine: `make -n` (prints, runs nothing) with fake nvcc /
nvidia-smi / uname on PATH, and the flags and wheel folder it would build with. No build happens here."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from quickdraft import llama_source

REPO = Path(__file__).resolve().parents[1]
CPU_ARGS = "-DGGML_RPC=on"
# the folder of the CPU wheel of this patch set (llama/patches/): a new patch set builds a new wheel, once on
# CI and each machine, so a changed patch changes this key on purpose (update it with the patch)
CPU_KEY = "691d7d232016"
PATCHES = llama_source.local_label()  # derived from the patches' diffs

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def wheel_key(args: str) -> str:
    """The Makefile's key: md5 of "VERSION+PATCHES ARGS\\n" (echo adds the newline), 12 hex digits."""
    return hashlib.md5(f"0.3.36+{PATCHES} {args}\n".encode()).hexdigest()[:12]


def fake_tool(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A bin folder put first on PATH; by default nvidia-smi finds no GPU (whatever this machine has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "nvidia-smi", 'echo "No devices were found"; exit 6\n')
    return bin_dir


def with_gpus(bin_dir: Path, *caps: str) -> None:
    """nvidia-smi that lists one GPU per compute capability given (-L, --query-gpu=compute_cap as csv)."""
    (bin_dir / "gpus.txt").write_text("".join(f"GPU {i}: NVIDIA Test GPU (UUID: GPU-{i})\n" for i in range(len(caps))))
    (bin_dir / "caps.txt").write_text("".join(f"{c}\n" for c in caps))
    fake_tool(bin_dir, "nvidia-smi", f'case "$1" in\n  -L) cat "{bin_dir}/gpus.txt";;\n'
              f'  --query-gpu=compute_cap) cat "{bin_dir}/caps.txt";;\nesac\n')


def make(bin_dir: Path, tmp_path: Path, *args: str, target: str = "llama-config") -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for var in ("LLAMA_BACKEND", "LLAMA_CMAKE_ARGS_EXTRA", "LLAMA_WHEEL", "NVCC", "CUDA_ARCHS", "MAKEFLAGS"):
        env.pop(var, None)
    return subprocess.run(["make", "--no-print-directory", "-n" if target == "install" else "-s", target,
                           f"VENV={tmp_path / 'venv'}", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def config(out: str) -> dict[str, str]:
    return dict(re.findall(r"^(backend|patches|CMAKE_ARGS|wheel):[ \t]*(.*)$", out, re.M))


def test_no_gpu_is_the_cpu_build_and_its_cached_wheel(machine, tmp_path):
    fake_tool(machine, "nvcc", "exit 0\n")  # nvcc alone (as on this machine) is not a reason for CUDA
    c = config(make(machine, tmp_path).stdout)
    assert c["backend"] == "cpu"
    assert c["patches"] == PATCHES  # the Makefile names the patch set as llama_source does
    assert c["CMAKE_ARGS"] == CPU_ARGS
    assert wheel_key(CPU_ARGS) == CPU_KEY
    assert f"/wheels/{CPU_KEY}/llama_cpp_python-0.3.36*" in c["wheel"]
    plan = make(machine, tmp_path, target="install").stdout
    # the patched sdist (llama_source.py) is what gets built, into the folder the key names
    assert f'CMAKE_ARGS="{CPU_ARGS}"' in plan
    assert f"src/quickdraft/llama_source.py wheel 0.3.36 {Path.home()}/.cache/quickdraft/wheels/{CPU_KEY}" in plan
    assert "CUDACXX" not in plan


def test_nvcc_and_an_nvidia_gpu_build_cuda_for_that_gpu(machine, tmp_path):
    fake_tool(machine, "nvcc", "exit 0\n")
    with_gpus(machine, "8.6")
    args = f"{CPU_ARGS} -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=86"
    c = config(make(machine, tmp_path).stdout)
    assert (c["backend"], c["CMAKE_ARGS"]) == ("cuda", args)
    assert f"/wheels/{wheel_key(args)}/" in c["wheel"]
    plan = make(machine, tmp_path, target="install").stdout
    assert f'CUDACXX="{machine / "nvcc"}" CMAKE_ARGS="{args}"' in plan
    assert f"wheels/{wheel_key(args)}" in plan and CPU_KEY not in plan


def test_two_gpu_models_build_for_both(machine, tmp_path):
    fake_tool(machine, "nvcc", "exit 0\n")
    with_gpus(machine, "8.9", "8.6", "8.9")
    assert config(make(machine, tmp_path).stdout)["CMAKE_ARGS"].endswith("-DCMAKE_CUDA_ARCHITECTURES=86;89")


def test_a_gpu_without_nvcc_stays_cpu(machine, tmp_path):
    with_gpus(machine, "8.6")
    c = config(make(machine, tmp_path, "NVCC=").stdout)  # NVCC= : no nvcc on PATH nor in /usr/local/cuda
    assert (c["backend"], c["CMAKE_ARGS"]) == ("cpu", CPU_ARGS)


def test_apple_silicon_builds_metal(machine, tmp_path):
    fake_tool(machine, "uname", 'case "$1" in -s) echo Darwin;; -m) echo arm64;; *) echo Darwin;; esac\n')
    c = config(make(machine, tmp_path, "NVCC=").stdout)
    assert (c["backend"], c["CMAKE_ARGS"]) == ("metal", f"{CPU_ARGS} -DGGML_METAL=on")


def test_overrides(machine, tmp_path):
    c = config(make(machine, tmp_path, "LLAMA_BACKEND=vulkan").stdout)
    assert (c["backend"], c["CMAKE_ARGS"]) == ("vulkan", f"{CPU_ARGS} -DGGML_VULKAN=on")
    c = config(make(machine, tmp_path, "LLAMA_BACKEND=rocm", "LLAMA_CMAKE_ARGS_EXTRA=-DAMDGPU_TARGETS=gfx1100").stdout)
    args = f"{CPU_ARGS} -DGGML_HIP=on -DAMDGPU_TARGETS=gfx1100"
    assert c["CMAKE_ARGS"] == args and f"/wheels/{wheel_key(args)}/" in c["wheel"]
    bad = make(machine, tmp_path, "LLAMA_BACKEND=opencl")
    assert bad.returncode != 0 and "LLAMA_BACKEND must be one of" in bad.stderr


def test_your_own_wheel_is_installed_as_is(machine, tmp_path):
    wheel = tmp_path / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
    plan = make(machine, tmp_path, f"LLAMA_WHEEL={wheel}", target="install").stdout
    assert f"--force-reinstall {wheel}" in plan
    assert "pip wheel" not in plan and "CMAKE_ARGS=" not in plan
