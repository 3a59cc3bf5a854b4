"""Which target, which draft, and how many layers of each on the GPU, for this machine and these models.

`plan(hardware, models, ctx)` answers `quickdraft plan` and `gpu_layers auto`; `plan_pair` does the same for a
target (and draft) the user named. Every figure here is an ESTIMATE from a memory model and a speed model,
both simple on purpose, with their assumptions named below; `quickdraft bench` measures.

Memory. A model with N GPU layers (llama.cpp's n_gpu_layers, 0..n_layers+1; the "+1" is the output head) keeps
its last N blocks, their F16 KV cache for the context, and a compute buffer on the GPU, and the rest in RAM
(token embeddings always stay in RAM). It fits when both parts fit in what is usable: available RAM less
`ram_reserve` (max of RAM_RESERVE_MIN and RAM_RESERVE_FRACTION of the total), and the GPU's free memory less
GPU_RESERVE (the CUDA context and driver). The target is the largest model (parameters, then file size) that
fits with as many layers on the GPU as fit there (among files of one network, the most precise up to Q8_0).

Speed. Decoding is memory-bound: a token costs the bytes it reads (every block and the output head) divided
by the bandwidth of the memory holding them, plus a fixed launch cost per GPU layer. Verifying n tokens on the
CPU also costs n times the matrix work, at CPU_FLOPS_PER_CORE per core, when that is slower than reading the
weights: on few cores a batch of K+1 tokens is not free. Bandwidths: the GPU's from NVML (peak x
GPU_BANDWIDTH_EFFICIENCY) or `--assume-gpu NAME:GiB:GB/s`, else DEFAULT_GPU_BANDWIDTH; RAM: DEFAULT_RAM_BANDWIDTH
(dual-channel DDR4/DDR5, effective), at most PER_CORE_BANDWIDTH per core.

Speculation. A draft accepted with probability a per token, K tokens per round, yields (1-a^(K+1))/(1-a)
tokens per round for K draft steps and one verification of K+1 tokens; with a verification as cheap as one
step and c = draft step / target step this is the standard speedup (1-a^(K+1)) / ((1-a)(Kc+1)). The assumed
acceptance grows with the draft's share of the target's parameters: ACCEPTANCE_AT_EQUAL_SIZE +
ACCEPTANCE_PER_DECADE x log10(draft/target), within [ACCEPTANCE_MIN, ACCEPTANCE_MAX]; a quantized copy of the
target's own network (same architecture and parameter count) gets SAME_NETWORK_ACCEPTANCE. The draft (same
vocabulary, at most half the target's parameters, cheaper per token) is kept only when the estimate beats the target alone with all the VRAM by
MIN_SPEEDUP; it goes on the GPU when it fits there whole, beside as many target layers as still fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from quickdraft.discovery import FoundModel
from quickdraft.errors import QuickdraftError
from quickdraft.gguf_info import ModelInfo, same_vocabulary
from quickdraft.hardware import Gpu, Hardware

GIB = 2**30
RAM_RESERVE_MIN = 1 * GIB
RAM_RESERVE_FRACTION = 0.10
GPU_RESERVE = GIB // 2
UBATCH = 512  # llama.cpp's n_ubatch: the compute buffer is sized for it
DEFAULT_RAM_BANDWIDTH = 30e9  # bytes/s
PER_CORE_BANDWIDTH = 12e9
DEFAULT_GPU_BANDWIDTH = 200e9
GPU_BANDWIDTH_EFFICIENCY = 0.75
GPU_LAYER_OVERHEAD_S = 20e-6  # kernel launches per layer per step
# docs/perf/README.md (scripts/verify_cost.py, Gemma 3 270M Q8_0, 2 threads): 9 positions 76.2 ms, 1 position
# 15.1 ms, so 61.1 ms for 8 x 0.54 GFLOP: 71 GFLOP/s on 2 cores
CPU_FLOPS_PER_CORE = 35e9
ACCEPTANCE_AT_EQUAL_SIZE = 0.80
ACCEPTANCE_PER_DECADE = 0.07
ACCEPTANCE_MIN, ACCEPTANCE_MAX = 0.50, 0.90
SAME_NETWORK_ACCEPTANCE = 0.90
MAX_K = 8
MAX_DRAFT_PARAMS_SHARE = 0.5  # a draft has at most half the target's parameters
MIN_SPEEDUP = 1.10


class PlanError(QuickdraftError):
    """No model fits this machine (or none was found)."""


# ---- the machine as the planner sees it ---------------------------------------------------------------------
@dataclass
class Machine:
    cores: int
    ram_usable: int
    ram_bandwidth: float
    gpu_index: int | None
    gpu_name: str | None
    gpu_usable: int
    gpu_bandwidth: float

    @classmethod
    def of(cls, hw: Hardware, ram_bandwidth: float | None = None) -> Machine:
        reserve = max(RAM_RESERVE_MIN, int(RAM_RESERVE_FRACTION * hw.memory_bytes))
        cores = max(1, hw.physical_cores)
        ram_bw = min(ram_bandwidth or DEFAULT_RAM_BANDWIDTH, cores * PER_CORE_BANDWIDTH)
        usable = [(g.free_bytes if g.free_bytes is not None else g.memory_bytes) - GPU_RESERVE for g in hw.gpus]
        if not usable or max(usable) <= 0:
            return cls(cores, max(0, hw.available_bytes - reserve), ram_bw, None, None, 0, 0.0)
        i = max(range(len(usable)), key=usable.__getitem__)  # one GPU: the one with the most room
        gpu = hw.gpus[i]
        peak = gpu.bandwidth_bytes_per_s
        bw = peak * GPU_BANDWIDTH_EFFICIENCY if peak else DEFAULT_GPU_BANDWIDTH
        return cls(cores, max(0, hw.available_bytes - reserve), ram_bw, i, gpu.name, usable[i], bw)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- one model's memory and speed at N GPU layers ---------------------------------------------------------------
def all_layers(info: ModelInfo) -> int:
    """n_gpu_layers that puts everything llama.cpp can offload on the GPU (blocks + output head)."""
    return info.n_layers + 1


def _gpu_blocks(info: ModelInfo, n: int) -> list[int]:
    k = min(n, info.n_layers)
    return info.layer_bytes[info.n_layers - k:] if k else []


def _own_output_bytes(info: ModelInfo) -> int:
    return info.output_bytes - (info.input_bytes if info.tied_embeddings else 0)


def compute_buffer_bytes(info: ModelInfo) -> int:
    """llama.cpp's GPU compute buffer, roughly: logits and activations for one ubatch."""
    return 4 * UBATCH * (info.n_vocab + 4 * info.embedding_length) + 64 * 2**20


