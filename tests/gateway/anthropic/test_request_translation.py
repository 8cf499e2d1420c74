"""Golden tests: Anthropic Messages request → OpenAI chat-completions request."""

import json

import pytest

from gateway.serving.dialects.anthropic_schema import (
    MessagesRequestError,
    count_tokens_request_parse,
    messages_request_parse,
)
from gateway.serving.dialects.anthropic_translate import (
    chat_request_from_messages,
    reasoning_effort_for,
)

from .helpers import assert_valid_chat_request


def translate(body: dict, **kwargs):
    translation = chat_request_from_messages(messages_request_parse(body), **kwargs)
    assert_valid_chat_request(translation.body)
    return translation


def base(**fields):
    return {"model": "LongCat-Flash-Chat", "max_tokens": 100, **fields}


def test_it_translates_the_quick_start_request():
    translation = translate(base(messages=[{"role": "user", "content": "Hello!"}]))
    assert translation.body == {
        "model": "LongCat-Flash-Chat",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 100,
    }
    assert translation.extra == {}


def test_it_puts_system_text_and_block_lists_first_ignoring_cache_control():
    body = base(
        system=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in English.", "cache_control": {"type": "ephemeral"}},
        ],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "A reminder from the client."},
            {"role": "assistant", "content": "hello"},
        ],
    )
    messages = translate(body).body["messages"]
    assert messages[0] == {
        "role": "system",
        "content": "You are terse.\n\nAnswer in English.\n\nA reminder from the client.",
    }
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]


def test_it_takes_a_system_string():
    body = base(system="Be brief.", messages=[{"role": "user", "content": "hi"}])
    assert translate(body).body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_it_joins_text_blocks_and_keeps_images_as_content_parts():
    body = base(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ]
    )
    messages = translate(body).body["messages"]
    assert messages[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
    ]
    assert messages[1] == {"role": "user", "content": "a\n\nb"}


def test_it_translates_a_tool_use_round_trip():
    body = base(
        tools=[
            {
                "name": "get_weather",
                "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                "cache_control": {"type": "ephemeral"},
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        ],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "need tools", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "service down"}],
                    },
                    {"type": "text", "text": "Summarise please."},
                ],
            },
        ],
    )
    out = translate(body).body
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "description": "Weather for a city",
            },
        }
    ]
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: service down"},
        {"role": "user", "content": "Summarise please."},
    ]


def test_it_sends_tool_result_images_in_a_user_message_after_the_tool_message():
    body = base(
        tools=[{"name": "shot", "input_schema": {"type": "object"}}],
        messages=[
            {"role": "user", "content": "screenshot"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [
                            {"type": "text", "text": "here"},
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://x.test/s.png"},
                            },
                        ],
                    }
                ],
            },
        ],
    )
    messages = translate(body).body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "shot", "arguments": "{}"}}
        ],
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "t", "content": "here"}
    assert messages[3] == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x.test/s.png"}}],
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_it_maps_tool_choice(choice, expected):
    body = base(
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice=choice,
        messages=[{"role": "user", "content": "x"}],
    )
    out = translate(body).body
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_it_maps_sampling_stop_metadata_and_streaming():
    body = base(
        stream=True,
        stop_sequences=["\n\nHuman:", "END"],
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "user-42"},
        messages=[{"role": "user", "content": "x"}],
        service_tier="auto",
        container=None,
        some_future_field={"a": 1},
    )
    translation = translate(body)
    assert translation.body == {
        "model": "LongCat-Flash-Chat",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 100,
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": ["\n\nHuman:", "END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "user-42",
    }
    # top_k is not an OpenAI parameter: kept aside for upstreams that take it.
    assert translation.extra == {"top_k": 40}
    assert translation.stop_sequences == ("\n\nHuman:", "END")


