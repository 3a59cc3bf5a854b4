"""One bench, from settings to files: which configurations, on which backends, then run, check, summarize
and write results.json, report.md and the charts."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from quickdraft.bench import charts, prompts as prompt_sets
from quickdraft.bench.compare import find_mismatches
from quickdraft.bench.prompts import BenchPrompt
from quickdraft.bench.records import Config, Run
from quickdraft.bench.report import BenchResult, write_json, write_markdown
from quickdraft.bench.runner import Backend, generations, run_bench
from quickdraft.bench.server import SERVER_DRAFT
from quickdraft.bench.summary import summarize
from quickdraft.errors import InvalidRequestError
from quickdraft.placement import Placement

SPECIAL_DRAFTS = ("none", "ngram", "auto", SERVER_DRAFT)


@dataclass
class BenchSettings:
    target: str | None
    drafts: list[str] = field(default_factory=lambda: ["ngram", "auto"])
    ks: list[int] = field(default_factory=lambda: [4])
    suite: str | None = "spec-bench"
    prompts_file: str | None = None
    categories: list[str] | None = None
    per_category: int | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 0
    out: Path = Path("bench-out")
    against: str | None = None  # "llama.cpp"
    server: str | None = None
    server_model: str | None = None
    api_key: str | None = None
    threads: int | None = None
    n_ctx: int = 4096
    chat_template: str | None = None
    warmup: bool = True
    repeat: int = 1
    exact: bool = True  # cap K where llama.cpp's kernels stop verifying bit-exactly, as Engine.load does
    placement: Placement | None = None  # each model's GPU layers, GPU, threads (None: auto, as Engine.load)
    command: str = "quickdraft bench"


def cpu_features(llama_system_info: str) -> str:
    """The CPU features llama.cpp uses here, from its system info: "AVX = 1 | AVX2 = 1 | AVX512 = 0 | ..." ->
    "AVX, AVX2" (kernels, and so speed, differ with them: an AVX-512 machine is not an AVX2 one)."""
    return ", ".join(name for name, on in re.findall(r"(\w+) = (\d+)", llama_system_info) if on != "0")


def effective_ks(ks: Sequence[int], cap: int | None) -> list[int]:
    """The K values that really run: each capped by the exactness cap (None: no cap), duplicates merged."""
    return sorted({min(k, cap) if cap is not None else k for k in ks if cap is None or cap >= 1})


def model_drafts(drafts: Sequence[str]) -> list[str]:
    return [d for d in drafts if d not in SPECIAL_DRAFTS]


def local_configs(drafts: Sequence[str], ks: Sequence[int], auto_drafters: Sequence[str]) -> list[Config]:
    configs = [Config("target alone", "none")]
    for d in dict.fromkeys(drafts):
        if d == "auto":
            configs.append(Config(f"auto ({', '.join(auto_drafters)})", "auto"))
        elif d not in ("none", SERVER_DRAFT):
            configs += [Config(f"{d} k={k}", d, k) for k in ks]
    return configs


def llamacpp_configs(local: Sequence[Config]) -> list[Config]:
    """llama.cpp's twin of every local configuration it has one for (auto has none)."""
    out = [Config("llama.cpp target alone", "none", backend="llama.cpp")]
    out += [Config(f"llama.cpp {c.name}", c.draft, c.k, backend="llama.cpp")
            for c in local if not c.is_baseline and c.draft != "auto"]
    return out


def server_configs(drafts: Sequence[str], ks: Sequence[int]) -> list[Config]:
    configs = [Config("server: target alone", "none", backend="server")]
    for d in dict.fromkeys(drafts):
        if d in ("auto", SERVER_DRAFT):
            configs.append(Config(f"server: {d}", d, backend="server"))
        elif d != "none":
            configs += [Config(f"server: {d} k={k}", d, k, backend="server") for k in ks]
    return configs


def load_prompts(settings: BenchSettings) -> tuple[str, list[BenchPrompt]]:
    if settings.prompts_file:
        name, rows = Path(settings.prompts_file).name, prompt_sets.load_file(settings.prompts_file)
    else:
        name, rows = settings.suite or "spec-bench", prompt_sets.load_suite(settings.suite or "spec-bench")
    return name, prompt_sets.select(rows, settings.categories, settings.per_category)


