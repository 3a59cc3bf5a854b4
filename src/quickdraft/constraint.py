"""Grammar-constrained decoding: the tokens a request's grammar allows at each position (llguidance).

A request may ask for JSON (any object, or one that validates against a JSON schema), a regular expression, a
Lark grammar or a llama.cpp GBNF grammar (`GrammarSpec`). `Constraint` is that grammar compiled against the
target's vocabulary for one request; it follows the emitted tokens and answers what the speculative loop asks:

    draft = draft[: constraint.valid_prefix(draft)]    the grammar's target never emits a token it rejects
    allowed = constraint.masks(draft)                  what it allows at each of the K+1 verified positions
    verdict = target.verify(..., allowed=allowed)      the target's own token there, among the allowed ones
    constraint.advance(verdict.tokens)

The target's token at a position is its coupled token (quickdraft.coupling) over its logits with every token
the grammar rejects masked out (`masked_token`): the argmax of the masked logits, or the race over the masked
sampling distribution. That is a function of the context, the seed and the position, as without a grammar, so
constrained output stays the same whatever the drafter, K or the controller do.

Masks are computed only where needed. Where the token the target would choose unconstrained is one the grammar
allows, it is also the masked argmax or race winner (removing losers changes no winner): one validity check
of a few microseconds, no mask. Only where the grammar rejects that token (or for top-k/top-p/min-p sampling,
whose cut depends on the mask) is the position's full mask computed and the coupled token taken over the masked
logits (scripts/constraint_cost.py measures both). Once the grammar is complete, only end-of-generation tokens are
allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import llguidance
import llguidance.gbnf_to_lark as gbnf
import numpy as np

from quickdraft.coupling import coupled_token, filtered
from quickdraft.errors import InvalidRequestError
from quickdraft.sampling import SamplingParams

GrammarKind = Literal["json_schema", "json_object", "regex", "lark", "gbnf"]
JSON_OBJECT_SCHEMA = {"type": "object"}


class GrammarError(InvalidRequestError):
    """A grammar, regular expression or JSON schema that does not compile."""


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match. value: the schema (a dict) for json_schema, None for json_object
    (any JSON object), the text of the regex / Lark grammar / GBNF grammar otherwise."""

    kind: GrammarKind
    value: str | dict | None = None


def llguidance_grammar(spec: GrammarSpec) -> str:
    """The spec as an llguidance grammar (not yet checked: `Constraint.compile` does that)."""
    try:
        if spec.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(JSON_OBJECT_SCHEMA)
        if spec.kind == "json_schema":
            if not isinstance(spec.value, dict):
                raise GrammarError("a json_schema grammar must be a JSON object (a dict)")
            return llguidance.LLMatcher.grammar_from_json_schema(spec.value)
        if spec.kind in ("regex", "lark", "gbnf"):
            if not isinstance(spec.value, str) or not spec.value.strip():
                raise GrammarError(f"the {spec.kind} grammar must be a non-empty string")
            if spec.kind == "gbnf":
                return llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(spec.value))
            return llguidance.grammar_from(spec.kind, spec.value)
    except ValueError as e:  # not JSON, or GBNF that does not parse
        raise GrammarError(f"invalid {spec.kind} grammar: {e}") from None
    raise GrammarError(f"unknown grammar kind {spec.kind!r}")


class _Group(gbnf.ASTNode):
    """A parenthesised node in the Lark text llguidance's GBNF converter writes."""

    def __init__(self, node: gbnf.ASTNode):
        self.node = node

    def __str__(self) -> str:
        return f"({self.node})"

    def children(self) -> list[gbnf.ASTNode]:
        return [self.node]


def gbnf_to_lark(text: str) -> str:
    """A llama.cpp GBNF grammar as llguidance's Lark, by llguidance's own converter (grammar_from("gbnf")) with
    one fix: a repetition of a repetition, ("a"+)+ or (x?)*, keeps its parentheses. The converter drops them
    and writes "a"++, which its Lark refuses, while llama.cpp accepts the GBNF; with them the language is the
    same. Text already in Lark syntax (llguidance takes either as "gbnf") is returned as it is."""
    if gbnf.is_lark_syntax(text):
        return text
    try:
        rules = gbnf.GrammarParser().parse(text)
        gbnf.resolve(rules)  # also drops redundant groups, which is where the parentheses go
        for rule in rules.values():
            _group_nested_repetitions(rule.alternatives)
    except Exception as e:  # the converter raises its own error or a plain Exception (unknown rule, no root)
        raise ValueError(f"Failed to convert the grammar from GBNF to Lark: {e}") from None
    lark, after_block = "%llguidance {}\n\n", True  # the rules written as the converter writes them
    for rule in sorted(rules.values(), key=lambda r: r.order):
        block = "\n" in str(rule)  # a rule of several alternatives stands between blank lines
        lark += ("\n" if block and not after_block else "") + f"{rule}\n" + ("\n" if block else "")
        after_block = block
    return lark


def _group_nested_repetitions(node: gbnf.ASTNode) -> None:
    if isinstance(node, gbnf.RepetitionNode) and isinstance(node.node, gbnf.RepetitionNode):
        node.node = _Group(node.node)
    for child in node.children():
        _group_nested_repetitions(child)


