"""POST /openai/v1/embeddings through the gateway, in-process, over the demo upstream: the four
input shapes, float and base64, dimensions, the charge and record, the kind checks both ways,
and the same quota and rate-limit refusals as chat."""

import base64
import struct

import pytest

from gateway.models import Model
from keys.models import ApiKey
from usage.models import DailyUsage, UsageRecord

EMBEDDINGS = "/openai/v1/embeddings"
EMBED = "demo-embed"


@pytest.fixture
def embedding_model(demo_model):
    return Model.objects.create(
        name=EMBED, upstream_kind=Model.UpstreamKind.DEMO, kind=Model.Kind.EMBEDDING
    )


def embed(gw, key, headers=None, **fields):
    return gw.chat(key, {"model": EMBED, **fields}, path=EMBEDDINGS, headers=headers)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("The food was delicious.", 1),
        (["first", "second", "third"], 3),
        ([101, 2023, 2003], 1),
        ([[101, 2023], [7, 8, 9]], 2),
    ],
    ids=["string", "strings", "tokens", "token-lists"],
)
def test_it_embeds_every_input_shape_and_charges_its_tokens(
    gw, alice_key, embedding_model, value, count
):
    user, key = alice_key
    result = embed(gw, key, input=value)
    assert result.status == 200, result.body
    answer = result.json()
    assert answer["object"] == "list" and answer["model"] == EMBED
    assert [item["index"] for item in answer["data"]] == list(range(count))
    assert all(len(item["embedding"]) == 64 for item in answer["data"])
    gw.flush()
    (record,) = UsageRecord.objects.filter(user=user)
    assert record.endpoint == "openai.embeddings" and record.status_code == 200
    assert (record.input_tokens, record.output_tokens) == (answer["usage"]["prompt_tokens"], 0)
    assert record.input_tokens > 0
    counter = DailyUsage.objects.get(user=user)
    assert (counter.input_tokens, counter.output_tokens, counter.reserved_tokens) == (
        record.input_tokens,
        0,
        0,
    )


def test_base64_is_the_same_vector_as_floats(gw, alice_key, embedding_model):
    _user, key = alice_key
    floats = embed(gw, key, input="same text").json()["data"][0]["embedding"]
    encoded = embed(gw, key, input="same text", encoding_format="base64").json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats, abs=1e-6)


def test_dimensions_reach_the_upstream(gw, alice_key, embedding_model):
    answer = embed(gw, alice_key[1], input="x", dimensions=8).json()
    assert len(answer["data"][0]["embedding"]) == 8


def test_without_a_usage_report_the_estimate_is_charged(gw, alice_key, embedding_model):
    user, key = alice_key
    answer = embed(gw, key, headers={"x-demo-fault": "nousage"}, input="some words here").json()
    gw.flush()
    (record,) = UsageRecord.objects.filter(user=user)
    assert record.estimated
    assert record.input_tokens == answer["usage"]["prompt_tokens"] > 0


def test_a_chat_endpoint_refuses_an_embedding_model_and_back(gw, alice_key, embedding_model):
    _user, key = alice_key
    chat = gw.chat(key, {"model": EMBED, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status == 400
    error = chat.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "model_not_supported",
        "model",
        "invalid_request_error",
    )
    assert "/openai/v1/embeddings" in error["message"]
    anthropic = gw.chat(
        key,
        {"model": EMBED, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        path="/anthropic/v1/messages",
    )
    assert anthropic.status == 400
    assert anthropic.json()["error"]["type"] == "invalid_request_error"
    wrong = gw.chat(key, {"model": "LongCat-Flash-Chat", "input": "hi"}, path=EMBEDDINGS)
    assert wrong.status == 400
    assert wrong.json()["error"]["code"] == "model_not_supported"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [1, "a"]}, "input"),
        ({"input": [[]]}, "input"),
        ({"input": {"text": "x"}}, "input"),
        ({}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_it_refuses_a_bad_request_naming_the_field(gw, alice_key, embedding_model, fields, param):
    result = embed(gw, alice_key[1], **fields)
    assert result.status == 400
    assert result.json()["error"]["param"] == param


def test_the_models_list_shows_embedding_models(gw, alice_key, embedding_model):
    result = gw.request(
        "GET", "/openai/v1/models", headers={"authorization": f"Bearer {alice_key[1]}"}
    )
    assert EMBED in [m["id"] for m in result.json()["data"]]


def test_a_spent_quota_refuses_embeddings_too(gw, alice_key, embedding_model, settings):
    user, key = alice_key
    from usage.quota import quota_day

    DailyUsage.objects.create(user=user, day=quota_day(), input_tokens=500_000)
    result = embed(gw, key, input="x")
    assert result.status == 429
    assert result.json()["error"]["code"] == "insufficient_quota"
    gw.flush()
    assert UsageRecord.objects.get(user=user).error_code == "insufficient_quota"


def test_an_anonymous_caller_is_refused(gw, embedding_model):
    assert embed(gw, None, input="x").status == 401


def test_the_keys_rate_limit_counts_embeddings(one_rate_window, gw, alice_key, embedding_model):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(rate_limit_rpm=2)
    assert [embed(gw, key, input="x").status for _ in range(3)] == [200, 200, 429]
    ApiKey.objects.filter(user=user).update(rate_limit_rpm=None, rate_limit_tpm=20)
    long_input = ["a sentence of some length to embed"] * 10
    result = embed(gw, key, input=long_input)
    assert result.status == 429
    assert result.json()["error"]["code"] == "rate_limit_exceeded"