def check(settings: BenchSettings) -> None:
    if settings.max_tokens < 1:
        raise InvalidRequestError("--max-tokens must be positive")
    if settings.repeat < 1:
        raise InvalidRequestError("--repeat must be positive")
    if any(k < 1 or k > 32 for k in settings.ks):
        raise InvalidRequestError("every --k must be in [1, 32]")
    if not settings.server and not settings.target:
        raise InvalidRequestError("--target is needed (or --server URL to bench a running endpoint)")
    if settings.server and settings.against:
        raise InvalidRequestError("--server and --against measure different things: use one at a time")
    if settings.against and settings.against != "llama.cpp":
        raise InvalidRequestError(f"--against knows llama.cpp only, not {settings.against!r}")


def notes(settings: BenchSettings, configs: Sequence[Config], load: tuple[float, float]) -> list[str]:
    out = [
        "Configurations run interleaved, turn by turn (A B C, A B C, ...), each after one unrecorded warm-up "
        "generation, so drift of the machine hits them alike.",
        "tokens/s = completion tokens / seconds from the request's start to its last token (the prompt's "
        "prefill included), summed over the prompts before dividing.",
        "speedup = tokens/s over the target alone's, same backend, same prompts and category.",
        "acceptance = accepted / drafted draft tokens; tokens/round = tokens per target pass, the target's "
        "own token included.",
        "TTFT = request start to the first token (prefill included); mean over generations.",
        "Prompts are rendered with the target's chat template. A multi-turn prompt is played as a "
        "conversation: turn 2 follows the target alone's own answer to turn 1, for every configuration.",
        f"Load average (1 min) at the start and the end: {load[0]:.2f}, {load[1]:.2f}. A busy machine makes "
        "every figure noisy; interleaving keeps the comparisons fair, not the absolute rates.",
    ]
    if settings.repeat > 1:
        out.append(f"Each turn ran {settings.repeat} times per configuration, interleaved; the fastest is kept "
                   "(other processes only add time); every repeat's seconds are in results.json.")
    if any(c.backend == "local" for c in configs):
        out += [
            "Every model's KV cache is emptied before each generation: no configuration reuses a prefill.",
            "peak RSS (ours) = of this process while the configuration ran; all configurations share the "
            "process and its loaded models.",
        ]
    if any(c.draft == "auto" for c in configs):
        out.append("auto learns machine costs across the bench's requests (as it does in a server) and "
                   "acceptance per request, with earlier requests as its prior.")
    if any(c.backend == "llama.cpp" for c in configs):
        out += [
            "llama.cpp: one process per generation (model loading not counted): llama-speculative-simple "
            "--spec-type draft-simple (p-min 0, n-min 0: exactly K drafts a round) for a draft model, "
            "llama-lookup --spec-draft-n-max K for n-gram, llama-lookup --spec-draft-n-max 0 for the target "
            "alone. Their seconds = the 'encoded' plus 'decoded' times they print; they may run up to K "
            "tokens past max_tokens, all counted. Same threads, context and sampling; llama.cpp's own defaults "
            "otherwise (batch sizes; flash attention 'auto'); stock llama.cpp: built from the same llama.cpp "
            "version without quickdraft's patches, at its default build flags (unless QUICKDRAFT_LLAMA_BIN "
            "names other programs).",
            "llama.cpp peak RSS = the child process's own, sampled every 50 ms while it runs; it has no TTFT.",
        ]
    if any(c.backend == "server" for c in configs):
        out.append(f"server ({settings.server}): streamed chat completions; tokens from the usage field of "
                   "the last chunk, never counted from chunks; TTFT = first content chunk; configurations "
                   "other than 'server' are asked for with the request extension {\"quickdraft\": {draft, k}}.")
    return out