def gpu_bytes(info: ModelInfo, n: int, ctx: int) -> int:
    if n <= 0:
        return 0
    weights = sum(_gpu_blocks(info, n)) + (info.output_bytes if n > info.n_layers else 0)
    kv = min(n, info.n_layers) * info.kv_bytes_per_layer(ctx)
    return weights + kv + compute_buffer_bytes(info)


def ram_bytes(info: ModelInfo, n: int, ctx: int) -> int:
    weights = info.tensor_bytes - sum(_gpu_blocks(info, n)) - (_own_output_bytes(info) if n > info.n_layers else 0)
    kv = (info.n_layers - min(max(n, 0), info.n_layers)) * info.kv_bytes_per_layer(ctx)
    return weights + kv


def model_ctx(info: ModelInfo, ctx: int) -> int:
    return min(ctx, info.context_length) if info.context_length else ctx


def max_gpu_layers(info: ModelInfo, ctx: int, vram: int) -> int:
    """The most layers whose weights, KV cache and compute buffer fit in `vram` bytes."""
    best = 0
    for n in range(1, all_layers(info) + 1):
        if gpu_bytes(info, n, ctx) <= vram:
            best = n
    return best


def fitting_layers(info: ModelInfo, ctx: int, vram: int, ram: int) -> int | None:
    """The most GPU layers that fit `vram` while the rest fits `ram`; None when no split fits."""
    n = max_gpu_layers(info, ctx, vram)
    return n if ram_bytes(info, n, ctx) <= ram else None


