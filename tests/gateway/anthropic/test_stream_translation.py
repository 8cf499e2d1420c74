"""Golden tests: OpenAI chunks → the Anthropic stream event sequence."""

import pytest

from gateway.serving.dialects.anthropic_translate import PING_EVENT, MessageStreamTranslator

from .helpers import sdk_message, sse_events


def chunk(content=None, *, tool_calls=None, finish=None, usage=None, reasoning=None, **choice):
    delta = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    out = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }
    if usage is not None:
        out["usage"] = usage
    return out


def usage_chunk(prompt=11, completion=3):
    return {
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion},
    }


def run(chunks, **kwargs):
    translator = MessageStreamTranslator(model="LongCat-Flash-Chat", **kwargs)
    raw = translator.start()
    for item in chunks:
        raw += translator.feed(item)
    raw += translator.finish()
    return raw


def test_it_streams_text_as_the_real_event_sequence():
    raw = run(
        [
            chunk("", role="assistant"),
            chunk("Hel"),
            chunk("lo"),
            chunk(finish="stop"),
            usage_chunk(),
        ],
        input_estimate=9,
        message_id="msg_x",
    )
    events = sse_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_x"
    assert start["usage"]["input_tokens"] == 9
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert events[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[5][1]["usage"]["output_tokens"] == 3
    assert events[5][1]["usage"]["input_tokens"] == 11
    message = sdk_message(raw)
    assert message.content[0].text == "Hello"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3


def test_it_streams_tool_calls_as_input_json_deltas_one_block_per_call():
    raw = run(
        [
            chunk("Checking."),
            chunk(
                tool_calls=[
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": ""},
                    }
                ]
            ),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
            chunk(
                tool_calls=[
                    {
                        "index": 1,
                        "id": "call_b",
                        "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                    }
                ]
            ),
            chunk(finish="tool_calls"),
            usage_chunk(),
        ]
    )
    events = sse_events(raw)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "weather", "input": {}},
    ]
    fragments = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert fragments == ['{"city": ', '"Paris"}', '{"city": "Rome"}']
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1, 2]
    message = sdk_message(raw)
    assert message.stop_reason == "tool_use"
    assert [b.input for b in message.content[1:]] == [{"city": "Paris"}, {"city": "Rome"}]


def test_it_waits_for_a_tool_name_before_opening_its_block():
    raw = run(
        [
            chunk(tool_calls=[{"index": 0, "id": "c1", "function": {"arguments": '{"a"'}}]),
            chunk(tool_calls=[{"index": 0, "function": {"name": "f", "arguments": ":1}"}}]),
            chunk(finish="tool_calls"),
        ]
    )
    message = sdk_message(raw)
    assert message.content[0].name == "f"
    assert message.content[0].id == "c1"
    assert message.content[0].input == {"a": 1}


def test_it_maps_length_to_max_tokens_and_reports_the_charged_usage():
    translator = MessageStreamTranslator(model="m")
    raw = translator.start() + translator.feed(chunk("abc", finish="length"))
    raw += translator.finish(input_tokens=1, output_tokens=2)
    delta = next(d for n, d in sse_events(raw) if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["output_tokens"] == 2


def test_it_cuts_at_a_stop_sequence_split_across_chunks():
    translator = MessageStreamTranslator(model="m", stop_sequences=("STOP",))
    raw = translator.start()
    for piece in ["Hello S", "T", "OP and more", " text"]:
        raw += translator.feed(chunk(piece))
        if translator.done:
            break
    raw += translator.finish()
    message = sdk_message(raw)
    assert message.content[0].text == "Hello "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "STOP")


def test_it_releases_held_text_that_was_not_a_stop_sequence():
    raw = run([chunk("ab S"), chunk("x"), chunk(finish="stop")], stop_sequences=("STOP",))
    message = sdk_message(raw)
    assert message.content[0].text == "ab Sx"
    assert message.stop_reason == "end_turn"
    raw = run([chunk("ends with S"), chunk(finish="stop")], stop_sequences=("STOP",))
    assert sdk_message(raw).content[0].text == "ends with S"


def test_it_reports_an_upstream_stop_reason_string():
    raw = run([chunk("x"), chunk(finish="stop", stop_reason="END")], stop_sequences=("END",))
    message = sdk_message(raw)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


def test_it_streams_reasoning_as_thinking_when_asked():
    raw = run([chunk(reasoning="hmm"), chunk("42"), chunk(finish="stop")], thinking=True)
    message = sdk_message(raw)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "hmm"
    raw = run([chunk(reasoning="hmm"), chunk("42"), chunk(finish="stop")])
    assert [b.type for b in sdk_message(raw).content] == ["text"]


