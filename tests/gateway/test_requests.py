import json

import pytest

from gateway.models import Model, UpstreamEndpoint
from usage.models import Reservation

HELLO = [{"role": "user", "content": "Hello!"}]


def _payload(**fields):
    return {"model": "LongCat-Flash-Chat", "messages": HELLO, **fields}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "LongCat-Flash-Chat"}, "messages"),
        ({"model": 12, "messages": HELLO}, "model"),
        ({"model": "LongCat-Flash-Chat", "messages": "hi"}, "messages"),
        ({"model": "LongCat-Flash-Chat", "messages": []}, "messages"),
        (_payload(messages=[{"content": "x"}]), "messages.0.role"),
        (_payload(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
        (_payload(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
        (_payload(temperature=2.5), "temperature"),
        (_payload(temperature=-0.1), "temperature"),
        (_payload(temperature="hot"), "temperature"),
        (_payload(top_p=1.5), "top_p"),
        (_payload(max_tokens=0), "max_tokens"),
        (_payload(max_tokens="many"), "max_tokens"),
        (_payload(stream="yes"), "stream"),
        (_payload(presence_penalty=3), "presence_penalty"),
        (_payload(n=2), "n"),
    ],
)
def test_it_names_the_bad_field(gw, alice_key, payload, param):
    result = gw.chat(alice_key[1], payload)
    assert result.status == 400, result.body
    error = result.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"", b'"text"'])
def test_it_refuses_bodies_that_are_not_a_json_object(gw, alice_key, body):
    result = gw.chat(alice_key[1], body)
    assert result.status == 400
    assert result.json()["error"]["code"] == "invalid_json"