def step_seconds(info: ModelInfo, n_gpu: int, machine: Machine, n_tokens: int = 1) -> float:
    """One evaluation of `n_tokens` tokens (a decode step, or a verification batch)."""
    gpu_read = sum(_gpu_blocks(info, n_gpu)) + (info.output_bytes if n_gpu > info.n_layers else 0)
    read = sum(info.layer_bytes) + info.output_bytes
    cpu_read = read - gpu_read
    cpu_flops = 2.0 * info.n_params * (cpu_read / read if read else 0) * n_tokens
    t_cpu = max(cpu_read / machine.ram_bandwidth, cpu_flops / (machine.cores * CPU_FLOPS_PER_CORE))
    t_gpu = gpu_read / machine.gpu_bandwidth + min(n_gpu, all_layers(info)) * GPU_LAYER_OVERHEAD_S if n_gpu else 0
    return t_cpu + t_gpu


# ---- speculation -------------------------------------------------------------------------------------------------
def assumed_acceptance(draft: ModelInfo, target: ModelInfo) -> float:
    if draft.architecture == target.architecture and draft.n_params == target.n_params:
        return SAME_NETWORK_ACCEPTANCE
    a = ACCEPTANCE_AT_EQUAL_SIZE + ACCEPTANCE_PER_DECADE * math.log10(draft.n_params / target.n_params)
    return min(ACCEPTANCE_MAX, max(ACCEPTANCE_MIN, a))


def tokens_per_round(a: float, k: int) -> float:
    return (1 - a ** (k + 1)) / (1 - a)


def speculative_rate(draft_step: float, verify: Callable[[int], float], a: float) -> tuple[float, int]:
    """Best (tokens/s, K) for a draft step time, a verify(n_tokens) time function and acceptance a."""
    best = (0.0, 1)
    for k in range(1, MAX_K + 1):
        rate = tokens_per_round(a, k) / (k * draft_step + verify(k + 1))
        best = max(best, (rate, k))
    return best


# ---- the plan ----------------------------------------------------------------------------------------------------
@dataclass
class Placement:
    name: str
    path: str
    source: str
    params: str
    quantization: str
    gpu_layers: int
    n_layers: int  # all_layers: gpu_layers == n_layers means everything on the GPU
    gpu_bytes: int
    ram_bytes: int


@dataclass
class Estimate:
    setup: str
    tokens_per_second: float | None  # None: does not fit
    detail: str


@dataclass
class Plan:
    hardware: dict
    machine: Machine
    ctx: int
    threads: int
    main_gpu: int | None
    target: Placement
    draft: Placement | None
    k: int | None
    acceptance: float | None
    estimates: list[Estimate] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def gpu_layers_for(self, path: str) -> int:
        """The GPU layers planned for a model file (0 for one not in the plan)."""
        for p in (self.target, self.draft):
            if p is not None and p.path == str(path):
                return p.gpu_layers
        return 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for e in d["estimates"]:
            e["tokens_per_second"] = None if e["tokens_per_second"] is None else round(e["tokens_per_second"], 1)
        d["acceptance"] = None if self.acceptance is None else round(self.acceptance, 3)
        d["estimates_note"] = "estimates from the planner's memory and bandwidth model, not measurements"
        return d


def _placement(m: FoundModel, n_gpu: int, ctx: int) -> Placement:
    i = m.info
    return Placement(m.name, str(m.path), m.source, i.params_label, i.file_type, n_gpu, all_layers(i),
                     gpu_bytes(i, n_gpu, ctx), ram_bytes(i, n_gpu, ctx))


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def choose_target(models: list[FoundModel], machine: Machine, ctx: int,
                  reasons: list[str]) -> tuple[FoundModel, int]:
    """The largest model that fits, and its GPU layers (as many as fit)."""
    if not models:
        raise PlanError("no GGUF model found: pass --models DIR, set QUICKDRAFT_MODELS, or install the demo models "
                        "(quickdraft models prepare)")
    ordered = sorted(models, key=lambda m: (-m.info.n_params, precision_rank(m.info), m.name))
    too_big = []
    for m in ordered:
        c = model_ctx(m.info, ctx)
        n = fitting_layers(m.info, c, machine.gpu_usable, machine.ram_usable)
        if n is not None:
            if too_big:
                reasons.append(f"larger models do not fit: {'; '.join(too_big[:3])}")
            where = "all in RAM" if n == 0 else f"{n}/{all_layers(m.info)} layers on the GPU"
            reasons.append(f"target {m.name} ({m.info.params_label} {m.info.file_type}): the largest model that fits "
                           f"with a {c}-token KV cache ({where})")
            return m, n
        need = ram_bytes(m.info, 0, c)
        too_big.append(f"{m.name} needs {_gib(need)}")
    smallest = ordered[-1]
    c = model_ctx(smallest.info, ctx)
    raise PlanError(
        f"no model fits: the smallest, {smallest.name}, needs {_gib(ram_bytes(smallest.info, 0, c))} with a "
        f"{c}-token context; usable here: {_gib(machine.ram_usable)} RAM + {_gib(machine.gpu_usable)} GPU memory "
        f"(try a smaller --ctx or a smaller model)")


