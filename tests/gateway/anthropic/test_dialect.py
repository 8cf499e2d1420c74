"""The /anthropic endpoints through the gateway application, in-process, over the demo upstream:
auth forms, errors in Anthropic's envelope, streaming, count_tokens, the probe, and that quota,
rate limits and usage records behave exactly as on the OpenAI side."""

import json
from pathlib import Path

import pytest

from gateway.serving.dialects.anthropic_signature import thinking_signature_valid
from keys.models import ApiKey
from usage.models import DailyUsage, UsageRecord
from usage.quota import quota_day

from .helpers import sdk_message, sse_events

MESSAGES = "/anthropic/v1/messages"
HELLO = {
    "model": "LongCat-Flash-Chat",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "Hello!"}],
}
FIXTURE = Path(__file__).parents[2] / "fixtures" / "claude_code_request.json"


def post(gw, key, payload=None, *, path=MESSAGES, headers=None, **kwargs):
    all_headers = {"anthropic-version": "2023-06-01"}
    all_headers.update(headers or {})
    return gw.chat(
        key, HELLO if payload is None else payload, path=path, headers=all_headers, **kwargs
    )


def records(user):
    return list(UsageRecord.objects.filter(user=user).order_by("created_at"))


def used_today(user):
    row = DailyUsage.objects.filter(user=user).first()
    return (row.input_tokens + row.output_tokens, row.reserved_tokens) if row else (0, 0)


def test_it_answers_a_message_and_records_it_like_the_openai_side(gw, alice_key):
    user, key = alice_key
    result = post(gw, key)
    assert result.status == 200, result.body
    message = result.json()
    assert message["type"] == "message"
    assert message["id"].startswith("msg_")
    assert message["model"] == "LongCat-Flash-Chat"
    assert message["content"][0]["text"].startswith("This is the demo model")
    assert message["stop_reason"] == "end_turn"
    assert "x-ratelimit-remaining-requests" in result.headers
    gw.flush()
    (record,) = records(user)
    assert record.endpoint == "anthropic.messages"
    assert record.status_code == 200
    assert not record.stream
    assert (record.input_tokens, record.output_tokens) == (
        message["usage"]["input_tokens"],
        message["usage"]["output_tokens"],
    )
    assert used_today(user) == (record.input_tokens + record.output_tokens, 0)


def test_it_streams_the_anthropic_event_sequence_and_charges_the_usage(gw, alice_key):
    user, key = alice_key
    result = post(gw, key, {**HELLO, "stream": True, "max_tokens": 5})
    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in sse_events(result.body)]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    message = sdk_message(result.body)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 5
    assert message.content[0].text == "This is the demo model"
    gw.flush()
    (record,) = records(user)
    assert record.stream
    assert record.output_tokens == 5
    assert record.endpoint == "anthropic.messages"
    assert used_today(user)[1] == 0  # no reservation left behind


def test_it_relays_chunks_as_they_come(gw, alice_key):
    _user, key = alice_key
    result = post(
        gw, key, {**HELLO, "stream": True, "max_tokens": 6}, headers={"x-demo-delay-ms": "5"}
    )
    # message_start, then each upstream chunk as its own send (no buffering).
    assert len(result.chunks) >= 7


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer {key}"},
        {"x-api-key": "{key}"},
        {"x-api-key": "Authorization: Bearer {key}"},
        {"x-api-key": "Authorization: Bearer {key}", "authorization": "Bearer {key}"},
        {"authorization": "Bearer {key}", "anthropic-beta": "whatever-2099-01-01"},
        {"x-api-key": "{key}", "anthropic-version": "1999-01-01"},
    ],
)
def test_it_accepts_every_auth_form_and_any_version_header(gw, alice_key, headers):
    _user, key = alice_key
    headers = {name: value.format(key=key) for name, value in headers.items()}
    result = post(gw, None, headers=headers)
    assert result.status == 200, result.body


def test_it_ignores_query_strings(gw, alice_key):
    _user, key = alice_key
    assert post(gw, key, query=b"beta=true").status == 200


def test_a_missing_key_is_401_in_anthropics_envelope_without_retry(gw, alice_key):
    result = post(gw, None)
    assert result.status == 401
    assert result.headers["x-should-retry"] == "false"
    body = result.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["message"]


