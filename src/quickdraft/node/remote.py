"""A target and a drafter that live on nodes: the engine's `Target` and `Drafter` interfaces over the wire.

Each keeps one session on its node per request (`start` ends the previous one) and a mirror of the session's
tokens, and sends only the difference between that mirror and the context the loop passes in. The loop
passes the whole context every round, so the coordinator always holds the token history: when a node
restarts or drops a session, `NodeSession` re-creates it from that history and repeats the request, once. A
node that stays unreachable raises `NodeUnavailableError`: for the target that fails the request; a draft
node's failures are absorbed by `FallbackDrafter`. A reply that does not hold what the protocol promises
(token ids in the vocabulary, no more than were asked for) raises `NodeProtocolError`: a node's mistake
never reaches llama.cpp on this side.
"""

from __future__ import annotations

from typing import Callable, Sequence

from quickdraft.errors import InvalidRequestError, NodeUnavailableError
from quickdraft.llama_model import common_prefix_len
from quickdraft.node import protocol as p
from quickdraft.node.auth import public_url
from quickdraft.node.client import NodeClient, NodeTimeoutError
from quickdraft.node.metrics import SESSIONS_RECREATED, TARGET_FAILURES
from quickdraft.node.vocab import load_vocab
from quickdraft.sampling import SamplingParams
from quickdraft.target import Verdict


class NodeSession:
    """The coordinator's side of one session on a node."""

    def __init__(self, client: NodeClient, *, prefill_seconds_per_token: float):
        self.client = client
        self.prefill_seconds_per_token = prefill_seconds_per_token
        self.id: int | None = None
        self.mirror: list[int] = []  # what the node's session holds, as far as this side knows
        self.sampling: SamplingParams | None = None
        self.opening: dict = {}  # what else the session was opened with (a target's grammar)
        self.new_request = True  # the next call opens a session: `restart` was called, or none is open
        self.unevaluated = 0  # tokens the node holds but has not evaluated yet (an open's context)
        self.opened = 0

    def restart(self) -> None:
        """A new request begins: the next call opens a new session (replacing this one)."""
        self.new_request = True

    def request(self, context: list[int], sampling: SamplingParams,
                build: Callable[[int, int, list[int]], dict], opening: dict | None = None) -> dict:
        """Send build(session, base, extend), opening the session first when a request begins (or its
        sampling or `opening`, more fields of open, changed) and re-creating it once if the node lost it. A
        dropped connection is retried once on a new connection; a timeout is not retried."""
        reconnected = recreated = False
        opening = opening or {}
        while True:
            try:
                if self.id is None or self.new_request or sampling != self.sampling or opening != self.opening:
                    self._open(context, sampling, opening)
                base = common_prefix_len(self.mirror, context)
                timeout = None
                if self.unevaluated:  # the node prefills the session's context in this call
                    timeout = self.client.timeout + self.unevaluated * self.prefill_seconds_per_token
                reply = self.client.call(build(self.id, base, list(context[base:])), timeout=timeout)
                self.unevaluated = 0
                return reply
            except p.UnknownSessionError:
                if recreated:
                    raise
                recreated, self.id = True, None
                SESSIONS_RECREATED.labels(self.client.url, self.client.role).inc()
            except NodeTimeoutError:
                raise
            except NodeUnavailableError:
                if reconnected:
                    raise
                reconnected = True

    def _open(self, context: list[int], sampling: SamplingParams, opening: dict) -> None:
        request = {"op": "open", "tokens": list(context), "sampling": p.encode_sampling(sampling), **opening}
        if self.id is not None:
            request["replace"] = self.id
        self.id = None
        reply = self.client.call(request)
        session = reply.get("session")
        if type(session) is not int:
            raise p.NodeProtocolError(f"{self.client.url} answered open without a session id: {reply!r:.200}")
        self.id, self.sampling, self.opening, self.new_request = session, sampling, opening, False
        self.mirror = list(context)
        self.unevaluated = len(context)
        self.opened += 1

    def close(self) -> None:
        if self.id is not None and self.client.connected:
            try:
                self.client.call({"op": "close", "session": self.id})
            except Exception:
                pass
        self.id = None


def _options(url: str) -> dict[str, str]:
    return p.parse_node_url(url)[2]


def _float(options: dict, key: str, default: float) -> float:
    try:
        return float(options.get(key, default))
    except ValueError:
        raise ValueError(f"node address option {key}={options[key]!r} is not a number") from None


