"""`quickdraft node-bench`: the node budgets, measured on real node processes.

Prints (and with --json writes):
1. the protocol's overhead per round on loopback: for each verify and draft call, the time the coordinator
   waited minus the time the node reported computing (`compute_us`); per round, the median verify call plus
   the median draft call (measured without pipelining, which would overlap the draft call with the verify);
   plus a bare `ping` round trip between awake processes;
2. bytes per round, both directions, greedy and sampled (token ids alone either way: a sampled draft is its
   coupled draws, quickdraft.coupling, and the node samples with the request's seed);
3. speculative throughput with the target behind a 2 ms / 1 Gbit link (quickdraft.node.linkemu) against the
   same configuration on loopback, runs interleaved;
4. pipelining: the same generation with and without drafting ahead, and the target alone.

The target node is pinned to core 0 and the draft node to core 1 (taskset), one thread each, so the two
models compute in parallel as they would on two machines. The coordinator drafts --k tokens a round whatever
exact K the target node measured (exact=False: it lifts that cap), since what is measured is the protocol.
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from contextlib import ExitStack
from importlib import resources

from quickdraft.node.client import NodeClient
from quickdraft.node.launch import NodeProcess


def spec_bench_prompts(n: int) -> list[str]:
    """The first turn of n Spec-Bench rows from different categories."""
    text = resources.files("quickdraft").joinpath("data", "prompts", "spec_bench.jsonl").read_text()
    rows, seen = [], set()
    for line in text.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row["category"] not in seen:
            seen.add(row["category"])
            rows.append(row["turns"][0])
        if len(rows) == n:
            break
    return rows


def ping_ms(url: str, role: str, n: int = 300, *, echo: bytes | None = None, request_padding: int = 0,
            idle_s: float = 0.0) -> float:
    """Median round trip of `ping` (with an echoed payload and request padding of the given sizes), each
    after `idle_s` seconds of idleness (0: back to back, the processes stay awake)."""
    client = NodeClient(url, role=role)
    client.connect()
    request = {"op": "ping"}
    if echo is not None:
        request["echo"] = echo
    if request_padding:
        request["padding"] = bytes(request_padding)
    times = []
    for _ in range(n):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter()
        client.call(request)
        times.append(time.perf_counter() - t0)
    client.close()
    return statistics.median(times) * 1e3


def protocol_round_trips(target_url: str, draft_url: str, wire: dict) -> dict:
    """The protocol alone, with the message sizes measured in generation: a verify-sized and a draft-sized
    exchange per round, between awake processes, and after 50 ms idle (the node and the coordinator asleep
    in between, as in a real round: the OS must wake them)."""
    out = {}
    for mode, g in wire.items():
        v, d = g["verify_bytes"], g["draft_bytes"]
        sizes = {"target": (int(v["sent"]), int(v["received"])), "draft": (int(d["sent"]), int(d["received"]))}
        per = {}
        for idle in (0.0, 0.05):
            per[f"idle_{int(idle * 1000)}ms"] = sum(
                ping_ms(url, role, 40 if idle else 300, echo=bytes(max(0, back - 16)),
                        request_padding=max(0, sent - 30), idle_s=idle)
                for (role, (sent, back)), url in zip(sizes.items(), (target_url, draft_url))
            )
        out[mode] = per
    return out


def _drafter_client(engine):
    """The RemoteDrafter's client under the fallback and pipeline wrappers."""
    from quickdraft.node.pipeline import PipelinedDrafter

    d = engine.drafters["model"].inner  # under the FallbackDrafter
    return (d.inner if isinstance(d, PipelinedDrafter) else d).client


def run_prompts(engine, prompts, *, max_tokens, draft="model", **sampling) -> dict:
    tokens = seconds = rounds = 0
    for text in prompts:
        r = engine.generate(engine.chat_prompt([{"role": "user", "content": text}]), max_tokens=max_tokens,
                            draft=draft, **sampling)
        tokens += r.stats.completion_tokens
        seconds += r.stats.total_seconds
        rounds += r.stats.rounds
    return {"tokens": tokens, "seconds": seconds, "rounds": rounds, "tokens_per_second": tokens / seconds}


def wire_figures(engine, prompts, *, max_tokens, **sampling) -> dict:
    """Overhead and bytes per round from the clients' per-op statistics over one set of generations.

    Overhead of a call = the time the coordinator waited for it minus the compute time the node reported.
    Per round = one verify plus the draft calls of a round (about one, the prefetch, when pipelined)."""
    target, draft = engine.target.client, _drafter_client(engine)
    target.stats.clear()
    draft.stats.clear()
    run = run_prompts(engine, prompts, max_tokens=max_tokens, **sampling)
    v, d = target.stats["verify"], draft.stats["draft"]
    draft_calls_per_round = d.calls / v.calls
    return {
        "rounds": v.calls,
        "tokens_per_second": run["tokens_per_second"],
        "verify_overhead_ms": {"median": v.median_overhead() * 1e3, "mean": v.overhead_seconds / v.calls * 1e3},
        "draft_overhead_ms": {"median": d.median_overhead() * 1e3, "mean": d.overhead_seconds / d.calls * 1e3},
        "draft_calls_per_round": draft_calls_per_round,
        "overhead_ms_per_round": (v.median_overhead() + draft_calls_per_round * d.median_overhead()) * 1e3,
        "verify_bytes": {"sent": v.bytes_sent / v.calls, "received": v.bytes_received / v.calls},
        "draft_bytes": {"sent": d.bytes_sent / d.calls, "received": d.bytes_received / d.calls},
        "bytes_per_round": (v.bytes_sent + v.bytes_received + d.bytes_sent + d.bytes_received) / v.calls,
    }


