"""The Responses endpoint through the whole gateway (demo upstream): answers, streams, records,
quota and errors in OpenAI's envelope."""

import json

from usage.models import DailyUsage, UsageRecord

from .helpers import sdk_events, sdk_response

PATH = "/openai/v1/responses"


def _payload(**extra):
    return {"model": "LongCat-Flash-Chat", "input": "Hello!", "max_output_tokens": 10, **extra}


def test_it_answers_a_plain_response_and_records_it(gw, alice_key):
    user, key = alice_key
    result = gw.chat(key, _payload(instructions="Be brief."), path=PATH)
    assert result.status == 200, result.body
    body = result.json()
    assert sdk_response(body).output_text.startswith("This is the demo model")
    assert body["object"] == "response" and body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["model"] == "LongCat-Flash-Chat"
    [item] = body["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"][0]["text"].startswith("This is the demo model")
    usage = body["usage"]
    assert usage["output_tokens"] == 10
    assert usage["total_tokens"] == usage["input_tokens"] + 10
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    gw.flush()
    record = UsageRecord.objects.get()
    assert (record.endpoint, record.status_code, record.stream) == ("openai.responses", 200, False)
    counter = DailyUsage.objects.get(user=user)
    assert counter.input_tokens + counter.output_tokens == usage["total_tokens"]
    assert counter.reserved_tokens == 0


def test_it_streams_the_event_sequence_and_charges_it(gw, alice_key):
    user, key = alice_key
    result = gw.chat(key, _payload(stream=True, max_output_tokens=5), path="/openai/responses")
    assert result.status == 200
    events = sdk_events(result.body)
    names = [e.type for e in events]
    assert names[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 5
    gw.flush()
    record = UsageRecord.objects.get()
    assert (record.endpoint, record.stream, record.output_tokens) == ("openai.responses", True, 5)
    assert DailyUsage.objects.get(user=user).reserved_tokens == 0


def test_it_refuses_previous_response_id_with_a_clear_400(gw, alice_key):
    result = gw.chat(alice_key[1], _payload(previous_response_id="resp_1"), path=PATH)
    assert result.status == 400
    error = result.json()["error"]
    assert error["param"] == "previous_response_id"
    assert "not supported" in error["message"] and "full input" in error["message"]


def test_it_answers_errors_in_openai_s_envelope(gw, alice_key):
    key = alice_key[1]
    assert gw.chat(None, _payload(), path=PATH).status == 401
    missing = gw.chat(key, _payload(model="gpt-9"), path=PATH)
    assert missing.status == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = gw.chat(key, _payload(input=[{"type": "message", "role": "robot"}]), path=PATH)
    assert bad.status == 400 and bad.json()["error"]["param"] == "input[0].role"
    assert gw.request("GET", PATH, headers={"authorization": f"Bearer {key}"}).status == 405


def test_it_fails_a_stream_with_error_and_response_failed_events(gw, alice_key):
    user, key = alice_key
    result = gw.chat(key, _payload(stream=True), path=PATH, headers={"x-demo-fault": "cut"})
    events = sdk_events(result.body)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.status == "failed"
    assert DailyUsage.objects.get(user=user).reserved_tokens == 0


def test_it_sends_reasoning_effort_and_tools_upstream(gw, alice_key):
    payload = _payload(
        reasoning={"effort": "low"},
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    result = gw.chat(alice_key[1], payload, path=PATH)
    assert result.status == 200
    assert json.loads(result.body)["tools"][0]["name"] == "get_weather"
