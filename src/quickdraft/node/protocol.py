"""The node protocol: what a coordinator and a node say to each other, and how it is written on the wire.

Transport: one WebSocket connection per client (quickdraft.node.wire), binary messages, one MessagePack
map per message. The client sends a request `{"op": ..., ...}` and reads exactly one reply; a reply is
either the op's fields or `{"error": CODE, "message": TEXT}`. Requests on one connection are answered in
order, one at a time. (Chosen by measurement, docs/nodes.md: a FastAPI route with an httpx keep-alive
client costs about 0.7 ms a round trip on loopback, a WebSocket message well under 0.1 ms.)

Ops (every op may answer an error):

    info    {protocol}                            -> {protocol, quickdraft, role, model, n_vocab,
                                                      vocab_fingerprint, n_ctx, max_exact_k, bos, eos,
                                                      llama_cpp, grammar}
    vocab   {}                                    -> {gguf: bytes}  (the model's vocabulary as a GGUF file
                                                      without tensors: the coordinator's tokenizer)
    open    {tokens, sampling[, replace][, grammar, prompt_len]}
                                                  -> {session}      (a request begins with these tokens;
                                                      `replace` ends an older session of the same client)
    verify  {session, base, extend, draft[, logprobs]}
                                                  -> {n_accepted, token[, logprobs], compute_us}
    draft   {session, base, extend, n}            -> {tokens, compute_us}
    append  {session, base, extend}               -> {n_tokens}
    close   {session}                             -> {}
    ping    {[echo]}                              -> {[echo]}

Only token ids cross the wire, and only deltas of them. A session's token list lives on the node; the
client keeps a mirror of it and sends `base` (how many of the node's tokens to keep) and `extend` (the tokens
after them), which in the steady state is zero or one token. A target's verdict is `n_accepted` and the one
token the target adds: the accepted tokens are the draft's own, which the client already has.

`sampling` is the request's SamplingParams, its seed included (`seed` is absent for greedy requests that
have none). Sampled decoding is drafter-invariant (quickdraft.coupling): the token at each position is a
function of the logits, the seed and the position, so a node needs nothing else to draw exactly what the
coordinator's own process would, and a sampled draft is its token ids like a greedy one. `logprobs`
entries are `[token, logprob, [[id, logprob], ...]]`.

Structured outputs: a target node whose `info` says `grammar: true` takes the request's grammar in `open`
(`{kind, value}`, quickdraft.constraint.GrammarSpec) with `prompt_len`, where the output begins in `tokens`.
The node compiles it against its own vocabulary, follows the tokens after `prompt_len`, and verifies every
draft under it exactly as the in-process target does (the client cuts drafts at the grammar's first rejected
token first; the node cuts again, so a client's mistake cannot make it emit a token the grammar rejects).
Masks never cross the wire. A node without the capability is never sent a grammar: the request is refused.

`open` does not evaluate anything: it starts the request as the in-process engine does (`Target.start`,
`Drafter.start`; a target whose batches round differently from single tokens empties its KV cache there,
quickdraft.target.LocalTarget), and the first verify or draft evaluates the tokens, exactly as in process.
`max_exact_k` is the target node's `Target.max_k`, measured on its own machine (quickdraft.exactness).

Protocol 2 (this one) replaced protocol 1's hand-over of the request's random generator state and its
sampled drafts' top-32 distributions (`q`) with the seed in `sampling`.
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

import msgpack

from quickdraft.errors import QuickdraftError
from quickdraft.node import is_node_url
from quickdraft.sampling import SamplingParams
from quickdraft.target import TokenLogprob

PROTOCOL_VERSION = 2
ROLES = ("target", "draft")


class NodeProtocolError(QuickdraftError):
    """A node answered something this coordinator cannot use: another protocol version, the wrong role, or
    an error of its own."""


class UnknownSessionError(NodeProtocolError):
    """The node does not know the session (it restarted, or the session expired): re-create it."""


# ---- framing ----------------------------------------------------------------------------------------------
def pack(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack(data: bytes | str) -> dict:
    if isinstance(data, str):
        raise NodeProtocolError("expected a binary MessagePack message, got text")
    message = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(message, dict):
        raise NodeProtocolError(f"expected a map, got {type(message).__name__}")
    return message


def error_reply(code: str, message: str) -> dict:
    return {"error": code, "message": message}


# ---- addresses --------------------------------------------------------------------------------------------
def parse_node_url(url: str) -> tuple[str, int, dict[str, str]]:
    """node://HOST:PORT[?key=value&...] -> (host, port, options)."""
    if not is_node_url(url):
        raise ValueError(f"not a node address (node://HOST:PORT): {url!r}")
    parts = urlsplit(url)
    if not parts.hostname or parts.port is None:
        raise ValueError(f"a node address needs a host and a port (node://HOST:PORT): {url!r}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts.hostname, parts.port, options


# ---- values -----------------------------------------------------------------------------------------------
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "seed")


