"""The `quickdraft` command. Each subcommand parses its flags and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quickdraft.errors import QuickdraftError
from quickdraft.placement import add_placement_flags


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)


def _add_model_flags(p: argparse.ArgumentParser, *, target_default: str | None = None) -> None:
    p.add_argument("--target", default=target_default, required=target_default is None,
                   help="target model: a .gguf path, a name (quickdraft models), or auto (default: the planner's "
                   "choice among the models on this machine, see quickdraft plan)")
    p.add_argument("--draft", default="auto",
                   help="auto (adaptive: picks n-gram, the draft model or none, and K, round by round; the "
                   "default), ngram (prompt lookup), none (target alone), or a draft model path or name")
    p.add_argument("--draft-tokens", "-k", type=int, default=4, dest="k", help="K: tokens drafted per round")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: physical cores)")
    p.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    p.add_argument("--inexact", action="store_true",
                   help="llama.cpp's faster default settings and no K cap: output equal to the target's only up to "
                   "rounding (docs/exactness.md)")
    add_placement_flags(p)  # --target-gpu-layers, --draft-main-gpu, --target-threads, ... (quickdraft.placement)


def cmd_generate(args) -> int:
    from quickdraft.engine import Engine

    from quickdraft.placement import placement_from_args

    engine = Engine.load(args.target, args.draft, k=args.k, n_ctx=args.ctx, threads=args.threads,
                         exact=not args.inexact, placement=placement_from_args(args))
    kwargs = dict(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        seed=args.seed,
        stop=args.stop or (),
    )
    if args.json:
        result = engine.generate(args.prompt, **kwargs)
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    last = None
    for piece in engine.stream(args.prompt, **kwargs):
        sys.stdout.write(piece.text)
        sys.stdout.flush()
        last = piece
    s = last.stats
    print(
        f"\n\n[{s.completion_tokens} tokens, {s.tokens_per_second:.1f} tok/s, finish={last.finish_reason}, "
        f"rounds={s.rounds}, drafted={s.drafted}, accepted={s.accepted} "
        f"({100 * s.acceptance_rate:.0f}%), {s.tokens_per_round:.2f} tokens/round]",
        file=sys.stderr,
    )
    return 0


def cmd_models(args) -> int:
    from quickdraft import model_store

    if args.action == "prepare":
        for name in args.names or ["gemma-3-270m", "gemma-3-270m-q8_0", "smollm2-135m"]:
            print(f"{name}: {model_store.resolve(name)}")
        return 0
    from quickdraft import discovery

    found = discovery.discover(_search_roots(args))
    if args.json:
        print(json.dumps({"models": [m.to_dict() for m in found.models],
                          "skipped": [{"path": p, "why": w} for p, w in found.skipped]}, indent=2))
        return 0
    discovery.render(found)
    on_disk = {str(m.path) for m in found.models}
    missing = [n for n in model_store.known_names() if not _on_disk(n, on_disk)]
    if missing:
        print(f"not made yet (quickdraft models prepare NAME): {', '.join(missing)}")
    return 0


def _on_disk(name: str, paths: set[str]) -> bool:
    from quickdraft import model_store

    try:
        return str(model_store.resolve(name, progress=False, derive_missing=False)) in paths
    except QuickdraftError:
        return False


# ---- models list / plan: discovery and the planner (quickdraft.discovery, quickdraft.planner) ----------------
def _add_search_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", action="append", default=[], metavar="DIR",
                   help="a folder (or .gguf file) to search too (repeatable); also QUICKDRAFT_MODELS")
    p.add_argument("--only", action="store_true",
                   help="search only the --models folders, not quickdraft's, LM Studio's, Ollama's or Hugging Face's")
    p.add_argument("--json", action="store_true", help="print JSON")


def _search_roots(args):
    from quickdraft.discovery import SearchRoots

    return SearchRoots.only(*args.models) if args.only else SearchRoots(paths=[Path(d) for d in args.models])


def cmd_plan(args) -> int:
    from quickdraft import discovery, hardware, planner

    hw = planner.assume(hardware.detect(), gpus=args.assume_gpu, ram_gib=args.assume_ram, cores=args.assume_cores)
    found = discovery.discover(_search_roots(args))
    for path, why in found.skipped:
        print(f"quickdraft: skipped {path}: {why}", file=sys.stderr)
    ram_bw = args.assume_ram_bandwidth * 1e9 if args.assume_ram_bandwidth else None
    plan = planner.plan(hw, found.models, args.ctx, ram_bandwidth=ram_bw)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        planner.render(plan)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickdraft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with speculative decoding")
    _add_model_flags(g, target_default="auto")
    g.add_argument("--prompt", "-p", required=True)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    _add_sampling_flags(g)
    g.add_argument("--json", action="store_true", help="print one JSON object: text, tokens, finish_reason, stats")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="list the GGUF models on this machine by vocabulary, or prepare the demo ones")
    m.add_argument("action", nargs="?", choices=["list", "prepare"], default="list")
    m.add_argument("names", nargs="*")
    _add_search_flags(m)
    m.set_defaults(func=cmd_models)

    pl = sub.add_parser("plan", help="choose target, draft and GPU layers for this machine (estimates)")
    _add_search_flags(pl)
    pl.add_argument("--assume-gpu", action="append", metavar="NAME:GiB[:GB/s]",
                    help="plan for this GPU instead of the detected ones (repeatable; 'none' for no GPU)")
    pl.add_argument("--assume-ram", type=float, metavar="GiB", help="plan for this much free RAM")
    pl.add_argument("--assume-cores", type=int, metavar="N", help="plan for this many CPU cores")
    pl.add_argument("--assume-ram-bandwidth", type=float, metavar="GB/s",
                    help="RAM bandwidth for the estimates (default: 30, dual-channel DDR4/DDR5)")
    pl.add_argument("--ctx", type=int, default=4096, help="context size in tokens (KV cache)")
    pl.set_defaults(func=cmd_plan)

    for register in _plugins():
        register(sub)
    return parser


def _plugins():
    """Subcommands that live next to the feature they drive (server, bench, node)."""
    import importlib

    for module in ("quickdraft.server.cli", "quickdraft.bench.cli", "quickdraft.node.cli", "quickdraft.cluster"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("quickdraft"):
                continue
            raise
        yield mod.register


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except QuickdraftError as e:
        print(f"quickdraft: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