def compare(engines: dict, prompts, *, max_tokens: int, repeats: int = 2) -> dict:
    """Tokens/s of several configurations ({name: (engine, draft)}), measured in alternation: every prompt
    runs on each configuration back to back, in a rotating order, so a busy spell of the shared CPU hits them
    alike. Returns each one's overall tok/s, and its speed relative to the first configuration as the median
    of the per-prompt ratios (the figure least disturbed by other load)."""
    names = list(engines)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    totals = {name: [0, 0.0] for name in names}
    turn = 0
    for _ in range(repeats):
        for text in prompts:
            order = names[turn % len(names):] + names[: turn % len(names)]
            turn += 1
            for name in order:
                engine, draft = engines[name]
                prompt = engine.chat_prompt([{"role": "user", "content": text}])
                stats = engine.generate(prompt, max_tokens=max_tokens, draft=draft).stats
                speeds[name].append(stats.completion_tokens / stats.total_seconds)
                totals[name][0] += stats.completion_tokens
                totals[name][1] += stats.total_seconds
    first = names[0]
    return {
        "tokens_per_second": {name: t / s for name, (t, s) in totals.items()},
        "relative_to_" + first: {
            name: statistics.median(a / b for a, b in zip(speeds[name], speeds[first])) for name in names
        },
    }


def link_comparison(target_model, draft_url, prompts, *, k, max_tokens, repeats: int = 2) -> dict:
    """Throughput with the target across a 2 ms / 1 Gbit link against the same on loopback."""
    from quickdraft.engine import Engine
    from quickdraft.node.linkemu import Link

    with ExitStack() as stack:
        link = stack.enter_context(Link(delay_ms=2.0, rate="1gbit"))
        key = secrets.token_urlsafe(16)  # a node listening off loopback needs one (quickdraft.node.auth)
        far = stack.enter_context(NodeProcess(target_model, "target", host="0.0.0.0", netns=link.namespace, cpus="0",
                                              env={"QUICKDRAFT_NODE_KEY": key}))
        near = stack.enter_context(NodeProcess(target_model, "target", cpus="0"))
        host, port = link.expose(far.port)
        far_url = f"node://{host}:{port}?key={key}"
        engines = {
            "loopback": (Engine.load(near.url, draft=draft_url, k=k, exact=False), "model"),
            "link": (Engine.load(far_url, draft=draft_url, k=k, exact=False), "model"),
        }
        for e, _ in engines.values():  # warm up
            run_prompts(e, prompts[:1], max_tokens=8)
        result = compare(engines, prompts, max_tokens=max_tokens, repeats=repeats)
        return {
            "shaping": link.shaping,
            "ping_ms": {"loopback": ping_ms(near.url, "target"), "link": ping_ms(far_url, "target", 100)},
            "tokens_per_second": result["tokens_per_second"],
            "ratio": result["relative_to_loopback"]["link"],
        }


