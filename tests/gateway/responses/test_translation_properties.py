"""Property tests: any valid Responses input becomes a valid chat-completions request without
losing text or tool content; any chat answer comes back (whole or streamed, in any chunking)
with the same content; and no input whatsoever makes the parser raise anything but a 400."""

import itertools
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.serving.dialects.openai_responses_translate import (
    ResponsesRequestError,
    ResponseStreamTranslator,
    chat_request_from_responses,
    response_from_chat,
)
from tests.gateway.anthropic.helpers import assert_valid_chat_request

from .helpers import sdk_events, sdk_response

SETTINGS = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

text = st.text(min_size=1, max_size=30)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True)
call_ids = st.from_regex(r"call_[a-z0-9]{1,8}", fullmatch=True)


@st.composite
def conversation(draw):
    """Items a real client sends: user turns, assistant turns, function calls each followed by
    its output."""
    items = []
    for _ in range(draw(st.integers(1, 4))):
        items.append({"role": "user", "content": draw(text)})
        if draw(st.booleans()):
            items.append(
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": draw(text)}],
                }
            )
        for call_id in draw(st.lists(call_ids, max_size=2, unique=True)):
            items.append(
                {
                    "type": "function_call",
                    "call_id": call_id,
                    "name": draw(names),
                    "arguments": json.dumps({"x": draw(text)}),
                }
            )
        calls = [i["call_id"] for i in items if i.get("type") == "function_call"]
        answered = {i["call_id"] for i in items if i.get("type") == "function_call_output"}
        for call_id in calls:
            if call_id not in answered:
                items.append(
                    {"type": "function_call_output", "call_id": call_id, "output": draw(text)}
                )
    return items


def _texts(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@SETTINGS
@given(items=conversation(), instructions=st.none() | text)
def test_any_input_becomes_a_valid_chat_request_keeping_its_content(items, instructions):
    raw = {"model": "m", "input": items}
    if instructions:
        raw["instructions"] = instructions
    t = chat_request_from_responses(raw)
    assert_valid_chat_request({"model": "m", "max_tokens": 1, **t.body}, paired=False)
    sent = _texts(t.body["messages"])
    for item in items:
        for piece in (item.get("content"), item.get("output"), item.get("arguments")):
            if isinstance(piece, str):
                assert _texts(piece)[1:-1] in sent
            elif isinstance(piece, list):
                assert _texts(piece[0]["text"])[1:-1] in sent


@st.composite
def chat_answer(draw):
    content = draw(st.none() | text)
    reasoning = draw(st.none() | text)
    calls = [
        {"id": f"call_{n}", "function": {"name": draw(names), "arguments": draw(text)}}
        for n in range(draw(st.integers(0, 2)))
    ]
    return content, reasoning, calls, draw(st.sampled_from(["stop", "length", "tool_calls"]))


def _split(value: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(value) + 1) for c in cuts} | {0, len(value)})
    return [value[a:b] for a, b in itertools.pairwise(points) if value[a:b]]


@SETTINGS
@given(answer=chat_answer(), cuts=st.lists(st.integers(0, 50), max_size=4))
def test_any_answer_comes_back_whole_and_streamed_with_the_same_content(answer, cuts):
    content, reasoning, calls, finish = answer
    message = {"role": "assistant", "content": content}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [{"type": "function", **c} for c in calls]
    upstream = {
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    whole = sdk_response(response_from_chat(upstream, model="pub", echo={}))

    translator = ResponseStreamTranslator(model="pub", echo={})
    raw = translator.start()
    for piece in _split(reasoning or "", cuts):
        raw += translator.feed({"choices": [{"index": 0, "delta": {"reasoning_content": piece}}]})
    for piece in _split(content or "", cuts):
        raw += translator.feed({"choices": [{"index": 0, "delta": {"content": piece}}]})
    for n, call in enumerate(calls):
        first = {"index": n, "id": call["id"], "function": {"name": call["function"]["name"]}}
        raw += translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
        for piece in _split(call["function"]["arguments"], cuts):
            delta = {"tool_calls": [{"index": n, "function": {"arguments": piece}}]}
            raw += translator.feed({"choices": [{"index": 0, "delta": delta}]})
    raw += translator.feed({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    raw += translator.finish(input_tokens=3, output_tokens=4)
    events = sdk_events(raw)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = events[-1].response

    def summary(response):
        return (
            [
                (i.type, getattr(i, "call_id", None), getattr(i, "arguments", None))
                for i in response.output
            ],
            response.output_text,
            response.status,
        )

    assert summary(streamed) == summary(whole)
    assert whole.output_text == (content or "")
    assert whole.usage.total_tokens == streamed.usage.total_tokens == 7


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@SETTINGS
@given(
    raw=st.dictionaries(
        st.sampled_from(
            [
                "model",
                "input",
                "instructions",
                "tools",
                "tool_choice",
                "reasoning",
                "stream",
                "max_output_tokens",
                "temperature",
                "text",
                "previous_response_id",
            ]
        ),
        json_values,
    )
)
def test_no_input_makes_the_parser_fail_but_with_a_400(raw):
    try:
        chat_request_from_responses(raw)
    except ResponsesRequestError as error:
        assert error.field and error.message
