"""What a node does with each request, apart from the network: sessions over one model.

A target node's target is `quickdraft.loading.local_target(model)`, the very object the in-process engine
builds (K capped to what this machine verifies exactly, the prompt cache dropped at each request where the
probe found batches rounding differently); a draft node drafts with `ModelDrafter`. A session runs the calls
the speculative loop makes in process: `open` is `start(tokens)`, then `verify` / `draft` on the session's
context. So a node's answers are the local path's answers.

The node holds one model with one KV sequence; the sessions share it. The most recently used session's
tokens are in the KV cache, and a switch to another session keeps the longest common prefix
(`LlamaModel.evaluate`), so sessions are cheap and correct, and one coordinator at a time gets the full
speed. (On a target that drops its prompt cache at each request, opening a session empties the KV cache, and
another session's next verify evaluates its context afresh: bit-exact output there is for one coordinator
at a time.)

A target session may carry the request's grammar (structured outputs): the node compiles it against its own
vocabulary and verifies under it exactly as the in-process loop does (quickdraft.node.protocol).

Sessions live until closed, replaced by their client's next `open`, or idle for `session_ttl` seconds.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

import quickdraft
from quickdraft.constraint import Constraint, GrammarError
from quickdraft.drafters import ModelDrafter
from quickdraft.llama_model import LlamaModel, system_info
from quickdraft.loading import local_target
from quickdraft.node import protocol as p
from quickdraft.node.vocab import vocab_gguf
from quickdraft.sampling import SamplingParams

DEFAULT_SESSION_TTL = 300.0


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


@dataclass
class Session:
    id: int
    tokens: list[int]  # the session's context on this node (for a draft node: plus its latest draft)
    sampling: SamplingParams  # the request's, with its seed
    last_used: float = field(default_factory=time.monotonic)
    constraint: Constraint | None = None  # the request's grammar (a target node's structured outputs)
    prompt_len: int = 0  # where the output, which the grammar follows, begins
    followed: int = 0  # how many of `tokens` the constraint has followed

    def rebase(self, base: object, extend: list[int]) -> list[int]:
        """Keep the first `base` tokens, append `extend` (checked token ids): the client's delta."""
        if type(base) is not int or not 0 <= base <= len(self.tokens):
            raise p.NodeProtocolError(f"base {base!r} is outside the session's {len(self.tokens)} tokens")
        self.tokens = self.tokens[:base] + extend
        return self.tokens


