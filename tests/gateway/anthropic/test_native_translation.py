"""Golden tests: chat completions → an Anthropic-native upstream and back (``anthropic_native``),
and the pass-through body an Anthropic client's request becomes."""

import json

import pytest
from anthropic.types.message_create_params import MessageCreateParamsStreaming as Streaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.serving.dialects.anthropic import AnthropicDialect
from gateway.serving.dialects.anthropic_native import (
    ChatChunkTranslator,
    billed_beyond_translation,
    chat_completion_from_message,
    chat_usage,
    merge_usage,
    messages_request_from_chat,
    passthrough_body,
    usage_of,
)
from gateway.serving.dialects.anthropic_signature import thinking_signature
from gateway.serving.dialects.anthropic_translate import url_document_note
from gateway.serving.dialects.base import Usage
from gateway.serving.tokens import (
    ANTHROPIC_IMAGE_TOKENS,
    IMAGE_TOKENS,
    estimate_chat_tokens,
    estimate_chat_tokens_min,
)

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}
USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 20,
    "cache_read_input_tokens": 30,
    "output_tokens": 7,
}


def test_a_whole_conversation_becomes_a_messages_request():
    chat = {
        "model": "ignored",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                ],
            },
            {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 °C"},
            {"role": "user", "content": "Thanks. And tomorrow?"},
            {"role": "assistant", "content": ""},
        ],
        "max_tokens": 99,
        "stop": "END",
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "temperature": 0.4,
        "top_p": 0.9,
        "user": "u-1",
        "n": 1,
        "seed": 7,
        "presence_penalty": 0.5,
        "response_format": {"type": "json_object"},
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = messages_request_from_chat(chat, model="claude-x", max_tokens=500)
    assert body == {
        "model": "claude-x",
        "max_tokens": 500,
        "system": "Be brief.\n\nUse metric units.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/a.jpg"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                # The tool result and the next user text: one user turn, the result first.
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18 °C"},
                    {"type": "text", "text": "Thanks. And tomorrow?"},
                ],
            },
        ],
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "get_weather",
                "input_schema": TOOL["function"]["parameters"],
                "description": "Current weather",
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-1"},
        "stream": True,
    }
    # Only fields the Anthropic SDK's own request type has.
    assert set(body) <= Streaming.__required_keys__ | Streaming.__optional_keys__


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_tool_choice(choice, parallel, expected):
    chat = {"messages": [{"role": "user", "content": "Hi"}], "tools": [TOOL]}
    if choice is not None:
        chat["tool_choice"] = choice
    if parallel is not None:
        chat["parallel_tool_calls"] = parallel
    body = messages_request_from_chat(chat, model="m", max_tokens=10)
    assert body.get("tool_choice") == expected


@pytest.mark.parametrize(
    ("effort", "max_tokens", "thinking"),
    [
        ("low", 4096, {"type": "enabled", "budget_tokens": 2048}),
        ("high", 4096, {"type": "enabled", "budget_tokens": 4095}),
        ("medium", 1024, None),  # not even the minimum budget fits below max_tokens
        ("none", 4096, None),
        (None, 4096, None),
    ],
)
def test_a_reasoning_effort_becomes_thinking(effort, max_tokens, thinking):
    chat = {"messages": [{"role": "user", "content": "Hi"}], "temperature": 1.7, "top_k": 40}
    if effort is not None:
        chat["reasoning_effort"] = effort
    body = messages_request_from_chat(chat, model="m", max_tokens=max_tokens)
    assert body.get("thinking") == thinking
    assert not {"temperature", "top_k", "reasoning_effort"} & set(body)


def test_answering_tool_calls_goes_without_thinking():
    """Anthropic wants the turn's signed thinking back there, which OpenAI clients cannot keep."""
    chat = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18 °C"},
        ],
        "reasoning_effort": "high",
    }
    assert "thinking" not in messages_request_from_chat(chat, model="m", max_tokens=4096)
    chat["messages"].append({"role": "assistant", "content": "18 °C."})
    chat["messages"].append({"role": "user", "content": "And tomorrow?"})
    assert "thinking" in messages_request_from_chat(chat, model="m", max_tokens=4096)


@pytest.mark.parametrize(
    ("choice", "thinks"),
    [
        ("auto", True),
        ("none", True),
        ("required", False),
        ({"type": "function", "function": {"name": "get_weather"}}, False),
    ],
)
def test_a_tool_choice_that_forces_a_tool_goes_without_thinking(choice, thinks):
    """Anthropic refuses thinking with tool_choice any or tool."""
    chat = {
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [TOOL],
        "tool_choice": choice,
        "reasoning_effort": "high",
    }
    assert ("thinking" in messages_request_from_chat(chat, model="m", max_tokens=4096)) is thinks


