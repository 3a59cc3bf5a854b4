"""`quickdraft serve` and `quickdraft config show` (registered by quickdraft.cli).

Both take the same flags; each flag sets one config key and beats the config file and the environment.
`--set KEY=VALUE` reaches any key by its dotted path (e.g. --set sampling.temperature=0.7).
"""

from __future__ import annotations

import argparse
import logging
import sys

from quickdraft.config import Config, ConfigError, load_config
from quickdraft.placement import add_placement_flags, placement_flag_keys

# flag dest -> config key
FLAG_KEYS = {
    "target": "models.target",
    "draft": "models.draft",
    "k": "models.k",
    "threads": "models.threads",
    "ctx": "models.ctx",
    "chat_template": "models.chat_template",
    "model_name": "models.name",
    "exact": "models.exact",
    "host": "server.host",
    "port": "server.port",
    "api_key": "server.api_key",
    "log_level": "server.log_level",
    "queue_size": "server.limits.queue_size",
    "max_body_bytes": "server.limits.max_body_bytes",
    "max_tokens_cap": "server.limits.max_tokens",
    "rpc": "nodes.rpc",
    "wait": "nodes.wait",
    "rpc_in_process": "nodes.rpc_in_process",
    **placement_flag_keys(),  # --target-gpu-layers -> placement.target.gpu_layers, ...
}


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (default: the bundled demo models on 127.0.0.1:8088)",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics and "
        "/v1/quickdraft/status. Settings: defaults < --config FILE < QUICKDRAFT_* variables < flags.",
    )
    add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    config = subparsers.add_parser("config", help="show the effective configuration")
    actions = config.add_subparsers(dest="config_action", required=True)
    show = actions.add_parser("show", help="print the effective configuration as YAML (the API key masked)")
    add_config_flags(show)
    show.set_defaults(func=cmd_config_show)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: $QUICKDRAFT_CONFIG, if set)")
    m = p.add_argument_group("models")
    m.add_argument("--target", help="target model: a .gguf path, a model name, or node://HOST:PORT")
    m.add_argument("--draft", help="auto, ngram, none, a draft model path or name, or node://HOST:PORT")
    m.add_argument("--draft-tokens", "-k", type=int, dest="k", help="draft tokens per round")
    m.add_argument("--threads", type=int, help="CPU threads per model")
    m.add_argument("--ctx", type=int, help="context size in tokens")
    m.add_argument("--chat-template", help="force a named chat template: gemma, chatml, llama3")
    m.add_argument("--model-name", help="the model id clients see (default: from --target)")
    m.add_argument("--inexact", dest="exact", action="store_const", const=False,
                   help="llama.cpp's faster default settings and no K cap: output equal to the target's only up "
                   "to rounding (docs/exactness.md)")
    add_placement_flags(p)
    n = p.add_argument_group("nodes and RPC workers (docs/nodes.md)")
    n.add_argument("--rpc", type=lambda v: [e.strip() for e in v.split(",") if e.strip()], metavar="HOST:PORT,...",
                   help="llama.cpp rpc-server workers (quickdraft rpc-worker) to hold the target's layers")
    n.add_argument("--rpc-in-process", action="store_const", const=True,
                   help="keep a target over RPC workers in serve's own process (one hop less per round; a worker "
                   "that dies ends serve, which llama.cpp aborts) instead of a child node serve restarts")
    n.add_argument("--wait", type=float, metavar="SECONDS",
                   help="how long to wait for the target node / RPC workers to come up (default 120)")
    s = p.add_argument_group("server")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1; others need an API key)")
    s.add_argument("--port", type=int, help="port (default 8088)")
    s.add_argument("--api-key", help="bearer token clients must send (or QUICKDRAFT_API_KEY)")
    s.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--queue-size", type=int, help="requests that may wait while one runs (beyond: 429)")
    s.add_argument("--max-body-bytes", type=int, help="request body limit (beyond: 413)")
    s.add_argument("--max-tokens-cap", type=int, help="cap on a request's max_tokens")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config key by its dotted path, e.g. sampling.temperature=0.7 (repeatable)")


def config_from_args(args) -> Config:
    overrides: dict = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value if value != "" else None
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides=overrides)


def cmd_config_show(args) -> int:
    sys.stdout.write(config_from_args(args).to_yaml())
    return 0


def cmd_serve(args) -> int:
    from quickdraft.server.startup import serve

    config = config_from_args(args)
    server = config.server
    server.check_exposure()
    logging.basicConfig(level=server.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    # the server listens at once and loads (after waiting for its nodes and RPC workers) in the background
    return serve(config, models=config.cluster.model_paths() if config.cluster else None)