def test_it_signs_a_thinking_block_before_closing_it_as_anthropic_does():
    raw = run(
        [
            chunk(reasoning="six "),
            chunk(reasoning="times seven"),
            chunk("42"),
            chunk(finish="stop"),
        ],
        thinking=True,
        sign=lambda text: f"signed:{text}",
    )
    events = sse_events(raw)
    thinking = [
        (name, data["delta"]["type"] if name == "content_block_delta" else data.get("index"))
        for name, data in events
        if name.startswith("content_block") and data["index"] == 0
    ]
    assert thinking == [
        ("content_block_start", 0),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", 0),
    ]
    (start,) = [d for n, d in events if n == "content_block_start" and d["index"] == 0]
    assert start["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    message = sdk_message(raw)
    assert message.content[0].signature == "signed:six times seven"
    assert message.content[1].text == "42"


def test_a_thinking_block_is_signed_even_when_the_stream_ends_inside_it():
    raw = run([chunk(reasoning="hmm"), chunk(finish="length")], thinking=True, sign=str.upper)
    message = sdk_message(raw)
    assert [(b.type, b.signature) for b in message.content] == [("thinking", "HMM")]


def test_an_empty_stream_is_still_a_complete_message():
    raw = run([])
    assert [n for n, _ in sse_events(raw)] == ["message_start", "message_delta", "message_stop"]
    assert sdk_message(raw).content == []


def test_it_ends_a_failed_stream_with_an_error_event_and_nothing_after():
    translator = MessageStreamTranslator(model="m")
    raw = translator.start() + translator.feed(chunk("par"))
    raw += translator.fail(502, "upstream broke")
    raw += translator.feed(chunk("more")) + translator.finish()
    events = sse_events(raw)
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "upstream broke"}},
    )
    assert [n for n, _ in events].count("error") == 1


def test_ping_is_a_well_formed_event():
    assert sse_events(PING_EVENT) == [("ping", {"type": "ping"})]


def test_it_escapes_text_safely():
    text = 'quote " backslash \\ newline \n unicode 你好 \u2028 end'
    raw = run([chunk(text), chunk(finish="stop")])
    assert sdk_message(raw).content[0].text == text


def test_it_reports_cached_prompt_tokens_as_cache_reads_in_the_message_delta():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 64},
    }
    translator = MessageStreamTranslator(model="m", input_estimate=90)
    raw = translator.start() + translator.feed(chunk("Hi")) + translator.feed(chunk(finish="stop"))
    raw += translator.feed({"choices": [], "usage": usage})
    raw += translator.finish(input_tokens=100, output_tokens=2)
    delta = next(data for name, data in sse_events(raw) if name == "message_delta")
    assert delta["usage"]["input_tokens"] == 36
    assert delta["usage"]["cache_read_input_tokens"] == 64
    assert sdk_message(raw).usage.cache_read_input_tokens == 64


def test_it_takes_sglang_s_matched_stop_in_a_stream():
    raw = run([chunk("one"), chunk(finish="stop", matched_stop="END")], stop_sequences=["END"])
    delta = next(data for name, data in sse_events(raw) if name == "message_delta")
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


@pytest.mark.parametrize(
    ("chunks", "text", "stop"),
    [
        # vLLM and SGLang name the stop string (the text no longer holds it).
        ([chunk("one two"), chunk(finish="stop", stop_reason="END")], "one two", "END"),
        ([chunk("one two"), chunk(finish="stop", matched_stop="END")], "one two", "END"),
        # An OpenAI-style server that says nothing but left the stop in the text's tail.
        ([chunk("one two"), chunk("EN"), chunk("D", finish="stop")], "one two", "END"),
        ([chunk("one twoEND", finish="stop")], "one two", "END"),
        # Nothing said and nothing left: a natural end, as far as anyone can tell.
        ([chunk("one two"), chunk(finish="stop")], "one two", None),
        # A token id (end of sequence) matched, not a string.
        ([chunk("one two"), chunk(finish="stop", matched_stop=151645)], "one two", None),
    ],
    ids=["vllm", "sglang", "unreported-split", "unreported-one-chunk", "stripped", "token-id"],
)
def test_a_stream_finds_its_stop_sequence_however_the_upstream_reports_it(chunks, text, stop):
    message = sdk_message(run(chunks, stop_sequences=("END", "###")))
    assert [b.text for b in message.content] == [text]
    expected = ("stop_sequence", stop) if stop else ("end_turn", None)
    assert (message.stop_reason, message.stop_sequence) == expected
