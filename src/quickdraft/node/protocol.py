"""The node protocol: what a coordinator and a node say to each other, and how it is written on the wire.

Transport: one WebSocket connection per client (quickdraft.node.wire), binary messages, one MessagePack
map per message. The client sends a request `{"op": ..., ...}` and reads exactly one reply; a reply is
either the op's fields or `{"error": CODE, "message": TEXT}`. Requests on one connection are answered in
order, one at a time. (Chosen by measurement, docs/nodes.md: a FastAPI route with an httpx keep-alive
client costs about 0.7 ms a round trip on loopback, a WebSocket message well under 0.1 ms.)

Ops (every op may answer an error):

    info    {protocol}                            -> {protocol, quickdraft, role, model, n_vocab,
                                                      vocab_fingerprint, n_ctx, bos, eos, llama_cpp}
    vocab   {}                                    -> {gguf: bytes}  (the model's vocabulary as a GGUF file
                                                      without tensors: the coordinator's tokenizer)
    open    {tokens, sampling, rng[, replace]}    -> {session}      (prefills tokens; `replace` ends an
                                                      older session of the same client)
    verify  {session, base, extend, draft[, q][, logprobs]}
                                                  -> {n_accepted, token[, logprobs], compute_us}
    draft   {session, base, extend, n}            -> {tokens[, q], compute_us}
    append  {session, base, extend}               -> {n_tokens}
    close   {session}                             -> {}
    ping    {[echo]}                              -> {[echo]}

Only deltas of token ids cross the wire. A session's token list lives on the node; the client keeps a
mirror of it and sends `base` (how many of the node's tokens to keep) and `extend` (the tokens after them),
which in the steady state is zero or one token. A target's verdict is `n_accepted` and the one token the
target adds: the accepted tokens are the draft's own, which the client already has. `q` is a sampled
draft's sparse distributions, one `[ids, probs]` pair per draft token (float64, exactly what the draft drew
from); `logprobs` entries are `[token, logprob, [[id, logprob], ...]]`.
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import parse_qs, urlsplit

import msgpack
import numpy as np

from quickdraft.errors import QuickdraftError
from quickdraft.node import is_node_url
from quickdraft.sampling import Dist, SamplingParams
from quickdraft.target import TokenLogprob

PROTOCOL_VERSION = 1
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
def encode_sampling(s: SamplingParams) -> dict:
    return {"temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p}


def decode_sampling(d: dict) -> SamplingParams:
    return SamplingParams(**{k: d[k] for k in ("temperature", "top_k", "top_p", "min_p") if k in d})


def encode_rng(rng: np.random.Generator) -> dict:
    """The generator's exact state, so the node draws the same numbers this process would have.

    PCG64's 128-bit words travel as 16-byte strings (MessagePack integers stop at 64 bits). Any other bit
    generator is replaced by a seed drawn from it.
    """
    state = rng.bit_generator.state
    if state.get("bit_generator") == "PCG64":
        s = state["state"]
        return {
            "pcg64": [s["state"].to_bytes(16, "little"), s["inc"].to_bytes(16, "little")],
            "has_uint32": state["has_uint32"],
            "uinteger": state["uinteger"],
        }
    return {"seed": int(rng.integers(2**63))}


def decode_rng(d: dict) -> np.random.Generator:
    if "pcg64" in d:
        state, inc = (int.from_bytes(b, "little") for b in d["pcg64"])
        bitgen = np.random.PCG64()
        bitgen.state = {
            "bit_generator": "PCG64",
            "state": {"state": state, "inc": inc},
            "has_uint32": d.get("has_uint32", 0),
            "uinteger": d.get("uinteger", 0),
        }
        return np.random.Generator(bitgen)
    return np.random.default_rng(d.get("seed"))


def hand_over_rng(rng: np.random.Generator) -> dict:
    """Encode rng for a node, then jump this copy far ahead: the node now owns that stream, and a later
    hand-over (a session re-created after a node restart) starts from numbers nobody has used."""
    encoded = encode_rng(rng)
    bitgen = rng.bit_generator
    if hasattr(bitgen, "jumped"):
        bitgen.state = bitgen.jumped().state
    return encoded


def encode_dists(dists: Sequence[Dist] | None) -> list | None:
    """Sparse draft distributions as [[ids], [probs]] pairs (a dense one is cut to its support)."""
    if dists is None:
        return None
    out = []
    for d in dists:
        if d.ids is None:
            ids = np.flatnonzero(d.probs)
            out.append([ids.tolist(), d.probs[ids].astype(np.float64).tolist()])
        else:
            out.append([np.asarray(d.ids).tolist(), np.asarray(d.probs, dtype=np.float64).tolist()])
    return out


def decode_dists(q: list | None) -> list[Dist] | None:
    if q is None:
        return None
    return [Dist(np.asarray(probs, dtype=np.float64), np.asarray(ids, dtype=np.int64)) for ids, probs in q]


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
