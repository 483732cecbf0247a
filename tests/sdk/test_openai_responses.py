"""The official OpenAI Python SDK's Responses API and structured output against tollgate,
unchanged but for base_url: ``client.responses.create`` (JSON and streamed),
``previous_response_id``, a function-call round trip, ``client.responses.parse`` and
``client.chat.completions.parse`` with a Pydantic model, on an Anthropic, a Bedrock and
an OpenAI deployment. Every answer's ledger row is checked: reported usage, the
``responses`` endpoint, priced exactly (usage × the catalog)."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from native_gateway import CLAUDE_MODEL, NOVA_MODEL, OPENAI_MODEL, native_gateway  # noqa: F401

ALL_MODELS = [CLAUDE_MODEL, NOVA_MODEL, OPENAI_MODEL]
TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
            "additionalProperties": False,
        },
        "strict": True,
    }
]


class Pet(BaseModel):
    kind: str
    age: int


class Person(BaseModel):
    name: str
    age: int
    retired: bool
    pets: list[Pet]


@pytest.fixture(scope="module")
def oai(native_gateway):  # noqa: F811
    c = openai.OpenAI(base_url=f"{native_gateway.base}/v1", api_key=native_gateway.key, max_retries=0, timeout=30)
    yield c
    c.close()


def check_row(gw, request_id: str, model: str, usage) -> dict:
    row = gw.assert_cost(request_id, model)
    assert row["endpoint"] == "responses"
    assert row["usage"]["output"] == usage.output_tokens
    prompt = sum(row["usage"].get(k, 0) for k in ("input", "cache_read", "cache_write_5m", "cache_write_1h"))
    assert prompt == usage.input_tokens
    return row


@pytest.mark.parametrize("model", ALL_MODELS)
def test_responses_create(oai, native_gateway, model):  # noqa: F811
    raw = oai.responses.with_raw_response.create(
        model=model,
        instructions="You are a concise assistant.",
        input="Summarise the refund policy.",
        max_output_tokens=256,
        metadata={"case": "sdk-responses"},
        extra_headers={"x-tollgate-task": "sdk-responses-create"},
    )
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed"
    assert r.output[0].type == "message"
    assert r.output_text and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.usage.output_tokens_details.reasoning_tokens >= 0
    row = check_row(native_gateway, raw.headers["x-tollgate-request-id"], model, r.usage)
    assert row["attribution"]["task"] == "sdk-responses-create"
    assert raw.headers["x-tollgate-cost-usd"] == row["cost_usd"]


@pytest.mark.parametrize("model", ALL_MODELS)
def test_responses_stream(oai, native_gateway, model):  # noqa: F811
    deltas = []
    kinds = []
    raw = oai.responses.with_raw_response.create(
        model=model, input="Write a haiku about invoices.", max_output_tokens=256, stream=True
    )
    request_id = raw.headers["x-tollgate-request-id"]
    final = None
    for event in raw.parse():
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final is not None and final.output_text == "".join(deltas)
    check_row(native_gateway, request_id, model, final.usage)
    # The SDK's stream helper assembles the same response.
    with oai.responses.stream(model=model, input="Write a haiku about invoices.", max_output_tokens=256) as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        assembled = s.get_final_response()
    assert text == assembled.output_text == final.output_text


@pytest.mark.parametrize("model", [CLAUDE_MODEL, NOVA_MODEL])
def test_function_call_round_trip_with_previous_response_id(oai, native_gateway, model):  # noqa: F811
    first = oai.responses.create(model=model, input="What is the weather in Lisbon?", tools=TOOLS)
    calls = [i for i in first.output if i.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"query": "What is the weather in"}  # the simulator quotes five words
    raw = oai.responses.with_raw_response.create(
        model=model,
        tools=TOOLS,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24°C"}],
    )
    second = raw.parse()
    assert second.previous_response_id == first.id
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]
    # The history went upstream: a longer prompt than the first call's.
    assert second.usage.input_tokens > first.usage.input_tokens
    check_row(native_gateway, raw.headers["x-tollgate-request-id"], model, second.usage)


def test_unknown_previous_response_id_is_a_bad_request(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.responses.create(model=CLAUDE_MODEL, input="hi", previous_response_id="resp_unknown")
    assert e.value.status_code == 400
    assert "resp_unknown" in str(e.value)


@pytest.mark.parametrize("model", [CLAUDE_MODEL, NOVA_MODEL])
def test_chat_completions_parse_with_pydantic(oai, native_gateway, model):  # noqa: F811
    raw = oai.chat.completions.with_raw_response.parse(
        model=model,
        messages=[{"role": "user", "content": "Describe a person with pets."}],
        response_format=Person,
    )
    completion = raw.parse()
    msg = completion.choices[0].message
    assert isinstance(msg.parsed, Person), msg
    assert msg.parsed.pets and isinstance(msg.parsed.pets[0], Pet)
    assert not msg.tool_calls
    assert completion.choices[0].finish_reason == "stop"
    row = native_gateway.assert_cost(raw.headers["x-tollgate-request-id"], model)
    assert row["endpoint"] == "chat_completions"
    assert row["usage"]["output"] == completion.usage.completion_tokens


@pytest.mark.parametrize("model", [CLAUDE_MODEL, NOVA_MODEL])
def test_responses_parse_with_pydantic(oai, native_gateway, model):  # noqa: F811
    raw = oai.responses.with_raw_response.parse(model=model, input="Describe a person with pets.", text_format=Person)
    r = raw.parse()
    assert isinstance(r.output_parsed, Person)
    check_row(native_gateway, raw.headers["x-tollgate-request-id"], model, r.usage)


def test_chat_completions_stream_with_json_schema(oai, native_gateway):  # noqa: F811
    with oai.chat.completions.stream(
        model=CLAUDE_MODEL,
        messages=[{"role": "user", "content": "Describe a person with pets."}],
        response_format=Person,
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Person)
