"""Golden tests: OpenAI chat-completions response → Anthropic message, and error envelopes."""

import pytest
from anthropic.types import Message

from gateway.serving.dialects.anthropic_translate import (
    context_limit_message,
    error_body,
    message_from_chat_response,
)


def chat_response(message, finish_reason="stop", usage=None, **choice):
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, **choice}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def test_it_translates_a_text_answer():
    out = message_from_chat_response(
        chat_response({"role": "assistant", "content": "Hello there."}),
        model="LongCat-Flash-Chat",
        message_id="msg_1",
    )
    assert out == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "LongCat-Flash-Chat",
        "content": [{"type": "text", "text": "Hello there."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    Message.model_validate(out)  # the SDK's own type accepts it


def test_it_generates_message_ids():
    one = message_from_chat_response(chat_response({"content": "a"}), model="m")
    two = message_from_chat_response(chat_response({"content": "a"}), model="m")
    assert one["id"].startswith("msg_")
    assert one["id"] != two["id"]


def test_it_translates_tool_calls_with_parsed_input():
    out = message_from_chat_response(
        chat_response(
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {"type": "function", "function": {"name": "now", "arguments": ""}},
                    {"id": "call_3", "function": {"name": "bad", "arguments": "{not json"}},
                ],
            },
            finish_reason="tool_calls",
        ),
        model="m",
    )
    assert out["stop_reason"] == "tool_use"
    assert out["content"][0] == {"type": "text", "text": "Let me look."}
    assert out["content"][1] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert out["content"][2]["id"].startswith("toolu_")
    assert out["content"][2]["input"] == {}
    assert out["content"][3]["input"] == {}
    Message.model_validate(out)


def test_it_says_tool_use_when_an_upstream_reports_stop_with_tool_calls():
    out = message_from_chat_response(
        chat_response(
            {
                "content": None,
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
            }
        ),
        model="m",
    )
    assert out["stop_reason"] == "tool_use"
    assert out["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_it_maps_finish_reasons(finish, expected):
    out = message_from_chat_response(chat_response({"content": "x"}, finish), model="m")
    assert out["stop_reason"] == expected


def test_it_reports_the_stop_sequence_an_upstream_says_matched():
    out = message_from_chat_response(
        chat_response({"content": "one two"}, "stop", stop_reason="END"),
        model="m",
        stop_sequences=("END",),
    )
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")


def test_it_enforces_a_stop_sequence_an_upstream_ignored():
    out = message_from_chat_response(
        chat_response({"content": "one two END three"}, "length"),
        model="m",
        stop_sequences=("three", "END"),
    )
    assert out["content"] == [{"type": "text", "text": "one two "}]
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")


def test_it_keeps_reasoning_only_when_thinking_was_asked_for():
    response = chat_response({"content": "42", "reasoning_content": "6 times 7"})
    assert [b["type"] for b in message_from_chat_response(response, model="m")["content"]] == [
        "text"
    ]
    out = message_from_chat_response(
        response, model="m", thinking=True, sign=lambda text: f"sig({text})"
    )
    assert out["content"][0] == {
        "type": "thinking",
        "thinking": "6 times 7",
        "signature": "sig(6 times 7)",
    }
    Message.model_validate(out)


def test_it_survives_an_empty_answer():
    out = message_from_chat_response({"choices": [], "usage": None}, model="m")
    assert out["content"] == []
    assert out["usage"]["output_tokens"] == 0
    Message.model_validate(out)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (529, "overloaded_error"),
        (418, "invalid_request_error"),
    ],
)
def test_it_builds_the_error_envelope(status, error_type):
    assert error_body(status, "nope") == {
        "type": "error",
        "error": {"type": error_type, "message": "nope"},
    }


def test_it_words_the_context_limit_like_anthropic():
    message = context_limit_message(input_tokens=120000, max_tokens=8192, context_window=128000)
    assert message.startswith(
        "input length and `max_tokens` exceed context limit: 120000 + 8192 > 128000"
    )


@pytest.mark.parametrize(
    ("choice", "content"),
    [
        ({"stop_reason": "END"}, "one two"),  # vLLM names the stop string
        ({"matched_stop": "END"}, "one two"),  # SGLang too, under its own name
        ({}, "one twoEND"),  # an OpenAI-style server that reports nothing but keeps the stop
    ],
    ids=["vllm", "sglang", "unreported"],
)
def test_it_finds_the_stop_sequence_however_the_upstream_reports_it(choice, content):
    out = message_from_chat_response(
        chat_response({"content": content}, "stop", **choice),
        model="m",
        stop_sequences=["END"],
    )
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    assert out["content"] == [{"type": "text", "text": "one two"}]


def test_it_ends_the_turn_when_a_token_id_stopped_it():
    # vLLM and SGLang give the token id when an end-of-sequence token (not a string) matched.
    for choice in ({"stop_reason": 151645}, {"matched_stop": 151645}):
        out = message_from_chat_response(
            chat_response({"content": "done"}, "stop", **choice), model="m", stop_sequences=["X"]
        )
        assert (out["stop_reason"], out["stop_sequence"]) == ("end_turn", None)


def test_it_reports_cached_prompt_tokens_as_cache_reads():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    out = message_from_chat_response(chat_response({"content": "hi"}, usage=usage), model="m")
    Message.model_validate(out)
    assert out["usage"] == {
        "input_tokens": 36,
        "output_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 64,
    }
