"""Grammar-constrained decoding (quickdraft.constraint) on the real demo models: the output matches its grammar,
is the same with and without speculation (greedy and seeded sampling), and greedy output equals llama.cpp's own
constrained decoding (llama_cpp.Llama one token at a time, masked with a fresh llguidance matcher). Bad formats,
schemas and grammars are 400s through the FastAPI app."""

from __future__ import annotations

import json
import re

import jsonschema
import llguidance
import numpy as np
import pytest
from llguidance.numpy import allocate_token_bitmask, apply_token_bitmask_inplace, fill_next_token_bitmask

from quickdraft.constraint import Constraint, GrammarSpec
from quickdraft.errors import InvalidRequestError

THREADS = 2  # as conftest's engines
MAX_TOKENS = 64
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 30},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
ANSWER_GBNF = 'root ::= "The answer is " ("yes" | "no") ", because " [a-z ]{1,30} "."'
ANSWER_RE = r"The answer is (yes|no), because [a-z ]{1,30}\."
TOOL_LARK = 'start: "<tool_call>" %json {"type": "object", "properties": {"city": {"type": "string", ' \
            '"maxLength": 20}}, "required": ["city"], "additionalProperties": false} "</tool_call>"'


@pytest.fixture(scope="module")
def smol_prompt(smol_engine):
    return smol_engine.chat_prompt([{"role": "user", "content": "Describe a person as JSON: name, age, city."}])


@pytest.fixture(scope="module")
def gemma_prompt(engine):
    return engine.tokenize("A person's record as JSON, with name, age and city:\n")


def llama_constrained_greedy(engine, prompt: list[int], schema: dict, max_tokens: int) -> list[int]:
    """The reference: llama.cpp decoding one token at a time, each step's logits masked by a fresh llguidance
    matcher for the schema (llguidance's own numpy helpers), then the argmax."""
    import llama_cpp

    path = str(engine.target.model.path)
    llm = llama_cpp.Llama(model_path=path, n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS,
                          flash_attn=False, verbose=False)
    tokenizer = engine.tokenizer.grammar_tokenizer()
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_json_schema(schema), log_level=0)
    bitmask = allocate_token_bitmask(1, tokenizer.vocab_size)
    out: list[int] = []
    llm.eval(prompt)
    while len(out) < max_tokens:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        logits = logits.copy()
        fill_next_token_bitmask(matcher, bitmask)
        apply_token_bitmask_inplace(logits, bitmask)
        out.append(int(np.argmax(logits)))
        if engine.tokenizer.is_eog(out[-1]):
            break
        assert matcher.consume_token(out[-1]), matcher.get_error()
        llm.eval(out[-1:])
    llm.close()
    return out


def check_person(result) -> dict:
    assert result.finish_reason == "stop", result.text
    value = json.loads(result.text)
    jsonschema.validate(value, PERSON)
    return value


# ---- Constraint alone ---------------------------------------------------------------------------------------
def test_draft_the_grammar_rejects_is_cut(smol_engine):
    tok = smol_engine.tokenizer
    c = Constraint.compile(GrammarSpec("regex", "[0-9]{1,6}"), tok.grammar_tokenizer(), tok.n_vocab)
    digits = tok.tokenize("12", add_special=False)
    letter = tok.tokenize("a", add_special=False)
    assert c.valid_prefix(digits + letter + digits) == len(digits)
    assert c.valid_prefix(letter + digits) == 0
    assert c.valid_prefix(digits) == len(digits)
    end = next(t for t in range(tok.n_vocab) if tok.is_eog(t))
    assert c.valid_prefix(digits + [end] + digits) == len(digits)  # the target chooses an end token itself
    masks = c.masks(digits)
    assert len(masks) == len(digits) + 1
    assert masks.allows(0, digits[0]) and not masks.allows(0, letter[0])
    allowed = np.flatnonzero(masks.allowed(0))
    assert digits[0] in allowed and letter[0] not in allowed
    assert all(c.valid_prefix([int(t)]) == 1 for t in allowed)
    assert c.valid_prefix(digits) == len(digits)  # reading masks leaves the state where it was


