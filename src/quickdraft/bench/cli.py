"""`quickdraft bench`: flags in, quickdraft.bench.session does the work, a progress bar and the tables out."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from quickdraft.bench.prompts import SUITES
from quickdraft.placement import add_placement_flags, placement_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="measure tokens/s of the target alone, each drafter, each K and auto, side by side",
        description="Runs every configuration on the same prompts, interleaved, and writes results.json, "
        "report.md and PNG charts to --out.",
    )
    p.add_argument("--target", help="target model: a .gguf path or a name (quickdraft models)")
    p.add_argument("--draft", nargs="+", default=["ngram", "auto"], metavar="D",
                   help="configurations besides the target alone: ngram, auto, a draft model name or path "
                   "(with --server also 'server': the server's own setup). Default: ngram auto")
    p.add_argument("--k", nargs="+", type=int, default=[4], metavar="K",
                   help="draft tokens per round for each fixed drafter (auto picks its own). Default: 4")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompts", metavar="FILE", help="a JSONL prompt file (Spec-Bench, HumanEval or "
                        "{\"prompt\": ...} rows)")
    source.add_argument("--suite", choices=sorted(SUITES), default="spec-bench",
                        help="a prompt set shipped with quickdraft (default: spec-bench)")
    p.add_argument("--categories", nargs="+", metavar="C", help="only these categories")
    p.add_argument("--per-category", type=int, metavar="N", help="the first N prompts of each category")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default). Outputs are checked against the target alone's: "
                   "greedy on every backend, sampled (one seed) on ours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for the results")
    p.add_argument("--against", choices=["llama.cpp"],
                   help="also run llama.cpp's own speculative programs on the same prompts")
    p.add_argument("--server", metavar="URL", help="measure a running OpenAI-compatible endpoint instead")
    p.add_argument("--model", help="with --server: the model id to request (default: its first model)")
    p.add_argument("--api-key", help="with --server: a bearer token")
    p.add_argument("--threads", type=int, help="CPU threads per model (default: physical cores)")
    p.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    p.add_argument("--chat-template", help="force a named chat template (gemma, chatml, llama3)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run each turn N times per configuration, interleaved, and keep the fastest "
                   "(steadier figures on a shared machine; N times longer)")
    p.add_argument("--no-warmup", action="store_true", help="skip the unrecorded warm-up generation")
    p.add_argument("--inexact", action="store_true",
                   help="do not cap K at the batch size llama.cpp's kernels verify bit-exactly here "
                   "(greedy outputs may then differ from the target alone's; the bench reports it)")
    add_placement_flags(p)
    p.add_argument("--fail-on-mismatch", action="store_true",
                   help="exit with status 1 when an output differs from the target alone's")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from quickdraft.bench import session

    settings = session.BenchSettings(
        target=args.target, drafts=args.draft, ks=args.k, suite=None if args.prompts else args.suite,
        prompts_file=args.prompts, categories=args.categories, per_category=args.per_category,
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, out=args.out,
        against=args.against, server=args.server, server_model=args.model, api_key=args.api_key,
        threads=args.threads, n_ctx=args.ctx, chat_template=args.chat_template, warmup=not args.no_warmup,
        repeat=args.repeat, exact=not args.inexact, placement=placement_from_args(args),
        command=command_line(),
    )
    console = Console(stderr=True)
    progress = Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.description}"), console=console)
    task = None

    def on_start(total: int) -> None:
        nonlocal task
        task = progress.add_task("warming up", total=total)

    def on_run(run) -> None:
        rate = f"{run.tokens_per_second:.1f} tok/s" if run.error is None else f"[red]error: {run.error[:60]}[/]"
        progress.update(task, advance=1,
                        description=f"{run.config} · {run.category} {run.prompt_id}.{run.turn + 1} · {rate}")

    with progress:
        result = session.run(settings, on_start=on_start, on_run=on_run)
    print_summary(console, result, args.out)
    if result.mismatches and args.fail_on_mismatch:
        return 1
    return 0


def command_line() -> str:
    return "quickdraft " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1 else "quickdraft bench"


def print_summary(console, result, out: Path) -> None:
    from rich.panel import Panel
    from rich.table import Table

    from quickdraft.bench.report import agreement, fmt_bytes, fmt_pct, fmt_ratio, fmt_seconds, fmt_times
    from quickdraft.bench.summary import OVERALL

    table = Table(title="overall")
    for col in ("configuration", "tokens/s", "speedup", "acceptance", "tokens/round", "TTFT", "peak RSS",
                "= target alone"):
        table.add_column(col)
    for c in result.configs:
        f = result.summary[c.name][OVERALL]
        table.add_row(c.name, f"{f.tokens_per_second:.1f}", fmt_times(1.0 if c.is_baseline else f.speedup),
                      fmt_pct(f.acceptance_rate), fmt_ratio(f.tokens_per_round), fmt_seconds(f.ttft_seconds),
                      fmt_bytes(f.peak_rss_bytes), agreement(result, c))
    console.print(table)
    if result.mismatches:
        lines = "\n".join(m.describe() for m in result.mismatches[:15])
        more = f"\n... and {len(result.mismatches) - 15} more (results.json)" if len(result.mismatches) > 15 else ""
        if result.settings.get("exact", True):
            title, style = f"MISMATCH: {len(result.mismatches)} outputs differ from the target alone", "bold red"
        else:  # --inexact: llama.cpp-level exactness; the '= target alone' column is the match rate
            title, style = (f"--inexact: {len(result.mismatches)} outputs differ from the target alone (equal only "
                            "up to rounding; match rate per configuration in '= target alone')"), "yellow"
        console.print(Panel(lines + more, title=title, border_style=style))
    if result.errors:
        console.print(Panel("\n".join(f"{r.config} {r.prompt_id}.{r.turn + 1}: {r.error}" for r in result.errors[:10]),
                            title=f"{len(result.errors)} generations failed", border_style="red"))
    console.print(f"results: {out / 'results.json'}, {out / 'report.md'}, charts: {', '.join(result.charts)}")
