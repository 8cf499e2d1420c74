"""Review of the Anthropic-native exchange: failing tests for edge cases."""

import json

from gateway.serving.dialects.base import UpstreamTarget
from gateway.serving.exchange import AnthropicPassThrough


class _Chat:
    input_tokens = 10


class _Dialect:
    upstream_path = "/chat/completions"


def test_a_null_field_in_message_delta_usage_does_not_erase_message_start_input():
    """MessageDeltaUsage's input/cache fields are optional (null or absent); some
    Anthropic-compatible servers write them as null. dict.update lets the null erase the
    input message_start reported, and the stream is charged no input at all."""
    exchange = AnthropicPassThrough(_Dialect(), _Chat(), UpstreamTarget("m", "m", 100), None)
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 5_000, "cache_read_input_tokens": 2_000,
                              "output_tokens": 1}},
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 40},
    }
    exchange.chunk_usage(json.dumps(start).encode())
    _parsed, usage = exchange.chunk_usage(json.dumps(delta).encode())
    assert (usage.input_tokens, usage.output_tokens) == (7_000, 40)


def test_thinking_is_not_asked_for_with_a_forced_tool_choice():
    """Anthropic refuses thinking with tool_choice any/tool ("Thinking may not be enabled when
    tool_choice forces tool use"): an OpenAI client's reasoning_effort with tool_choice
    'required' (or a named function) gets a 400 from the upstream for a valid request."""
    from gateway.serving.dialects.anthropic_native import messages_request_from_chat

    chat = {
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
        "tool_choice": "required",
        "reasoning_effort": "high",
    }
    body = messages_request_from_chat(chat, model="m", max_tokens=32_000)
    assert not ("thinking" in body and body["tool_choice"]["type"] in ("any", "tool"))