def test_it_refuses_a_declared_large_body_before_reading_it(gw, alice_key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    headers = {"content-length": "5000"}
    result = gw.chat(alice_key[1], b"x" * 10, headers=headers)
    assert result.status == 413
    assert result.json()["error"]["code"] == "request_too_large"


def test_it_refuses_a_large_body_without_a_length(gw, alice_key, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    big = _payload(messages=[{"role": "user", "content": "x" * 5000}])
    assert gw.chat(alice_key[1], big).status == 413


def test_it_answers_404_for_an_unknown_model(gw, alice_key):
    result = gw.chat(alice_key[1], _payload(model="gpt-9"))
    assert result.status == 404
    assert result.json()["error"]["code"] == "model_not_found"
    assert result.json()["error"]["param"] == "model"


def test_it_answers_404_for_a_disabled_model(gw, alice_key):
    Model.objects.filter(name="LongCat-Flash-Chat").update(enabled=False)
    assert gw.chat(alice_key[1]).status == 404
    listed = gw.request("GET", "/openai/v1/models", headers={"x-api-key": alice_key[1]})
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    "path",
    ["/openai/v1/chat/completions", "/openai/chat/completions", "/openai/native/chat/completions"],
)
def test_it_serves_every_chat_path(gw, alice_key, path):
    result = gw.chat(alice_key[1], path=path)
    assert result.status == 200
    body = result.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "LongCat-Flash-Chat"
    assert body["usage"]["completion_tokens"] == 10


def test_it_answers_unknown_paths_and_methods_in_the_envelope(gw, alice_key):
    result = gw.request("GET", "/openai/v1/chat/completions")
    assert result.status == 405
    assert "error" in result.json()
    result = gw.request("POST", "/openai/v1/completions", headers={"x-api-key": alice_key[1]})
    assert result.status == 404
    assert result.json()["error"]["code"] == "not_found"


def _echo(gw, key, **fields):
    result = gw.chat(key, _payload(**fields), headers={"x-demo-echo": "1"})
    assert result.status == 200, result.body
    return json.loads(result.json()["choices"][0]["message"]["content"])


def test_it_clamps_max_tokens_to_the_model_limit(gw, alice_key):
    assert _echo(gw, alice_key[1], max_tokens=32000)["max_tokens"] == 8192
    assert _echo(gw, alice_key[1], max_tokens=100)["max_tokens"] == 100
    sent = _echo(gw, alice_key[1], max_completion_tokens=50000)
    assert sent["max_completion_tokens"] == 8192
    assert "max_tokens" not in sent


def test_it_asks_for_the_model_limit_when_max_tokens_is_absent(gw, alice_key):
    assert _echo(gw, alice_key[1])["max_tokens"] == 8192


def test_it_sends_the_upstream_model_name(gw, alice_key):
    UpstreamEndpoint.objects.filter(model__name="LongCat-Flash-Chat").update(
        upstream_model="longcat-internal"
    )
    result = gw.chat(alice_key[1], _payload(), headers={"x-demo-echo": "1"})
    assert json.loads(result.json()["choices"][0]["message"]["content"])["model"] == (
        "longcat-internal"
    )
    # …but the client sees the public name, plain and streamed.
    assert result.json()["model"] == "LongCat-Flash-Chat"
    streamed = gw.chat(alice_key[1], _payload(stream=True, max_tokens=3))
    models = {e["model"] for e in streamed.events() if e != "[DONE]"}
    assert models == {"LongCat-Flash-Chat"}


def test_it_refuses_input_plus_output_beyond_the_context_window(gw, alice_key):
    Model.objects.filter(name="LongCat-Flash-Chat").update(context_window=1000)
    long_text = "word " * 600  # about 1,000 tokens by the estimate
    result = gw.chat(
        alice_key[1], _payload(messages=[{"role": "user", "content": long_text}], max_tokens=500)
    )
    assert result.status == 400
    error = result.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "exceed context limit" in error["message"]
    assert "> 1000" in error["message"]
    assert not Reservation.objects.exists()


def test_it_does_not_refuse_a_prompt_only_the_high_estimate_finds_too_long(gw, alice_key):
    # About 1,000 tokens by the high estimate, about 500 by the low one: an upstream counting
    # 4 characters a token (750) takes it with 100 to spare, so the gateway must not refuse it.
    Model.objects.filter(name="LongCat-Flash-Chat").update(context_window=1000)
    long_text = "word " * 600
    result = gw.chat(
        alice_key[1], _payload(messages=[{"role": "user", "content": long_text}], max_tokens=100)
    )
    assert result.status == 200, result.body


def test_it_fits_an_absent_max_tokens_into_the_context_window(gw, alice_key):
    Model.objects.filter(name="LongCat-Flash-Chat").update(context_window=1000)
    sent = _echo(gw, alice_key[1], messages=[{"role": "user", "content": "word " * 300}])
    assert 0 < sent["max_tokens"] < 1000 - 300


def test_it_passes_unknown_fields_through(gw, alice_key):
    sent = _echo(gw, alice_key[1], logit_bias={"50256": -100}, response_format={"type": "text"})
    assert sent["logit_bias"] == {"50256": -100}
    assert sent["response_format"] == {"type": "text"}


def test_it_streams_with_usage_only_when_asked(gw, alice_key):
    plain = gw.chat(alice_key[1], _payload(stream=True, max_tokens=4))
    assert plain.status == 200
    assert plain.headers["content-type"].startswith("text/event-stream")
    events = plain.events()
    assert events[-1] == "[DONE]"
    assert (
        "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        == "This is the demo"
    )
    assert all(e.get("usage") is None for e in events[:-1])

    asked = gw.chat(
        alice_key[1],
        _payload(stream=True, max_tokens=4, stream_options={"include_usage": True}),
    )
    usage_events = [e for e in asked.events()[:-1] if e.get("usage")]
    assert len(usage_events) == 1
    assert usage_events[0]["usage"]["completion_tokens"] == 4
    assert usage_events[0]["choices"] == []


def test_it_relays_each_chunk_as_its_own_message(gw, alice_key):
    result = gw.chat(alice_key[1], _payload(stream=True, max_tokens=5))
    data_chunks = [c for c in result.chunks if c.startswith(b"data: {")]
    # role chunk + 5 tokens + finish chunk, one ASGI message each.
    assert len(data_chunks) == 7


def test_it_retrieves_one_model_in_each_dialect_and_404s_unknown_ones(gw, alice_key):
    key = {"x-api-key": alice_key[1]}
    one = gw.request("GET", "/openai/v1/models/LongCat-Flash-Chat", headers=key)
    assert one.status == 200
    assert one.json()["id"] == "LongCat-Flash-Chat" and one.json()["object"] == "model"
    assert gw.request("GET", "/openai/models/LongCat-Flash-Chat", headers=key).status == 200
    missing = gw.request("GET", "/openai/v1/models/org/gpt-9", headers=key)
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert gw.request("GET", "/openai/v1/models/LongCat-Flash-Chat").status == 401
    assert gw.request("POST", "/openai/v1/models/LongCat-Flash-Chat", headers=key).status == 405

    one = gw.request("GET", "/anthropic/v1/models/LongCat-Flash-Chat", headers=key)
    assert one.status == 200
    assert one.json()["type"] == "model" and one.json()["display_name"] == "LongCat-Flash-Chat"
    assert one.json()["created_at"].endswith("Z")
    missing = gw.request("GET", "/anthropic/v1/models/gpt-9", headers=key)
    assert missing.status == 404
    assert missing.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "The model 'gpt-9' does not exist or is not available.",
        },
    }
