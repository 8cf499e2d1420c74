"""Property tests: any valid Messages request becomes a valid chat-completions request without
losing text or tool content; any chat answer comes back (streamed or not) with the same content;
and no input whatsoever makes the parser raise anything but a 400 naming a field."""

import itertools
import json
import os

from anthropic.types import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.serving.dialects.anthropic import _TEXT_ONLY_CHUNK
from gateway.serving.dialects.anthropic_schema import MessagesRequestError, messages_request_parse
from gateway.serving.dialects.anthropic_translate import (
    MessageStreamTranslator,
    chat_request_from_messages,
    message_from_chat_response,
)
from gateway.serving.dialects.base import Usage

from .helpers import assert_valid_chat_request, sdk_message, sse_events

# More examples for a deeper local run: HYPOTHESIS_MAX_EXAMPLES=2000 pytest ...
SETTINGS = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

text = st.text(min_size=1, max_size=40)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
tool_inputs = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
cache_control = st.sampled_from([{}, {"cache_control": {"type": "ephemeral"}}])


@st.composite
def text_block(draw):
    return {"type": "text", "text": draw(text), **draw(cache_control)}


@st.composite
def image_block(draw):
    if draw(st.booleans()):
        source = {
            "type": "base64",
            "media_type": "image/png",
            "data": draw(st.from_regex(r"[A-Za-z0-9+/]{4,20}", fullmatch=True)),
        }
    else:
        source = {"type": "url", "url": "https://img.test/" + draw(names)}
    return {"type": "image", "source": source}


@st.composite
def conversation(draw):
    """Alternating turns; every tool_use is answered by a tool_result in the next user turn."""
    tools = draw(st.lists(names, min_size=0, max_size=3, unique=True))
    messages = []
    pending: list[str] = []
    call_number = 0
    for turn in range(draw(st.integers(1, 6))):
        if turn % 2 == 0:
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": call_id,
                    "is_error": draw(st.booleans()),
                    "content": draw(text | st.lists(text_block(), min_size=1, max_size=2)),
                }
                for call_id in pending
            ]
            pending = []
            blocks += draw(
                st.lists(text_block() | image_block(), min_size=0 if blocks else 1, max_size=3)
            )
            content = blocks
            if len(blocks) == 1 and blocks[0]["type"] == "text" and draw(st.booleans()):
                content = blocks[0]["text"]
            messages.append({"role": "user", "content": content})
            if draw(st.integers(0, 5)) == 0:
                messages.append({"role": "system", "content": draw(text)})
        else:
            blocks = draw(st.lists(text_block(), max_size=2))
            if tools:
                for _ in range(draw(st.integers(0, 2))):
                    call_number += 1
                    call_id = f"toolu_{call_number}"
                    pending.append(call_id)
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": call_id,
                            "name": draw(st.sampled_from(tools)),
                            "input": draw(tool_inputs),
                        }
                    )
            if not blocks:
                blocks = [{"type": "text", "text": draw(text)}]
            messages.append({"role": "assistant", "content": blocks})
    return tools, messages


@st.composite
def messages_request(draw):
    tools, messages = draw(conversation())
    body = {
        "model": draw(names),
        "max_tokens": draw(st.integers(1, 100_000)),
        "messages": messages,
    }
    system = draw(st.none() | text | st.lists(text_block(), min_size=1, max_size=3))
    if system is not None:
        body["system"] = system
    if tools:
        body["tools"] = [
            {
                "name": n,
                "description": draw(text),
                "input_schema": {"type": "object", "properties": {}},
                **draw(cache_control),
            }
            for n in tools
        ]
        body["tool_choice"] = draw(
            st.sampled_from(
                [
                    {"type": "auto"},
                    {"type": "any"},
                    {"type": "none"},
                    {"type": "tool", "name": tools[0]},
                ]
            )
        )
    for key, strategy in {
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 500),
        "stop_sequences": st.lists(text, max_size=3),
        "stream": st.booleans(),
        "metadata": st.builds(dict, user_id=names),
        "thinking": st.sampled_from(
            [{"type": "enabled", "budget_tokens": 2048}, {"type": "disabled"}]
        ),
    }.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    if body.get("thinking", {}).get("type") == "enabled":
        # Anthropic's rule: the thinking budget is below max_tokens.
        body["max_tokens"] = max(body["max_tokens"], 2049)
    return body


