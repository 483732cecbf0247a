"""The official Anthropic Python SDK against tollgate's /v1/messages, unchanged but for
base_url: create, stream, tools, system blocks, cache_control, errors; natively (an
Anthropic upstream) and translated (OpenAI and Bedrock upstreams). Every call's ledger
row is checked: reported usage, priced exactly. `messages.count_tokens` is answered by
tollgate itself (no upstream, no row)."""

from __future__ import annotations

import time

import anthropic
import pytest

from native_gateway import CLAUDE_MODEL, NOVA_MODEL, OPENAI_MODEL, native_gateway  # noqa: F401

ALL_MODELS = [CLAUDE_MODEL, OPENAI_MODEL, NOVA_MODEL]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    }
]


@pytest.fixture(scope="module")
def claude(native_gateway):  # noqa: F811
    c = anthropic.Anthropic(base_url=native_gateway.base, api_key=native_gateway.key, max_retries=0, timeout=30)
    yield c
    c.close()


@pytest.mark.parametrize("model", ALL_MODELS)
def test_create(claude, native_gateway, model):  # noqa: F811
    raw = claude.messages.with_raw_response.create(
        model=model,
        max_tokens=256,
        system=[{"type": "text", "text": "You are a concise assistant."}],
        messages=[{"role": "user", "content": "Summarise the refund policy."}],
        extra_headers={"x-tollgate-task": "sdk-anthropic-create"},
    )
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.stop_reason == "end_turn"
    text = "".join(b.text for b in msg.content if b.type == "text")
    assert text and msg.usage.output_tokens == len(text.split())
    row = native_gateway.assert_cost(raw.headers["x-tollgate-request-id"], model)
    assert row["usage"]["output"] == msg.usage.output_tokens
    assert row["usage"]["input"] == msg.usage.input_tokens
    assert row["attribution"]["task"] == "sdk-anthropic-create"
    assert row["endpoint"] == "messages"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_stream(claude, native_gateway, model):  # noqa: F811
    with claude.messages.stream(
        model=model,
        max_tokens=256,
        system="You are a concise assistant.",
        messages=[{"role": "user", "content": "Write a haiku about invoices."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        request_id = stream.response.headers["x-tollgate-request-id"]
    assert text and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(text.split())
    row = native_gateway.assert_cost(request_id, model)
    assert row["stream"] and not row["partial"]
    assert row["usage"]["output"] == final.usage.output_tokens


@pytest.mark.parametrize("model", [CLAUDE_MODEL, NOVA_MODEL])
def test_tools_round_trip(claude, native_gateway, model):  # noqa: F811
    messages = [{"role": "user", "content": "What's the weather in Lisbon?"}]
    first = claude.messages.with_raw_response.create(model=model, max_tokens=256, tools=TOOLS, messages=messages)
    msg = first.parse()
    assert msg.stop_reason == "tool_use"
    call = next(b for b in msg.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == {"query": "What's the weather in Lisbon?"}
    native_gateway.assert_cost(first.headers["x-tollgate-request-id"], model)
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C, sunny"}]},
    ]
    second = claude.messages.create(model=model, max_tokens=256, tools=TOOLS, messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text


def test_streamed_tool_use(claude):
    with claude.messages.stream(model=CLAUDE_MODEL, max_tokens=256, tools=TOOLS,
                                messages=[{"role": "user", "content": "Weather in Oslo please"}]) as stream:
        final = stream.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"query": "Weather in Oslo please"}


@pytest.mark.parametrize("model", [CLAUDE_MODEL, NOVA_MODEL])
def test_cache_control_writes_then_reads(claude, native_gateway, model):  # noqa: F811
    handbook = "Section {}. Refunds are allowed within thirty days when the item is unused. "
    system = [
        {"type": "text", "text": "".join(handbook.format(i) for i in range(120)), "cache_control": {"type": "ephemeral"}},
    ]
    ids, usages = [], []
    for question in ("First question about refunds?", "Second question about refunds?"):
        raw = claude.messages.with_raw_response.create(
            model=model, max_tokens=64, system=system, messages=[{"role": "user", "content": question + f" ({model})"}]
        )
        usages.append(raw.parse().usage)
        ids.append(raw.headers["x-tollgate-request-id"])
    assert usages[0].cache_creation_input_tokens > 1024 and usages[0].cache_read_input_tokens == 0
    assert usages[1].cache_read_input_tokens == usages[0].cache_creation_input_tokens
    assert usages[1].cache_creation_input_tokens == 0
    first = native_gateway.assert_cost(ids[0], model)
    second = native_gateway.assert_cost(ids[1], model)
    assert first["usage"]["cache_write_5m"] == usages[0].cache_creation_input_tokens
    assert second["usage"]["cache_read"] == usages[1].cache_read_input_tokens
    assert float(second["cost_usd"]) < float(first["cost_usd"])


@pytest.mark.parametrize("model", ALL_MODELS)
def test_errors_raise_the_usual_exceptions(claude, native_gateway, model):  # noqa: F811
    with pytest.raises(anthropic.RateLimitError) as e:
        claude.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "hi [[sim:error=429]]"}])
    assert e.value.status_code == 429
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "hi [[sim:error=500]]"}])


def test_gateway_errors(native_gateway):  # noqa: F811
    bad = anthropic.Anthropic(base_url=native_gateway.base, api_key="tg-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model=CLAUDE_MODEL, max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    good = anthropic.Anthropic(base_url=native_gateway.base, api_key=native_gateway.key, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):
        good.messages.create(model="claude-nope", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError) as e:
        good.messages.create(model=OPENAI_MODEL, max_tokens=16, extra_body={"top_k": 3}, messages=[{"role": "user", "content": "hi"}])
    assert "top_k" in str(e.value)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_a_cut_stream_raises(claude, native_gateway, model):  # noqa: F811
    with pytest.raises(anthropic.APIError):
        with claude.messages.stream(model=model, max_tokens=256,
                                    messages=[{"role": "user", "content": "Tell a long story [[sim:cut]]"}]) as stream:
            for _ in stream.text_stream:
                pass


def test_count_tokens(claude, native_gateway):  # noqa: F811
    """`messages.count_tokens` is answered by tollgate itself: counted locally over system,
    messages and tools, no upstream call, no cost and no ledger row."""
    messages = [{"role": "user", "content": "What's the weather in Lisbon?"}]
    bare = claude.messages.count_tokens(model=CLAUDE_MODEL, messages=messages)
    assert bare.input_tokens > 0
    raw = claude.messages.with_raw_response.count_tokens(
        model=CLAUDE_MODEL, system="You are a concise assistant.", tools=TOOLS, messages=messages
    )
    full = raw.parse()
    assert full.input_tokens > bare.input_tokens
    # Deterministic: the same request counts the same.
    again = claude.messages.count_tokens(model=CLAUDE_MODEL, system="You are a concise assistant.", tools=TOOLS, messages=messages)
    assert again.input_tokens == full.input_tokens
    # No ledger row, ever (rows land within milliseconds; give the writer time to prove it).
    time.sleep(0.3)
    r = native_gateway.admin.get(f"/admin/requests/{raw.headers['x-tollgate-request-id']}")
    assert r.status_code == 404, r.text
    # Errors raise the SDK's usual exceptions.
    bad = anthropic.Anthropic(base_url=native_gateway.base, api_key="tg-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.count_tokens(model=CLAUDE_MODEL, messages=messages)
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="claude-nope", messages=messages)
