"""Golden tests: Responses requests → chat completions, and chat answers (whole and streamed)
→ Response objects and the Responses event sequence."""

import itertools

import pytest

from gateway.serving.dialects.openai_responses_translate import (
    ResponsesRequestError,
    ResponseStreamTranslator,
    chat_request_from_responses,
    response_from_chat,
)
from tests.gateway.anthropic.helpers import assert_valid_chat_request

from .helpers import sdk_events, sdk_response, sse_frames


def counting_ids():
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(counter)}"


def translate(**raw):
    return chat_request_from_responses({"model": "m", **raw})


# --- requests ------------------------------------------------------------------------------
def test_it_translates_a_string_input_with_instructions():
    t = translate(input="Hi", instructions="Be brief.", max_output_tokens=50, temperature=0.2)
    assert t.body == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.2,
    }
    assert (t.model, t.stream, t.max_output_tokens) == ("m", False, 50)
    assert_valid_chat_request({"model": "m", "max_tokens": 1, **t.body})


def test_it_translates_items_a_tool_round_trip_and_images():
    t = translate(
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Weather here?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking."}],
            },
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": False,
            }
        ],
        tool_choice="required",
        top_p=0.5,
        reasoning={"effort": "high", "summary": "auto"},
        store=False,
        parallel_tool_calls=False,
    )
    assert t.body == {
        "messages": [
            {"role": "system", "content": "Use tools."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "top_p": 0.5,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": False,
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "reasoning_effort": "high",
    }
    assert t.echo["reasoning"] == {"effort": "high", "summary": "auto"}


def test_it_leaves_out_tools_a_chat_upstream_cannot_run():
    tools = [
        {"type": "web_search"},
        {"type": "custom", "name": "apply_patch"},
        {"type": "namespace", "name": "mcp", "description": "", "tools": []},
        {"type": "function", "name": "f"},
    ]
    t = translate(input="x", tools=tools)
    assert [tool["function"]["name"] for tool in t.body["tools"]] == ["f"]
    assert t.echo["tools"] == tools


def test_it_names_a_specific_function_as_tool_choice():
    tools = [{"type": "function", "name": "f"}]
    t = translate(input="x", tools=tools, tool_choice={"type": "function", "name": "f"})
    assert t.body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert t.body["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, None),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "temperature": 3}, "temperature"),
        ({"input": []}, "input"),
        ({}, "input"),
    ],
)
def test_it_refuses_what_it_cannot_serve_naming_the_field(raw, field):
    with pytest.raises(ResponsesRequestError) as refused:
        translate(**raw)
    if field is not None:
        assert refused.value.field == field
    if "previous_response_id" in raw:
        assert "send the full input" in refused.value.message.lower()


# --- whole answers -------------------------------------------------------------------------
ECHO = translate(input="x", instructions="Be brief.").echo


def test_it_turns_a_chat_completion_into_a_response():
    upstream = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me check.",
                    "reasoning_content": "The user wants weather.",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {
            "prompt_tokens": 20,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 16},
            "completion_tokens_details": {"reasoning_tokens": 5},
        },
    }
    body = response_from_chat(upstream, model="pub", echo=ECHO, ids=counting_ids(), created_at=7)
    sdk = sdk_response(body)
    assert sdk.output_text == "Let me check."
    assert body["id"] == "resp_4" and body["status"] == "completed"
    assert body["instructions"] == "Be brief." and body["created_at"] == 7
    assert body["output"] == [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "The user wants weather."}],
            "status": "completed",
        },
        {
            "id": "msg_2",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Let me check.", "annotations": [], "logprobs": []}
            ],
        },
        {
            "id": "fc_3",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_9",
            "name": "get_weather",
            "arguments": '{"city":"Oslo"}',
        },
    ]
    assert body["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 29,
    }


def test_it_marks_a_cut_answer_incomplete():
    upstream = {
        "choices": [{"message": {"content": "abc"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3},
    }
    body = response_from_chat(upstream, model="pub", echo=ECHO)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    sdk_response(body)


# --- streams -------------------------------------------------------------------------------
def chunk(content=None, *, reasoning=None, tool_calls=None, finish=None):
    delta = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def run(chunks, *, fail=None):
    translator = ResponseStreamTranslator(model="pub", echo=ECHO, ids=counting_ids(), created_at=1)
    raw = translator.start()
    for item in chunks:
        raw += translator.feed(item)
    if fail:
        raw += translator.fail(*fail)
    else:
        raw += translator.finish(input_tokens=12, output_tokens=7)
    return raw


def test_it_streams_reasoning_text_and_a_function_call_as_the_real_event_sequence():
    raw = run(
        [
            chunk(reasoning="Think"),
            chunk(reasoning="ing."),
            chunk("Hel"),
            chunk("lo"),
            chunk(
                tool_calls=[
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": ""},
                    }
                ]
            ),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"a":'}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
            chunk(finish="tool_calls"),
            {
                "choices": [],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": 7,
                    "prompt_tokens_details": {"cached_tokens": 4},
                    "completion_tokens_details": {"reasoning_tokens": 2},
                },
            },
        ]
    )
    events = sdk_events(raw)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[6].text == "Thinking." and events[13].text == "Hello"
    assert [e.output_index for e in events[2:21] if hasattr(e, "output_index")] == (
        [0] * 7 + [1] * 7 + [2] * 5
    )
    assert events[19].arguments == '{"a":1}' and events[19].name == "f"
    final = events[-1].response
    assert final.output_text == "Hello"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[2].call_id == "call_1"
    assert final.usage.input_tokens == 12 and final.usage.output_tokens == 7
    assert final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.output_tokens_details.reasoning_tokens == 2
    assert final.usage.total_tokens == 19


def test_it_streams_two_function_calls_as_two_items():
    raw = run(
        [
            chunk(
                tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]
            ),
            chunk(
                tool_calls=[{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]
            ),
            chunk(finish="tool_calls"),
        ]
    )
    final = sdk_events(raw)[-1].response
    assert [(i.call_id, i.name) for i in final.output] == [("a", "f"), ("b", "g")]


def test_it_ends_an_empty_answer_with_one_empty_message():
    events = sdk_events(run([chunk(finish="stop")]))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].content[0].text == ""


def test_it_ends_a_failed_stream_with_error_and_response_failed():
    raw = run([chunk("Hel")], fail=("upstream_error", "The model server failed.", None))
    frames = sse_frames(raw)
    assert [name for name, _ in frames[-2:]] == ["error", "response.failed"]
    assert frames[-2][1]["code"] == "upstream_error"
    events = sdk_events(raw)
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.code == "server_error"
