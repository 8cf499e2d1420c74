"""A model served by OpenAI-compatible endpoints that serve the Responses API themselves
(``responses_api``): Responses clients passed through (official SDK, plain and streamed, with a
function tool), usage with the cache charged, cut streams, failover, a pool mixing a
Responses-native endpoint with a chat-only one; the body sent and the model name rewritten."""

import json

import httpx2
import openai
import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from gateway.models import Model, UpstreamEndpoint
from gateway.serving.catalog import _build
from gateway.serving.dialects.openai_responses import dialect as responses_dialect
from gateway.serving.dialects.openai_responses_native import passthrough_body
from gateway.serving.exchange import ResponsesPassThrough, ResponsesRelay
from gateway.serving.tokens import estimate_text_tokens
from tests.gateway.fake_responses import ARGUMENTS, FakeResponses
from usage.models import DailyUsage, Reservation, UsageRecord

from .helpers import sdk_events, sdk_response

MODEL = "LongCat-Flash-Chat"
UPSTREAM_MODEL = "gpt-upstream"
PATH = "/openai/v1/responses"
INPUT, CACHED, OUTPUT = 50, 30, 7
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}


@pytest.fixture
def upstreams():
    started = [FakeResponses("A"), FakeResponses("B")]
    try:
        yield started
    finally:
        for server in started:
            server.stop()


def _endpoints(model, upstreams, *, responses_api=(True, True)):
    from gateway.services import endpoint_save

    model.endpoints.all().delete()
    for priority, (server, native) in enumerate(zip(upstreams, responses_api, strict=True)):
        endpoint_save(
            endpoint=UpstreamEndpoint(model=model, kind=UpstreamEndpoint.Kind.OPENAI_COMPATIBLE),
            raw_key=f"sk-{server.name}",
            base_url=server.url,
            upstream_model=UPSTREAM_MODEL,
            responses_api=native,
            priority=priority,
        )


@pytest.fixture
def native(demo_model, gateway_settings, upstreams):
    """The demo model served by the first fake Responses upstream (then the second, a worse
    tier), both marked as serving the Responses API."""
    _endpoints(demo_model, upstreams)
    return upstreams


def with_openai(gw, key, work):
    """``work(client)`` with the official async OpenAI SDK, on the gateway in-process."""

    async def run():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gw.app)) as http:
            client = openai.AsyncOpenAI(
                api_key=key, base_url="http://gateway/openai/v1", http_client=http, max_retries=0
            )
            return await work(client)

    return gw.run(run())


def _record(gw, user):
    gw.flush()
    (record,) = UsageRecord.objects.filter(user=user)
    return record


def _books_exact(gw, user):
    """One charge per request, nothing left reserved, the counter equal to the records."""
    gw.flush()
    records = list(UsageRecord.objects.filter(user=user))
    counter = DailyUsage.objects.get(user=user)
    assert not Reservation.objects.exists()
    assert counter.reserved_tokens == 0
    assert counter.requests == len(records)
    assert counter.input_tokens == sum(r.input_tokens for r in records)
    assert counter.output_tokens == sum(r.output_tokens for r in records)


def _payload(**extra):
    return {"model": MODEL, "input": "Hello!", "max_output_tokens": 100, **extra}


# --- the body and the model name, golden ---------------------------------------------------
def test_the_pass_through_body_is_the_clients_own_with_budget_model_and_no_store():
    request = responses_dialect.parse_chat(
        json.dumps(
            {
                "model": MODEL,
                "instructions": "Be brief.",
                "input": [
                    {"role": "user", "content": "Hi"},
                    {
                        "type": "reasoning",
                        "id": "rs_gw",
                        "summary": [],
                        "content": [{"type": "reasoning_text", "text": "Earlier."}],
                    },
                    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "Read this"},
                            {"type": "input_file", "file_id": "file-operator", "filename": "a.pdf"},
                            {"type": "input_file", "file_data": "data:…", "filename": "b.pdf"},
                        ],
                    },
                ],
                "tools": [TOOL, {"type": "web_search"}, {"type": "file_search"}],
                "tool_choice": "auto",
                "reasoning": {"effort": "low", "summary": "auto"},
                "include": ["reasoning.encrypted_content"],
                "store": True,
                "stream": True,
                "prompt": {"id": "pmpt_operator"},
                "service_tier": "priority",
                "prompt_cache_key": "k1",
                "max_output_tokens": 50_000,
            }
        ).encode(),
        b"",
    )
    from gateway.serving.dialects.base import UpstreamTarget

    target = UpstreamTarget(public_model=MODEL, upstream_model=UPSTREAM_MODEL, max_tokens=8192)
    assert responses_dialect.native_body(request, target) == {
        "model": UPSTREAM_MODEL,
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": "Hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "e"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Read this"},
                    {"type": "input_text", "text": "[file not included: a.pdf]"},
                    {"type": "input_file", "file_data": "data:…", "filename": "b.pdf"},
                ],
            },
        ],
        "tools": [TOOL],
        "tool_choice": "auto",
        "reasoning": {"effort": "low", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "store": False,
        "stream": True,
        "prompt_cache_key": "k1",
        "max_output_tokens": 8192,
    }