class Constraint:
    """One request's grammar, following the tokens emitted so far."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int, end_tokens: Sequence[int],
                 spec: GrammarSpec | None = None):
        self.matcher = matcher
        self.spec = spec  # what it was compiled from (a target node compiles it again on its side)
        self.n_vocab = n_vocab
        self.end_tokens = frozenset(end_tokens)  # end-of-generation tokens: allowed where the grammar may end

    @classmethod
    def compile(cls, spec: GrammarSpec, tokenizer: llguidance.LLTokenizer, n_vocab: int) -> "Constraint":
        """Compile against the target's vocabulary (LlamaModel.grammar_tokenizer); GrammarError if it does
        not compile."""
        matcher = llguidance.LLMatcher(tokenizer, llguidance_grammar(spec), log_level=0)
        if matcher.is_error():
            raise GrammarError(f"invalid {spec.kind} grammar: {matcher.get_error().strip()}")
        constraint = cls(matcher, n_vocab, tokenizer.eos_tokens, spec)
        if constraint.matches_nothing():
            raise GrammarError(f"invalid {spec.kind} grammar: it matches no text at all (as when a rule or a $ref "
                               'only refers to itself, like the JSON schema {"$ref": "#"})')
        return constraint

    def matches_nothing(self) -> bool:
        """At the start: the grammar allows no text, not even the empty one. llguidance compiles such a grammar
        (a $ref to the schema itself has no way out) and then allows only the end token: without this check
        the answer would be an empty 200."""
        if self.matcher.is_accepting():
            return False
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little")[: self.n_vocab].astype(bool)
        allowed[[t for t in self.end_tokens if t < self.n_vocab]] = False
        return not allowed.any()

    def valid_prefix(self, draft: Sequence[int]) -> int:
        """How many leading draft tokens the grammar accepts from here. The draft stops before an
        end-of-generation token: that one is left to the target's own choice (it ends the output anyway)."""
        n = self.n_valid(list(draft)) if draft else 0
        return next((i for i, t in enumerate(draft[:n]) if t in self.end_tokens), n)

    def n_valid(self, tokens: list[int]) -> int:
        """How many leading tokens the grammar accepts from here (counting at most one end token, last)."""
        n = self.matcher.validate_tokens(tokens)
        if n < len(tokens) and tokens[n] in self.end_tokens and self._complete_after(tokens[:n]):
            n += 1  # llguidance's validation refuses the end token of a complete grammar; its mask allows it
        return n

    def _complete_after(self, prefix: list[int]) -> bool:
        if not prefix:
            return self.matcher.is_stopped()
        self.matcher.consume_tokens(prefix)
        try:
            return self.matcher.is_stopped()
        finally:
            self.matcher.rollback(len(prefix))

    def masks(self, draft: Sequence[int]) -> "DraftMasks":
        """What the grammar allows at each of the len(draft) + 1 positions one verification decides. The draft
        must be valid (`valid_prefix`)."""
        return DraftMasks(self, list(draft))

    def advance(self, tokens: Sequence[int]) -> None:
        """The target emitted these tokens."""
        for token in tokens:
            if self.matcher.is_stopped():  # what follows is an end-of-generation token, which ends the output
                return
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"the grammar rejected an emitted token: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete: only end-of-generation tokens are allowed now."""
        return self.matcher.is_stopped()


class DraftMasks:
    """The grammar's verdicts at the positions of one verification: position i follows draft[:i]. Computed on
    demand (positions after the first rejected draft token are never looked at)."""

    def __init__(self, constraint: Constraint, draft: list[int]):
        self.constraint = constraint
        self.matcher = constraint.matcher
        self.n_vocab = constraint.n_vocab
        self.draft = draft
        self._masks: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.draft) + 1

    def allows(self, i: int, token: int) -> bool:
        """Whether the grammar allows `token` at position i."""
        return self.constraint.n_valid(self.draft[:i] + [token]) == i + 1

    def allowed(self, i: int) -> np.ndarray:
        """The grammar's mask at position i: a bool per token id."""
        if i not in self._masks:
            prefix = self.draft[:i]
            if prefix and not self.matcher.consume_tokens(prefix):
                raise RuntimeError(f"the grammar rejected a draft token: {self.matcher.get_error()}")
            try:
                bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
            finally:
                self.matcher.rollback(len(prefix))
            self._masks[i] = np.unpackbits(bits, bitorder="little")[: self.n_vocab].view(bool)
        return self._masks[i]

    def token(self, i: int, logits: np.ndarray, sampling: SamplingParams, position: int) -> int:
        """The target's token at position i: its coupled token with every token the grammar rejects masked."""
        if sampling.greedy or not filtered(sampling):
            own = coupled_token(logits, sampling, position)
            agrees = i < len(self.draft) and own == self.draft[i]  # the draft is valid: no check needed
            if agrees or self.allows(i, own):  # the unmasked winner is allowed: it wins the masked choice too
                return own
        return masked_token(logits, self.allowed(i), sampling, position)


def masked_token(logits: np.ndarray, allowed: np.ndarray, sampling: SamplingParams, position: int) -> int:
    """`coupling.coupled_token` over the logits with the tokens not `allowed` (a bool per id) at -inf."""
    if not allowed.any():
        raise RuntimeError("the grammar allows no token here")
    return coupled_token(np.where(allowed, logits, np.float32(-np.inf)), sampling, position)