def test_complete_grammar_allows_only_end_tokens(smol_engine):
    tok = smol_engine.tokenizer
    c = Constraint.compile(GrammarSpec("regex", "ok"), tok.grammar_tokenizer(), tok.n_vocab)
    c.advance(tok.tokenize("ok", add_special=False))
    assert c.done
    ends = np.flatnonzero(c.masks([]).allowed(0))
    assert len(ends) > 0 and all(tok.is_eog(int(t)) for t in ends)
    assert c.valid_prefix([int(ends[0])]) == 0  # the target chooses the end token itself
    assert c.masks([]).allows(0, int(ends[0]))


@pytest.mark.parametrize("spec", [
    GrammarSpec("json_schema", {"type": "objec"}),
    GrammarSpec("json_schema", "not a dict"),
    GrammarSpec("regex", "[a-"),
    GrammarSpec("lark", "start: undefined_rule"),
    GrammarSpec("gbnf", 'root ::= "a'),
    GrammarSpec("regex", ""),
])
def test_bad_grammar_is_an_invalid_request(smol_engine, spec):
    with pytest.raises(InvalidRequestError, match=spec.kind):
        smol_engine.stream("hello", max_tokens=4, grammar=spec)


def test_target_without_masks_refuses_a_grammar(smol_engine):
    from quickdraft.engine import Engine
    from quickdraft.target import LocalTarget

    target = LocalTarget(smol_engine.target.model, max_k=smol_engine.target.max_k)
    target.supports_grammar = False  # as a node target: its protocol carries no masks
    blind = Engine(target, smol_engine.tokenizer, smol_engine.drafters, draft="ngram")
    with pytest.raises(InvalidRequestError, match="grammar"):
        blind.stream("hello", max_tokens=4, grammar=GrammarSpec("json_object"))


def accepts(c: Constraint, tokenizer, text: str) -> bool:
    """Whether the grammar matches `text` whole."""
    tokens = tokenizer.tokenize(text, add_special=False) if text else []
    if c.matcher.validate_tokens(tokens) < len(tokens):
        return False
    c.matcher.consume_tokens(tokens)
    try:
        return c.matcher.is_accepting()
    finally:
        c.matcher.rollback(len(tokens))


@pytest.mark.parametrize("grammar, matched, refused", [
    ('root ::= ("a"+)+', ["a", "aaaa"], ["", "b", "ab"]),
    ('root ::= ("ab"?)* "c"', ["c", "ababc"], ["", "abac", "abab"]),
    ('root ::= x\nx ::= (("a"{2})+)?', ["", "aaaa"], ["a", "aaa"]),
])
def test_gbnf_repetitions_of_repetitions_compile_with_their_language(smol_engine, grammar, matched, refused):
    """llama.cpp accepts them; llguidance's converter wrote "a"++, which its Lark refused."""
    from llguidance.gbnf_to_lark import any_to_lark

    from quickdraft.constraint import gbnf_to_lark

    tok = smol_engine.tokenizer
    c = Constraint.compile(GrammarSpec("gbnf", grammar), tok.grammar_tokenizer(), tok.n_vocab)
    assert all(accepts(c, tok, text) for text in matched)
    assert not any(accepts(c, tok, text) for text in refused)
    assert gbnf_to_lark(ANSWER_GBNF) == any_to_lark(ANSWER_GBNF)  # elsewhere, the converter's own text


@pytest.mark.parametrize("spec", [
    GrammarSpec("json_schema", {"$ref": "#"}),
    GrammarSpec("json_schema", {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}),
    GrammarSpec("lark", 'start: start "a"'),
])
def test_a_grammar_that_matches_nothing_is_an_invalid_request(smol_engine, spec):
    """llguidance compiles them and then allows only the end token: the answer was an empty 200."""
    with pytest.raises(InvalidRequestError, match="matches no text"):
        smol_engine.stream("hello", max_tokens=4, grammar=spec)
    recursive = {"type": "object", "properties": {"child": {"$ref": "#"}}}  # with a way out: fine
    smol_engine.stream("hello", max_tokens=4, grammar=GrammarSpec("json_schema", recursive)).close()


