"""boto3's bedrock-runtime client against tollgate, unchanged but for endpoint_url and
the credentials (a tollgate key id and secret; boto3 signs with SigV4 as it would for
AWS): converse, converse_stream, tools, system, cachePoint, errors; natively (a Bedrock
upstream) and translated (Anthropic and OpenAI upstreams). Every call's ledger row is
checked: reported usage, priced exactly."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from native_gateway import CLAUDE_MODEL, NOVA_MODEL, OPENAI_MODEL, native_gateway  # noqa: F401

ALL_MODELS = [NOVA_MODEL, CLAUDE_MODEL, OPENAI_MODEL]
TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "top_song",
                "description": "Get the most popular song played on a radio station.",
                "inputSchema": {"json": {"type": "object", "properties": {"sign": {"type": "string"}}, "required": ["sign"]}},
            }
        }
    ]
}


def make_client(gw, secret=None, key_id=None):
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=gw.base,
        region_name="us-east-1",
        aws_access_key_id=key_id or gw.aws_access_key_id,
        aws_secret_access_key=secret or gw.aws_secret_access_key,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture(scope="module")
def bedrock(native_gateway):  # noqa: F811
    return make_client(native_gateway)


def request_id(response):
    return response["ResponseMetadata"]["HTTPHeaders"]["x-tollgate-request-id"]


def text_of(content):
    return "".join(b.get("text", "") for b in content)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_converse(bedrock, native_gateway, model):  # noqa: F811
    r = bedrock.converse(
        modelId=model,
        system=[{"text": "You are a music expert."}],
        messages=[{"role": "user", "content": [{"text": "Create a list of 3 pop songs."}]}],
        inferenceConfig={"maxTokens": 256, "temperature": 0.5},
        requestMetadata={"tollgate_task": "sdk-boto3-converse"},
    )
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    text = text_of(r["output"]["message"]["content"])
    assert text and r["stopReason"] == "end_turn"
    assert r["usage"]["outputTokens"] == len(text.split())
    row = native_gateway.assert_cost(request_id(r), model)
    assert row["usage"]["output"] == r["usage"]["outputTokens"]
    assert row["usage"]["input"] == r["usage"]["inputTokens"]
    assert row["attribution"]["task"] == "sdk-boto3-converse"
    assert row["attribution"]["key_id"] == native_gateway.key_id
    assert row["endpoint"] == "converse"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_converse_stream(bedrock, native_gateway, model):  # noqa: F811
    r = bedrock.converse_stream(
        modelId=model,
        system=[{"text": "You are a music expert."}],
        messages=[{"role": "user", "content": [{"text": "Name a song about rain."}]}],
        inferenceConfig={"maxTokens": 256},
    )
    text, usage, stop = "", None, None
    for event in r["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"].get("text", "")
        elif "messageStop" in event:
            stop = event["messageStop"]["stopReason"]
        elif "metadata" in event:
            usage = event["metadata"]["usage"]
    assert text and stop == "end_turn" and usage["outputTokens"] == len(text.split())
    row = native_gateway.assert_cost(request_id(r), model)
    assert row["stream"] and not row["partial"]
    assert row["usage"]["output"] == usage["outputTokens"]


@pytest.mark.parametrize("model", [NOVA_MODEL, CLAUDE_MODEL])
def test_tools_round_trip(bedrock, native_gateway, model):  # noqa: F811
    messages = [{"role": "user", "content": [{"text": "What is the top song on WZPZ?"}]}]
    r = bedrock.converse(modelId=model, messages=messages, toolConfig=TOOLS)
    assert r["stopReason"] == "tool_use"
    use = next(b["toolUse"] for b in r["output"]["message"]["content"] if "toolUse" in b)
    assert use["name"] == "top_song" and use["input"] == {"query": "What is the top song"}  # the simulator quotes five words
    native_gateway.assert_cost(request_id(r), model)
    messages += [
        r["output"]["message"],
        {"role": "user", "content": [{"toolResult": {"toolUseId": use["toolUseId"], "content": [{"json": {"song": "Elemental Hotel"}}]}}]},
    ]
    r2 = bedrock.converse(modelId=model, messages=messages, toolConfig=TOOLS)
    assert r2["stopReason"] == "end_turn" and text_of(r2["output"]["message"]["content"])


def test_streamed_tool_use(bedrock):
    r = bedrock.converse_stream(modelId=CLAUDE_MODEL, toolConfig=TOOLS,
                                messages=[{"role": "user", "content": [{"text": "Top song on KXYZ?"}]}])
    name, args = None, ""
    for event in r["stream"]:
        if "contentBlockStart" in event:
            name = event["contentBlockStart"]["start"]["toolUse"]["name"]
        elif "contentBlockDelta" in event and "toolUse" in event["contentBlockDelta"]["delta"]:
            args += event["contentBlockDelta"]["delta"]["toolUse"]["input"]
    assert name == "top_song" and args == '{"query":"Top song on KXYZ?"}'


@pytest.mark.parametrize("model", [NOVA_MODEL, CLAUDE_MODEL])
def test_cache_point_writes_then_reads(bedrock, native_gateway, model):  # noqa: F811
    handbook = "".join(f"Clause {i}. Liability is limited to direct damages. " for i in range(160))
    system = [{"text": handbook}, {"cachePoint": {"type": "default"}}]
    usages, ids = [], []

    # The client's own cache point alone: the gateway places none of its own here (a
    # signed header, added before SigV4 signing as any boto3 event hook would).
    def no_gateway_breakpoints(request, **kwargs):
        request.headers["x-tollgate-prompt-cache"] = "off"

    bedrock.meta.events.register("before-sign.bedrock-runtime.Converse", no_gateway_breakpoints)
    for q in ("Is liability limited?", "Which damages are covered?"):
        r = bedrock.converse(modelId=model, system=system, messages=[{"role": "user", "content": [{"text": q}]}])
        usages.append(r["usage"])
        ids.append(request_id(r))
    assert usages[0]["cacheWriteInputTokens"] > 1024 and usages[0]["cacheReadInputTokens"] == 0
    assert usages[1]["cacheReadInputTokens"] == usages[0]["cacheWriteInputTokens"]
    first = native_gateway.assert_cost(ids[0], model)
    second = native_gateway.assert_cost(ids[1], model)
    assert second["usage"]["cache_read"] == usages[1]["cacheReadInputTokens"]
    assert float(second["cost_usd"]) < float(first["cost_usd"])
    bedrock.meta.events.unregister("before-sign.bedrock-runtime.Converse", no_gateway_breakpoints)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_errors_raise_the_usual_exceptions(bedrock, model):
    with pytest.raises(bedrock.exceptions.ThrottlingException):
        bedrock.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "hi [[sim:error=429]]"}]}])
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.converse(modelId="amazon.no-such-model-v1:0", messages=[{"role": "user", "content": [{"text": "hi"}]}])


def test_forged_and_unknown_credentials_are_403(native_gateway):  # noqa: F811
    forged = make_client(native_gateway, secret="tg-not-the-secret")
    with pytest.raises(ClientError) as e:
        forged.converse(modelId=NOVA_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert e.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    unknown = make_client(native_gateway, key_id="tgk_unknown00000")
    with pytest.raises(ClientError) as e:
        unknown.converse(modelId=NOVA_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_untranslatable_feature_is_a_validation_error(bedrock):
    with pytest.raises(bedrock.exceptions.ValidationException) as e:
        bedrock.converse(modelId=OPENAI_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}],
                         additionalModelRequestFields={"top_k": 5})
    assert "additionalModelRequestFields" in str(e.value)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_a_cut_stream_raises(bedrock, model):
    with pytest.raises((EventStreamError, ClientError)):
        r = bedrock.converse_stream(modelId=model, messages=[{"role": "user", "content": [{"text": "Tell a long story [[sim:cut]]"}]}])
        for _ in r["stream"]:
            pass
