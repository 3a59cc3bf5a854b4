"""results.json (everything, for machines) and report.md (the tables, ready for the README)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from quickdraft.bench.compare import Mismatch
from quickdraft.bench.records import Config, Run
from quickdraft.bench.summary import OVERALL, Figures

SPEEDUP_CHART = "speedup.png"
ACCEPTANCE_CHART = "acceptance.png"


@dataclass
class BenchResult:
    command: str
    date: str  # ISO 8601, UTC
    machine: dict
    machine_summary: str
    settings: dict
    configs: list[Config]
    runs: list[Run]
    summary: dict[str, dict[str, Figures]]
    mismatches: list[Mismatch]
    greedy_checked: bool
    checked_backends: list[str] = field(default_factory=list)  # whose outputs must equal their target alone's
    notes: list[str] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Run]:
        return [r for r in self.runs if r.error is not None]

    def to_dict(self) -> dict:
        return {
            "command": self.command,
            "date": self.date,
            "machine": self.machine,
            "machine_summary": self.machine_summary,
            "settings": self.settings,
            "configs": [asdict(c) for c in self.configs],
            "summary": {c: {cat: f.to_dict() for cat, f in t.items()} for c, t in self.summary.items()},
            "greedy_checked": self.greedy_checked,
            "checked_backends": self.checked_backends,
            "mismatches": [m.to_dict() for m in self.mismatches],
            "errors": [
                {"config": r.config, "prompt_id": r.prompt_id, "turn": r.turn, "error": r.error} for r in self.errors
            ],
            "notes": self.notes,
            "charts": self.charts,
            "runs": [r.to_dict() for r in self.runs],
        }


def write_json(result: BenchResult, path: Path) -> None:
    path.write_text(json.dumps(result.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- markdown -----------------------------------------------------------------------------------------
def fmt_rate(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def fmt_times(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def fmt_pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def fmt_seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def fmt_bytes(n: int) -> str:
    return "–" if not n else f"{n / 2**20:,.0f} MiB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def agreement(result: BenchResult, config: Config) -> str:
    """How many of the configuration's outputs equal its target-alone output ("–" if not checked)."""
    if config.is_baseline or config.backend not in result.checked_backends:
        return "–"
    mine = [r for r in result.runs if r.config == config.name and r.error is None]
    bad = sum(1 for m in result.mismatches if m.config == config.name)
    mark = "✅" if bad == 0 else "❌"
    return f"{mark} {len(mine) - bad}/{len(mine)}"