# ---- greedy: the reference, and the same output whatever drafts ---------------------------------------------
def test_gemma_json_schema_greedy_equals_reference_and_every_drafter(engine, gemma_prompt):
    spec = GrammarSpec("json_schema", PERSON)
    alone = engine.generate(gemma_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft="none")
    check_person(alone)
    assert alone.tokens == llama_constrained_greedy(engine, gemma_prompt, PERSON, MAX_TOKENS)
    drafted = 0
    for draft, k in [("ngram", 4), ("model", 4), ("auto", None)]:
        r = engine.generate(gemma_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft=draft, k=k)
        assert r.tokens == alone.tokens, f"{draft} k={k}"
        drafted += r.stats.drafted
    assert drafted > 0  # speculation really ran


def test_smollm_json_schema_greedy_equals_reference_and_every_drafter(smol_engine, smol_prompt):
    spec = GrammarSpec("json_schema", PERSON)
    alone = smol_engine.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft="none")
    check_person(alone)
    assert alone.tokens == llama_constrained_greedy(smol_engine, smol_prompt, PERSON, MAX_TOKENS)
    for draft in ["ngram", "auto"]:
        r = smol_engine.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft=draft)
        assert r.tokens == alone.tokens, draft


def test_json_object_is_an_object(smol_engine, smol_prompt):
    r = smol_engine.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=GrammarSpec("json_object"), draft="ngram")
    assert r.finish_reason == "stop"
    assert isinstance(json.loads(r.text), dict)


@pytest.mark.parametrize("spec, pattern", [
    (GrammarSpec("regex", ANSWER_RE), ANSWER_RE),
    (GrammarSpec("gbnf", ANSWER_GBNF), ANSWER_RE),
    (GrammarSpec("lark", TOOL_LARK), r"<tool_call>(.*)</tool_call>"),
])
def test_text_grammars_match_with_and_without_speculation(smol_engine, smol_prompt, spec, pattern):
    alone = smol_engine.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft="none")
    assert alone.finish_reason == "stop"
    match = re.fullmatch(pattern, alone.text, re.DOTALL)
    assert match, alone.text
    if spec.kind == "lark":  # the tool-call contract: %json embeds a schema
        assert set(json.loads(match.group(1))) == {"city"}
    speculative = smol_engine.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft="ngram")
    assert speculative.tokens == alone.tokens


def test_logprobs_with_a_grammar(smol_engine, smol_prompt):
    r = smol_engine.generate(smol_prompt, max_tokens=16, grammar=GrammarSpec("json_object"), top_logprobs=2)
    assert r.logprobs is not None and len(r.logprobs) == len(r.tokens)
    assert [lp.token for lp in r.logprobs] == r.tokens and all(len(lp.top) == 2 for lp in r.logprobs)


# ---- seeded sampling: the same draws whatever drafts ---------------------------------------------------------
@pytest.mark.parametrize("sampling", [
    {"temperature": 1.0, "seed": 11},  # the race over the whole masked distribution
    {"temperature": 0.9, "top_p": 0.9, "top_k": 40, "seed": 5},  # top-k / top-p cut after the mask
])
def test_seeded_sampling_is_the_same_for_every_drafter(engine, gemma_prompt, sampling):
    spec = GrammarSpec("json_schema", PERSON)
    alone = engine.generate(gemma_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft="none", **sampling)
    if alone.finish_reason == "stop":
        jsonschema.validate(json.loads(alone.text), PERSON)
    for draft, k in [("model", 2), ("auto", None)]:
        r = engine.generate(gemma_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft=draft, k=k, **sampling)
        assert r.tokens == alone.tokens, f"{draft} k={k}"


# ---- the server -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(smol_engine):
    from fastapi.testclient import TestClient

    from quickdraft.config import Config, ModelsConfig
    from quickdraft.server.app import create_app

    config = Config(models=ModelsConfig(target="smollm2-135m", draft="ngram"))
    with TestClient(create_app(smol_engine, config)) as client:
        yield client


