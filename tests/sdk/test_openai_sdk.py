"""The official OpenAI Python SDK, pointed at tollgate with a tollgate virtual key.

Every call goes SDK → tollgate serve → tollgate sim (all real processes, see
conftest.py). Each test checks what the SDK sees *and* the ledger row the gateway wrote
for that request (GET /admin/requests/{id} with the master key).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest

REQUEST_ID = "x-tollgate-request-id"
COST = "x-tollgate-cost-usd"


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def sdk_usage_as_ledger(usage) -> dict:
    """OpenAI usage → the ledger's disjoint counts (prompt_tokens includes cached_tokens,
    completion_tokens includes reasoning_tokens)."""
    cached = 0
    if usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens:
        cached = usage.prompt_tokens_details.cached_tokens
    reasoning = 0
    if usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens:
        reasoning = usage.completion_tokens_details.reasoning_tokens
    return {
        "input": usage.prompt_tokens - cached,
        "cache_read": cached,
        "output": usage.completion_tokens,
        "reasoning": reasoning,
    }


def assert_usage_matches(row: dict, usage) -> None:
    u = row["usage"]
    got = {k: u[k] for k in ("input", "cache_read", "output", "reasoning")}
    assert got == sdk_usage_as_ledger(usage), f"ledger usage {u} != SDK usage {usage}"
    assert u["input"] + u["cache_read"] + u.get("cache_write_5m", 0) + u.get("cache_write_1h", 0) == usage.prompt_tokens


# --------------------------------------------------------------------------- chat


def test_chat_non_streaming_headers_cost_and_ledger(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=msgs("Say hello to the SDK test.")
    )
    request_id = raw.headers.get(REQUEST_ID)
    cost = raw.headers.get(COST)
    assert request_id, f"no {REQUEST_ID} header: {dict(raw.headers)}"
    assert cost, f"no {COST} header: {dict(raw.headers)}"

    completion = raw.parse()
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    content = completion.choices[0].message.content
    assert isinstance(content, str) and content.strip()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0

    row = gateway.row(request_id)
    assert row["request_id"] == request_id
    assert row["endpoint"] == "chat_completions"
    assert row["status"] == 200
    assert row["stream"] is False
    assert row["partial"] is False
    assert row["usage_source"] == "reported"
    assert row["priced"] is True
    assert row["route"]["requested_model"] == "gpt-4o-mini"
    assert row["route"]["deployment"] == "gpt-4o-mini"
    assert Decimal(row["cost_usd"]) == Decimal(cost)
    assert Decimal(cost) > 0
    assert_usage_matches(row, completion.usage)
    assert row["attribution"]["key_id"] == gateway.key_id
    assert row["attribution"]["agent"] == "sdk-agent"
    assert row["attribution"]["team"] == "t"


def test_chat_plain_create_works(client):
    completion = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "system", "content": "Be brief."}, *msgs("Plain create.")]
    )
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model


# ---------------------------------------------------------------------- streaming


def test_stream_without_include_usage_has_no_usage_chunk(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=msgs("Stream me something, no usage asked."), stream=True
    )
    request_id = raw.headers.get(REQUEST_ID)
    assert request_id
    stream = raw.parse()
    assert isinstance(stream, openai.Stream)

    text = []
    chunks = 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        assert chunk.usage is None, f"client did not ask for usage but got a usage chunk: {chunk}"
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
    assert chunks > 1
    assert "".join(text).strip()

    row = gateway.row(request_id)
    assert row["stream"] is True
    assert row["partial"] is False
    assert row["error_code"] is None
    assert row["usage_source"] == "reported"
    assert row["usage"]["output"] > 0
    assert row["usage"]["input"] > 0


def test_stream_with_include_usage_matches_ledger(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=msgs("Stream me something and tell me the usage."),
        stream=True,
        stream_options={"include_usage": True},
    )
    request_id = raw.headers.get(REQUEST_ID)
    assert request_id
    chunks = list(raw.parse())
    assert chunks
    last = chunks[-1]
    assert last.usage is not None, f"last chunk has no usage: {last}"
    assert last.choices == []
    assert last.usage.prompt_tokens > 0
    assert last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    # Only the final chunk carries usage.
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()

    row = gateway.row(request_id)
    assert row["stream"] is True
    assert row["partial"] is False
    assert row["usage_source"] == "reported"
    assert_usage_matches(row, last.usage)


def test_stream_helper_final_completion(client, gateway):
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=msgs("Use the streaming helper."),
        stream_options={"include_usage": True},
    ) as stream:
        # The helper does not expose the HTTP response publicly; its private handle is
        # only used (when present) for the ledger cross-check below.
        response = getattr(stream, "_response", None)
        request_id = response.headers.get(REQUEST_ID) if response is not None else None
        deltas = []
        for event in stream:
            if event.type == "content.delta":
                deltas.append(event.delta)
        final = stream.get_final_completion()
    content = final.choices[0].message.content
    assert content and content.strip()
    assert content == "".join(deltas)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.usage is not None and final.usage.prompt_tokens > 0
    if request_id:
        assert_usage_matches(gateway.row(request_id), final.usage)


# ---------------------------------------------------------------------- reasoning


def test_reasoning_model_reports_reasoning_tokens(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="o3-mini", messages=msgs("Think hard: is 2^61-1 prime?")
    )
    request_id = raw.headers.get(REQUEST_ID)
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens_details is not None
    reasoning = usage.completion_tokens_details.reasoning_tokens
    assert reasoning and reasoning > 0
    assert usage.completion_tokens > reasoning

    row = gateway.row(request_id)
    assert row["usage"]["reasoning"] == reasoning
    assert_usage_matches(row, usage)
    assert Decimal(row["cost_usd"]) == Decimal(raw.headers[COST])


# --------------------------------------------------------------------- embeddings


def test_embeddings(client, gateway):
    raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a", "b"])
    request_id = raw.headers.get(REQUEST_ID)
    assert request_id
    result = raw.parse()
    assert len(result.data) == 2
    assert [d.index for d in result.data] == [0, 1]
    for d in result.data:
        assert isinstance(d.embedding, list) and len(d.embedding) > 0
        assert all(isinstance(x, float) for x in d.embedding)
    assert result.usage.prompt_tokens > 0

    row = gateway.row(request_id)
    assert row["endpoint"] == "embeddings"
    assert row["status"] == 200
    assert row["usage"]["input"] == result.usage.prompt_tokens
    assert row["usage"]["output"] == 0
    if raw.headers.get(COST):
        assert Decimal(row["cost_usd"]) == Decimal(raw.headers[COST])


def test_embeddings_plain_create(client):
    # Without an explicit encoding_format the SDK sends "base64" and decodes what comes
    # back; the gateway must pass the field through and the SDK still ends with floats.
    result = client.embeddings.create(model="text-embedding-3-small", input="one string")
    assert len(result.data) == 1
    assert len(result.data[0].embedding) > 0


# ------------------------------------------------------------------------- models


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "o3-mini", "text-embedding-3-small"} <= ids


# ------------------------------------------------------------------------- errors


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-model", messages=msgs("hi"))
    e = ei.value
    assert e.status_code == 404
    assert e.code == "model_not_found"
    assert isinstance(e.body, dict) and e.body.get("code") == "model_not_found"
    assert e.param == "model"
    assert e.response.headers.get(REQUEST_ID)


def test_bad_key_is_authentication_error(gateway):
    bad = openai.OpenAI(base_url=f"{gateway.base}/v1", api_key="tg-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        bad.chat.completions.create(model="gpt-4o-mini", messages=msgs("hi"))
    assert ei.value.status_code == 401
    assert ei.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    bad.close()


def test_malformed_request_is_bad_request(client, gateway):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=msgs("hi"), extra_body={"messages": "x"}
        )
    e = ei.value
    assert e.status_code == 400
    assert isinstance(e.body, dict) and e.body.get("message")
    request_id = e.response.headers.get(REQUEST_ID)
    assert request_id
    row = gateway.row(request_id)
    assert row["status"] == 400
    assert row["usage_source"] == "none"
    assert Decimal(row["cost_usd"]) == 0


def test_upstream_429_is_rate_limit_error(client, gateway):
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs("Busy? [[sim:error=429]]"))
    e = ei.value
    assert e.status_code == 429
    assert e.code == "rate_limit_exceeded"
    request_id = e.response.headers.get(REQUEST_ID)
    assert request_id
    row = gateway.row(request_id)
    assert row["status"] == 429
    assert row["error_code"] == "upstream_rate_limited"
    assert Decimal(row["cost_usd"]) == 0


def test_upstream_500_is_internal_server_error(client, gateway):
    with pytest.raises(openai.InternalServerError) as ei:
        client.chat.completions.create(model="gpt-4o-mini", messages=msgs("Crash [[sim:error=500]]"))
    e = ei.value
    assert e.status_code == 500
    request_id = e.response.headers.get(REQUEST_ID)
    assert request_id
    row = gateway.row(request_id)
    assert row["status"] == 500
    assert row["error_code"] == "upstream_server_error"


def test_upstream_429_while_streaming_is_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError):
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=msgs("Busy? [[sim:error=429]]"), stream=True
        )
        for _ in stream:
            pass


def test_stream_cut_by_upstream_raises_and_is_metered_partial(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=msgs("Write a long answer. [[sim:cut]]"), stream=True
    )
    request_id = raw.headers.get(REQUEST_ID)
    assert request_id
    received = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in raw.parse():
            for choice in chunk.choices:
                if choice.delta.content:
                    received.append(choice.delta.content)
    assert received, "the first half of the stream should have arrived before the cut"
    # Not a bare connection error: the gateway ends the stream with an OpenAI-shaped error
    # event, which the SDK turns into an APIError carrying that body.
    e = ei.value
    assert not isinstance(e, openai.APIConnectionError), f"connection dropped instead of an error event: {e!r}"
    assert isinstance(e.body, dict), f"no error body: {e!r}"
    assert e.body.get("code") == "upstream_cut"
    assert e.body.get("message")

    row = gateway.row(request_id)
    assert row["stream"] is True
    assert row["partial"] is True
    assert row["error_code"] == "upstream_cut"
    assert row["usage"]["output"] > 0
    assert row["usage_source"] == "estimated"


# -------------------------------------------------------------------- attribution


def test_attribution_headers_and_user(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=msgs("Attribute me."),
        user="u-42",
        extra_headers={"x-tollgate-task": "task-sdk-1", "x-tollgate-tags": "a,b"},
    )
    raw.parse()
    row = gateway.row(raw.headers[REQUEST_ID])
    a = row["attribution"]
    assert a["task"] == "task-sdk-1"
    assert a["user"] == "u-42"
    assert sorted(a["tags"]) == ["a", "b"]
    assert a["agent"] == "sdk-agent"
    assert a["team"] == "t"
    assert a["key_id"] == gateway.key_id


def test_key_agent_cannot_be_overridden_by_header(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=msgs("Pretend to be someone else."),
        extra_headers={"x-tollgate-agent": "impostor"},
    )
    raw.parse()
    row = gateway.row(raw.headers[REQUEST_ID])
    assert row["attribution"]["agent"] == "sdk-agent"


# -------------------------------------------------------------------------- async


def test_async_client_streaming(gateway):
    async def run():
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.base}/v1", api_key=gateway.key, max_retries=0, timeout=30
        ) as aclient:
            raw = await aclient.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=msgs("Async stream, please."),
                stream=True,
                stream_options={"include_usage": True},
            )
            request_id = raw.headers.get(REQUEST_ID)
            stream = raw.parse()
            assert isinstance(stream, openai.AsyncStream)
            text, usage = [], None
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        text.append(choice.delta.content)
            return request_id, "".join(text), usage

    request_id, text, usage = asyncio.run(run())
    assert text.strip()
    assert usage is not None and usage.prompt_tokens > 0
    row = gateway.row(request_id)
    assert row["stream"] is True and row["partial"] is False
    assert_usage_matches(row, usage)
