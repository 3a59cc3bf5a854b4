"""Tool calls: reading each family's call format (quickdraft.tool_calls), holding back a streamed call,
rendering tools and tool history through real chat templates of tool-calling families
(tests/data/chat_templates, with their licences), and the grammar that forces a call."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from quickdraft.chat_template import ChatTemplate
from quickdraft.tool_calls import (
    ToolCallStream,
    call_from_json,
    forced_call_grammar,
    hermes_call_text,
    parse_answer,
    with_hermes_tools,
)

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city"},
                           "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now",
                                         "parameters": {"type": "object", "properties": {}}}}
NAMES = {"get_weather", "get_time"}
ARGS = {"city": "Paris", "unit": "C"}
CALL_ID = "abcDEF123"  # Mistral's templates insist on 9 characters
HISTORY = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": CALL_ID, "type": "function",
                     "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}]},
    {"role": "tool", "tool_call_id": CALL_ID, "content": '{"temperature": 21}'},
]


def single_call(text: str, names=NAMES) -> tuple[str | None, str, dict]:
    parsed = parse_answer(text, names)
    assert len(parsed.calls) == 1, parsed
    call = parsed.calls[0]
    assert call.id.startswith("call_") and len(call.id) > 10
    return parsed.content, call.name, json.loads(call.arguments)


# ---- parsing each family's format ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}',  # stopped before the tag
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}, "id": "abcDEF123"}]',
    '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',  # Llama 3.x
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
    '```json\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n```',
    json.dumps({"type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}),
    '  {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}  ',
])
def test_each_format_gives_the_call(text):
    content, name, args = single_call(text)
    assert content is None
    assert (name, args) == ("get_weather", ARGS)


def test_hermes_text_before_and_several_calls():
    text = ("Let me look.\n<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": ARGS})
            + "\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>")
    parsed = parse_answer(text, NAMES)
    assert parsed.content == "Let me look."
    assert [c.name for c in parsed.calls] == ["get_weather", "get_time"]
    assert [json.loads(c.arguments) for c in parsed.calls] == [ARGS, {}]
    assert len({c.id for c in parsed.calls}) == 2


@pytest.mark.parametrize("text", [
    "The weather in Paris is mild.",
    '{"city": "Paris"}',  # a JSON answer, not a call
    '{"name": "Paris", "arguments": {}}',  # bare JSON naming no offered tool
    '[1, 2, 3]',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut off mid-call
    '[TOOL_CALLS] not json',
    '',
])
def test_what_is_not_a_call_stays_content(text):
    parsed = parse_answer(text, NAMES)
    assert parsed.calls == []
    assert parsed.content == text


def test_tagged_calls_count_whatever_they_name():
    _, name, args = single_call('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>', set())
    assert (name, args) == ("search", {"q": "x"})


@pytest.mark.parametrize("value", [None, "x", [], {"name": ""}, {"name": 3}, {"name": "f", "arguments": 5},
                                   {"name": "f", "arguments": "not json"}])
def test_malformed_call_objects(value):
    assert call_from_json(value) is None


# ---- streaming ------------------------------------------------------------------------------------------------
STREAM_CASES = [
    "The weather in Paris is mild, <b>sunny</b> and 21 degrees.",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>',
    'Checking.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}',
    '{"answer": 42}',
    "a < b and <tool_ca is not a tag",
    "   \n",
]


@pytest.mark.parametrize("text", STREAM_CASES)
@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_streaming_gives_what_the_whole_answer_gives(text, piece):
    stream = ToolCallStream(NAMES)
    sent = "".join(stream.feed(text[i:i + piece]) for i in range(0, len(text), piece))
    end = stream.finish()
    whole = parse_answer(text, NAMES)
    assert [(c.name, c.arguments) for c in end.calls] == [(c.name, c.arguments) for c in whole.calls]
    content = sent + (end.content or "")
    if whole.calls:
        assert content.strip() == (whole.content or "")
    else:
        assert content == text


def test_streaming_sends_prose_before_the_call_is_complete():
    stream = ToolCallStream(NAMES)
    assert stream.feed("Sure, ") == "Sure, "
    assert stream.feed("checking <tool") == "checking "  # a possible tag is held back
    assert stream.feed('_call>{"name": "get_time", ') == ""
    assert stream.feed('"arguments": {}}</tool_call>') == ""
    end = stream.finish()
    assert [c.name for c in end.calls] == ["get_time"]


def test_a_call_is_held_from_its_first_character():
    stream = ToolCallStream(NAMES)
    assert stream.feed(" ") == "" and stream.feed("<") == "" and stream.feed("tool_call>") == ""


# ---- rendering through real templates ---------------------------------------------------------------------------
# each family's template, and how its assistant turn is delimited in the rendered prompt
FAMILIES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": ("<|im_start|>assistant", "<|im_end|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja": ("<|im_start|>assistant", "<|im_end|>"),
    "meta-llama-Llama-3.1-8B-Instruct.jinja": ("<|start_header_id|>assistant<|end_header_id|>", "<|eot_id|>"),
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": ("[/INST]", "</s>"),
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate((TEMPLATES / name).read_text(encoding="utf-8"), "gguf", "<s>", "</s>")


def test_every_template_is_committed_with_its_licence():
    readme = (TEMPLATES / "README.md").read_text()
    for name in FAMILIES:
        assert name in readme
    assert (TEMPLATES / "LICENSE-Apache-2.0").read_text().lstrip().startswith("Apache License")
    assert "LLAMA 3.1 COMMUNITY LICENSE" in (TEMPLATES / "LICENSE-Llama-3.1").read_text()


@pytest.mark.parametrize("name", FAMILIES)
def test_template_renders_tools_and_tool_history(name):
    t = template(name)
    assert t.supports_tools
    text = t.render(HISTORY, tools=[WEATHER, TIME])
    assert '"get_weather"' in text and '"get_time"' in text  # the tools are offered
    assert "The weather in a city" in text
    assert "temperature" in text and "21" in text  # the tool's result (Llama 3.1 writes it JSON-quoted)
    assert "\\u003c" not in text and "&#34;" not in text  # tojson is plain JSON, not HTML-escaped


@pytest.mark.parametrize("name", FAMILIES)
def test_the_call_each_family_writes_parses_back(name):
    """The assistant turn a template renders for a call is the format that family's models emit."""
    start, end = FAMILIES[name]
    text = template(name).render(HISTORY[:3], tools=[WEATHER], add_generation_prompt=False)
    turn = text.split(start, 1)[1].split(end, 1)[0]
    content, call_name, args = single_call(turn)
    assert (call_name, args) == ("get_weather", ARGS)
    assert content is None


