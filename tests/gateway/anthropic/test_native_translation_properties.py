"""Property tests of the way to an Anthropic-native upstream: any valid Messages request, taken
to chat completions (as an OpenAI-format client would send it) and on to a native upstream,
is a request Anthropic's own types accept, with alternating turns, no empty text, every tool
call answered in the next turn, and no text lost."""

import json

from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from hypothesis import given
from pydantic import TypeAdapter

from gateway.serving.dialects.anthropic_native import messages_request_from_chat
from gateway.serving.dialects.anthropic_schema import messages_request_parse
from gateway.serving.dialects.anthropic_translate import chat_request_from_messages

from .test_translation_properties import SETTINGS, messages_request

_REQUEST = TypeAdapter(MessageCreateParamsNonStreaming)


def _texts(body: dict) -> list[str]:
    """Every text of a Messages request: system, text blocks, tool results."""
    system = body.get("system") or []
    texts = [system] if isinstance(system, str) else [block["text"] for block in system]
    for message in body["messages"]:
        content = message["content"]
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            if block["type"] == "text":
                texts.append(block["text"])
            elif block["type"] == "tool_result":
                result = block.get("content") or []
                texts.extend([result] if isinstance(result, str) else [b["text"] for b in result])
    return texts


@SETTINGS
@given(messages_request())
def test_any_request_reaches_a_native_upstream_valid_and_whole(body):
    chat = chat_request_from_messages(messages_request_parse(json.dumps(body).encode())).body
    native = messages_request_from_chat(chat, model="claude-x", max_tokens=body["max_tokens"])
    _REQUEST.validate_python({**native, "stream": False}, strict=False)
    messages = native["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + (
        ["user"] if len(messages) % 2 else []
    )
    calls: set = set()
    for message in messages:
        assert message["content"]
        for block in message["content"]:
            assert block["type"] != "text" or block["text"]
            if block["type"] == "tool_use":
                calls.add(block["id"])
            elif block["type"] == "tool_result":
                assert block["tool_use_id"] in calls  # answers a call made before
    # Nothing is lost on the way (texts may be joined: a system prompt, turns merged).
    sent = "\x00".join(_texts(native))
    for text in _texts(body):
        assert text in sent