class RemoteTarget:
    """The target model on a node. node://HOST:PORT[?timeout=S&connect_timeout=S&prefill_per_token=S]

    timeout: the most a verify may take (default 60 s); the first verify of a session, which prefills its
    context, may take prefill_per_token (0.05 s) per token more. connect_timeout: for (re)connecting (5 s).
    max_k: what the node measured on its own machine (`max_exact_k`), as a local target's is measured here."""

    def __init__(self, url: str, *, timeout: float | None = None, connect_timeout: float | None = None):
        o = _options(url)
        self.url = public_url(url)  # without its key
        self.client = NodeClient(
            url, role="target",
            timeout=timeout or _float(o, "timeout", 60.0),
            connect_timeout=connect_timeout or _float(o, "connect_timeout", 5.0),
        )
        try:
            info = self.client.connect()
        except NodeUnavailableError as e:
            TARGET_FAILURES.labels(self.url).inc()
            raise NodeUnavailableError(f"cannot use the target: {e}") from None
        max_k = info.get("max_exact_k")
        if type(max_k) is not int or max_k < 0:
            self.client.close()
            raise p.NodeProtocolError(f"target node {self.url} reports no exact K (max_exact_k={max_k!r})")
        self.client.expected_fingerprint = info["vocab_fingerprint"]  # a restart must bring the same vocabulary
        self.info = info
        self.name: str = info["model"]
        self.n_vocab: int = info["n_vocab"]
        self.n_ctx: int = info["n_ctx"]
        self.max_k: int = max_k
        self.supports_grammar = info.get("grammar") is True  # the node applies a request's grammar itself
        self.vocab_fingerprint: str = info["vocab_fingerprint"]
        self.session = NodeSession(self.client, prefill_seconds_per_token=_float(o, "prefill_per_token", 0.05))
        self.prompt_len = 0  # the request's prompt length: where a grammar starts following the output

    def tokenizer(self):
        """The target's tokenizer, loaded here vocabulary-only (see quickdraft.node.vocab)."""
        return load_vocab(self.vocab_fingerprint, lambda: self.client.call({"op": "vocab"})["gguf"], name=self.name)

    def start(self, prompt: Sequence[int]) -> None:
        self.session.restart()  # the first verify opens the request's session on the node
        self.prompt_len = len(prompt)

    def verify(self, context, draft, sampling, top_logprobs=None, allowed=None) -> Verdict:
        """allowed: the request's grammar, whose masks the node computes itself from the grammar it was sent
        at open (`allowed.constraint.spec`): only token ids cross the wire."""
        opening = None
        if allowed is not None:
            if not self.supports_grammar:
                raise InvalidRequestError(f"the target node {self.url} cannot apply a grammar")
            opening = {"grammar": p.encode_grammar(allowed.constraint.spec), "prompt_len": self.prompt_len}
        draft = list(draft)

        def build(session: int, base: int, extend: list[int]) -> dict:
            request = {"op": "verify", "session": session, "base": base, "extend": extend, "draft": draft}
            if top_logprobs is not None:
                request["logprobs"] = top_logprobs
            return request

        try:
            reply = self.session.request(context, sampling, build, opening)
        except NodeUnavailableError as e:
            TARGET_FAILURES.labels(self.url).inc()
            raise NodeUnavailableError(f"the target node is unavailable: {e}") from None
        n, token = reply.get("n_accepted"), reply.get("token")
        if type(n) is not int or not 0 <= n <= len(draft) or type(token) is not int or not 0 <= token < self.n_vocab:
            self.session.restart()  # what the node's session holds is unknown now: open afresh next time
            raise p.NodeProtocolError(f"target node {self.url} answered verify with {reply!r:.200}")
        emitted = draft[:n] + [token]
        self.session.mirror = list(context) + emitted
        return Verdict(n, emitted, p.decode_logprobs(reply.get("logprobs")))

    def close(self) -> None:
        self.session.close()
        self.client.close()


class RemoteDrafter:
    """A draft model on a node. node://HOST:PORT[?timeout=S&connect_timeout=S&prefill_per_token=S&pipeline=0]

    timeout: the most a draft call may take (default 5 s; a slower draft is no use); connect_timeout 2 s.

    Proposes what `ModelDrafter` proposes on the node's model: the draft's own token at each position, its
    argmax or its coupled draw with the request's seed (quickdraft.coupling): token ids alone either way.
    """

    def __init__(self, url: str, *, vocab_fingerprint: str | None = None, timeout: float | None = None,
                 connect_timeout: float | None = None):
        o = _options(url)
        self.url = public_url(url)  # without its key
        self.client = NodeClient(
            url, role="draft",
            timeout=timeout or _float(o, "timeout", 5.0),
            connect_timeout=connect_timeout or _float(o, "connect_timeout", 2.0),
            vocab_fingerprint=vocab_fingerprint,
        )
        self.session = NodeSession(self.client, prefill_seconds_per_token=_float(o, "prefill_per_token", 0.05))
        self.name = "draft-node"
        self.n_ctx: int | None = None
        self.info: dict | None = None

    def connect(self) -> dict:
        info = self.client.connect()
        self.info, self.name, self.n_ctx = info, info["model"], info["n_ctx"]
        return info

    def start(self, prompt: Sequence[int]) -> None:
        self.session.restart()  # the session opens at the first proposal, which brings the request's sampling

    def propose(self, context, k, sampling) -> list[int]:
        if self.info is None:  # the node was down when the engine started: connect (and check it) now
            self.connect()
        if self.n_ctx is not None:
            k = min(k, self.n_ctx - len(context))
        if k <= 0:
            return []

        def build(session: int, base: int, extend: list[int]) -> dict:
            return {"op": "draft", "session": session, "base": base, "extend": extend, "n": k}

        reply = self.session.request(context, sampling, build)
        try:
            tokens = p.token_ids(reply.get("tokens"), self.client.info["n_vocab"], "the draft node's tokens", limit=k)
        except p.NodeProtocolError as e:
            self.session.restart()  # what the node's session holds is unknown now: open afresh next time
            raise p.NodeProtocolError(f"draft node {self.url}: {e}") from None
        self.session.mirror = list(context) + tokens  # the node keeps its draft after the context
        return tokens

    def append(self, context: list[int], sampling: SamplingParams) -> int:
        """Bring the node's session up to `context` (tokens decided elsewhere) and evaluate them now."""

        def build(session: int, base: int, extend: list[int]) -> dict:
            return {"op": "append", "session": session, "base": base, "extend": extend}

        reply = self.session.request(context, sampling, build)
        self.session.mirror = list(context)
        return int(reply["n_tokens"])

    def discard(self) -> None:
        """Nothing is pending on a plain remote drafter (PipelinedDrafter's counterpart drops its prefetch)."""

    def close(self) -> None:
        self.session.close()
        self.client.close()
