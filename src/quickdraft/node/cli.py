"""Subcommands `quickdraft node`, `quickdraft rpc-worker` and `quickdraft node-bench` (registered by
quickdraft.cli)."""

from __future__ import annotations

import argparse

from quickdraft.placement import gpu_layers_arg


def _endpoints(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


def cmd_node(args) -> int:
    from quickdraft.node.server import run_node

    return run_node(
        args.model, args.role, host=args.host, port=args.port, threads=args.threads, n_ctx=args.ctx,
        rpc=args.rpc or (), gpu_layers=args.gpu_layers, main_gpu=args.main_gpu, session_ttl=args.session_ttl,
        key=args.key,
    )


def cmd_rpc_worker(args) -> int:
    from quickdraft.node.rpc import run_worker

    return run_worker(args.host, args.port, args.mem, args.threads, args.cache)


def cmd_node_bench(args) -> int:
    from quickdraft.node.bench import main

    return main(args)


def register(sub: argparse._SubParsersAction) -> None:
    n = sub.add_parser(
        "node", help="serve one model (target or draft) to a coordinator, token ids over WebSocket",
        description="Hold one model and serve the quickdraft node protocol. The coordinator uses it with "
        "--target node://HOST:PORT or --draft node://HOST:PORT. With --key (or QUICKDRAFT_NODE_KEY) clients must "
        "prove the key at connect; off loopback a key is required. Nothing is encrypted: use a trusted network.",
    )
    n.add_argument("--model", required=True, help="a .gguf path or a model name (quickdraft models)")
    n.add_argument("--role", choices=["target", "draft"], default="target")
    n.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    n.add_argument("--port", type=int, default=None, help="default: 8471 for a target, 8472 for a draft")
    n.add_argument("--threads", type=int, default=None, help="CPU threads (default: physical cores)")
    n.add_argument("--ctx", type=int, default=4096, help="context size in tokens")
    n.add_argument("--rpc", type=_endpoints, default=None, metavar="HOST:PORT,...",
                   help="llama.cpp rpc-server workers (quickdraft rpc-worker) to put the model's layers on")
    n.add_argument("--gpu-layers", type=gpu_layers_arg, default=None, metavar="auto|all|none|N",
                   help="layers on the GPU, or on the RPC workers with --rpc (default auto: all of them with --rpc, "
                   "else the planner's choice where llama.cpp has a GPU, else none)")
    n.add_argument("--main-gpu", type=int, default=None, metavar="I",
                   help="the GPU the layers go to (default: spread over all GPUs)")
    n.add_argument("--session-ttl", type=float, default=300.0, help="seconds before an idle session is freed")
    n.add_argument("--key", default=None, help="node key clients must prove (default: $QUICKDRAFT_NODE_KEY; "
                   "required off loopback). Prefer the variable: a flag shows in the process list")
    n.set_defaults(func=cmd_node)

    w = sub.add_parser(
        "rpc-worker", help="run llama.cpp's rpc-server (no authentication!) to hold a target's layers",
        description="Start llama.cpp's rpc-server, building it once if needed. rpc-server has NO "
        "authentication: anyone who can reach the port can use it. It binds to 127.0.0.1 unless --host says "
        "otherwise.",
    )
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=50052)
    w.add_argument("--mem", type=int, default=None, metavar="MB",
                   help="memory the worker may use, in MB (advertised by rpc-servers that support --mem, else "
                   "enforced as a limit on the worker process)")
    w.add_argument("--threads", type=int, default=None, help="CPU threads of the worker")
    w.add_argument("--cache", action="store_true", help="let rpc-server cache tensors on local disk")
    w.set_defaults(func=cmd_rpc_worker)

    b = sub.add_parser(
        "node-bench", help="measure the node protocol: overhead per round, bytes per round, and throughput "
        "over a 2 ms / 1 Gbit link against loopback",
    )
    b.add_argument("--target", default="gemma-3-270m-q8_0")
    b.add_argument("--draft", default="gemma-3-270m")
    b.add_argument("--k", type=int, default=4)
    b.add_argument("--max-tokens", type=int, default=64)
    b.add_argument("--prompts", type=int, default=4, help="Spec-Bench prompts per configuration")
    b.add_argument("--no-link", action="store_true", help="skip the network-namespace link measurement")
    b.add_argument("--no-pipeline-comparison", action="store_true", help="skip pipelined vs not pipelined")
    b.add_argument("--json", default=None, help="also write the figures to this JSON file")
    b.set_defaults(func=cmd_node_bench)
