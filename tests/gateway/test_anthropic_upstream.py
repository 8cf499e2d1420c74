"""A model served by an Anthropic-native endpoint, end to end with the official SDKs: Anthropic
clients passed through (cache_control, thinking and its signatures, tool use, beta headers),
OpenAI-format clients translated, cache usage charged, cut streams, failover, count_tokens."""

import asyncio
import json

import anthropic
import httpx2
import openai
import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from gateway.models import Model, UpstreamEndpoint
from gateway.serving.catalog import _build
from gateway.serving.dialects.anthropic_signature import thinking_signature
from gateway.serving.upstream import AnthropicSSEReader
from tests.gateway.fake_anthropic import THOUGHT, UPSTREAM_SIGNATURE, FakeAnthropic
from usage.models import DailyUsage, Reservation, UsageRecord

MODEL = "LongCat-Flash-Chat"
UPSTREAM_MODEL = "claude-upstream"
# 10 input + 20 written to the cache + 30 read from it; 7 output.
INPUT, CACHED, OUTPUT = 60, 30, 7
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


@pytest.fixture
def upstreams():
    started = [FakeAnthropic("A"), FakeAnthropic("B")]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def native(demo_model, gateway_settings, upstreams):
    """The demo model served by the first fake Anthropic upstream (then the second, a worse
    tier), under its own model name and key."""
    from gateway.services import endpoint_save

    demo_model.endpoints.all().delete()
    for priority, server in enumerate(upstreams):
        endpoint_save(
            endpoint=UpstreamEndpoint(model=demo_model, kind=UpstreamEndpoint.Kind.ANTHROPIC),
            raw_key=f"sk-ant-{server.name}",
            base_url=server.url,
            upstream_model=UPSTREAM_MODEL,
            priority=priority,
        )
    return upstreams


def _http(gw):
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app))


def with_anthropic(gw, key, work, **options):
    """``work(client)`` with the official async Anthropic SDK, on the gateway in-process."""

    async def run():
        async with _http(gw) as http:
            client = anthropic.AsyncAnthropic(
                api_key=key,
                base_url="http://gateway/anthropic",
                http_client=http,
                max_retries=0,
                **options,
            )
            return await work(client)

    return gw.run(run())


def with_openai(gw, key, work):
    async def run():
        async with _http(gw) as http:
            client = openai.AsyncOpenAI(
                api_key=key, base_url="http://gateway/openai/v1", http_client=http, max_retries=0
            )
            return await work(client)

    return gw.run(run())


def _record(gw, user):
    gw.flush()
    (record,) = UsageRecord.objects.filter(user=user)
    return record


def _books_exact(user):
    """One charge per request, nothing left reserved, the counter equal to the records."""
    records = list(UsageRecord.objects.filter(user=user))
    counter = DailyUsage.objects.get(user=user)
    assert not Reservation.objects.exists()
    assert counter.reserved_tokens == 0
    assert counter.requests == len(records)
    assert counter.input_tokens == sum(r.input_tokens for r in records)
    assert counter.output_tokens == sum(r.output_tokens for r in records)


def streamed_text(result) -> str:
    """The text of a stream in either dialect (Anthropic text deltas, OpenAI content)."""
    text = ""
    for event in result.events():
        if not isinstance(event, dict):
            continue
        text += (event.get("delta") or {}).get("text") or ""
        for choice in event.get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
    return text


CACHED_SYSTEM = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]


def test_an_anthropic_client_is_passed_through_and_charged_with_the_cache(gw, alice_key, native):
    user, key = alice_key
    a, _b = native

    async def work(client):
        raw = await client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=20_000,  # over the model's limit: clamped
            system=CACHED_SYSTEM,
            messages=[{"role": "user", "content": "Hello!"}],
            extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
            extra_body={"context_management": {"edits": []}},
        )
        return await raw.parse()

    message = with_anthropic(gw, key, work)
    assert message.model == MODEL
    assert message.content[0].text == "Hello from A"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, OUTPUT)
    assert message.usage.cache_creation_input_tokens == 20
    assert message.usage.cache_read_input_tokens == 30
    (sent,) = a.requests
    assert sent == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 8192,
        "system": CACHED_SYSTEM,
        "messages": [{"role": "user", "content": "Hello!"}],
        "context_management": {"edits": []},
    }
    headers = a.headers[0]
    assert headers["x-api-key"] == "sk-ant-A" and "Authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    record = _record(gw, user)
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )
    assert not record.estimated and record.endpoint == "anthropic.messages"
    _books_exact(user)


