"""The speculative loop, as generators.

`speculative_rounds` is the whole algorithm: draft, verify in one target pass, keep the agreed prefix plus
the target's token, repeat. Every call a round makes is in it. `stream_generate` turns rounds into text pieces and applies the stop rules
(end-of-generation token, stop strings, max tokens, context). `generate` collects a stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

from quickdraft.constraint import Constraint
from quickdraft.policy import Policy, round_k
from quickdraft.sampling import SamplingParams
from quickdraft.stats import GenerationStats
from quickdraft.target import Target, TokenLogprob
from quickdraft.textstream import TextStream


class Tokenizer(Protocol):
    def token_bytes(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...


@dataclass
class Round:
    """One target pass: the tokens it emitted (accepted draft tokens + the target's own) and what it cost."""

    tokens: list[int]
    logprobs: list[TokenLogprob] | None
    drafter: str  # "none" when the round drafted nothing by choice (k == 0)
    k: int
    drafted: int  # draft tokens verified
    accepted: int
    draft_seconds: float
    verify_seconds: float
    proposed: int | None = None  # what the drafter proposed, where a grammar cut it (None: = drafted)

    @property
    def judged(self) -> int:
        """Draft positions the round judged: a position the grammar cut was a rejection (the target could not
        have emitted that token), so the drafter's acceptance counts it."""
        return self.drafted if self.proposed is None else self.proposed


def speculative_rounds(
    target: Target,
    policy: Policy,
    prompt: Sequence[int],
    sampling: SamplingParams,
    *,
    max_new_tokens: int,
    top_logprobs: int | None = None,
    constraint: Constraint | None = None,
) -> Iterator[Round]:
    """Draft, verify in one target pass, keep the agreed prefix plus the target's token; repeat.

    The first round only reads the prompt and takes the target's first token (k = 0), as the target alone
    does. Sampled requests need sampling.seed set: each position's token is a function of it (coupling.py).
    With a constraint (a grammar), drafts are cut where the grammar rejects them and the target chooses each
    token among those the grammar allows (constraint.py)."""
    context = list(prompt)
    target.start(context)
    policy.start(context, sampling)
    generated = 0
    while generated < max_new_tokens and len(context) < target.n_ctx:
        drafter, k = policy.choose(context) if generated else (None, 0)
        k = round_k(k, generated=generated, max_new_tokens=max_new_tokens, context_len=len(context),
                    n_ctx=target.n_ctx)
        t0 = time.perf_counter()
        draft = drafter.propose(context, k, sampling)[:k] if k else []
        proposed = len(draft)
        if constraint is not None:  # a token the grammar rejects is one the target will not emit
            draft = draft[: constraint.valid_prefix(draft)]
        t1 = time.perf_counter()
        if constraint is None:
            verdict = target.verify(context, draft, sampling, top_logprobs)
        else:  # the target chooses each token among those the grammar allows there
            verdict = target.verify(context, draft, sampling, top_logprobs, allowed=constraint.masks(draft))
            constraint.advance(verdict.tokens)
        t2 = time.perf_counter()
        context.extend(verdict.tokens)
        outcome = Round(verdict.tokens, verdict.logprobs, drafter.name if k else "none", k, len(draft),
                        verdict.n_accepted, t1 - t0, t2 - t1, proposed if proposed > len(draft) else None)
        if generated:  # the prefill round says nothing about drafting
            policy.observe(outcome, context)
        generated += len(verdict.tokens)
        yield outcome


@dataclass
class GenerationResponse:
    """One step of a stream: the text and tokens this round added."""

    text: str
    tokens: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None  # None while generating; then "stop" or "length"
    stats: GenerationStats


@dataclass
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str
    stats: GenerationStats
    logprobs: list[TokenLogprob] | None = None

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "stats": self.stats.to_dict(),
        }


def stream_generate(
    target: Target,
    tokenizer: Tokenizer,
    policy: Policy,
    prompt: Sequence[int],
    sampling: SamplingParams,
    *,
    max_tokens: int,
    stop: Sequence[str] = (),
    top_logprobs: int | None = None,
    constraint: Constraint | None = None,
) -> Iterator[GenerationResponse]:
    start = time.perf_counter()
    stats = GenerationStats(prompt_tokens=len(prompt))
    text = TextStream(stop)
    finish = None
    rounds = speculative_rounds(
        target, policy, prompt, sampling, max_new_tokens=max_tokens, top_logprobs=top_logprobs,
        constraint=constraint,
    )
    for rnd in rounds:
        stats.rounds += 1
        stats.drafted += rnd.drafted
        stats.accepted += rnd.accepted
        stats.draft_seconds += rnd.draft_seconds
        stats.verify_seconds += rnd.verify_seconds
        if rnd.drafted:
            stats.drafter_rounds[rnd.drafter] = stats.drafter_rounds.get(rnd.drafter, 0) + 1
        choice = f"{rnd.drafter}:{rnd.k}" if rnd.k else "none"
        stats.choices[choice] = stats.choices.get(choice, 0) + 1
        if stats.completion_tokens == 0:
            stats.ttft_seconds = time.perf_counter() - start
        kept: list[int] = []
        pieces: list[str] = []
        for token in rnd.tokens:
            kept.append(token)
            stats.completion_tokens += 1
            if tokenizer.is_eog(token):
                finish = "stop"
                break
            pieces.append(text.push(tokenizer.token_bytes(token)))
            if text.stopped:
                finish = "stop"
                break
            if stats.completion_tokens >= max_tokens:
                finish = "length"
                break
        if finish is None and len(prompt) + stats.completion_tokens >= target.n_ctx:
            finish = "length"
        if finish is not None:
            pieces.append(text.flush())
        stats.total_seconds = time.perf_counter() - start
        lps = rnd.logprobs[: len(kept)] if rnd.logprobs is not None else None
        yield GenerationResponse("".join(pieces), kept, lps, finish, stats)
        if finish is not None:
            rounds.close()
            return
    # the loop ended on its own: max tokens or context reached exactly at a round boundary
    stats.total_seconds = time.perf_counter() - start
    yield GenerationResponse(text.flush(), [], [] if top_logprobs is not None else None, "length", stats)


def collect(responses: Iterator[GenerationResponse]) -> GenerationResult:
    texts: list[str] = []
    tokens: list[int] = []
    logprobs: list[TokenLogprob] | None = None
    last = None
    for r in responses:
        texts.append(r.text)
        tokens.extend(r.tokens)
        if r.logprobs is not None:
            logprobs = logprobs if logprobs is not None else []
            logprobs.extend(r.logprobs)
        last = r
    assert last is not None and last.finish_reason is not None
    return GenerationResult("".join(texts), tokens, last.finish_reason, last.stats, logprobs)