def precision_rank(info: ModelInfo) -> tuple[bool, int]:
    """Among files of one network: the most precise quantized one (Q8_0 before Q4_K_M) first, unquantized
    F32/F16/BF16 copies last: they read two to four times Q8_0's bytes per token for output one can hardly
    tell from its."""
    return info.file_type.upper() in ("F32", "F16", "BF16", "ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"), -info.file_size


@dataclass
class _DraftOption:
    draft: FoundModel
    draft_gpu: int
    target_gpu: int
    rate: float
    k: int
    acceptance: float


def draft_option(target: FoundModel, draft: FoundModel, machine: Machine, ctx: int) -> _DraftOption | None:
    """The draft whole on the GPU beside as many target layers as still fit, else in RAM; None if it can't fit."""
    t, d = target.info, draft.info
    tc, dc = model_ctx(t, ctx), model_ctx(d, ctx)
    d_gpu_need = gpu_bytes(d, all_layers(d), dc)
    if machine.gpu_usable and d_gpu_need <= machine.gpu_usable:
        d_gpu = all_layers(d)
        vram_left = machine.gpu_usable - d_gpu_need
        ram_left = machine.ram_usable - ram_bytes(d, d_gpu, dc)  # its token embeddings stay in RAM
    else:
        d_gpu, vram_left, ram_left = 0, machine.gpu_usable, machine.ram_usable - ram_bytes(d, 0, dc)
    t_gpu = fitting_layers(t, tc, vram_left, ram_left)
    if t_gpu is None:
        return None
    a = assumed_acceptance(d, t)
    rate, k = speculative_rate(step_seconds(d, d_gpu, machine), lambda n: step_seconds(t, t_gpu, machine, n), a)
    return _DraftOption(draft, d_gpu, t_gpu, rate, k, a)


def draft_candidates(target: FoundModel, models: list[FoundModel]) -> list[FoundModel]:
    """Models with the target's vocabulary, at most MAX_DRAFT_PARAMS_SHARE of its parameters, that read fewer
    bytes per token than it. A quantized copy of the target's own network is no draft: it does the same
    arithmetic per token (measured here: Gemma 3 270M Q4_K_M drafting for its F16 copy ran at 0.64x, docs/perf/README.md)."""
    t_read = sum(target.info.layer_bytes) + target.info.output_bytes
    return [m for m in models
            if m.path.resolve() != target.path.resolve() and same_vocabulary(m.info, target.info)
            and m.info.n_params <= MAX_DRAFT_PARAMS_SHARE * target.info.n_params
            and sum(m.info.layer_bytes) + m.info.output_bytes < t_read]


def plan(hardware: Hardware, models: list[FoundModel], ctx: int = 4096, *, ram_bandwidth: float | None = None,
         target: FoundModel | None = None, draft: FoundModel | None | str = "auto") -> Plan:
    """The plan for these models on this hardware. `target` fixes the target (else the largest that fits);
    `draft` fixes the draft (a FoundModel), forbids one (None) or lets the cost model pick ("auto")."""
    machine = Machine.of(hardware, ram_bandwidth)
    reasons: list[str] = []
    if target is None:
        target, base_gpu = choose_target(models, machine, ctx, reasons)
    else:
        base_gpu = named_target_layers(target, machine, ctx)
        reasons.append(f"target {target.name}: named")
    tc = model_ctx(target.info, ctx)
    if tc < ctx:
        reasons.append(f"context capped at {tc}, the target's trained length")
    if machine.gpu_index is None:
        reasons.append("no GPU: everything runs from RAM")
    estimates = target_alone_estimates(target.info, base_gpu, machine, tc)
    chosen = choose_draft(target, models, draft, machine, ctx, base_gpu, estimates, reasons)
    return Plan(
        hardware=hardware.to_dict(), machine=machine, ctx=tc, threads=machine.cores, main_gpu=machine.gpu_index,
        target=_placement(target, chosen.target_gpu if chosen else base_gpu, tc),
        draft=_placement(chosen.draft, chosen.draft_gpu, model_ctx(chosen.draft.info, ctx)) if chosen else None,
        k=chosen.k if chosen else None, acceptance=chosen.acceptance if chosen else None,
        estimates=estimates, reasons=reasons,
    )