def main(args) -> int:
    from quickdraft.engine import Engine
    from quickdraft.node.linkemu import LinkUnavailable

    prompts = spec_bench_prompts(args.prompts)
    figures: dict = {"config": {"target": args.target, "draft": args.draft, "k": args.k,
                                "max_tokens": args.max_tokens, "prompts": len(prompts)}}
    with NodeProcess(args.target, "target", cpus="0") as tn, NodeProcess(args.draft, "draft", cpus="1") as dn:
        figures["ping_ms"] = {"target": ping_ms(tn.url, "target"), "draft": ping_ms(dn.url, "draft")}
        # exact=False: K is --k, not the exact K the node measured (figures["config"]["node_max_exact_k"])
        engine = Engine.load(tn.url, draft=dn.url, k=args.k, exact=False)
        plain = Engine.load(tn.url, draft=dn.url + "?pipeline=0", k=args.k, exact=False)
        figures["config"]["node_max_exact_k"] = engine.target.info["max_exact_k"]
        for e in (engine, plain):
            run_prompts(e, prompts[:1], max_tokens=8)  # warm-up
        # the protocol's own cost, measured without pipelining: with it, the coordinator shares this
        # machine's two cores with two computing models, and its waits measure the CPU, not the protocol
        figures["greedy"] = wire_figures(plain, prompts, max_tokens=args.max_tokens)
        figures["sampled"] = wire_figures(plain, prompts, max_tokens=args.max_tokens, temperature=0.8, seed=1)
        figures["protocol_round_trips_ms"] = protocol_round_trips(
            tn.url, dn.url, {m: figures[m] for m in ("greedy", "sampled")})
        if not args.no_pipeline_comparison:
            pipe = engine.drafters["model"].inner
            hits, stale = pipe.hits, pipe.stale
            result = compare({"target_alone": (engine, "none"), "not_pipelined": (plain, "model"),
                              "pipelined": (engine, "model")}, prompts, max_tokens=args.max_tokens)
            figures["pipelining"] = {**result, "prefetch_hits": pipe.hits - hits, "prefetch_stale": pipe.stale - stale}
            # the same with the draft on the target's core: nothing to overlap with
            with NodeProcess(args.draft, "draft", cpus="0") as shared:
                same = compare({"not_pipelined": (Engine.load(tn.url, draft=shared.url + "?pipeline=0", k=args.k,
                                                                      exact=False), "model"),
                                "pipelined": (Engine.load(tn.url, draft=shared.url, k=args.k, exact=False), "model")},
                               prompts, max_tokens=args.max_tokens)
                figures["pipelining"]["same_core"] = same
        if not args.no_link:
            try:
                figures["link"] = link_comparison(args.target, dn.url, prompts, k=args.k, max_tokens=args.max_tokens)
            except LinkUnavailable as e:
                figures["link"] = {"skipped": str(e)}
    report(figures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def report(f: dict) -> None:
    c = f["config"]
    print(f"node-bench: target {c['target']} / draft {c['draft']}, k={c['k']}, {c['prompts']} Spec-Bench prompts x "
          f"{c['max_tokens']} tokens; target node on core 0, draft node on core 1")
    if c.get("node_max_exact_k") is not None and c["node_max_exact_k"] < c["k"]:
        print(f"(the target node verifies K <= {c['node_max_exact_k']} bit-exactly on this machine; the bench drafts "
              f"k={c['k']} anyway: it measures the protocol, not the output)")
    print(f"ping round trip: target {f['ping_ms']['target']:.3f} ms, draft {f['ping_ms']['draft']:.3f} ms")
    for mode, rt in f["protocol_round_trips_ms"].items():
        print(f"{mode}: the protocol alone, a verify-sized plus a draft-sized round trip: {rt['idle_0ms']:.3f} ms "
              f"between awake processes, {rt['idle_50ms']:.3f} ms after 50 ms idle (OS wake-ups included)")
    for mode in ("greedy", "sampled"):
        g = f[mode]
        vo, do = g["verify_overhead_ms"], g["draft_overhead_ms"]
        print(f"{mode}: in generation, overhead per round {g['overhead_ms_per_round']:.3f} ms (medians: verify "
              f"{vo['median']:.3f} ms, draft {do['median']:.3f} ms x {g['draft_calls_per_round']:.2f} calls/round; "
              f"means {vo['mean']:.3f} / {do['mean']:.3f} ms); bytes per round {g['bytes_per_round']:.0f} "
              f"(verify {g['verify_bytes']['sent']:.0f} out / {g['verify_bytes']['received']:.0f} back, draft "
              f"{g['draft_bytes']['sent']:.0f} out / {g['draft_bytes']['received']:.0f} back); "
              f"{g['tokens_per_second']:.2f} tok/s")
    if "pipelining" in f:
        p = f["pipelining"]
        tps, rel = p["tokens_per_second"], p["relative_to_target_alone"]
        print(f"pipelining, draft and target on different cores: target alone {tps['target_alone']:.2f} tok/s, "
              f"speculative not pipelined {tps['not_pipelined']:.2f} ({rel['not_pipelined']:.2f}x), pipelined "
              f"{tps['pipelined']:.2f} ({rel['pipelined']:.2f}x); prefetched drafts used {p['prefetch_hits']} "
              f"times, stale {p['prefetch_stale']}")
        if "same_core" in p:
            s = p["same_core"]
            print(f"pipelining, draft on the target's core: not pipelined {s['tokens_per_second']['not_pipelined']:.2f} "
                  f"tok/s, pipelined {s['tokens_per_second']['pipelined']:.2f} "
                  f"({s['relative_to_not_pipelined']['pipelined']:.2f}x)")
    if "link" in f:
        lk = f["link"]
        if "skipped" in lk:
            print(f"2 ms link: skipped ({lk['skipped']})")
        else:
            tps = lk["tokens_per_second"]
            print(f"2 ms / 1 Gbit link ({lk['shaping']}): ping {lk['ping_ms']['link']:.2f} ms vs "
                  f"{lk['ping_ms']['loopback']:.3f} ms; {tps['link']:.2f} tok/s vs {tps['loopback']:.2f} on loopback; "
                  f"per-prompt median {100 * lk['ratio']:.0f}% of loopback (budget >= 80%)")