def texts_by_role(body):
    """(role, text) pairs the translation must carry, with the role they must land under."""
    wanted = []
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        wanted.append(("system", block if isinstance(block, str) else block["text"]))
    for message in body["messages"]:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block["type"] == "text":
                wanted.append((message["role"], block["text"]))
            elif block["type"] == "tool_result":
                result = block["content"]
                parts = [result] if isinstance(result, str) else [b["text"] for b in result]
                wanted.extend(("tool", part) for part in parts)
    return wanted


def flatten(content):
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or [])


@SETTINGS
@given(messages_request())
def test_any_valid_request_translates_to_a_valid_chat_request_without_losing_content(body):
    request = messages_request_parse(json.dumps(body).encode())
    translation = chat_request_from_messages(request, max_output_tokens=8192)
    out = translation.body
    assert_valid_chat_request(out, paired=True)
    assert out["max_tokens"] == min(body["max_tokens"], 8192)

    by_role: dict[str, str] = {}
    for message in out["messages"]:
        by_role[message["role"]] = (
            by_role.get(message["role"], "") + "\x00" + flatten(message.get("content"))
        )
    for role, piece in texts_by_role(body):
        assert piece in by_role.get(role, ""), (role, piece)

    sent_calls = [
        (b["id"], b["name"], b["input"])
        for m in body["messages"]
        if m["role"] == "assistant"
        for b in m["content"]
        if b["type"] == "tool_use"
    ]
    got_calls = [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for m in out["messages"]
        for c in m.get("tool_calls") or []
    ]
    assert got_calls == sent_calls
    sent_results = [
        b["tool_use_id"]
        for m in body["messages"]
        if m["role"] == "user" and not isinstance(m["content"], str)
        for b in m["content"]
        if b["type"] == "tool_result"
    ]
    assert [m["tool_call_id"] for m in out["messages"] if m["role"] == "tool"] == sent_results
    images = sum(
        1
        for m in body["messages"]
        if not isinstance(m["content"], str)
        for b in m["content"]
        if b["type"] == "image"
    )
    assert (
        sum(
            1
            for m in out["messages"]
            if isinstance(m.get("content"), list)
            for p in m["content"]
            if p["type"] == "image_url"
        )
        == images
    )


@st.composite
def chat_answer(draw):
    answer_text = draw(st.text(max_size=60))
    calls = [
        {"id": f"call_{i}", "name": draw(names), "input": draw(tool_inputs)}
        for i in range(draw(st.integers(0, 3)))
    ]
    return answer_text, calls


def pieces(draw, value: str):
    """Split a string into consecutive fragments, as a stream would deliver it."""
    cuts = sorted(draw(st.lists(st.integers(0, len(value)), max_size=5)))
    bounds = [0, *cuts, len(value)]
    return [value[a:b] for a, b in itertools.pairwise(bounds) if value[a:b]]


@SETTINGS
@given(chat_answer(), st.data())
def test_any_answer_comes_back_the_same_streamed_or_not(answer, data):
    answer_text, calls = answer
    finish = "tool_calls" if calls else data.draw(st.sampled_from(["stop", "length"]))
    message = {"role": "assistant", "content": answer_text or None}
    if calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["input"])},
            }
            for c in calls
        ]
    response = {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 9},
    }
    plain = message_from_chat_response(response, model="m")
    Message.model_validate(plain)
    expected = ([{"type": "text", "text": answer_text}] if answer_text else []) + [
        {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["input"]} for c in calls
    ]
    assert plain["content"] == expected

    translator = MessageStreamTranslator(model="m")
    raw = translator.start()
    for piece in pieces(data.draw, answer_text):
        raw += translator.feed(
            {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        )
    for index, call in enumerate(calls):
        arguments = json.dumps(call["input"])
        fragments = pieces(data.draw, arguments) or [""]
        for number, fragment in enumerate(fragments):
            tool_call = {"index": index, "function": {"arguments": fragment}}
            if number == 0:
                tool_call.update(id=call["id"], type="function")
                tool_call["function"]["name"] = call["name"]
            raw += translator.feed(
                {
                    "choices": [
                        {"index": 0, "delta": {"tool_calls": [tool_call]}, "finish_reason": None}
                    ]
                }
            )
    raw += translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    raw += translator.feed({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}})
    raw += translator.finish()
    streamed = sdk_message(raw)
    assert [
        b.model_dump(exclude_none=True, exclude={"citations"}) for b in streamed.content
    ] == expected
    assert streamed.stop_reason == plain["stop_reason"]
    assert streamed.usage.output_tokens == 9