def test_an_anthropic_stream_is_relayed_event_by_event(gw, alice_key, native):
    user, key = alice_key

    async def work(client):
        async with client.messages.stream(
            model=MODEL,
            max_tokens=3000,
            thinking={"type": "enabled", "budget_tokens": 2048},
            tools=TOOLS,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
        ) as stream:
            return await stream.get_final_message()

    message = with_anthropic(gw, key, work)
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool = message.content
    assert (thinking.thinking, thinking.signature) == (THOUGHT, UPSTREAM_SIGNATURE)
    assert text.text == "Hello from A"
    assert (tool.name, tool.input) == ("get_weather", {"city": "Paris"})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == OUTPUT
    record = _record(gw, user)
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )
    assert record.stream and not record.estimated
    _books_exact(user)


def test_thinking_goes_back_to_whoever_signed_it(gw, alice_key, native):
    """The upstream's signed thinking goes back to it untouched; the gateway's own (signed
    when an OpenAI-format upstream thought) is checked here and not sent to it."""
    _user, key = alice_key
    a, _b = native
    ours = {
        "type": "thinking",
        "thinking": "Earlier.",
        "signature": thinking_signature("Earlier.", MODEL),
    }
    theirs = {"type": "thinking", "thinking": THOUGHT, "signature": UPSTREAM_SIGNATURE}
    messages = [
        {"role": "user", "content": "What is 6 times 7?"},
        {"role": "assistant", "content": [ours, {"type": "text", "text": "42"}]},
        {"role": "user", "content": "And 6 times 8?"},
        {"role": "assistant", "content": [theirs, {"type": "text", "text": "48"}]},
        {"role": "user", "content": "And 6 times 9?"},
    ]
    thinking = {"type": "enabled", "budget_tokens": 2048}
    result = gw.chat(
        key,
        {"model": MODEL, "max_tokens": 3000, "thinking": thinking, "messages": messages},
        path="/anthropic/v1/messages",
    )
    assert result.status == 200, result.body
    sent = a.requests[-1]["messages"]
    assert sent[1]["content"] == [{"type": "text", "text": "42"}]
    assert sent[3]["content"] == [theirs, {"type": "text", "text": "48"}]
    # Altered thinking under the gateway's signature is still refused before any upstream.
    messages[1]["content"][0] = {**ours, "thinking": "Altered."}
    result = gw.chat(
        key,
        {"model": MODEL, "max_tokens": 3000, "thinking": thinking, "messages": messages},
        path="/anthropic/v1/messages",
    )
    assert result.status == 400
    assert len(a.requests) == 1


def test_a_budget_too_small_for_the_thinking_asked_leaves_thinking_out(
    gw, alice_key, native, settings
):
    _user, key = alice_key
    a, _b = native
    Model.objects.filter(name=MODEL).update(max_output_tokens=1000)
    result = gw.chat(
        key,
        {
            "model": MODEL,
            "max_tokens": 4000,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [{"role": "user", "content": "Hi"}],
        },
        path="/anthropic/v1/messages",
    )
    assert result.status == 200
    assert a.requests[-1]["max_tokens"] == 1000 and "thinking" not in a.requests[-1]


def test_an_openai_client_is_translated_both_ways(gw, alice_key, native):
    user, key = alice_key
    a, _b = native
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": TOOLS[0]["input_schema"],
            },
        }
    ]

    async def work(client):
        return await client.chat.completions.create(
            model=MODEL,
            max_tokens=50,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
            ],
            tools=tools,
            tool_choice="required",
            stop=["END"],
            temperature=1.5,
        )

    completion = with_openai(gw, key, work)
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Hello from A"
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name) == ("toolu_01", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert completion.usage.prompt_tokens == INPUT
    assert completion.usage.prompt_tokens_details.cached_tokens == CACHED
    assert a.requests[-1] == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 50,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
        "stop_sequences": ["END"],
        "tools": [{**TOOLS[0]}],
        "tool_choice": {"type": "any"},
    }
    record = _record(gw, user)
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )


def test_an_openai_stream_is_translated_chunk_by_chunk(gw, alice_key, native):
    user, key = alice_key
    a, _b = native

    async def work(client):
        stream = await client.chat.completions.create(
            model=MODEL,
            max_tokens=3000,
            messages=[{"role": "user", "content": "Hello!"}],
            reasoning_effort="low",
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks = with_openai(gw, key, work)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "Hello from A"
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == THOUGHT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert {c.model for c in chunks} == {MODEL}
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (INPUT, OUTPUT)
    assert usage.prompt_tokens_details.cached_tokens == CACHED
    assert a.requests[-1]["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert a.requests[-1]["stream"] is True
    record = _record(gw, user)
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )


def test_a_responses_client_is_served_through_the_translation(gw, alice_key, native):
    _user, key = alice_key

    async def work(client):
        return await client.responses.create(model=MODEL, input="Hello!", max_output_tokens=40)

    response = with_openai(gw, key, work)
    assert response.output_text == "Hello from A"
    assert response.usage.input_tokens == INPUT
    assert response.usage.input_tokens_details.cached_tokens == CACHED


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_a_cut_stream_ends_with_an_error_and_charges_what_was_delivered(
    gw, alice_key, native, dialect
):
    user, key = alice_key
    a, _b = native
    a.mode = "cut"
    payload = {
        "model": MODEL,
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello!"}],
    }
    path = "/anthropic/v1/messages" if dialect == "anthropic" else "/openai/v1/chat/completions"
    result = gw.chat(key, payload, path=path)
    assert result.status == 200
    body = result.body.decode()
    assert streamed_text(result) == "Hello from A"
    last = result.events()[-1]
    assert "error" in last and "message_stop" not in body and "[DONE]" not in body
    record = _record(gw, user)
    assert record.status_code == 502 and record.estimated
    assert record.output_tokens > 0
    # The input message_start reported, not the gateway's estimate.
    assert (record.input_tokens, record.cached_input_tokens) == (INPUT, CACHED)
    _books_exact(user)


def test_an_error_event_mid_stream_is_relayed_as_overloaded(gw, alice_key, native):
    user, key = alice_key
    a, _b = native
    a.mode = "error"
    result = gw.chat(
        key,
        {
            "model": MODEL,
            "max_tokens": 100,
            "stream": True,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        path="/anthropic/v1/messages",
    )
    events = result.events()
    assert events[1]["type"] == "ping"  # the upstream's own, relayed
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "overloaded_error"
    assert [e["type"] for e in events].count("error") == 1
    record = _record(gw, user)
    assert record.error_code == "upstream_overloaded"
    _books_exact(user)


@pytest.mark.parametrize("status", [529, 500, 429])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_native_endpoint_fails_over_before_the_first_byte(
    gw, alice_key, native, status, stream
):
    user, key = alice_key
    a, b = native
    a.mode, a.status = "fail", status
    result = gw.chat(
        key,
        {
            "model": MODEL,
            "max_tokens": 100,
            "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        path="/anthropic/v1/messages",
    )
    assert result.status == 200
    text = streamed_text(result) if stream else result.json()["content"][0]["text"]
    assert text == "Hello from B"
    assert (len(a.requests), len(b.requests)) == (1, 1)
    record = _record(gw, user)
    assert record.upstream_endpoint_id == UpstreamEndpoint.objects.get(base_url=b.url).pk
    assert (record.input_tokens, record.output_tokens) == (INPUT, OUTPUT)
    _books_exact(user)


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_a_pool_may_mix_kinds_each_attempt_speaking_its_endpoints_protocol(
    gw, alice_key, native, demo_upstream, dialect
):
    """A failing native endpoint, then an OpenAI-format one: the same request is passed
    through to the first and translated for the second, reserved and charged once."""
    user, key = alice_key
    a, b = native
    a.mode, a.status = "fail", 529
    UpstreamEndpoint.objects.filter(base_url=b.url).update(
        kind=UpstreamEndpoint.Kind.DEMO, base_url=""
    )
    payload = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    path = "/anthropic/v1/messages" if dialect == "anthropic" else "/openai/v1/chat/completions"
    result = gw.chat(key, payload, path=path)
    assert result.status == 200
    answer = result.json()
    text = (
        answer["content"][0]["text"]
        if dialect == "anthropic"
        else (answer["choices"][0]["message"]["content"])
    )
    assert text.startswith("This is the demo")
    assert len(a.requests) == 1 and "messages" in a.requests[0]
    record = _record(gw, user)
    assert record.upstream_endpoint_id == UpstreamEndpoint.objects.get(kind="demo").pk
    _books_exact(user)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_an_answer_without_usage_is_charged_by_estimate(gw, alice_key, native, dialect, stream):
    """Either way: a translated answer carries no made-up zeros that would be charged as the
    upstream's report (the request would be free)."""
    user, key = alice_key
    a, _b = native
    a.mode = "nousage"
    payload = {
        "model": MODEL,
        "max_tokens": 10,
        "stream": stream,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    path = "/anthropic/v1/messages" if dialect == "anthropic" else "/openai/v1/chat/completions"
    result = gw.chat(key, payload, path=path)
    assert result.status == 200
    if stream:
        assert streamed_text(result) == "Hello from A"
    elif dialect == "anthropic":
        assert "usage" not in result.json()
    record = _record(gw, user)
    assert record.estimated and record.input_tokens > 0
    assert 0 < record.output_tokens <= 10
    _books_exact(user)


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
def test_null_counts_in_the_final_usage_keep_the_input_message_start_reported(
    gw, alice_key, native, dialect
):
    user, key = alice_key
    a, _b = native
    a.mode = "nullusage"
    payload = {
        "model": MODEL,
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    path = "/anthropic/v1/messages" if dialect == "anthropic" else "/openai/v1/chat/completions"
    assert gw.chat(key, payload, path=path).status == 200
    record = _record(gw, user)
    assert not record.estimated
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )
    _books_exact(user)


def _payloads(pieces: list[bytes]) -> list[bytes]:
    """What ``AnthropicSSEReader`` yields for a response arriving in ``pieces``."""

    class Content:
        async def iter_any(self):
            for piece in pieces:
                yield piece

    class Response:
        content = Content()

    async def read():
        return [data async for data in AnthropicSSEReader(Response())]

    return asyncio.run(read())


def test_the_event_reader_joins_an_events_data_lines_whatever_the_line_endings():
    delta = b'{"type": "content_block_delta",\n "index": 0}'
    stream = (
        b': a comment\r\nevent: message_start\r\ndata: {"type": "message_start"}\r\n\r\n'
        b'event: content_block_delta\rdata: {"type": "content_block_delta",\r'
        b'data:  "index": 0}\r\r'
        b'data: {"type": "ping"}\n\n'
        b'data: {"type": "ping"}\n'  # cut before its blank line: not an event
    )
    expected = [b'{"type": "message_start"}', delta, b'{"type": "ping"}']
    assert _payloads([stream]) == expected
    # Every split of the bytes (a CR and its LF in different pieces among them) reads the same.
    for at in range(1, len(stream)):
        assert _payloads([stream[:at], stream[at:]]) == expected, at
    assert _payloads([b'data: {"type": "ping"}\r\r']) == [b'{"type": "ping"}']


def test_the_pass_through_leaves_out_what_anthropic_would_bill_beyond_the_reservation(
    gw, alice_key, native
):
    """Server tools, MCP servers, a container and a document by URL are left out (the document
    as the translation's note), as the translation for other upstreams leaves them out."""
    user, key = alice_key
    a, _b = native
    document = {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}
    payload = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [document, {"type": "text", "text": "Sum up"}]}],
        "tools": [{"type": "web_search_20250305", "name": "web_search"}, *TOOLS],
        "mcp_servers": [{"type": "url", "url": "https://mcp.example.com", "name": "m"}],
        "container": "container_1",
    }
    result = gw.chat(key, payload, path="/anthropic/v1/messages")
    assert result.status == 200
    (sent,) = a.requests
    assert sent["tools"] == TOOLS and not {"mcp_servers", "container"} & set(sent)
    note = sent["messages"][0]["content"][0]
    assert note["type"] == "text" and "https://x/a.pdf: not fetched" in note["text"]
    assert (_record(gw, user).input_tokens, _record(gw, user).output_tokens) == (INPUT, OUTPUT)
    _books_exact(user)


def test_every_native_endpoint_overloaded_is_a_529_for_anthropic_clients(gw, alice_key, native):
    _user, key = alice_key
    for server in native:
        server.mode, server.status = "fail", 529
    result = gw.chat(
        key,
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]},
        path="/anthropic/v1/messages",
    )
    assert result.status == 529
    assert result.json()["error"]["type"] == "overloaded_error"


