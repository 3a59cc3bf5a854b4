"""What a grammar costs per token: mask time per position, and tokens/s with and without a JSON schema.

For each target (default: Gemma 3 270M Q8_0 with its Q4_K_M copy as draft model, and SmolLM2-135M; auto also
has n-gram) and each way of drafting (the target alone, auto), greedy generation of the same chat prompts
with and without a json_schema constraint, interleaved, --repeats times. It reports:

- decode tokens/s both ways (tokens after the first / time after the first; the medians over repeats);
- the constraint's own time per emitted token: cutting drafts, validity checks, masks where the unmasked
  choice is rejected, the masked choice, advancing the matcher. Timed by wrapping those functions (the coupled
  token they contain, which an unconstrained run computes as well, is subtracted), and its share of an
  unconstrained token's time; also how many positions needed a full mask, per token;
- one full mask per position (llguidance's compute_bitmask, unpacked to a bool per token id), replayed with a fresh
  Constraint over the constrained outputs: median and p90 ms; and compiling the schema per request.

    nice -n 19 .venv/bin/python scripts/constraint_cost.py [--targets gemma-3-270m-q8_0+gemma-3-270m smollm2-135m]
        [--drafts none auto] [--repeats 3] [--max-tokens 96] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import numpy as np

from quickdraft import Engine, constraint
from quickdraft.constraint import Constraint, DraftMasks, GrammarSpec

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"type": "string", "enum": ["engineer", "teacher", "doctor", "artist", "other"]},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30},
                           "country": {"type": "string", "maxLength": 30}},
            "required": ["city", "country"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "role", "skills", "address"],
    "additionalProperties": False,
}
PROMPTS = [
    "Describe a fictional software engineer as JSON with name, age, role, skills and address.",
    "Give me a JSON record of a teacher: name, age, role, skills (a list) and address (city, country).",
    "Invent a person and answer only with JSON: name, age, role, skills, address.",
    "A JSON profile of a doctor who lives in Lisbon: name, age, role, skills, address.",
]


class Timers:
    """Accumulated seconds and calls per name, filled by wrapped functions."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        setattr(owner, attr, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def constraint_seconds(self) -> float:
        """The constraint's own time: its calls, less the coupled tokens computed inside DraftMasks.token."""
        own = sum(self.seconds[n] for n in ("valid_prefix", "masks", "advance", "token"))
        return own - self.seconds["coupled_in_token"]


def install_timers() -> Timers:
    timers = Timers()
    timers.wrap(Constraint, "valid_prefix", "valid_prefix")
    timers.wrap(Constraint, "masks", "masks")
    timers.wrap(Constraint, "advance", "advance")
    timers.wrap(Constraint, "compile", "compile")
    timers.wrap(DraftMasks, "token", "token")
    timers.wrap(constraint, "coupled_token", "coupled_in_token")  # the name DraftMasks.token calls
    timers.wrap(constraint, "masked_token", "masked_token")
    return timers


def decode_rate(result) -> float:
    s = result.stats
    return (s.completion_tokens - 1) / max(s.total_seconds - s.ttft_seconds, 1e-9)


def mask_times(engine: Engine, spec: GrammarSpec, outputs: list[list[int]]) -> dict:
    """One full mask per position of each output, replayed with a fresh constraint (the masked choice itself,
    np.where over the logits, is in the in-generation figures)."""
    tokenizer = engine.tokenizer.grammar_tokenizer()
    times, sizes, compiles = [], [], []
    for tokens in outputs:
        t0 = time.perf_counter()
        c = Constraint.compile(spec, tokenizer, engine.target.n_vocab)
        compiles.append(time.perf_counter() - t0)
        for token in tokens:
            if engine.tokenizer.is_eog(token):
                break
            t0 = time.perf_counter()
            allowed = c.masks([]).allowed(0)
            times.append(time.perf_counter() - t0)
            sizes.append(int(allowed.sum()))
            c.advance([token])
    return {
        "positions": len(times),
        "mask_ms_median": 1e3 * statistics.median(times),
        "mask_ms_p90": 1e3 * float(np.percentile(times, 90)),
        "allowed_ids_median": statistics.median(sizes),
        "compile_ms_median": 1e3 * statistics.median(compiles),
    }