# --- fuzzing the parser ----------------------------------------------------------------------
def assert_refused_or_parsed(payload):
    try:
        request = messages_request_parse(payload)
    except MessagesRequestError as error:
        assert 400 <= error.status < 500
        assert error.field
        assert error.message.startswith(error.field + ": ")
    else:
        # Whatever parses must translate into a valid chat request.
        translation = chat_request_from_messages(request, max_output_tokens=8192)
        assert_valid_chat_request(translation.body, paired=False)


@SETTINGS
@given(
    json_values
    | st.dictionaries(
        st.sampled_from(
            [
                "model",
                "max_tokens",
                "messages",
                "system",
                "tools",
                "tool_choice",
                "temperature",
                "stop_sequences",
            ]
        ),
        json_values,
    )
)
def test_arbitrary_json_is_refused_with_a_field_name_never_an_exception(value):
    assert_refused_or_parsed(json.dumps(value).encode())


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_with_a_field_name(payload):
    assert_refused_or_parsed(payload)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@SETTINGS
@given(messages_request(), st.data())
def test_a_valid_request_with_one_part_replaced_is_refused_or_still_valid(body, data):
    # A copy: sampled_from hands out shared objects that must not change between examples.
    body = json.loads(json.dumps(body))
    path = data.draw(st.sampled_from(list(_paths(body))[1:]))
    replacement = data.draw(json_values)
    node = body
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = replacement
    assert_refused_or_parsed(json.dumps(body).encode())


# --- the renderer's fast path for text-only chunks --------------------------------------------
def _renderer(stop_sequences=()):
    from gateway.serving.dialects.anthropic import AnthropicStream
    from gateway.serving.dialects.anthropic_translate import ChatTranslation
    from gateway.serving.dialects.base import ChatRequest, UpstreamTarget

    translation = ChatTranslation(body={}, stop_sequences=tuple(stop_sequences))
    request = ChatRequest(model="m", stream=True, max_tokens=5, input_tokens=3, body=translation)
    return AnthropicStream(request, UpstreamTarget("m", "m", 5))


CHUNK_FORMATS = [
    # the demo upstream (json.dumps with its default separators inside the delta)
    '{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{{"index":0,"delta":{{"content": {text}}},"finish_reason":null}}],"usage":null}}',
    # compact
    '{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{{"index":0,"delta":{{"content":{text}}},"finish_reason":null}}],"usage":null}}',
    # vLLM
    '{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{{"index":0,"delta":{{"content":{text}}},"logprobs":null,"finish_reason":null,'
    '"stop_reason":null}}]}}',
    # OpenAI's first chunk
    '{{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
    '"choices":[{{"index":0,"delta":{{"role":"assistant","content":{text}}},"logprobs":null,'
    '"finish_reason":null}}]}}',
]


@SETTINGS
@given(st.lists(st.text(max_size=12), min_size=1, max_size=6), st.data())
def test_the_fast_path_emits_what_the_full_translation_emits(pieces, data):
    fast, slow = _renderer(), _renderer()
    slow._fast = False
    raw_fast, raw_slow = fast.start(), slow.start()
    for piece in pieces:
        template = data.draw(st.sampled_from(CHUNK_FORMATS))
        literal = json.dumps(piece, ensure_ascii=data.draw(st.booleans()))
        chunk = template.format(text=literal).encode()
        assert _TEXT_ONLY_CHUNK.search(chunk), chunk  # the fast path takes it
        raw_fast += fast.chunk(chunk, None)
        raw_slow += slow.chunk(chunk, None)
    # (With usage from the upstream: the fallback estimate may differ, it counts raw escapes.)
    raw_fast += fast.finish(Usage(3, 5))
    raw_slow += slow.finish(Usage(3, 5))
    strip = lambda events: [(n, d) for n, d in events if n != "message_start"]  # noqa: E731
    assert strip(sse_events(raw_fast)) == strip(sse_events(raw_slow))
    assert sdk_message(raw_fast).content == sdk_message(raw_slow).content


def test_the_fast_path_leaves_other_chunks_to_the_full_translation():
    renderer = _renderer()
    renderer.start()
    tool = (
        b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":'
        b'{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}'
    )
    assert b'"type":"tool_use"' in renderer.chunk(tool, None)
    both = (
        b'{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null},'
        b'{"index":1,"delta":{"content":"b"},"finish_reason":null}]}'
    )
    assert b'"text":"a"' in renderer.chunk(both, None)
    # With stop sequences the text must be seen, so it is decoded.
    stopping = _renderer(stop_sequences=("STOP",))
    stopping.start()
    chunk = CHUNK_FORMATS[0].format(text='"one STOP two"').encode()
    assert b'"text":"one "' in stopping.chunk(chunk, None)