def named_target_layers(target: FoundModel, machine: Machine, ctx: int) -> int:
    c = model_ctx(target.info, ctx)
    n = fitting_layers(target.info, c, machine.gpu_usable, machine.ram_usable)
    if n is None:
        raise PlanError(f"{target.name} needs {_gib(ram_bytes(target.info, 0, c))} with a {c}-token context; usable "
                        f"here: {_gib(machine.ram_usable)} RAM + {_gib(machine.gpu_usable)} GPU memory")
    return n


def target_alone_estimates(t: ModelInfo, base_gpu: int, machine: Machine, ctx: int) -> list[Estimate]:
    cpu_fits = ram_bytes(t, 0, ctx) <= machine.ram_usable
    gpu = bool(machine.gpu_usable)
    return [
        Estimate("target alone, CPU only", 1 / step_seconds(t, 0, machine) if cpu_fits else None,
                 "all layers in RAM" if cpu_fits else f"does not fit in {_gib(machine.ram_usable)} of RAM"),
        Estimate("target alone, partial offload (llama.cpp)", 1 / step_seconds(t, base_gpu, machine) if gpu else None,
                 f"{base_gpu}/{all_layers(t)} layers on the GPU" if gpu else "no GPU"),
    ]


def choose_draft(target: FoundModel, models: list[FoundModel], draft: FoundModel | None | str, machine: Machine,
                 ctx: int, base_gpu: int, estimates: list[Estimate], reasons: list[str]) -> _DraftOption | None:
    """The draft with the best estimate, kept when it beats the target alone (all GPU memory) by MIN_SPEEDUP;
    a named draft is kept regardless. Adds the speculation estimate and the reasons."""
    if draft is None:
        return None
    if draft == "auto":
        candidates = draft_candidates(target, models)
        options = [o for o in (draft_option(target, d, machine, ctx) for d in candidates) if o]
        others = {m.info.vocab_fingerprint for m in models} - {target.info.vocab_fingerprint}
        if others:
            reasons.append(f"{len(others)} other vocabular{'y' if len(others) == 1 else 'ies'} among the models: "
                           "never paired with this target")
        if not candidates:
            reasons.append("no model with the target's vocabulary and at most half its parameters was found: no draft "
                           "model (n-gram drafting only)")
        elif not options:
            reasons.append("no draft model fits beside the target")
    else:
        named = draft_option(target, draft, machine, ctx)
        if named is None:
            raise PlanError(f"draft {draft.name} does not fit beside {target.name}")
        options = [named]
    best = max(options, key=lambda o: o.rate, default=None)
    if best is None:
        return None
    t = target.info
    baseline = 1 / step_seconds(t, base_gpu, machine)
    versus = "the target alone with every layer that fits on the GPU" if machine.gpu_usable else "the target alone"
    where = "on the GPU" if best.draft_gpu else "in RAM"
    estimates.append(Estimate(
        f"speculation: {best.draft.name} {where}, K={best.k}", best.rate,
        f"target {best.target_gpu}/{all_layers(t)} layers on the GPU, assumed acceptance {best.acceptance:.2f}"))
    gain = best.rate / baseline
    if gain < MIN_SPEEDUP and draft == "auto":
        reasons.append(f"no draft model: the best, {best.draft.name}, is estimated at only {gain:.2f}x {versus} "
                       f"(needs {MIN_SPEEDUP:.2f}x)")
        return None
    reasons.append(f"draft {best.draft.name} ({best.draft.info.params_label}) {where}: estimated {gain:.2f}x {versus}, "
                   f"with K={best.k} and an assumed acceptance of {best.acceptance:.2f}")
    return best


