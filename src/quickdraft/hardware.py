"""The machine we run on, and the draft model worth loading for a target on it.

`detect()` describes the CPU, memory and NVIDIA GPUs (through nvidia-ml-py, when a driver is there).
`pick_draft(target)` answers the question `draft="auto"` asks when no draft model is named: which model of the
target's family, with the target's vocabulary, is cheap enough to draft for it here?

The rule. Decoding a small model reads every weight once per token, so its speed follows its size in bytes
(on CPUs, and on GPUs for these sizes too). A draft model pays only when it is much cheaper than the target:
we take a candidate of the same family whose file is at most `MAX_DRAFT_SIZE_RATIO` of the target's and that
fits in the memory left beside the target. Gemma 3 270M Q4_K_M (253 MB) thus drafts for the F16 copy
(543 MB) but not for the Q8_0 copy (292 MB), where it is barely faster than the target itself (measured: a
Q4_K_M draft with a Q8_0 target is slower than the target alone on 2 cores). Nothing is downloaded or
converted to find a draft: only models already on disk are candidates.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quickdraft import model_store
from quickdraft.errors import QuickdraftError

MAX_DRAFT_SIZE_RATIO = 0.5
MEMORY_HEADROOM = 1.5  # the models' files times this must fit in available memory (KV cache, buffers)


@dataclass
class Gpu:
    name: str
    memory_bytes: int
    free_bytes: int | None = None  # at detection time; None when unknown (assumed GPUs: all of it)
    bandwidth_bytes_per_s: float | None = None  # from NVML's bus width and memory clock; None when unknown


@dataclass
class Hardware:
    cpu: str
    physical_cores: int
    logical_cores: int
    memory_bytes: int
    available_bytes: int
    gpus: list[Gpu] = field(default_factory=list)
    os: str = ""

    def summary(self) -> str:
        """One line for a report: "AMD EPYC 7B13, 2 cores (2 threads), 23.4 GiB RAM, no GPU"."""
        gpus = ", ".join(f"{g.name} ({g.memory_bytes / 2**30:.0f} GiB)" for g in self.gpus) or "no GPU"
        return (
            f"{self.cpu}, {self.physical_cores} cores ({self.logical_cores} threads), "
            f"{self.memory_bytes / 2**30:.1f} GiB RAM, {gpus}, {self.os}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def nvidia_gpus() -> list[Gpu]:
    """NVIDIA GPUs through NVML; none when the library or a driver is missing."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: pynvml raises NVMLError_LibraryNotFound and friends
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(name, int(memory.total), int(memory.free), nvidia_bandwidth(pynvml, handle)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def nvidia_bandwidth(pynvml, handle) -> float | None:
    """Peak memory bandwidth, bus width (bits) / 8 x max memory clock x 2 (double data rate): a datasheet-style
    figure the planner scales down (planner.GPU_BANDWIDTH_EFFICIENCY)."""
    try:
        bus_bits = pynvml.nvmlDeviceGetMemoryBusWidth(handle)
        clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)
    except Exception:  # older drivers or GPUs without these queries
        return None
    return bus_bits / 8 * clock_mhz * 1e6 * 2 if bus_bits and clock_mhz else None


def detect() -> Hardware:
    import psutil

    mem = psutil.virtual_memory()
    return Hardware(
        cpu=cpu_name(),
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        memory_bytes=int(mem.total),
        available_bytes=int(mem.available),
        gpus=nvidia_gpus(),
        os=f"{platform.system()} {platform.release()}",
    )


# ---- the draft model for a target ---------------------------------------------------------------------
def family_of(name: str) -> str | None:
    """The base model a short name belongs to: "gemma-3-270m-f16" -> "gemma-3-270m"; None for a path."""
    for base in model_store.BASE_MODELS:
        if name == base or name.startswith(base + "-"):
            return base
    return None


def local_candidates(family: str) -> list[str]:
    """Names of the family's models already on disk (nothing is downloaded or derived here)."""
    return [n for n in model_store.known_names() if family_of(n) == family and model_path(n) is not None]


def model_path(name: str) -> Path | None:
    try:
        return model_store.resolve(name, progress=False, derive_missing=False)
    except (QuickdraftError, KeyError, OSError):
        return None


def pick_draft(target: str, hardware: Hardware | None = None) -> str | None:
    """The draft model worth loading beside `target` here, or None (then auto drafts with n-grams only)."""
    family = family_of(target)
    target_path = model_path(target)
    if family is None or target_path is None:
        return None
    target_size = target_path.stat().st_size
    available = (hardware or detect()).available_bytes
    best: tuple[int, str] | None = None
    for name in local_candidates(family):
        path = model_path(name)
        if name == target or path is None or path.resolve() == target_path.resolve():
            continue
        size = path.stat().st_size
        fits = (size + target_size) * MEMORY_HEADROOM <= available
        if size <= MAX_DRAFT_SIZE_RATIO * target_size and fits and (best is None or size < best[0]):
            best = (size, name)
    return best[1] if best else None