@pytest.mark.parametrize(
    ("parameters", "schema"),
    [
        ({}, {"type": "object"}),
        (None, {"type": "object"}),
        ({"properties": {"a": {}}}, {"properties": {"a": {}}, "type": "object"}),
        (TOOL["function"]["parameters"], TOOL["function"]["parameters"]),
    ],
)
def test_a_tool_schema_is_an_object_schema(parameters, schema):
    function = {"name": "f"} if parameters is None else {"name": "f", "parameters": parameters}
    chat = {"messages": [{"role": "user", "content": "Hi"}], "tools": [{"function": function}]}
    (tool,) = messages_request_from_chat(chat, model="m", max_tokens=10)["tools"]
    assert tool == {"name": "f", "input_schema": schema}


def test_a_message_becomes_a_chat_completion():
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": USAGE,
    }
    completion = chat_completion_from_message(message)
    ChatCompletion.model_validate(completion)  # the OpenAI SDK's own type
    assert completion["id"] == "msg_1" and completion["model"] == "claude-x"
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me check.",
                "reasoning_content": "Hmm.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "finish_reason": "tool_calls",
        }
    ]
    assert completion["usage"] == {
        "prompt_tokens": 60,
        "completion_tokens": 7,
        "total_tokens": 67,
        "prompt_tokens_details": {"cached_tokens": 30},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reasons(stop_reason, finish_reason):
    message = {"content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason}
    assert chat_completion_from_message(message)["choices"][0]["finish_reason"] == finish_reason


STREAM = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x",
            "content": [],
            "stop_reason": None,
            "usage": {**USAGE, "output_tokens": 1},
        },
    },
    {"type": "ping"},
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "Hm"},
    },
    {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "signature_delta", "signature": "s"},
    },
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
    },
    {
        "type": "content_block_delta",
        "index": 2,
        "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
    },
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 7},
    },
    {"type": "message_stop"},
]


def test_a_stream_becomes_chat_chunks():
    translator = ChatChunkTranslator()
    chunks = [chunk for event in STREAM for chunk in translator.feed(event)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)  # the OpenAI SDK's own type
    assert {(c["id"], c["model"]) for c in chunks} == {("msg_1", "claude-x")}
    assert [c["choices"][0]["delta"] if c["choices"] else c["usage"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "Hm"},
        {"content": "Hi"},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {},
        {
            "prompt_tokens": 60,
            "completion_tokens": 7,
            "total_tokens": 67,
            "prompt_tokens_details": {"cached_tokens": 30},
        },
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert translator.done


def test_without_usage_neither_completion_nor_stream_makes_one_up():
    """Zeros would be charged as the upstream's report; none leaves the gateway's estimate."""
    message = {"id": "msg_1", "content": [{"type": "text", "text": "Hi"}], "stop_reason": None}
    assert "usage" not in chat_completion_from_message(message)
    translator = ChatChunkTranslator()
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "model": "m"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
        {"type": "message_stop"},
    ]
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    assert not any("usage" in chunk for chunk in chunks) and translator.done


def test_usage_counts_merge_and_null_ones_do_not_erase():
    usage = {"input_tokens": 5_000, "cache_read_input_tokens": 2_000, "output_tokens": 1}
    update = {"input_tokens": None, "cache_read_input_tokens": 1_000, "output_tokens": 40}
    assert merge_usage(usage, {**update, "server_tool_use": {"web_search_requests": 1}}) == {
        "input_tokens": 5_000,
        "cache_read_input_tokens": 2_000,
        "output_tokens": 40,
    }


def test_usage_counts_the_cache_as_input_and_its_reads_as_cached():
    assert usage_of(USAGE) == Usage(60, 7, cached_input_tokens=30)
    assert usage_of({"input_tokens": 5, "output_tokens": 2}) == Usage(5, 2)
    assert usage_of({"input_tokens": -3, "output_tokens": "x"}) == Usage(0, 0)
    assert usage_of(None) is None
    assert chat_usage(None)["prompt_tokens"] == 0


def test_the_passthrough_body_keeps_everything_but_model_budget_and_our_thinking():
    ours = {"type": "thinking", "thinking": "Old.", "signature": thinking_signature("Old.", "M")}
    theirs = {"type": "thinking", "thinking": "Mine.", "signature": "EqQBupstream"}
    native = {
        "model": "M",
        "max_tokens": 32_000,
        "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": [ours]},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": [theirs, {"type": "text", "text": "A2"}]},
            {"role": "user", "content": [{"type": "server_tool_use_result", "x": 1}]},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 16_000},
        "service_tier": "auto",
    }
    original = json.dumps(native)
    body = passthrough_body(native, model="claude-x", max_tokens=8192)
    assert json.dumps(native) == original  # the client's request is not changed in place
    assert body == {
        "model": "claude-x",
        "max_tokens": 8192,
        "system": native["system"],
        "messages": [native["messages"][0], *native["messages"][2:]],
        "thinking": {"type": "enabled", "budget_tokens": 8191},
        "service_tier": "auto",
    }
    assert "thinking" not in passthrough_body(native, model="m", max_tokens=1024)
    with_system = {**native, "messages": [*native["messages"], {"role": "system", "content": "X"}]}
    assert passthrough_body(with_system, model="m", max_tokens=8192)["system"] == [
        *native["system"],
        {"type": "text", "text": "X"},
    ]
    adaptive = {**native, "thinking": {"type": "adaptive"}}
    assert passthrough_body(adaptive, model="m", max_tokens=500)["thinking"] == {"type": "adaptive"}


WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
CLIENT_TOOL = {"name": "get_weather", "input_schema": {"type": "object"}}
URL_DOCUMENT = {
    "type": "document",
    "source": {"type": "url", "url": "https://example.com/a.pdf"},
    "context": "The annual report.",
    "cache_control": {"type": "ephemeral"},
}
URL_NOTE = {
    "type": "text",
    "text": "The annual report.\n\n" + url_document_note("https://example.com/a.pdf"),
    "cache_control": {"type": "ephemeral"},
}


def test_the_passthrough_drops_what_the_translation_drops_and_cannot_be_reserved():
    """Server tools, MCP servers, a container, a document by URL: Anthropic would run or fetch
    them and bill what the gateway could not reserve; the translation leaves them out too."""
    native = {
        "model": "M",
        "max_tokens": 100,
        "messages": [
            {"role": "user", "content": [URL_DOCUMENT, {"type": "text", "text": "Sum it up."}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [URL_DOCUMENT]}
                ],
            },
        ],
        "tools": [WEB_SEARCH, CLIENT_TOOL],
        "tool_choice": {"type": "tool", "name": "web_search"},
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "x"}],
        "container": "container_1",
    }
    body = passthrough_body(native, model="m", max_tokens=100)
    assert body["tools"] == [CLIENT_TOOL]
    assert not {"tool_choice", "mcp_servers", "container"} & set(body)
    assert body["messages"][0]["content"] == [URL_NOTE, {"type": "text", "text": "Sum it up."}]
    assert body["messages"][2]["content"][0]["content"] == [URL_NOTE]
    # The translation's note is the same text.
    translated = AnthropicDialect().parse_chat(json.dumps(native).encode(), b"").body.body
    assert URL_NOTE["text"] in translated["messages"][0]["content"]
    # Only server tools: no tools, no tool choice; a choice of a client tool stays.
    only_server = {**native, "tools": [WEB_SEARCH], "tool_choice": {"type": "any"}}
    assert not {"tools", "tool_choice"} & set(
        passthrough_body(only_server, model="m", max_tokens=9)
    )
    kept = {**native, "tool_choice": {"type": "tool", "name": "get_weather"}}
    assert passthrough_body(kept, model="m", max_tokens=9)["tool_choice"] == kept["tool_choice"]
    assert passthrough_body({**native, "tool_choice": {"type": "auto"}}, model="m", max_tokens=9)[
        "tool_choice"
    ] == {"type": "auto"}


def test_the_reservation_counts_what_a_native_upstream_bills_beyond_the_translation():
    """An image by URL at Anthropic's largest image cost, a block the translation shortens at
    its full length; the lower bound (the context check) is unchanged."""
    long_result = {
        "type": "web_fetch_tool_result",
        "tool_use_id": "srvtoolu_1",
        "content": {"type": "web_fetch_result", "url": "https://x", "content": "word " * 20_000},
    }
    url_image = {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}
    data_image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    plain = {"model": "M", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    assert billed_beyond_translation(plain) == 0
    images = {
        **plain,
        "messages": [
            {"role": "user", "content": [url_image, data_image]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": [url_image]}],
            },
        ],
    }
    assert billed_beyond_translation(images) == 2 * (ANTHROPIC_IMAGE_TOKENS - IMAGE_TOKENS)
    history = {
        **plain,
        "messages": [
            {"role": "user", "content": "Fetch it."},
            {"role": "assistant", "content": [long_result]},
            {"role": "user", "content": "Thanks."},
        ],
    }
    parsed = AnthropicDialect().parse_chat(json.dumps(history).encode(), b"")
    messages = parsed.body.body["messages"]
    # 100,000 characters of page, of which the translation's note keeps 4,000.
    assert billed_beyond_translation(history) > 30_000
    assert parsed.input_tokens == estimate_chat_tokens(messages) + billed_beyond_translation(
        history
    )
    # The lower bound (computed when the context check needs it) keeps only what is surely sent.
    assert parsed.estimate_min() == estimate_chat_tokens_min(messages) < 1_000