def run(settings: BenchSettings, *, on_start: Callable[[int], None] | None = None,
        on_run: Callable[[Run], None] | None = None) -> BenchResult:
    """Everything `quickdraft bench` does but print. on_start(n) gets the number of generations ahead."""
    from quickdraft.hardware import detect, pick_draft
    from quickdraft.llama_model import default_threads, system_info

    check(settings)
    set_name, selected = load_prompts(settings)
    threads = settings.threads or default_threads()
    configs: list[Config] = []
    backends: dict[str, Backend] = {}
    extra_notes: list[str] = []
    if settings.server:
        from quickdraft.bench.server import ServerBackend

        backends["server"] = ServerBackend(settings.server, model=settings.server_model or settings.target,
                                           api_key=settings.api_key, temperature=settings.temperature,
                                           seed=settings.seed)
        configs = server_configs(settings.drafts, settings.ks)
    else:
        from quickdraft import model_store
        from quickdraft.bench.local import LocalBackend, build_engine

        drafts = model_drafts(settings.drafts)
        auto_models = list(drafts)
        if "auto" in settings.drafts and not drafts:
            picked = pick_draft(settings.target)
            auto_models = [picked] if picked else []
        engine = build_engine(settings.target, list(dict.fromkeys(drafts + auto_models)), n_ctx=settings.n_ctx,
                              threads=threads, chat_template=settings.chat_template, exact=settings.exact,
                              placement=settings.placement)
        backends["local"] = LocalBackend(engine, temperature=settings.temperature, seed=settings.seed)
        cap = engine.target.max_k
        ks = effective_ks(settings.ks, cap)
        if ks != sorted(set(settings.ks)):
            extra_notes.append(f"K capped at {cap}: llama.cpp's kernels here verify at most {cap + 1} tokens a "
                               f"batch bit-exactly (quickdraft.exactness), so K {settings.ks} ran as "
                               f"{ks}; --inexact lifts the cap.")
        configs = local_configs(settings.drafts, ks, ["ngram", *auto_models])
        if settings.against:
            from quickdraft.bench.llamacpp import LlamaCppBackend

            backends["llama.cpp"] = LlamaCppBackend(
                engine, target=model_store.resolve(settings.target),
                draft_models={d: model_store.resolve(d) for d in drafts}, threads=threads,
                n_ctx=settings.n_ctx, temperature=settings.temperature, seed=settings.seed,
            )
            configs += llamacpp_configs(configs)
    hardware = detect()
    load_start = os.getloadavg()[0]
    if on_start:
        on_start(generations(selected, configs, settings.repeat))
    runs = run_bench(selected, configs, backends, max_tokens=settings.max_tokens, on_run=on_run,
                     warmup=settings.warmup, repeat=settings.repeat)
    load_end = os.getloadavg()[0]
    summary = summarize(runs, configs)
    greedy = settings.temperature == 0
    checked = list(dict.fromkeys(c.backend for c in configs if greedy or c.backend == "local"))
    from importlib.metadata import version

    import quickdraft

    result = BenchResult(
        command=settings.command,
        date=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        machine=hardware.to_dict(),
        machine_summary=hardware.summary(),
        settings={
            "target": settings.target, "drafts": settings.drafts, "ks": settings.ks, "prompt_set": set_name,
            "categories": sorted({p.category for p in selected}), "per_category": settings.per_category,
            "prompts": len(selected), "turns": sum(len(p.turns) for p in selected),
            "max_tokens": settings.max_tokens, "temperature": settings.temperature, "seed": settings.seed,
            "threads": threads, "n_ctx": settings.n_ctx, "against": settings.against, "server": settings.server,
            "repeat": settings.repeat, "exact": settings.exact,
            "placement": (settings.placement or Placement()).model_dump(mode="json"),
            "quickdraft": quickdraft.__version__, "llama_cpp_python": version("llama-cpp-python"),
            "llama_cpp_cpu": cpu_features(system_info()["system_info"]),
        },
        configs=configs,
        runs=runs,
        summary=summary,
        # greedy outputs must equal the target alone's on every backend; sampled ones on ours (same seed)
        mismatches=find_mismatches(runs, [c for c in configs if c.backend in checked]),
        greedy_checked=greedy,
        checked_backends=checked,
        notes=notes(settings, configs, (load_start, load_end)) + extra_notes + llamacpp_build_note(backends),
    )
    write_outputs(result, settings.out, f"{settings.target or settings.server}, {set_name}")
    return result


def llamacpp_build_note(backends: dict) -> list[str]:
    """Which kernels llama.cpp's programs ran with, from their own log (QUICKDRAFT_LLAMA_BIN may point the
    bench at another build, e.g. a stock one with llamafile's kernels)."""
    info = getattr(backends.get("llama.cpp"), "system_info", None)
    if not info:
        return []
    llamafile = "on" if "LLAMAFILE = 1" in info else "off"
    return [f"llama.cpp programs ran with llamafile {llamafile} (their system_info: {info})."]


def write_outputs(result: BenchResult, out: Path, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result.charts = charts.write_charts(out, result.configs, result.summary, title)
    write_json(result, out / "results.json")
    write_markdown(result, out / "report.md")
