"""The `quickdraft` command. Each subcommand parses its flags and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys

from quickdraft.errors import QuickdraftError


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)


def _add_model_flags(p: argparse.ArgumentParser, *, target_default: str | None = None) -> None:
    p.add_argument("--target", default=target_default, required=target_default is None,
                   help="target model: a .gguf path or a name (quickdraft models)")
    p.add_argument("--draft", default="auto",
                   help="auto (adaptive: picks n-gram, the draft model or none, and K, round by round; the "
                   "default), ngram (prompt lookup), none (target alone), or a draft model path or name")
    p.add_argument("--draft-tokens", "-k", type=int, default=4, dest="k", help="K: tokens drafted per round")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: physical cores)")
    p.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    p.add_argument("--inexact", action="store_true",
                   help="llama.cpp's faster default settings and no K cap: output equal to the target's only up to "
                   "rounding (README, Exactness)")


def cmd_generate(args) -> int:
    from quickdraft.engine import Engine

    engine = Engine.load(args.target, args.draft, k=args.k, n_ctx=args.ctx, threads=args.threads,
                         exact=not args.inexact)
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
    for name in model_store.known_names():
        try:
            path = model_store.resolve(name, derive_missing=False)
            where = str(path)
        except QuickdraftError as e:
            where = f"(not available: {e})"
        print(f"{name:24s} {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickdraft", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text with speculative decoding")
    _add_model_flags(g)
    g.add_argument("--prompt", "-p", required=True)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    _add_sampling_flags(g)
    g.add_argument("--json", action="store_true", help="print one JSON object: text, tokens, finish_reason, stats")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("models", help="list known model names, or prepare (fetch/derive) them")
    m.add_argument("action", nargs="?", choices=["list", "prepare"], default="list")
    m.add_argument("names", nargs="*")
    m.set_defaults(func=cmd_models)

    for register in _plugins():
        register(sub)
    return parser


def _plugins():
    """Subcommands that live next to the feature they drive (server, bench, node)."""
    import importlib

    for module in ("quickdraft.server.cli", "quickdraft.bench.cli", "quickdraft.node.cli"):
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