def test_a_disabled_key_is_403_permission_error(gw, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(is_active=False)
    result = post(gw, key)
    assert result.status == 403
    assert result.json()["error"]["type"] == "permission_error"
    assert result.headers["x-should-retry"] == "false"


def test_a_bad_request_is_400_naming_the_field(gw, alice_key):
    _user, key = alice_key
    result = post(gw, key, {**HELLO, "messages": [{"role": "user", "content": [{"type": "text"}]}]})
    assert result.status == 400
    error = result.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("messages.0.content.0.text:")
    result = post(gw, key, b"{oops")
    assert result.status == 400
    assert result.json()["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_is_404_not_found_error(gw, alice_key):
    _user, key = alice_key
    result = post(gw, key, {**HELLO, "model": "claude-opus-9"})
    assert result.status == 404
    assert result.json()["error"]["type"] == "not_found_error"


def test_a_body_too_large_is_413(gw, alice_key, settings):
    _user, key = alice_key
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    gw.close()
    gw.__init__()
    result = post(gw, key, {**HELLO, "system": "x" * 2000})
    assert result.status == 413
    assert result.json()["error"]["type"] == "request_too_large"


def test_max_tokens_above_the_model_limit_is_clamped_not_refused(gw, alice_key):
    _user, key = alice_key
    result = post(gw, key, {**HELLO, "max_tokens": 32000}, headers={"x-demo-tokens": "3"})
    assert result.status == 200, result.body
    assert result.json()["usage"]["output_tokens"] == 3


def test_the_context_limit_error_uses_anthropics_wording(gw, alice_key):
    _user, key = alice_key
    # Certainly too long: even the low estimate (a token per 6 characters) is past the window.
    huge = "word " * 200_000
    result = post(gw, key, {**HELLO, "max_tokens": 32000, "system": huge})
    assert result.status == 400
    error = result.json()["error"]
    assert error["type"] == "invalid_request_error"
    prefix = "input length and `max_tokens` exceed context limit: "
    assert error["message"].startswith(prefix)
    numbers = error["message"][len(prefix) :].split(",")[0]
    left, limit = numbers.split(" > ")
    estimate, output = (int(n) for n in left.split(" + "))
    assert output == 8192  # already clamped to the model's maximum
    assert int(limit) == 131072
    assert estimate + output > int(limit)


def test_rate_limits_answer_429_with_the_same_headers_as_openai(
    one_rate_window, gw, alice_key, settings
):
    _user, key = alice_key
    ApiKey.objects.filter(user=alice_key[0]).update(rate_limit_rpm=1)
    gw.close()
    gw.__init__()
    assert post(gw, key).status == 200
    result = post(gw, key)
    assert result.status == 429
    assert result.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(result.headers["retry-after"]) <= 60
    assert int(result.headers["retry-after-ms"]) > 0
    assert "x-ratelimit-limit-requests" in result.headers


def test_an_exhausted_quota_is_429_without_retry(gw, alice_key, settings):
    user, key = alice_key
    settings.DAILY_FREE_QUOTA = 1000
    DailyUsage.objects.create(user=user, day=quota_day(), input_tokens=600, output_tokens=400)
    result = post(gw, key)
    assert result.status == 429
    assert result.json()["error"]["type"] == "rate_limit_error"
    assert result.headers["x-should-retry"] == "false"
    assert int(result.headers["retry-after"]) > 0
    gw.flush()
    assert [r.error_code for r in records(user)] == ["insufficient_quota"]


def test_an_upstream_failure_is_502_api_error(gw, alice_key):
    _user, key = alice_key
    result = post(gw, key, headers={"x-demo-fault": "error500"})
    assert result.status == 502
    assert result.json()["error"]["type"] == "api_error"


def test_an_overloaded_upstream_is_529_overloaded_error(gw, alice_key):
    _user, key = alice_key
    result = post(gw, key, headers={"x-demo-fault": "overloaded"})
    assert result.status == 529
    assert result.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": result.json()["error"]["message"]},
    }
    assert result.headers["retry-after"] == "5"


def test_a_stream_cut_midway_ends_with_an_error_event_and_charges_what_came(gw, alice_key):
    user, key = alice_key
    result = post(gw, key, {**HELLO, "stream": True}, headers={"x-demo-fault": "cut"})
    assert result.status == 200
    events = sse_events(result.body)
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    gw.flush()
    (record,) = records(user)
    assert record.status_code == 502
    assert record.output_tokens > 0
    assert used_today(user)[1] == 0


def test_it_pings_during_long_upstream_silences(gw, alice_key, settings):
    _user, key = alice_key
    settings.GATEWAY_STREAM_PING_SECONDS = 0.05
    result = post(
        gw, key, {**HELLO, "stream": True, "max_tokens": 2}, headers={"x-demo-delay-ms": "300"}
    )
    names = [name for name, _ in sse_events(result.body)]
    assert "ping" in names
    assert names.index("ping") > names.index("message_start")
    assert names[-1] == "message_stop"
    assert sdk_message(result.body).usage.output_tokens == 2


def test_it_does_not_ping_a_stream_that_keeps_flowing(gw, alice_key, settings):
    _user, key = alice_key
    settings.GATEWAY_STREAM_PING_SECONDS = 5
    result = post(gw, key, {**HELLO, "stream": True, "max_tokens": 3})
    assert "ping" not in [name for name, _ in sse_events(result.body)]


# --- count_tokens, models, probe -------------------------------------------------------------
def test_count_tokens_returns_the_quota_estimate_and_costs_nothing(gw, alice_key):
    user, key = alice_key
    payload = {"model": "LongCat-Flash-Chat", "messages": HELLO["messages"], "system": "Be brief."}
    result = post(gw, key, payload, path="/anthropic/v1/messages/count_tokens")
    assert result.status == 200, result.body
    counted = result.json()["input_tokens"]
    assert counted > 0
    # The same estimate the quota reserves for the same request (its message_start shows it).
    streamed = post(gw, key, {**payload, "max_tokens": 1, "stream": True})
    start = sse_events(streamed.body)[0][1]
    assert start["message"]["usage"]["input_tokens"] == counted
    gw.flush()
    # Recorded (it is rate-limited and costs CPU) under its own endpoint, charging nothing.
    rows = sorted(records(user), key=lambda r: r.endpoint)
    assert [r.endpoint for r in rows] == ["anthropic.count_tokens", "anthropic.messages"]
    assert (rows[0].input_tokens, rows[0].output_tokens) == (0, 0)


def test_count_tokens_needs_a_valid_key_and_a_known_model(gw, alice_key):
    _user, key = alice_key
    path = "/anthropic/v1/messages/count_tokens"
    payload = {"model": "LongCat-Flash-Chat", "messages": HELLO["messages"]}
    result = post(gw, None, payload, path=path)
    assert result.status == 401
    assert result.json()["error"]["type"] == "authentication_error"
    assert post(gw, "sk-" + "x" * 43, payload, path=path).status == 401
    assert post(gw, key, {**payload, "model": "nope"}, path=path).status == 404
    bad = post(gw, key, {"model": "LongCat-Flash-Chat"}, path=path)
    assert bad.status == 400
    assert bad.json()["error"]["message"].startswith("messages:")


def test_count_tokens_is_higher_for_more_text(gw, alice_key):
    _user, key = alice_key
    path = "/anthropic/v1/messages/count_tokens"
    small = post(gw, key, {"model": "LongCat-Flash-Chat", "messages": HELLO["messages"]}, path=path)
    tools = [
        {"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
    ]
    big = post(
        gw,
        key,
        {"model": "LongCat-Flash-Chat", "messages": HELLO["messages"], "tools": tools},
        path=path,
    )
    assert big.json()["input_tokens"] > small.json()["input_tokens"]


@pytest.mark.parametrize("path", ["/anthropic", "/anthropic/"])
@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_the_base_url_answers_200_without_a_key(gw, method, path):
    assert gw.request(method, path).status == 200


def test_the_models_list_needs_a_key_and_names_the_catalog(gw, alice_key):
    _user, key = alice_key
    assert gw.request("GET", "/anthropic/v1/models").status == 401
    result = gw.request("GET", "/anthropic/v1/models", headers={"x-api-key": key})
    assert result.status == 200
    assert [m["id"] for m in result.json()["data"]] == ["LongCat-Flash-Chat"]


def test_an_unknown_path_is_404_in_anthropics_envelope(gw):
    result = gw.request("POST", "/anthropic/v1/complete")
    assert result.status == 404
    assert result.json()["type"] == "error"
    assert result.json()["error"]["type"] == "not_found_error"


def test_it_never_echoes_the_key_in_an_error(gw, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(is_active=False)
    for result in (post(gw, key), post(gw, key + "x"), post(gw, None, headers={"x-api-key": key})):
        assert key not in result.body.decode()


# --- the recorded Claude Code request ------------------------------------------------------------
def test_it_answers_the_recorded_claude_code_request(gw, alice_key):
    user, key = alice_key
    recorded = json.loads(FIXTURE.read_text())
    body = json.dumps(recorded["body"]).encode()
    assert len(body) > 70_000
    assert len(recorded["body"]["tools"]) == 24
    headers = {**recorded["headers"], "content-type": "application/json"}
    result = post(gw, key, body, headers=headers, query=b"beta=true")
    assert result.status == 200, result.body[:500]
    message = sdk_message(result.body)
    # Claude Code asks for (adaptive) thinking: the demo model reasons first, signed.
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert thinking_signature_valid(message.content[0].signature, message.content[0].thinking)
    assert message.content[1].text.startswith("This is the demo model")
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    gw.flush()
    (record,) = records(user)
    assert record.endpoint == "anthropic.messages"
    assert record.stream
    assert record.input_tokens > 3_000  # the big system prompt reached the upstream
    assert record.output_tokens == message.usage.output_tokens


def test_it_sends_anthropic_s_request_id_and_rate_limit_headers(gw, alice_key):
    import re

    for payload in (HELLO, {**HELLO, "stream": True}):
        result = post(gw, alice_key[1], payload)
        assert result.status == 200
        headers = result.headers
        assert re.fullmatch(r"req_[A-Za-z0-9._:\-]{8,}", headers["request-id"])
        assert (
            headers["anthropic-ratelimit-requests-limit"] == headers["x-ratelimit-limit-requests"]
        )
        assert int(headers["anthropic-ratelimit-requests-remaining"]) >= 0
        assert int(headers["anthropic-ratelimit-tokens-limit"]) > 0
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", headers["anthropic-ratelimit-tokens-reset"]
        )
    refused = post(gw, None)
    assert refused.status == 401 and refused.headers["request-id"].startswith("req_")
    assert "request-id" not in gw.chat(alice_key[1]).headers  # the OpenAI side: its own