def test_it_clamps_max_tokens_to_the_model_limit():
    body = base(max_tokens=32000, messages=[{"role": "user", "content": "x"}])
    assert translate(body, max_output_tokens=8192).body["max_tokens"] == 8192
    assert translate(body).body["max_tokens"] == 32000
    small = base(max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert translate(small, max_output_tokens=8192).body["max_tokens"] == 10


def test_it_notes_thinking_and_its_budget_for_the_model_to_decide():
    body = base(
        max_tokens=20000,
        thinking={"type": "enabled", "budget_tokens": 10000},
        messages=[{"role": "user", "content": "x"}],
    )
    asked = translate(body)
    assert (asked.thinking, asked.thinking_budget) == (True, 10000)
    assert "reasoning_effort" not in asked.body and asked.extra == {}
    disabled = base(thinking={"type": "disabled"}, messages=[{"role": "user", "content": "x"}])
    assert (translate(disabled).thinking, translate(disabled).thinking_budget) == (False, None)
    adaptive = base(thinking={"type": "adaptive"}, messages=[{"role": "user", "content": "x"}])
    assert (translate(adaptive).thinking, translate(adaptive).thinking_budget) == (True, None)


@pytest.mark.parametrize(
    ("thinking", "max_tokens", "field"),
    [
        ({"type": "enabled", "budget_tokens": 1023}, 4096, "thinking.budget_tokens"),
        ({"type": "enabled"}, 4096, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 2048}, 2048, "max_tokens"),
        ({"type": "enabled", "budget_tokens": 4096}, 1000, "max_tokens"),
    ],
)
def test_it_refuses_a_thinking_budget_anthropic_refuses(thinking, max_tokens, field):
    body = base(
        max_tokens=max_tokens, thinking=thinking, messages=[{"role": "user", "content": "x"}]
    )
    with pytest.raises(MessagesRequestError) as refused:
        messages_request_parse(body)
    assert refused.value.field == field
    assert refused.value.status == 400


def test_it_accepts_the_smallest_budget_below_max_tokens():
    body = base(
        max_tokens=1025,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "x"}],
    )
    assert translate(body).thinking_budget == 1024


@pytest.mark.parametrize(
    ("budget", "max_tokens", "effort"),
    [
        (None, 8192, "medium"),
        (1024, 8192, "low"),
        (10_000, 32_000, "medium"),
        (20_000, 32_000, "high"),
        # The budget is kept within the output budget granted: 20,000 cannot be thought in 5,000.
        (20_000, 5_000, "medium"),
        (20_000, 2_000, "low"),
    ],
)
def test_it_picks_an_effort_for_the_budget_within_the_output_budget(budget, max_tokens, effort):
    assert reasoning_effort_for(budget, max_tokens) == effort


def test_it_turns_a_text_document_into_text():
    body = base(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "notes.txt",
                        "source": {"type": "text", "media_type": "text/plain", "data": "line one"},
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            }
        ]
    )
    assert translate(body).body["messages"] == [
        {"role": "user", "content": "notes.txt\n\nline one\n\nSummarise."}
    ]


def _pdf(*pages: str) -> str:
    """A small real PDF (one Helvetica text line per page, empty string = a blank page), as
    base64: built by hand so that the test needs no PDF writer."""
    import base64

    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for text in pages:
        stream = f"BT /F1 18 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        content = len(objects) + 2
        kids.append(len(objects) + 1)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
            ">> >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    refs = " ".join(f"{k} 0 R" for k in kids)
    objects[1] = f"<< /Type /Pages /Kids [{refs}] /Count {len(kids)} >>".encode()
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return base64.b64encode(out).decode()


def _user(*blocks):
    body = base(messages=[{"role": "user", "content": list(blocks)}])
    return translate(body).body["messages"][0]["content"]


def test_it_turns_a_pdf_document_into_its_text_with_the_page_count():
    source = {"type": "base64", "media_type": "application/pdf", "data": _pdf("Hello PDF", "Two")}
    text = _user({"type": "document", "title": "report.pdf", "source": source})
    assert text.startswith("report.pdf\n\n[PDF document 'report.pdf', 2 pages]")
    assert "Hello PDF" in text and "Two" in text


def test_it_turns_a_pdf_a_tool_returned_into_the_tool_messages_text():
    source = {"type": "base64", "media_type": "application/pdf", "data": _pdf("Hello PDF")}
    body = base(
        messages=[
            {"role": "user", "content": "Read it"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [
                            {"type": "text", "text": "PDF file read"},
                            {"type": "document", "source": source},
                        ],
                    }
                ],
            },
        ]
    )
    tool = translate(body).body["messages"][2]
    assert tool["role"] == "tool"
    assert tool["content"].startswith("PDF file read\n\n[PDF document (untitled), 1 page]")
    assert "Hello PDF" in tool["content"]