def test_a_function_output_names_no_file_stored_upstream():
    output = [
        {"type": "input_text", "text": "Done"},
        {"type": "input_file", "file_id": "file-operator"},
    ]
    body = passthrough_body(
        {
            "model": MODEL,
            "input": [{"type": "function_call_output", "call_id": "c1", "output": output}],
        },
        model=UPSTREAM_MODEL,
        max_output_tokens=10,
    )
    assert body["input"] == [
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [
                {"type": "input_text", "text": "Done"},
                {"type": "input_text", "text": "[file not included: file-operator]"},
            ],
        }
    ]


def test_without_a_function_tool_no_tool_choice_is_sent():
    body = passthrough_body(
        {
            "model": MODEL,
            "input": "Hi",
            "tools": [{"type": "web_search"}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        model=UPSTREAM_MODEL,
        max_output_tokens=10,
    )
    assert body == {
        "model": UPSTREAM_MODEL,
        "input": "Hi",
        "max_output_tokens": 10,
        "store": False,
    }


def _event(kind: str, n: int, **data) -> bytes:
    return json.dumps({"type": kind, "sequence_number": n, **data}).encode()


def test_the_relay_renames_the_model_in_response_events_only():
    relay = ResponsesRelay(responses_dialect, MODEL, {"id": "resp_gw", "model": MODEL})
    created = _event("response.created", 0, response={"id": "r1", "model": UPSTREAM_MODEL})
    delta = _event("response.output_text.delta", 1, delta='"model": "gpt-upstream"')
    done = _event("response.completed", 2, response={"id": "r1", "model": UPSTREAM_MODEL})
    out = relay.chunk(created, None)
    assert out == (
        b"event: response.created\ndata: "
        + _event("response.created", 0, response={"id": "r1", "model": MODEL}).replace(b" ", b"")
        + b"\n\n"
    )
    # Any other event is relayed byte for byte, whatever its text says.
    assert (
        relay.chunk(delta, None) == b"event: response.output_text.delta\ndata: " + delta + b"\n\n"
    )
    # The final event waits for the charge to be settled.
    assert relay.chunk(done, None) == b""
    assert json.loads(relay.finish(None).split(b"data: ")[1])["response"]["model"] == MODEL


def test_only_a_responses_client_on_a_marked_endpoint_is_passed_through(db):
    from gateway.selectors import CatalogEndpoint
    from gateway.serving.dialects.base import ChatRequest, UpstreamTarget
    from gateway.serving.dialects.openai import dialect as chat_dialect
    from gateway.serving.exchange import exchange_for

    marked = CatalogEndpoint(
        id=1,
        kind="openai_compatible",
        base_url="http://x/v1",
        upstream_model="m",
        responses_api=True,
    )
    plain = CatalogEndpoint(
        id=2, kind="openai_compatible", base_url="http://y/v1", upstream_model="m"
    )
    chat = ChatRequest(model=MODEL, stream=False, max_tokens=None, input_tokens=1, body=None)
    target = UpstreamTarget(public_model=MODEL, upstream_model="m", max_tokens=10)
    found = exchange_for(marked, responses_dialect, chat, target, None)
    assert isinstance(found, ResponsesPassThrough) and found.path == "/responses"
    for endpoint, dialect in ((plain, responses_dialect), (marked, chat_dialect)):
        found = exchange_for(endpoint, dialect, chat, target, None)
        assert type(found).__name__ == "Exchange" and found.path == "/chat/completions"


# --- end to end ----------------------------------------------------------------------------
def test_a_responses_client_is_passed_through_and_charged_with_the_cache(gw, alice_key, native):
    user, key = alice_key
    a, _b = native

    async def work(client):
        return await client.responses.create(
            model=MODEL,
            instructions="Be brief.",
            input="Weather in Paris?",
            tools=[TOOL],
            max_output_tokens=50_000,  # over the model's limit: clamped
            store=True,
            extra_body={"prompt_cache_key": "k1"},
        )

    response = with_openai(gw, key, work)
    assert response.model == MODEL
    assert response.output_text == "Hello from A"
    call = response.output[1]
    assert (call.type, call.name, call.call_id) == ("function_call", "get_weather", "call_up1")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert response.service_tier == "default"  # the upstream's own fields travel unchanged
    assert response.usage.input_tokens == INPUT
    assert response.usage.input_tokens_details.cached_tokens == CACHED
    assert response.usage.output_tokens == OUTPUT
    (sent,) = a.requests
    assert a.paths == ["/v1/responses"]
    assert sent == {
        "model": UPSTREAM_MODEL,
        "instructions": "Be brief.",
        "input": "Weather in Paris?",
        "tools": [TOOL],
        "max_output_tokens": 8192,
        "store": False,
        "prompt_cache_key": "k1",
    }
    assert a.headers[0]["Authorization"] == "Bearer sk-A"
    record = _record(gw, user)
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )
    assert not record.estimated and record.endpoint == "openai.responses"
    assert record.upstream_endpoint_id == UpstreamEndpoint.objects.get(base_url=a.url).pk
    _books_exact(gw, user)


def test_a_responses_stream_is_relayed_event_by_event(gw, alice_key, native):
    user, key = alice_key
    a, _b = native

    async def work(client):
        stream = await client.responses.create(
            model=MODEL, input="Weather in Paris?", tools=[TOOL], stream=True
        )
        return [event async for event in stream]

    events = with_openai(gw, key, work)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[0].response.model == MODEL
    assert events[1].response.model == MODEL
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert (text, arguments) == ("Hello from A", "".join(ARGUMENTS))
    final = events[-1]
    assert final.type == "response.completed" and final.response.model == MODEL
    assert final.response.output[1].name == "get_weather"
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (
        INPUT,
        OUTPUT,
    )
    assert a.requests[-1]["stream"] is True and a.requests[-1]["store"] is False
    record = _record(gw, user)
    assert (record.input_tokens, record.cached_input_tokens, record.output_tokens) == (
        INPUT,
        CACHED,
        OUTPUT,
    )
    assert record.stream and not record.estimated
    _books_exact(gw, user)


def test_a_budget_cut_answer_is_relayed_incomplete(gw, alice_key, native):
    user, key = alice_key
    result = gw.chat(key, _payload(stream=True, max_output_tokens=5), path=PATH)
    events = sdk_events(result.body)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert native[0].requests[-1]["max_output_tokens"] == 5
    _books_exact(gw, user)


def test_a_cut_stream_ends_with_an_error_and_charges_what_was_delivered(gw, alice_key, native):
    user, key = alice_key
    a, _b = native
    a.mode = "cut"
    payload = _payload(stream=True, tools=[TOOL])
    result = gw.chat(key, payload, path=PATH)
    assert result.status == 200
    events = sdk_events(result.body)  # every event valid for the SDK, ours included
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "upstream_error"
    failed = events[-1].response
    assert (failed.status, failed.error.code, failed.model) == ("failed", "server_error", MODEL)
    assert not any(e.type == "response.completed" for e in events)
    record = _record(gw, user)
    assert record.status_code == 502 and record.estimated
    # Input by the gateway's estimate; output from the text and arguments delivered.
    estimate = responses_dialect.parse_chat(json.dumps(payload).encode(), b"").input_tokens
    assert record.input_tokens == estimate
    delivered = ["Hello ", "from ", "A", *ARGUMENTS]
    assert record.output_tokens == sum(estimate_text_tokens(text) for text in delivered)
    _books_exact(gw, user)


def test_an_error_event_mid_stream_is_the_dialects_error(gw, alice_key, native):
    user, key = alice_key
    a, _b = native
    a.mode = "error"
    result = gw.chat(key, _payload(stream=True), path=PATH)
    events = sdk_events(result.body)
    assert [e.type for e in events].count("error") == 1
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert "The server had an error" in events[-2].message
    record = _record(gw, user)
    assert record.status_code == 502 and record.output_tokens > 0
    _books_exact(gw, user)


def test_an_answer_without_usage_is_charged_by_estimate(gw, alice_key, native):
    user, key = alice_key
    a, _b = native
    a.mode = "nousage"
    result = gw.chat(key, _payload(max_output_tokens=20), path=PATH)
    assert result.status == 200 and result.json()["usage"] is None
    record = _record(gw, user)
    assert record.estimated and record.input_tokens > 0
    assert 0 < record.output_tokens <= 20
    _books_exact(gw, user)


@pytest.mark.parametrize("status", [500, 429])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_responses_endpoint_fails_over_before_the_first_byte(
    gw, alice_key, native, status, stream
):
    user, key = alice_key
    a, b = native
    a.mode, a.status = "fail", status
    result = gw.chat(key, _payload(stream=stream), path=PATH)
    assert result.status == 200
    if stream:
        events = sdk_events(result.body)
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    else:
        text = sdk_response(result.json()).output_text
    assert text == "Hello from B"
    assert (len(a.requests), len(b.requests)) == (1, 1)
    record = _record(gw, user)
    assert record.upstream_endpoint_id == UpstreamEndpoint.objects.get(base_url=b.url).pk
    assert (record.input_tokens, record.output_tokens) == (INPUT, OUTPUT)
    _books_exact(gw, user)


@pytest.mark.parametrize("stream", [False, True])
def test_a_pool_mixing_a_native_and_a_chat_only_endpoint_serves_from_both(
    gw, alice_key, demo_model, gateway_settings, upstreams, stream
):
    """The same Responses request, passed through to the native endpoint and translated for
    the chat-only one when the first fails: reserved and charged once each time."""
    user, key = alice_key
    a, b = upstreams
    _endpoints(demo_model, upstreams, responses_api=(True, False))
    for failing in (False, True):
        a.mode = "fail" if failing else "ok"
        result = gw.chat(key, _payload(stream=stream), path=PATH)
        assert result.status == 200
        if stream:
            events = sdk_events(result.body)
            assert events[-1].type == "response.completed"
            response = events[-1].response
        else:
            response = sdk_response(result.json())
        assert response.model == MODEL
        assert response.output_text == ("Hello from B" if failing else "Hello from A")
    assert a.paths == ["/v1/responses", "/v1/responses"]
    assert b.paths == ["/v1/chat/completions"]
    assert "messages" in b.requests[0] and b.requests[0]["model"] == UPSTREAM_MODEL
    gw.flush()
    served = [r.upstream_endpoint_id for r in UsageRecord.objects.filter(user=user).order_by("id")]
    assert served == [
        UpstreamEndpoint.objects.get(base_url=a.url).pk,
        UpstreamEndpoint.objects.get(base_url=b.url).pk,
    ]
    _books_exact(gw, user)


def test_a_chat_client_on_a_responses_endpoint_keeps_chat_completions(gw, alice_key, native):
    user, key = alice_key
    a, _b = native
    payload = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    result = gw.chat(key, payload)
    assert result.status == 200
    assert result.json()["choices"][0]["message"]["content"] == "Hello from A"
    assert a.paths == ["/v1/chat/completions"]
    _books_exact(gw, user)


# --- configuration -------------------------------------------------------------------------
def test_only_an_openai_compatible_endpoint_can_serve_the_responses_api(demo_model):
    from gateway.services import endpoint_save

    for kind, url in (("anthropic", "https://api.anthropic.com"), ("demo", "")):
        with pytest.raises(ValidationError) as refused:
            endpoint_save(
                endpoint=UpstreamEndpoint(model=demo_model, kind=kind),
                base_url=url,
                responses_api=True,
            )
        assert "responses_api" in refused.value.message_dict
    # Set behind validation's back (the kind changed later): never passed through.
    demo_model.endpoints.update(responses_api=True)
    assert not any(endpoint.responses_api for endpoint in _build()[MODEL].endpoints)


def test_the_command_marks_an_endpoint_as_serving_the_responses_api(demo_model):
    from io import StringIO

    def run(*args):
        out = StringIO()
        call_command("upstream", *args, stdout=out)
        return out.getvalue()

    run("add", MODEL, "https://api.openai.com/v1", "--responses-api")
    endpoint = UpstreamEndpoint.objects.get(base_url="https://api.openai.com/v1")
    assert endpoint.responses_api
    assert {e.id: e for e in _build()[MODEL].endpoints}[endpoint.pk].responses_api
    header, *rows = run("list").splitlines()
    column = header.split("\t").index("RESPONSES")
    listed = {row.split("\t")[0]: row.split("\t")[column] for row in rows}
    assert listed[str(endpoint.pk)] == "native"
    assert set(listed.values()) == {"native", "-"}
    with pytest.raises(CommandError, match="responses_api"):
        run("set", str(endpoint.pk), "--kind", "anthropic")
    run("set", str(endpoint.pk), "--no-responses-api")
    endpoint.refresh_from_db()
    assert not endpoint.responses_api
    with pytest.raises(CommandError, match="Only an OpenAI-compatible server"):
        run("add", MODEL, "--kind", "demo", "--responses-api")
    assert not Model.objects.get(name=MODEL).endpoints.filter(responses_api=True).exists()