def test_count_tokens_is_the_native_upstreams_own(gw, alice_key, native):
    _user, key = alice_key
    a, _b = native
    body = {
        "model": MODEL,
        "system": CACHED_SYSTEM,
        "messages": [{"role": "user", "content": "Hello!"}],
    }

    async def work(client):
        return await client.messages.count_tokens(**body)

    assert with_anthropic(gw, key, work).input_tokens == 1234
    assert a.requests[-1] == {**body, "model": UPSTREAM_MODEL}
    assert a.headers[-1]["x-api-key"] == "sk-ant-A"
    a.count_tokens = False  # 404: the local estimate
    counted = with_anthropic(gw, key, work).input_tokens
    assert 0 < counted < 100


def test_count_tokens_is_local_when_the_native_upstream_is_down(gw, alice_key, native):
    _user, key = alice_key
    for server in native:
        server.stop()

    async def work(client):
        return await client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Hello!"}]
        )

    assert 0 < with_anthropic(gw, key, work).input_tokens < 100


def test_an_embedding_model_refuses_an_anthropic_endpoint(db):
    from gateway.services import endpoint_save

    model = Model.objects.create(name="embedder", kind=Model.Kind.EMBEDDING)
    with pytest.raises(ValidationError) as refused:
        endpoint_save(
            endpoint=UpstreamEndpoint(model=model, kind=UpstreamEndpoint.Kind.ANTHROPIC),
            base_url="https://api.anthropic.com",
        )
    assert "kind" in refused.value.message_dict
    # Set behind validation's back (the model's kind changed later): never routed to.
    model.endpoints.create(kind=UpstreamEndpoint.Kind.ANTHROPIC, base_url="https://a.example")
    assert _build()["embedder"].endpoints == ()
    with pytest.raises(CommandError, match="embedding model"):
        call_command(
            "upstream", "add", "embedder", "https://api.anthropic.com", "--kind", "anthropic"
        )


def test_the_command_adds_an_anthropic_endpoint(db, capsys):
    model = Model.objects.create(name="claude")
    call_command("upstream", "add", "claude", "https://api.anthropic.com/", "--kind", "anthropic")
    endpoint = model.endpoints.get()
    assert (endpoint.kind, endpoint.base_url) == ("anthropic", "https://api.anthropic.com")


def test_the_probe_asks_a_native_endpoint_for_its_models_with_its_key(
    gw, alice_key, native, gateway_settings
):
    first, _second = native
    assert gw.chat(alice_key[1]).status == 200  # starts the gateway (its catalog, its monitor)
    first.headers.clear()
    first.mode, first.status = "fail", 503
    for _ in range(gateway_settings.GATEWAY_UPSTREAM_EJECT_FAILURES):
        gw.run(gw.gateway.monitor.probe())
    probe = first.headers[-1]
    assert probe["x-api-key"] == "sk-ant-A" and probe["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in probe
    states = {s.label.split(":")[0]: s for s in gw.gateway.router.states()}
    ejected = next(s for s in states.values() if s.model and s.ejections_in_a_row)
    first.mode = "ok"
    gw.run(gw.gateway.monitor.probe())
    assert ejected.ejections_in_a_row == 0