def test_it_says_so_when_a_pdf_has_no_text_or_cannot_be_read():
    blank = {"type": "base64", "media_type": "application/pdf", "data": _pdf("")}
    assert "1 page: no extractable text" in _user({"type": "document", "source": blank})
    broken = {"type": "base64", "media_type": "application/pdf", "data": "bm90IGEgcGRm"}
    assert "could not be read" in _user({"type": "document", "source": broken})


def test_it_names_a_url_document_without_fetching_it_and_decodes_base64_text():
    url = {"type": "url", "url": "https://example.com/a.pdf"}
    assert _user({"type": "document", "source": url}) == (
        "[Document at https://example.com/a.pdf: not fetched; its content is not included.]"
    )
    plain = {"type": "base64", "media_type": "text/plain", "data": "aGVsbG8="}
    assert _user({"type": "document", "source": plain}) == "hello"


def test_it_turns_search_results_server_tools_and_unknown_blocks_into_text():
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "search_result",
                    "source": "https://example.com",
                    "title": "Example",
                    "content": [{"type": "text", "text": "An example page."}],
                },
                {"type": "text", "text": "Use it."},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "server_tool_use",
                    "id": "srv_1",
                    "name": "web_search",
                    "input": {"q": "x"},
                },
                {
                    "type": "web_search_tool_result",
                    "tool_use_id": "srv_1",
                    "content": [
                        {"type": "web_search_result", "title": "X", "url": "https://x.org"}
                    ],
                },
                {"type": "text", "text": "Found it."},
            ],
        },
        {"role": "user", "content": [{"type": "container_upload", "file_id": "f_1"}]},
    ]
    sent = translate(base(messages=messages)).body["messages"]
    assert sent[0]["content"] == (
        "[search result: Example — https://example.com]\nAn example page.\n\nUse it."
    )
    assert sent[1]["content"] == (
        '[server tool call web_search: {"q": "x"}][web search results]\nX — https://x.orgFound it.'
    )
    assert sent[2]["content"] == '[container_upload block: {"file_id": "f_1"}]'
    assert_valid_chat_request(translate(base(messages=messages)).body)


# --- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[]", "body"),
        (b'{"model": "m", "max_tokens": NaN, "messages": []}', "body"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        (
            {"model": "m", "max_tokens": "many", "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
        ),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "bot", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]},
            "messages.0.content",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "text"}]}],
            },
            "messages.0.content.0.text",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image"}]}],
            },
            "messages.0.content.0.source",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}],
                    }
                ],
            },
            "messages.0.content.0.source.media_type",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "a", "name": "f", "input": []}],
                    }
                ],
            },
            "messages.0.content.0.input",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "temperature": 1.5,
                "messages": [{"role": "user", "content": "x"}],
            },
            "temperature",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "system": [{"type": "text"}],
                "messages": [{"role": "user", "content": "x"}],
            },
            "system.0.text",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "tool_choice": {"type": "tool", "name": "nope"},
                "messages": [{"role": "user", "content": "x"}],
            },
            "tool_choice.name",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "tools": [{"input_schema": {}}],
                "messages": [{"role": "user", "content": "x"}],
            },
            "tools.0.name",
        ),
    ],
)
def test_it_rejects_a_bad_request_naming_the_field(body, field):
    with pytest.raises(MessagesRequestError) as caught:
        messages_request_parse(body if isinstance(body, bytes) else json.dumps(body).encode())
    assert caught.value.status == 400
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ")


def test_it_ignores_unknown_fields_everywhere():
    body = base(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "x", "citations": None, "cache_control": {}}],
                "name": "ignored",
            }
        ],
        anthropic_version="x",
        context_management={"edits": []},
    )
    assert translate(body).body["messages"] == [{"role": "user", "content": "x"}]


def test_count_tokens_needs_no_max_tokens():
    request = count_tokens_request_parse(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "system": "s"}
    )
    assert request.system[0].text == "s"


def test_a_tool_choice_naming_a_dropped_server_tool_leaves_the_choice_to_the_model():
    body = base(
        tools=[
            {"name": "lookup", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search"},
        ],
        tool_choice={"type": "tool", "name": "web_search"},
        messages=[{"role": "user", "content": "Look it up."}],
    )
    chat = translate(body).body
    assert [tool["function"]["name"] for tool in chat["tools"]] == ["lookup"]
    assert "tool_choice" not in chat
    # A client tool named in tool_choice is still chosen.
    chat = translate({**body, "tool_choice": {"type": "tool", "name": "lookup"}}).body
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