def test_without_tools_the_templates_render_plain_chat():
    for name in FAMILIES:
        text = template(name).render(HISTORY[:2])
        assert "get_weather" not in text and "What is the weather in Paris?" in text


def test_a_template_without_tools_gets_them_in_hermes_form():
    chatml = ChatTemplate("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}", "chatml")
    assert not chatml.supports_tools
    text = chatml.render(HISTORY, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nAnswer briefly.\n\n# Tools")
    assert json.dumps(WEATHER) in text
    assert hermes_call_text("get_weather", json.dumps(ARGS)) in text
    assert "<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response>" in text
    assert "<|im_start|>tool" not in text


def test_hermes_history_without_a_system_message():
    out = with_hermes_tools([{"role": "user", "content": "hi"}], [WEATHER])
    assert [m["role"] for m in out] == ["system", "user"] and "<tools>" in out[0]["content"]
    assert with_hermes_tools([{"role": "user", "content": "hi"}], None) == [{"role": "user", "content": "hi"}]


# ---- the grammar of tool_choice required / named ---------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab():
    from quickdraft.llama_model import LlamaModel
    from quickdraft.model_store import resolve

    return LlamaModel(str(resolve("smollm2-135m")), vocab_only=True)


def constraint(vocab, grammar: str):
    from quickdraft.constraint import Constraint, GrammarSpec

    return Constraint.compile(GrammarSpec("lark", grammar), vocab.grammar_tokenizer(), vocab.n_vocab)


def accepted(vocab, grammar: str, text: str) -> bool:
    tokens = vocab.tokenize(text, add_special=False, parse_special=False)
    c = constraint(vocab, grammar)
    if c.valid_prefix(tokens) != len(tokens):
        return False
    c.advance(tokens)
    return c.matcher.is_accepting()


def call_text(name: str, args: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


def test_named_grammar_takes_only_that_function_with_valid_arguments(vocab):
    grammar = forced_call_grammar([WEATHER, TIME], "get_weather")
    assert accepted(vocab, grammar, call_text("get_weather", ARGS))
    assert not accepted(vocab, grammar, call_text("get_time", {}))
    assert not accepted(vocab, grammar, call_text("get_weather", {"city": "Paris"}))  # unit is required
    assert not accepted(vocab, grammar, call_text("get_weather", {"city": "Paris", "unit": "K"}))
    assert not accepted(vocab, grammar, "Sure! " + call_text("get_weather", ARGS))


def test_required_grammar_takes_any_offered_function(vocab):
    grammar = forced_call_grammar([WEATHER, TIME])
    assert accepted(vocab, grammar, call_text("get_weather", ARGS))
    assert accepted(vocab, grammar, call_text("get_time", {}))
    assert not accepted(vocab, grammar, call_text("get_date", {}))
    with pytest.raises(ValueError):
        forced_call_grammar([WEATHER], "get_date")


def test_required_grammar_takes_several_calls_unless_parallel_calls_are_off(vocab):
    two = call_text("get_weather", ARGS) + "\n" + call_text("get_time", {})
    assert accepted(vocab, forced_call_grammar([WEATHER, TIME], several=True), two)
    assert accepted(vocab, forced_call_grammar([WEATHER, TIME], several=True), call_text("get_time", {}))
    assert not accepted(vocab, forced_call_grammar([WEATHER, TIME]), two)
    assert not accepted(vocab, forced_call_grammar([WEATHER, TIME], several=True), two + "\nSure!")


def test_a_template_that_insists_on_short_call_ids_takes_ours():
    """Mistral's templates refuse tool call ids that are not 9 characters; the ids we hand out (and most
    clients') are longer. The history's ids are mapped, the same id to the same short one."""
    mistral = template("mistralai-Mistral-Nemo-Instruct-2407.jinja")
    assert mistral.call_id_length == 9 and template("Qwen-Qwen2.5-7B-Instruct.jinja").call_id_length is None
    ours, other = "call_" + "x" * 24, "call_" + "y" * 24
    history = [
        HISTORY[1],
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": ours, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}},
            {"id": other, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": ours, "content": '{"temperature": 21}'},
        {"role": "tool", "tool_call_id": other, "content": '{"time": "12:00"}'},
    ]
    text = mistral.render(history, tools=[WEATHER, TIME])
    ids = re.findall(r'"id": "([A-Za-z0-9]+)"', text) + re.findall(r'"call_id": "([A-Za-z0-9]+)"', text)
    assert ours not in text and other not in text
    assert len(set(ids)) == 2 and all(len(i) == 9 for i in ids) and len(ids) == 4  # each call and its result
    assert mistral.render(HISTORY, tools=[WEATHER]) == mistral.render(HISTORY, tools=[WEATHER])  # 9 kept as is
    assert CALL_ID in mistral.render(HISTORY, tools=[WEATHER])


# ---- a call cut off by max_tokens ----------------------------------------------------------------------------
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


@pytest.mark.parametrize("text, name, arguments", [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', "get_weather", '{"city": "Par'),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"ci', "get_weather", '{"ci'),
    ('<tool_call>\n{"name": "get_weather", "arguments": ', "get_weather", ""),
    ('<tool_call>\n{"name": "get_weather", "argu', "get_weather", ""),
    ('<tool_call>\n{"name": "get_wea', "get_wea", ""),
    ('<tool_call>\n{"name": "get_\\u00e9', "get_\u00e9", ""),
    ('<tool_call>\n{"name": "get_\\u00', "get_", ""),  # a cut escape is left out
    ('<tool_call>\n{"name":', "", ""),
    ("<tool_call>\n", "", ""),
    ('<tool_call>{"arguments": {"city": "Paris"}, "name": "get_we', "get_we", '{"city": "Paris"}'),
    ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Pa', "get_weather", '{"city": "Pa'),
    ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Pa', "get_weather", '{"city": "Pa'),
    ("[TOOL_CALLS]", "", ""),
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Pa', "get_weather", '{"city": "Pa'),
    ('{"name": "get_weather", "parameters": {"city": "Pa', "get_weather", '{"city": "Pa'),
    ('```json\n{"name": "get_weather", "arguments": {"unit": "C", "city": 1', "get_weather",
     '{"unit": "C", "city": 1'),
])
def test_a_cut_call_is_read_as_far_as_it_goes(text, name, arguments):
    parsed = parse_answer(text, NAMES, cut=True)
    assert parsed.partial and parsed.content is None
    assert [(c.name, c.arguments) for c in parsed.calls] == [(name, arguments)]
    assert parse_answer(text, NAMES).calls == []  # not cut: a malformed answer stays text


def test_whole_calls_before_the_cut_one_are_kept():
    text = "Checking.\n" + HERMES_CALL + '\n<tool_call>\n{"name": "get_time", "argu'
    parsed = parse_answer(text, NAMES, cut=True)
    assert parsed.content == "Checking." and parsed.partial
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", json.dumps(ARGS)), ("get_time", "")]
    listed = '[TOOL_CALLS][{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"ci'
    assert [(c.name, c.arguments) for c in parse_answer(listed, NAMES, cut=True).calls] == \
        [("get_time", "{}"), ("get_weather", '{"ci')]


@pytest.mark.parametrize("text, content", [
    ("The weather in Paris is", "The weather in Paris is"),  # prose cut off
    ('{"city": "Par', '{"city": "Par'),  # a JSON answer cut off, not a call
    ('{"name": "Paris", "arguments": {', '{"name": "Paris", "arguments": {'),  # names no offered tool
    ("Let me check. <tool_", "Let me check. "),  # cut in the tag: the tag's beginning goes
    ("<", ""),
    (HERMES_CALL, None),  # whole, though cut right after: a call, not partial
])
def test_a_cut_answer_without_a_cut_call(text, content):
    parsed = parse_answer(text, NAMES, cut=True)
    assert not parsed.partial and parsed.content == content
    assert len(parsed.calls) == (1 if text == HERMES_CALL else 0)


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_streamed_cut_call_is_the_whole_answers(piece):
    for text in (HERMES_CALL[:60], "Let me check. <tool_", "Checking.\n" + HERMES_CALL[:40]):
        stream = ToolCallStream(NAMES)
        sent = "".join(stream.feed(text[i:i + piece]) for i in range(0, len(text), piece))
        end = stream.finish(cut=True)
        whole = parse_answer(text, NAMES, cut=True)
        assert [(c.name, c.arguments) for c in end.calls] == [(c.name, c.arguments) for c in whole.calls]
        assert end.partial == whole.partial
        assert "<tool" not in sent + (end.content or "")