def measure(engine: Engine, draft: str, prompts: list[list[int]], spec: GrammarSpec, args, timers: Timers) -> dict:
    plain_rates, constrained_rates = [], []
    plain_tokens = constrained_tokens = 0
    plain_seconds = 0.0
    overhead = 0.0
    full_masks = 0
    outputs = []
    for _ in range(args.repeats):
        p_tok = c_tok = 0
        p_sec = c_sec = 0.0
        for prompt in prompts:
            r = engine.generate(prompt, max_tokens=args.max_tokens, draft=draft)
            p_tok += r.stats.completion_tokens - 1
            p_sec += r.stats.total_seconds - r.stats.ttft_seconds
            timers.reset()
            r = engine.generate(prompt, max_tokens=args.max_tokens, draft=draft, grammar=spec)
            c_tok += r.stats.completion_tokens - 1
            c_sec += r.stats.total_seconds - r.stats.ttft_seconds
            overhead += timers.constraint_seconds()
            full_masks += timers.calls["masked_token"]
            constrained_tokens += r.stats.completion_tokens
            outputs.append(r.tokens)
        plain_rates.append(p_tok / p_sec)
        constrained_rates.append(c_tok / c_sec)
        plain_tokens += p_tok
        plain_seconds += p_sec
    per_token = plain_seconds / plain_tokens
    valid = sum(1 for t in outputs if _parses(engine, t))
    return {
        "draft": draft,
        "tokens_per_s": statistics.median(plain_rates),
        "tokens_per_s_constrained": statistics.median(constrained_rates),
        "constraint_ms_per_token": 1e3 * overhead / constrained_tokens,
        "constraint_share": (overhead / constrained_tokens) / per_token,
        "full_masks_per_token": full_masks / constrained_tokens,
        "valid_json": f"{valid}/{len(outputs)}",
        "outputs": outputs,
    }


def _parses(engine: Engine, tokens: list[int]) -> bool:
    try:
        json.loads(engine.tokenizer.detokenize([t for t in tokens if not engine.tokenizer.is_eog(t)]))
        return True
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", nargs="+", default=["gemma-3-270m-q8_0+gemma-3-270m", "smollm2-135m"],
                    help="TARGET or TARGET+DRAFT_MODEL (without one: the draft model quickdraft picks, if any)")
    ap.add_argument("--drafts", nargs="+", default=["none", "auto"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    timers = install_timers()
    spec = GrammarSpec("json_schema", SCHEMA)
    results = []
    for pair in args.targets:
        target, _, draft_model = pair.partition("+")
        engine = Engine.load(target, draft_model or "auto", threads=args.threads)
        prompts = [engine.chat_prompt([{"role": "user", "content": p}]) for p in PROMPTS[: args.prompts]]
        t0 = time.perf_counter()
        engine.tokenizer.grammar_tokenizer()
        index_s = time.perf_counter() - t0
        for prompt in prompts:  # warm up: caches, the auto controller's first costs
            engine.generate(prompt, max_tokens=8, draft="none")
        rows = [measure(engine, draft, prompts, spec, args, timers) for draft in args.drafts]
        masks = mask_times(engine, spec, rows[0]["outputs"])
        print(f"\n{target} (drafters {sorted(engine.drafters)}), vocabulary {engine.target.n_vocab}, "
              f"{len(prompts)} prompts x {args.repeats}, max_tokens {args.max_tokens}, greedy")
        print(f"  grammar index of the vocabulary, built once per model: {index_s:.2f} s; schema compile per "
              f"request: {masks['compile_ms_median']:.2f} ms")
        print(f"  one full mask: median {masks['mask_ms_median']:.3f} ms, p90 {masks['mask_ms_p90']:.3f} ms over "
              f"{masks['positions']} positions (median {masks['allowed_ids_median']:.0f} ids allowed)")
        print(f"  {'draft':<6} {'tok/s':>8} {'tok/s json':>11} {'grammar ms/token':>17} {'share':>7} "
              f"{'full masks/token':>17} {'valid JSON':>11}")
        for row in rows:
            print(f"  {row['draft']:<6} {row['tokens_per_s']:>8.2f} {row['tokens_per_s_constrained']:>11.2f} "
                  f"{row['constraint_ms_per_token']:>17.3f} {100 * row['constraint_share']:>6.2f}% "
                  f"{row['full_masks_per_token']:>17.3f} {row['valid_json']:>11}")
        results.append({"target": target, "grammar_index_s": index_s, **masks,
                        "rows": [{k: v for k, v in row.items() if k != "outputs"} for row in rows]})
        engine.target.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
