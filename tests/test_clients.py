"""Real clients against a real `quickdraft serve` of the demo chat model smollm2-135m: the official `openai`
package (structured outputs with a JSON schema, tool calls forced by tool_choice, its streaming helper) and
LangChain's `with_structured_output` (json_schema and function_calling), which must come back as objects.

A tiny model's answers are not judged, only their shape: JSON that validates, calls whose arguments do.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import WEATHER_TOOL

MODEL = "smollm2-135m"
ASK_CITY = "Name a city in France and its country."


class City(BaseModel):
    """A city and the country it is in."""

    name: str = Field(description="the city", max_length=20)
    country: str = Field(description="its country", max_length=20)


CITY_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
    "required": ["name", "country"],
    "additionalProperties": False,
}
WEATHER = WEATHER_TOOL
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(smol_server):
    return openai.OpenAI(base_url=smol_server.base_url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def chat_model(smol_server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=smol_server.base_url, api_key="unused", model=MODEL, temperature=0, max_tokens=60,
                      max_retries=0, timeout=300)


# ---- openai --------------------------------------------------------------------------------------------------
def test_openai_json_schema_response_format(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ASK_CITY}], max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), CITY_SCHEMA)


def test_openai_parse_into_a_pydantic_model(client):
    reply = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": ASK_CITY}],
                                          max_tokens=60, response_format=City)
    assert isinstance(reply.choices[0].message.parsed, City)


def test_openai_named_tool_call(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_openai_required_tool_call_parsed_into_a_pydantic_model(client):
    reply = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": ASK_CITY}],
                                          tools=[openai.pydantic_function_tool(City)], tool_choice="required",
                                          max_tokens=60)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "City"
    assert isinstance(call.function.parsed_arguments, City)


def test_openai_streaming_helper_assembles_the_call(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK_WEATHER, tools=[WEATHER], max_tokens=60,
                                        tool_choice="required") as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


# ---- LangChain -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(chat_model, method):
    result = chat_model.with_structured_output(City, method=method).invoke(ASK_CITY)
    assert isinstance(result, City)


def test_langchain_tool_call_round_trip(chat_model):
    """A call the model made, and its result, go back in the history (assistant tool_calls, a tool message)."""
    from langchain_core.messages import HumanMessage, ToolMessage

    with_tools = chat_model.bind_tools([WEATHER], tool_choice="get_weather")
    question = HumanMessage(ASK_WEATHER[0]["content"])
    called = with_tools.invoke([question])
    (call,) = called.tool_calls
    assert call["name"] == "get_weather"
    answer = chat_model.bind_tools([WEATHER]).bind(max_tokens=8).invoke(
        [question, called, ToolMessage('{"temperature": 21}', tool_call_id=call["id"])])
    assert isinstance(answer.content, str)
