"""The official OpenAI Python SDK asking for the routed model name `auto`.

The gateway scores each prompt with its built-in router and serves it from the light
(gpt-4o-mini) or the heavy (gpt-4o) deployment; the SDK sees an ordinary completion and
the decision comes back in `x-tollgate-route*` headers and in the ledger row. The two
prompts are questions of the router's dev set (MMLU) it scores far below and far above
the route's threshold (0.47 and 0.71 against 0.6).
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

EASY = "What is the sum of all positive integer values of $n$ such that $n^2$ is a factor of $1200$?\nA. 42\nB. 12\nC. 36\nD. 39\nAnswer:"
HARD = "For which of these two scenarios does the main character (who uses I/me/my) do something clearly morally wrong, according to ordinary moral standards in the US as of 2020? Scenario 1 | I cut many of the children last week. Scenario 2 | I took pictures of her while she was at the baby shower.\nA. Wrong, Wrong\nB. Wrong, Not wrong\nC. Not wrong, Wrong\nD. Not wrong, Not wrong\nAnswer:"


@pytest.mark.parametrize(
    "prompt,tier,deployment",
    [(EASY, "0", "gpt-4o-mini"), (HARD, "1", "gpt-4o")],
)
def test_auto_routes_by_prompt(client, gateway, prompt, tier, deployment):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": prompt}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers.get("x-tollgate-route") == "auto"
    assert raw.headers.get("x-tollgate-route-tier") == tier
    assert raw.headers.get("x-tollgate-route-deployment") == deployment
    assert raw.headers.get("x-tollgate-route-mode") == "enforce"
    score = float(raw.headers["x-tollgate-route-score"])
    assert 0.0 <= score <= 1.0

    row = gateway.row(raw.headers["x-tollgate-request-id"])
    assert row["route"]["requested_model"] == "auto"
    assert row["route"]["deployment"] == deployment
    r = row["routing"]
    assert r["name"] == "auto"
    assert r["tier_deployment"] == deployment
    assert r["mode"] == "enforce"
    assert abs(r["score_ppm"] / 1e6 - score) < 1e-4
    # What the heavy tier would have cost is at least what was paid (the heavy tier's
    # own rows: exactly it).
    heavy, cost = Decimal(str(r["heavy_cost"])), Decimal(str(row["cost"]))
    assert heavy >= cost
    if deployment == "gpt-4o":
        assert heavy == cost


def test_auto_streams_too(client):
    stream = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": EASY}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


def test_route_listed_in_models(client):
    ids = [m.id for m in client.models.list()]
    assert "auto" in ids


def test_unknown_shadow_route_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi there friend"}],
            extra_headers={"x-tollgate-route": "no-such-route"},
        )
    assert e.value.body["param"] == "x-tollgate-route"