def plan_pair(hardware: Hardware, target: FoundModel, draft: FoundModel | None, ctx: int = 4096) -> Plan:
    """GPU layers for a target and draft the user named (`gpu_layers auto`)."""
    return plan(hardware, [m for m in (target, draft) if m], ctx, target=target, draft=draft)


# ---- simulated machines ------------------------------------------------------------------------------------------
def parse_gpu(spec: str) -> Gpu:
    """NAME:GiB[:GB/s] ("RTX 2050:4:112") -> a Gpu with that much free memory (and peak bandwidth)."""
    parts = spec.rsplit(":", 2)
    try:
        if len(parts) == 3 and _is_number(parts[1]):
            name, gib, gbps = parts[0], float(parts[1]), float(parts[2])
        else:
            name, gib = spec.rsplit(":", 1)
            gib, gbps = float(gib), None
    except ValueError:
        raise PlanError(f"--assume-gpu {spec!r}: expected NAME:GiB or NAME:GiB:GB/s, e.g. 'RTX 2050:4:112'") from None
    if gib <= 0 or (gbps is not None and gbps <= 0):
        raise PlanError(f"--assume-gpu {spec!r}: memory and bandwidth must be positive")
    size = int(gib * GIB)
    return Gpu(name.strip() or "GPU", size, size, gbps * 1e9 if gbps else None)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def assume(hw: Hardware, gpus: list[str] | None = None, ram_gib: float | None = None,
           cores: int | None = None) -> Hardware:
    """`hw` with the parts given replaced: --assume-gpu (repeatable; "none": no GPU), --assume-ram, --assume-cores."""
    if gpus:
        hw = replace(hw, gpus=[] if [g.lower() for g in gpus] == ["none"] else [parse_gpu(g) for g in gpus])
    if ram_gib is not None:
        if ram_gib <= 0:
            raise PlanError("--assume-ram must be positive")
        hw = replace(hw, memory_bytes=int(ram_gib * GIB), available_bytes=int(ram_gib * GIB))
    if cores is not None:
        if cores <= 0:
            raise PlanError("--assume-cores must be positive")
        hw = replace(hw, physical_cores=cores, logical_cores=cores)
    return hw


# ---- the report (`quickdraft plan`) ------------------------------------------------------------------------------
def render(p: Plan, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = p.machine
    gpu = f"{m.gpu_name}: {_gib(m.gpu_usable)} usable, {m.gpu_bandwidth / 1e9:.0f} GB/s" if m.gpu_name else "no GPU"
    console.print(f"[bold]machine[/]: {m.cores} cores, {_gib(m.ram_usable)} RAM usable "
                  f"({m.ram_bandwidth / 1e9:.0f} GB/s assumed), {gpu}; context {p.ctx} tokens", highlight=False)
    table = Table(title="the plan", title_justify="left")
    for col in ("role", "model", "params", "quant", "GPU layers", "GPU memory", "RAM"):
        table.add_column(col, overflow="fold", no_wrap=col != "model")
    for role, pl in (("target", p.target), ("draft", p.draft)):
        if pl is None:
            table.add_row(role, "none (n-gram drafting only)", "", "", "", "", "")
            continue
        table.add_row(role, pl.name, pl.params, pl.quantization, f"{pl.gpu_layers}/{pl.n_layers}",
                      _gib(pl.gpu_bytes), _gib(pl.ram_bytes))
    console.print(table)
    est = Table(title="expected speed (ESTIMATES from bandwidth, not measurements)", title_justify="left")
    est.add_column("setup")
    est.add_column("tokens/s", justify="right")
    est.add_column("how")
    for e in p.estimates:
        est.add_row(e.setup, "—" if e.tokens_per_second is None else f"{e.tokens_per_second:.1f}", e.detail)
    console.print(est)
    for r in p.reasons:
        console.print(f"- {r}", highlight=False)


def auto_models(ctx: int = 4096) -> tuple[str, str | None, list[str]]:
    """`--target auto` (what serve and generate do with no model named): the planned target's path, the
    planned draft model's path (or None: n-gram drafting only) and the reasons, from this machine and the
    models found on it (quickdraft.discovery)."""
    from quickdraft import discovery
    from quickdraft.hardware import detect

    found = discovery.discover()
    p = plan(detect(), found.models, ctx)
    return p.target.path, p.draft.path if p.draft else None, p.reasons
