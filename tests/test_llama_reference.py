"""Exact means llama.cpp's own output: quickdraft's greedy tokens, with and without speculation, equal those of
llama_cpp.Llama decoding the same model greedily (the prompt read in chunks of n_batch, then one token at a
time, flash attention off, F16 KV cache: llama.cpp's defaults), token for token.

The reference takes the argmax of llama.cpp's raw logits at each step (no sampler, no repeat penalty). Each
demo target runs >= 10 Spec-Bench prompts across categories, rendered with its chat template, three of them
longer than 512 tokens so that reading the prompt in chunks is exercised.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import load_prompts

THREADS = int(os.environ.get("QUICKDRAFT_TEST_THREADS", "2"))  # both sides use the same
N_CTX = 4096
MAX_TOKENS = 32
SHORT_CATEGORIES = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
                    "humanities", "translation", "qa", "math_reasoning"]
LONG_CATEGORIES = ["summarization", "rag"]
# (target, drafters to compare with the target alone and with the reference)
CASES = [
    ("smollm2-135m", ["ngram"]),
    ("gemma-3-270m-q8_0", ["ngram", "gemma-3-270m"]),
    ("gemma-3-270m-f16", ["ngram", "gemma-3-270m"]),  # ngram: batches of 2-8 (one-row loop) and more (tinyBLAS)
]


def pick_prompts() -> list[dict]:
    """The first prompt of each short category, then the shortest three of the long ones (1.5-3.5k chars)."""
    rows = load_prompts()
    short = [next(r for r in rows if r["category"] == c) for c in SHORT_CATEGORIES]
    long = sorted((r for r in rows if r["category"] in LONG_CATEGORIES), key=lambda r: len(r["turns"][0]))
    long = [r for r in long if len(r["turns"][0]) >= 2500][:3]
    return short[:8] + long


PROMPTS = pick_prompts()


def llama_greedy(llm, prompt: list[int], max_tokens: int, is_eog) -> list[int]:
    """llama.cpp decoding greedily: Llama.eval reads the prompt (chunks of n_batch), then one token at a time."""
    import llama_cpp

    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    while len(out) < max_tokens:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        out.append(int(np.argmax(logits)))
        if is_eog(out[-1]):
            break
        llm.eval(out[-1:])
    return out


@pytest.fixture(scope="module")
def cases():
    """target -> (engine with its model drafter, chat prompts, llama.cpp's reference tokens per prompt),
    loaded on first use and kept for the module."""
    import llama_cpp

    from quickdraft import Engine, model_store

    loaded: dict = {}

    def get(target: str):
        if target not in loaded:
            model_draft = next((d for d in dict(CASES)[target] if d != "ngram"), "ngram")
            engine = Engine.load(target, model_draft, k=4, threads=THREADS, n_ctx=N_CTX)
            prompts = [engine.chat_prompt([{"role": "user", "content": r["turns"][0]}]) for r in PROMPTS]
            llm = llama_cpp.Llama(model_path=str(model_store.resolve(target)), n_ctx=N_CTX, n_threads=THREADS,
                                  n_threads_batch=THREADS, flash_attn=False, verbose=False)
            reference = [llama_greedy(llm, p, MAX_TOKENS, engine.tokenizer.is_eog) for p in prompts]
            llm.close()
            loaded[target] = engine, prompts, reference
        return loaded[target]

    yield get
    for engine, _, _ in loaded.values():
        for d in engine.drafters.values():
            getattr(d, "close", lambda: None)()
        engine.target.close()


def describe(engine, prompt: list[int]) -> str:
    return f"the {len(prompt)}-token prompt {engine.tokenizer.detokenize(prompt)[:60]!r}"


def test_prompt_set():
    assert len(PROMPTS) >= 10
    assert len({r["category"] for r in PROMPTS}) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("target", [t for t, _ in CASES])
def test_target_alone_is_llama_cpp(cases, target):
    engine, prompts, reference = cases(target)
    assert sum(len(p) > 512 for p in prompts) >= 3, [len(p) for p in prompts]  # chunked prompt reading
    for prompt, expected in zip(prompts, reference):
        got = engine.generate(prompt, max_tokens=MAX_TOKENS, draft="none").tokens
        assert got == expected, f"the target alone diverged from llama.cpp on {describe(engine, prompt)}"


@pytest.mark.slow
@pytest.mark.parametrize("target,draft", [(t, d) for t, ds in CASES for d in ds])
def test_speculative_is_llama_cpp(cases, target, draft):
    engine, prompts, reference = cases(target)
    name = "ngram" if draft == "ngram" else "model"
    drafted = accepted = 0
    for prompt, expected in zip(prompts, reference):
        result = engine.generate(prompt, max_tokens=MAX_TOKENS, draft=name, k=4)
        assert result.tokens == expected, f"{draft} k=4 diverged from llama.cpp on {describe(engine, prompt)}"
        drafted += result.stats.drafted
        accepted += result.stats.accepted
    if engine.target.max_k > 0:  # the speculative path really ran, not a fallback to the target alone
        assert drafted > 0 and accepted > 0