CHAT = {"messages": [{"role": "user", "content": "Describe a person as JSON: name, age, city."}], "max_tokens": 64}


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "sound"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "objec"}}}},
     "response_format"),
    ({"response_format": "json"}, "response_format"),
    ({"grammar": 'root ::= "a'}, "grammar"),
    ({"json_schema": {"type": "object", "properties": 3}}, "json_schema"),
    ({"quickdraft": {"regex": "(a"}}, "quickdraft.regex"),
    ({"grammar": 'root ::= "a"', "quickdraft": {"regex": "a"}}, "quickdraft.regex"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_bad_formats_are_400(api, path, extra, param):
    body = {**CHAT, **extra} if "chat" in path else {"prompt": "A person:", "max_tokens": 8, **extra}
    r = api.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"].startswith(param), error


def test_chat_json_schema_response(api):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = api.post("/v1/chat/completions", json={**CHAT, "response_format": fmt})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)


def test_completion_with_llama_server_extensions(api):
    r = api.post("/v1/completions", json={"prompt": "Is the sky blue?", "max_tokens": 32, "grammar": ANSWER_GBNF})
    assert r.status_code == 200, r.text
    assert re.fullmatch(ANSWER_RE, r.json()["choices"][0]["text"])
    r = api.post("/v1/completions", json={"prompt": "A person:", "max_tokens": 64, "json_schema": PERSON})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), PERSON)


# ---- through a target node: the node applies the grammar itself ---------------------------------------------
@pytest.fixture(scope="module")
def smol_node(smol_engine):
    """A target node in this process over smol_engine's own model (used by one engine at a time)."""
    from quickdraft.node.server import NodeServer
    from quickdraft.node.service import NodeService

    server = NodeServer(NodeService(smol_engine.target.model, "target")).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def smol_remote(smol_node):
    from quickdraft.engine import Engine

    engine = Engine.load(smol_node.url, "ngram", k=4)
    yield engine
    engine.target.close()


@pytest.mark.parametrize("spec", [GrammarSpec("json_schema", PERSON), GrammarSpec("gbnf", ANSWER_GBNF)],
                         ids=["json_schema", "gbnf"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "seed": 11}], ids=["greedy", "seeded"])
def test_a_target_node_applies_the_grammar_as_the_local_target(smol_engine, smol_remote, smol_prompt, spec,
                                                                sampling):
    assert smol_remote.target.supports_grammar
    for draft in ["none", "ngram"]:
        local = smol_engine.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft=draft, **sampling)
        remote = smol_remote.generate(smol_prompt, max_tokens=MAX_TOKENS, grammar=spec, draft=draft, **sampling)
        assert remote.tokens == local.tokens, draft
    if spec.kind == "json_schema" and not sampling:
        check_person(remote)


def test_a_target_node_cuts_a_draft_its_grammar_rejects_and_refuses_a_bad_grammar(smol_engine):
    from quickdraft.node import protocol as p
    from quickdraft.node.service import NodeService
    from quickdraft.sampling import SamplingParams

    tok = smol_engine.tokenizer
    service = NodeService(smol_engine.target.model, "target")
    prompt = tok.tokenize("Pick a number:", add_special=True)
    greedy = p.encode_sampling(SamplingParams())
    bad = service.handle({"op": "open", "tokens": prompt, "sampling": greedy, "prompt_len": len(prompt),
                          "grammar": {"kind": "regex", "value": "[a-"}})
    assert bad["error"] == "bad_request" and "regex" in bad["message"]
    opened = service.handle({"op": "open", "tokens": prompt, "sampling": greedy, "prompt_len": len(prompt),
                             "grammar": p.encode_grammar(GrammarSpec("regex", "[0-9]{1,6}"))})
    letters = tok.tokenize(" hello world", add_special=False)
    reply = service.handle({"op": "verify", "session": opened["session"], "base": len(prompt), "extend": [],
                            "draft": letters})
    assert reply["n_accepted"] == 0  # not one letter is accepted: the grammar allows digits only
    assert re.fullmatch("[0-9]+", tok.detokenize([reply["token"]]))