def choices_text(choices: dict[str, int]) -> str:
    total = sum(choices.values())
    if not total:
        return "–"
    top = sorted(choices.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{key} {100 * n / total:.0f}%" for key, n in top[:6])


def overall_table(result: BenchResult) -> list[str]:
    rows = []
    for c in result.configs:
        f = result.summary[c.name][OVERALL]
        rows.append([
            c.name, fmt_rate(f.tokens_per_second), fmt_times(1.0 if c.is_baseline else f.speedup),
            fmt_rate(f.decode_tokens_per_second), fmt_times(1.0 if c.is_baseline else f.decode_speedup),
            fmt_pct(f.acceptance_rate), fmt_ratio(f.tokens_per_round), fmt_seconds(f.ttft_seconds),
            fmt_bytes(f.peak_rss_bytes), agreement(result, c),
        ])
    header = ["configuration", "tokens/s", "speedup", "decode tokens/s", "decode speedup", "acceptance",
              "tokens/round", "TTFT", "peak RSS", "output = target alone"]
    return table(header, rows)


def category_table(result: BenchResult, decode: bool = False) -> list[str]:
    """Per category: the target alone's tokens/s, then each configuration's speedup (acceptance); end to end,
    or decode-only."""
    shown = [c for c in result.configs if not c.is_baseline]
    baselines = {c.backend: c for c in result.configs if c.is_baseline}
    categories = [cat for cat in next(iter(result.summary.values()))]
    rows = []
    for cat in categories:
        row = [f"**{cat}**" if cat == OVERALL else cat]
        for c in [baselines.get("local"), *shown]:
            if c is None:
                continue
            f = result.summary[c.name][cat]
            if c.is_baseline:
                row.append(f"{fmt_rate(f.decode_tokens_per_second if decode else f.tokens_per_second)} tok/s")
            else:
                row.append(f"{fmt_times(f.decode_speedup if decode else f.speedup)} ({fmt_pct(f.acceptance_rate)})")
        rows.append(row)
    header = ["category"] + ([f"{baselines['local'].name}"] if "local" in baselines else []) + [c.name for c in shown]
    return table(header, rows)


def llamacpp_table(result: BenchResult) -> list[str]:
    rows = []
    for c in result.configs:
        if c.backend != "local":
            continue
        f = result.summary[c.name][OVERALL]
        if f.vs_llamacpp is None:
            continue
        twin = next(t for t in result.configs if t.backend == "llama.cpp" and t.draft == c.draft
                    and (t.k == c.k or c.draft == "none"))
        g = result.summary[twin.name][OVERALL]
        rows.append([c.name, fmt_rate(f.tokens_per_second), fmt_rate(f.decode_tokens_per_second), twin.name,
                     fmt_rate(g.tokens_per_second), fmt_rate(g.decode_tokens_per_second), fmt_times(f.vs_llamacpp),
                     fmt_times(f.decode_vs_llamacpp)])
    header = ["ours", "tokens/s", "decode tokens/s", "llama.cpp", "tokens/s", "decode tokens/s",
              "ours / llama.cpp", "decode: ours / llama.cpp"]
    return table(header, rows) if rows else []


def mismatch_section(result: BenchResult) -> list[str]:
    if not result.checked_backends:
        return ["Output check: not applicable (sampling through llama.cpp or a server: its draws are not ours)."]
    how = "greedy" if result.greedy_checked else "sampled with one seed, whose draws are a function of (seed, position)"
    if not result.mismatches:
        checked = sum(1 for r in result.runs if r.error is None and r.config in
                      {c.name for c in result.configs if c.backend in result.checked_backends})
        return [f"Output check ({how}): every output equals its target-alone output ({checked} generations checked)."]
    lines = [
        f"### ⚠️ MISMATCH: {len(result.mismatches)} outputs differ from the target alone",
        "",
        "These outputs should equal the target-alone output (greedy, or sampled with the same seed) and do not. See docs/exactness.md "
        "in quickdraft's repository: llama.cpp's CPU kernels can round a batch differently from one token, which "
        "K is capped against unless the bench ran with --inexact (the settings say which).",
        "",
    ]
    lines += table(
        ["configuration", "prompt", "category", "turn", "first difference", "target alone", "this output"],
        [[m.config, m.prompt_id, m.category, str(m.turn + 1), f"{m.unit} {m.position} of {m.baseline_length}",
          f"`{m.baseline_excerpt!r}`", f"`{m.output_excerpt!r}`"] for m in result.mismatches],
    )
    return lines


def markdown(result: BenchResult) -> str:
    s = result.settings
    lines = [
        "## Performance",
        "",
        f"`{result.command}`",
        "",
        f"Run on {result.date[:10]} ({result.date}) on {result.machine_summary}. "
        f"{s['prompt_set']}: {s['prompts']} prompts, {s['turns']} turns, up to {s['max_tokens']} tokens each, "
        f"{'greedy' if s['temperature'] == 0 else 'temperature ' + str(s['temperature'])}; "
        + (f"target `{s['target']}`, {s['threads']} threads." if s.get("target") else f"server {s.get('server')}.")
        + (f" llama.cpp `{s['llama_cpp_python']}`, CPU features {s['llama_cpp_cpu']}." if s.get("llama_cpp_cpu") else ""),
        "",
        *overall_table(result),
        "",
        "### Per category: speedup over the target alone (acceptance rate), end to end",
        "",
        *category_table(result),
        "",
        "### Per category: decode-only speedup (the prompt's prefill left out)",
        "",
        *category_table(result, decode=True),
        "",
    ]
    for chart in result.charts:
        lines += [f"![{chart}]({chart})", ""]
    autos = [c for c in result.configs if c.draft == "auto"]
    if autos:
        lines += ["### What auto chose (share of rounds, drafter:k)", ""]
        lines += [f"- {c.name}: {choices_text(result.summary[c.name][OVERALL].choices)}" for c in autos]
        lines.append("")
    vs = llamacpp_table(result)
    if vs:
        lines += ["### Against llama.cpp's C++ loop (same prompts, drafter and K)", "", *vs, ""]
    lines += mismatch_section(result)
    lines.append("")
    if result.errors:
        lines += [f"### ⚠️ {len(result.errors)} generations failed (left out of every figure above)", ""]
        lines += [f"- {r.config}, prompt {r.prompt_id} turn {r.turn + 1}: {r.error}" for r in result.errors[:20]]
        lines.append("")
    lines += ["### How this was measured", ""] + [f"- {n}" for n in result.notes] + [""]
    return "\n".join(lines)


def write_markdown(result: BenchResult, path: Path) -> None:
    path.write_text(markdown(result), encoding="utf-8")
