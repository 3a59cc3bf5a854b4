"""The same prompts through llama.cpp's own speculative decoding, for `--against llama.cpp`.

Programs: stock llama.cpp, built once from the llama.cpp source of the installed llama-cpp-python version
without quickdraft's patches and at llama.cpp's default build flags (llamafile on; quickdraft.llama_build), or
those in QUICKDRAFT_LLAMA_BIN:
- a draft model: `llama-speculative-simple --spec-type draft-simple -md DRAFT --spec-draft-n-max K`
  (p-min 0 and n-min 0, so it drafts exactly K tokens a round, as ours does);
- n-gram: `llama-lookup --spec-draft-n-max K`, llama.cpp's prompt-lookup decoding (its n-gram cache over the
  context, n = 1..4, with its thresholds; ours, quickdraft.drafters.NgramDrafter, follows the same rule and
  thresholds, breaking ties by the latest follower; llama.cpp's static and dynamic caches are empty here);
- the target alone: `llama-lookup --spec-draft-n-max 0`, which then decodes one token per target pass.

Each generation is one process: the prompt our chat template renders (as text; llama.cpp adds the BOS token
itself), greedy or the same temperature, the same threads and context; everything else (batch sizes, flash
attention) at llama.cpp's defaults.
Tokens and seconds are the program's own report: "encoded N tokens in S1 seconds" (the prompt) and
"decoded M tokens in S2 seconds" (the rest); the run's seconds are S1 + S2, model loading left out as it is
for ours. These programs stop once they have *more* than -n tokens, so M can exceed max_tokens by up to K:
their tokens/s counts them all. Peak RSS is the child's own, sampled while it runs. There is no time to first token.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quickdraft.bench.memory import PeakRSS
from quickdraft.bench.prompts import BenchPrompt
from quickdraft.bench.records import Config, Run
from quickdraft.errors import QuickdraftError

SPECULATIVE = "llama-speculative-simple"
LOOKUP = "llama-lookup"
TIMEOUT_SECONDS = 900


class LlamaCppError(QuickdraftError):
    """A llama.cpp program failed or printed no timings."""


@dataclass
class LlamaCppReport:
    prompt_tokens: int
    prompt_seconds: float
    tokens: int
    decode_seconds: float
    drafted: int | None
    accepted: int | None


NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def parse_report(stderr: str) -> LlamaCppReport:
    """The figures llama-speculative-simple and llama-lookup print at the end of a run."""
    enc = re.search(rf"encoded\s+(\d+) tokens in\s+{NUMBER} seconds", stderr)
    dec = re.search(rf"decoded\s+(\d+) tokens in\s+{NUMBER} seconds", stderr)
    if not enc or not dec:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise LlamaCppError(f"llama.cpp printed no timings; the end of its log:\n{tail}")
    drafted = re.search(r"n_drafted\s*=\s*(\d+)", stderr)
    accepted = re.search(r"n_accept\s*=\s*(\d+)", stderr)
    return LlamaCppReport(
        prompt_tokens=int(enc.group(1)),
        prompt_seconds=float(enc.group(2)),
        tokens=int(dec.group(1)),
        decode_seconds=float(dec.group(2)),
        drafted=int(drafted.group(1)) if drafted else None,
        accepted=int(accepted.group(1)) if accepted else None,
    )


def generated_text(stdout: str, prompt_text: str) -> str:
    """What the program printed after echoing the prompt (it echoes every prompt token's text first)."""
    tail = prompt_text[-64:]
    at = stdout.find(tail)
    if at < 0:
        return stdout.strip("\n")
    return stdout[at + len(tail):].rstrip("\n")


def command(
    config: Config,
    *,
    programs: dict[str, Path],
    target: Path,
    draft_models: dict[str, Path],
    prompt_text: str,
    max_tokens: int,
    temperature: float,
    seed: int,
    threads: int,
    n_ctx: int,
    scratch: Path,
    gpu_layers: int = 0,
    draft_gpu_layers: int = 0,
) -> list[str]:
    """gpu_layers, draft_gpu_layers: the layers our run put on a GPU (or RPC device), given to llama.cpp too."""
    common = [
        "-m", str(target), "-p", prompt_text, "--no-escape", "-n", str(max_tokens),
        "--temp", str(temperature), "--seed", str(seed), "-t", str(threads), "-tb", str(threads),
        "-c", str(n_ctx), "-ngl", str(gpu_layers),  # batch sizes and flash attention: llama.cpp's defaults
    ]
    if config.draft == "none":
        return [str(programs[LOOKUP]), *common, "--spec-draft-n-max", "0", "-lcd", str(scratch / "ngram.bin")]
    if config.draft == "ngram":
        return [str(programs[LOOKUP]), *common, "--spec-draft-n-max", str(config.k),
                "-lcd", str(scratch / "ngram.bin")]
    draft = draft_models[config.draft]
    return [
        str(programs[SPECULATIVE]), *common, "-md", str(draft), "-td", str(threads), "-tbd", str(threads),
        "-ngld", str(draft_gpu_layers),
        "--spec-type", "draft-simple", "--spec-draft-n-max", str(config.k), "--spec-draft-n-min", "0",
        "--spec-draft-p-min", "0",
    ]


def _offloaded(part) -> int:
    """Layers a local target or drafter's model has on a GPU (0 without one, or for anything else)."""
    model = getattr(part, "model", None)
    return int(getattr(model, "offloaded_layers", 0) or 0)


def run_process(cmd: list[str], timeout: float = TIMEOUT_SECONDS) -> tuple[str, str, int, int]:
    """(stdout, stderr, return code, peak RSS in bytes) of one program run. The RSS is sampled from the
    running program (wait4's ru_maxrss would count the forked Python image from before the exec)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        with PeakRSS(proc.pid) as peak:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
        out.seek(0)
        err.seek(0)
        return out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"), code, peak.bytes


class LlamaCppBackend:
    """Runs a configuration (none, ngram, a draft model) through llama.cpp's programs, one process a turn."""

    def __init__(self, engine, *, target: Path, draft_models: dict[str, Path], threads: int, n_ctx: int,
                 temperature: float, seed: int):
        from quickdraft.llama_build import ensure_tool

        self.engine = engine  # for the chat template and token counts
        self.target = target
        self.draft_models = draft_models
        self.threads, self.n_ctx = threads, n_ctx
        self.temperature, self.seed = temperature, seed
        # stock llama.cpp: the same version, unpatched, at its default build flags (llama_build)
        self.programs = {name: ensure_tool(name, stock=True) for name in (SPECULATIVE, LOOKUP)}
        # the same GPU offload as our run: what llama.cpp actually did with our models (0 on a CPU build)
        self.gpu_layers = _offloaded(engine.target)
        self.draft_gpu_layers = _offloaded(engine.drafters.get("model"))
        self.system_info: str | None = None  # the programs' own "system_info:" line (their kernels)

    def prompt_text(self, messages: list[dict]) -> str:
        """Our chat template's text, less the BOS token llama.cpp adds by itself."""
        template = self.engine.chat_template
        text = template.render(messages, add_generation_prompt=True)
        if template.starts_with_bos(text):
            text = text[len(template.bos_token):]
        return text

    def run(self, config: Config, prompt: BenchPrompt, turn: int, messages: list[dict], max_tokens: int) -> Run:
        text = self.prompt_text(messages)
        record = Run(config.name, prompt.id, prompt.category, turn)
        with tempfile.TemporaryDirectory(prefix="quickdraft-bench-") as scratch:
            cmd = command(
                config, programs=self.programs, target=self.target, draft_models=self.draft_models,
                prompt_text=text, max_tokens=max_tokens, temperature=self.temperature, seed=self.seed,
                threads=self.threads, n_ctx=self.n_ctx, scratch=Path(scratch), gpu_layers=self.gpu_layers,
                draft_gpu_layers=self.draft_gpu_layers,
            )
            stdout, stderr, code, rss = run_process(cmd)
        record.peak_rss_bytes = rss
        info = re.search(r"system_info: (.*)", stderr)
        if info and self.system_info is None:
            self.system_info = info.group(1).strip()
        try:
            if code != 0:
                raise LlamaCppError(f"{Path(cmd[0]).name} exited with {code}: {stderr.strip()[-500:]}")
            report = parse_report(stderr)
        except LlamaCppError as e:
            record.error = str(e)
            return record
        record.prompt_tokens = report.prompt_tokens
        record.completion_tokens = report.tokens
        record.seconds = report.prompt_seconds + report.decode_seconds
        # "decoded M tokens" counts the first, which came with the prompt's logits: M - 1 decoding steps
        record.decode_tokens, record.decode_seconds = max(0, report.tokens - 1), report.decode_seconds
        record.drafted, record.accepted = report.drafted, report.accepted
        if config.draft == "none":
            record.drafted = record.accepted = 0
        record.text = generated_text(stdout, text)
        record.finish_reason = "length" if report.tokens >= max_tokens else "stop"
        return record