class NodeService:
    def __init__(self, model: LlamaModel, role: str, *, session_ttl: float = DEFAULT_SESSION_TTL):
        """A target role measures (or recalls) the model's exact K here, through `local_target`."""
        if role not in p.ROLES:
            raise ValueError(f"role must be one of {p.ROLES}, got {role!r}")
        self.model, self.role, self.session_ttl = model, role, session_ttl
        self.target = local_target(model) if role == "target" else None
        self.drafter = ModelDrafter(model) if role == "draft" else None
        self.sessions: dict[int, Session] = {}
        self.lock = threading.Lock()  # one model, one KV sequence: one request at a time
        self.resident: int | None = None  # the session whose tokens the KV cache holds
        self._vocab_gguf: bytes | None = None
        self.requests = 0

    # ---- dispatch -----------------------------------------------------------------------------------------
    def handle(self, request: dict) -> dict:
        """One request -> its reply. Never raises: failures become error replies."""
        op = request.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return p.error_reply("bad_request", f"unknown op {op!r}")
        try:
            with self.lock:
                self.requests += 1
                self.expire_idle()
                return handler(request)
        except p.UnknownSessionError as e:
            return p.error_reply("unknown_session", str(e))
        except p.NodeProtocolError as e:
            return p.error_reply("bad_request", str(e))
        except (ValueError, TypeError, KeyError) as e:
            return p.error_reply("bad_request", f"{type(e).__name__}: {e}")
        except Exception as e:  # a failure in the model: say so, keep serving
            return p.error_reply("internal", f"{type(e).__name__}: {e}")

    def _session(self, request: dict) -> Session:
        (sid,) = p.require(request, "session")
        s = self.sessions.get(sid)
        if s is None:
            raise p.UnknownSessionError(f"no session {sid} on this node (it restarted, or the session expired)")
        s.last_used = time.monotonic()
        self.resident = sid
        return s

    def _require_role(self, role: str, op: str) -> None:
        if self.role != role:
            raise p.NodeProtocolError(f"{op} is for a {role} node; this node is a {self.role} node")

    def expire_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        stale = [sid for sid, s in self.sessions.items() if now - s.last_used > self.session_ttl]
        for sid in stale:
            self._drop(sid, free_kv=True)
        return len(stale)

    def _drop(self, sid: int, *, free_kv: bool) -> None:
        self.sessions.pop(sid, None)
        if free_kv and sid == self.resident:  # the KV sequence holds this session's tokens: free it
            self.model.reset()
            self.resident = None

    # ---- ops ----------------------------------------------------------------------------------------------
    def op_info(self, request: dict) -> dict:
        client = request.get("protocol")
        if client != p.PROTOCOL_VERSION:
            return p.error_reply(
                "protocol_mismatch",
                f"this node speaks quickdraft node protocol {p.PROTOCOL_VERSION}, the client {client}: "
                "run the same quickdraft version on both sides",
            )
        return self.info()

    def info(self) -> dict:
        return {
            "protocol": p.PROTOCOL_VERSION,
            "quickdraft": quickdraft.__version__,
            "role": self.role,
            "model": self.model.name,
            "model_description": self.model.description,
            "n_vocab": self.model.n_vocab,
            "vocab_fingerprint": self.model.vocab_fingerprint,
            "n_ctx": self.model.n_ctx,
            "max_exact_k": self.target.max_k if self.target is not None else None,
            "bos": self.model.bos_token,
            "eos": self.model.eos_token,
            "sessions": len(self.sessions),
            "requests_served": self.requests,
            "rss_bytes": _rss_bytes(),  # this node process's memory (for `quickdraft cluster status`)
            "session_ttl": self.session_ttl,
            "llama_cpp": {**system_info(), "rpc_servers": list(self.model.rpc_servers)},
            "grammar": self.target is not None,  # a target node applies a request's grammar (open's `grammar`)
        }

    def op_vocab(self, request: dict) -> dict:
        if self._vocab_gguf is None:
            self._vocab_gguf = vocab_gguf(self.model.path)
        return {"gguf": self._vocab_gguf}

    def op_ping(self, request: dict) -> dict:
        """{} or, given `echo`, {echo}: round trips of a chosen size, for measuring the protocol alone."""
        return {"echo": request["echo"]} if "echo" in request else {}

    def _tokens(self, values: object, what: str) -> list[int]:
        return p.token_ids(values, self.model.n_vocab, what)

    def op_open(self, request: dict) -> dict:
        """A request begins: `start` the target or drafter on its tokens, as the in-process loop does. Nothing
        is evaluated here; the session's first verify or draft prefills, exactly as the local path does."""
        tokens, sampling = p.require(request, "tokens", "sampling")
        tokens = self._tokens(tokens, "open tokens")
        sampling = p.decode_sampling(sampling)
        if not tokens:
            raise p.NodeProtocolError("open needs at least one token")
        if len(tokens) >= self.model.n_ctx:
            raise p.NodeProtocolError(f"{len(tokens)} tokens do not fit the node's context of {self.model.n_ctx}")
        replaced = request.get("replace")
        if replaced is not None:
            self._drop(replaced, free_kv=False)  # the new session inherits the KV cache (prefix reuse)
        sid = secrets.randbits(62)
        session = Session(sid, tokens, sampling)
        if request.get("grammar") is not None:
            self._require_role("target", "a grammar")
            session.constraint, session.prompt_len = self._constraint(request), request.get("prompt_len")
            if type(session.prompt_len) is not int or not 0 < session.prompt_len <= len(tokens):
                raise p.NodeProtocolError(f"prompt_len must be in [1, {len(tokens)}], got {session.prompt_len!r}")
            self._follow(session, 0)
        if self.target is not None:
            self.target.start(tokens)  # empties the KV cache where the prompt cache is off (fresh_prefill)
        else:
            self.drafter.start(tokens)
        self.sessions[sid] = session
        self.resident = sid
        return {"session": sid}

    def _constraint(self, request: dict) -> Constraint:
        try:
            return Constraint.compile(p.decode_grammar(request["grammar"]), self.model.grammar_tokenizer(),
                                      self.model.n_vocab)
        except GrammarError as e:
            raise p.NodeProtocolError(str(e)) from None

    def _follow(self, s: Session, base: int) -> None:
        """Bring the session's constraint up to its tokens; `base`: how many of them are unchanged since it
        last followed them (a client that rewinds into the output makes it start over)."""
        if base < s.followed:
            s.constraint = Constraint.compile(s.constraint.spec, self.model.grammar_tokenizer(), self.model.n_vocab)
            s.followed = s.prompt_len
        s.followed = max(s.followed, s.prompt_len)
        try:
            s.constraint.advance(s.tokens[s.followed:])
        except RuntimeError as e:  # the client sent output the grammar rejects
            raise p.NodeProtocolError(str(e)) from None
        s.followed = len(s.tokens)

    def op_close(self, request: dict) -> dict:
        (sid,) = p.require(request, "session")
        self._drop(sid, free_kv=True)
        return {}

    def op_verify(self, request: dict) -> dict:
        self._require_role("target", "verify")
        t0 = time.perf_counter()
        s = self._session(request)
        base, extend, draft = p.require(request, "base", "extend", "draft")
        draft = self._tokens(draft, "draft")
        context = s.rebase(base, self._tokens(extend, "extend"))
        if len(context) + len(draft) > self.model.n_ctx:
            raise p.NodeProtocolError("the draft runs past the node's context")
        top = request.get("logprobs")
        if top is not None and (type(top) is not int or not 0 <= top <= self.model.n_vocab):
            raise p.NodeProtocolError(f"logprobs must be a number of alternatives, got {top!r}")
        if s.constraint is None:
            verdict = self.target.verify(context, draft, s.sampling, top)
        else:  # as the in-process loop does (quickdraft.generate): cut, verify under the masks, follow
            self._follow(s, base)
            draft = draft[: s.constraint.valid_prefix(draft)]
            verdict = self.target.verify(context, draft, s.sampling, top, allowed=s.constraint.masks(draft))
            s.constraint.advance(verdict.tokens)
            s.followed = len(context) + len(verdict.tokens)
        s.tokens = context + verdict.tokens
        reply = {"n_accepted": verdict.n_accepted, "token": verdict.tokens[-1]}
        if verdict.logprobs is not None:
            reply["logprobs"] = p.encode_logprobs(verdict.logprobs)
        reply["compute_us"] = int((time.perf_counter() - t0) * 1e6)
        return reply

    def op_draft(self, request: dict) -> dict:
        self._require_role("draft", "draft")
        t0 = time.perf_counter()
        s = self._session(request)
        base, extend, n = p.require(request, "base", "extend", "n")
        if type(n) is not int or n < 0:
            raise p.NodeProtocolError(f"n must be a non-negative integer, got {n!r}")
        context = s.rebase(base, self._tokens(extend, "extend"))
        tokens = self.drafter.propose(context, n, s.sampling)
        s.tokens = context + tokens
        return {"tokens": tokens, "compute_us": int((time.perf_counter() - t0) * 1e6)}

    def op_append(self, request: dict) -> dict:
        self._require_role("draft", "append")
        s = self._session(request)
        base, extend = p.require(request, "base", "extend")
        context = s.rebase(base, self._tokens(extend, "extend"))
        if len(context) >= self.model.n_ctx:
            raise p.NodeProtocolError(f"{len(context)} tokens do not fit the node's context of {self.model.n_ctx}")
        self.model.evaluate(context, 1)  # evaluate now, so the next draft starts at once
        return {"n_tokens": len(context)}