def encode_sampling(s: SamplingParams) -> dict:
    """The request's sampling, its seed included. A seed travels modulo 2**64 (MessagePack's integers stop
    at 64 bits), which is all of it that quickdraft.coupling uses."""
    d = {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p}
    if s.seed is not None:
        d["seed"] = s.seed % 2**64
    return d


def decode_sampling(d: object) -> SamplingParams:
    """The inverse of encode_sampling; a ValueError (pydantic's) for values out of range."""
    if not isinstance(d, dict):
        raise NodeProtocolError(f"sampling must be a map, got {type(d).__name__}")
    unknown = set(d) - set(SAMPLING_FIELDS)
    if unknown:
        raise NodeProtocolError(f"unknown sampling fields {sorted(unknown)}")
    return SamplingParams(**d)


def encode_grammar(spec) -> dict:
    return {"kind": spec.kind, "value": spec.value}


def decode_grammar(d: object):
    """The inverse of encode_grammar: a GrammarSpec (compiled, and so checked, by the node)."""
    from quickdraft.constraint import GrammarSpec

    if not isinstance(d, dict) or not isinstance(d.get("kind"), str) or set(d) - {"kind", "value"}:
        raise NodeProtocolError(f"grammar must be a map {{kind, value}}, got {d!r:.100}")
    return GrammarSpec(d["kind"], d.get("value"))


def token_ids(values: object, n_vocab: int, what: str, *, limit: int | None = None) -> list[int]:
    """`values` as a list of token ids, checked: a list of integers in [0, n_vocab), at most `limit` of them.
    Anything else is a NodeProtocolError (a token id out of range must never reach llama.cpp)."""
    if not isinstance(values, (list, tuple)):
        raise NodeProtocolError(f"{what} must be a list of token ids, got {type(values).__name__}")
    if limit is not None and len(values) > limit:
        raise NodeProtocolError(f"{what}: {len(values)} tokens where at most {limit} were asked for")
    for t in values:
        if type(t) is not int or not 0 <= t < n_vocab:
            raise NodeProtocolError(f"{what}: {t!r} is not a token id in [0, {n_vocab})")
    return list(values)


def encode_logprobs(lps: Sequence[TokenLogprob] | None) -> list | None:
    if lps is None:
        return None
    return [[lp.token, lp.logprob, [[i, v] for i, v in lp.top]] for lp in lps]


def decode_logprobs(data: list | None) -> list[TokenLogprob] | None:
    if data is None:
        return None
    return [TokenLogprob(int(t), float(v), [(int(i), float(x)) for i, x in top]) for t, v, top in data]


def require(message: dict, *fields: str) -> list[Any]:
    missing = [f for f in fields if f not in message]
    if missing:
        raise NodeProtocolError(f"{message.get('op', 'message')} is missing {', '.join(missing)}")
    return [message[f] for f in fields]
