"""The official ``anthropic`` SDK against a live platform: uvicorn serving ``portal.asgi`` and the
demo upstream, both real processes on free ports, on the test database.

One platform per test (they take a few seconds to start), several client scenarios in each.
"""

import json
import time
from pathlib import Path

import anthropic
import httpx
import pytest

from tests.docs.examples import live_platform

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parents[1] / "fixtures" / "claude_code_request.json"
MODEL = "LongCat-Flash-Chat"
DEMO_TEXT = "This is the demo model"


@pytest.fixture
def platform(transactional_db, tmp_path):
    from django.db import connection

    from gateway.services import catalog_bootstrap

    # A transactional test starts from empty tables: the catalog's migration row is gone.
    catalog_bootstrap()
    with live_platform(connection.settings_dict, tmp_path) as base_url:
        yield base_url


@pytest.fixture
def account():
    from accounts.services import account_create_with_key

    return account_create_with_key(email="sdk-user@example.com")


def records_of(user, count, timeout=10.0):
    """The account's usage records, once ``count`` of them were written (they are batched)."""
    from usage.models import UsageRecord

    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageRecord.objects.filter(user=user).order_by("created_at", "id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def sdk_create_stream_count_and_tools(platform, account):
    user, key = account
    client = anthropic.Anthropic(api_key=key, base_url=f"{platform}/anthropic")

    # the models, listed and one by one
    # ``in``, not ``==``: the live gateway's catalog snapshot may still list for a few
    # seconds a model another test of the session has just created.
    assert MODEL in [m.id for m in client.models.list()]
    model = client.models.retrieve(MODEL)
    assert (model.id, model.type, model.display_name) == (MODEL, "model", MODEL)
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")

    # plain
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "Hello!"}]
    )
    message = raw.parse()
    assert message.content[0].text.startswith(DEMO_TEXT)
    assert message.stop_reason == "end_turn"
    # request-id as Anthropic sends it, the X-Request-ID of the platform's logs inside.
    assert raw.headers["request-id"] == "req_" + raw.headers["x-request-id"]
    assert message._request_id == raw.headers["request-id"]
    assert raw.headers["anthropic-ratelimit-requests-limit"].isdigit()
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0

    # streaming through the SDK's helper
    with client.messages.stream(
        model=MODEL,
        max_tokens=8,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello!"}],
    ) as stream:
        streamed_text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed_text == final.content[0].text
    assert streamed_text.startswith("This is the demo")
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 8

    # a tool-use round trip: the model's call and our result go back; an answer comes
    tools = [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ]
    first = client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=tools,
        tool_choice={"type": "auto"},
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    assert first.stop_reason in ("end_turn", "tool_use")
    second = client.messages.create(
        model=MODEL,
        max_tokens=50,
        tools=tools,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C, sunny"}
                ],
            },
        ],
    )
    assert second.content[0].type == "text"
    assert second.content[0].text.startswith(DEMO_TEXT)

    # count_tokens: an estimate, free of charge
    counted = client.messages.count_tokens(
        model=MODEL, tools=tools, messages=[{"role": "user", "content": "Hello!"}]
    )
    assert counted.input_tokens > 0

    rows = records_of(user, 5)
    assert len(rows) == 5
    # count_tokens charged nothing; it is rate-limited and recorded under its own endpoint.
    (counting,) = [r for r in rows if r.endpoint == "anthropic.count_tokens"]
    assert (counting.input_tokens, counting.output_tokens) == (0, 0)
    rows = [r for r in rows if r is not counting]
    assert {r.endpoint for r in rows} == {"anthropic.messages"}
    assert [r.stream for r in rows] == [False, True, False, False]
    assert all(r.status_code == 200 for r in rows)
    assert rows[0].output_tokens == message.usage.output_tokens
    assert rows[1].output_tokens == 8

    from usage.selectors import usage_today

    today = usage_today(user=user)
    assert today.requests == 4
    assert today.input_tokens + today.output_tokens == sum(
        r.input_tokens + r.output_tokens for r in rows
    )
    assert today.reserved_tokens == 0


def quick_start_example_and_other_auth_styles(platform, account, records_before):
    user, key = account
    # The platform's own example, as users copy it.
    client = anthropic.Anthropic(
        api_key=f"Authorization: Bearer {key}",
        base_url=f"{platform}/anthropic/",
        default_headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
        },
    )
    response = client.messages.create(
        model=MODEL, max_tokens=1000, messages=[{"role": "user", "content": "Hello!"}]
    )
    assert response.content[0].text.startswith(DEMO_TEXT)

    # auth_token (Claude Code's ANTHROPIC_AUTH_TOKEN) and a bare x-api-key header.
    by_token = anthropic.Anthropic(auth_token=key, base_url=f"{platform}/anthropic")
    assert by_token.messages.create(
        model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "Hi"}]
    ).content
    raw = httpx.post(
        f"{platform}/anthropic/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    assert len(records_of(user, records_before + 3)) == records_before + 3


def errors_as_sdk_exceptions_without_vain_retries(platform, account, records_before):
    from usage.models import DailyUsage
    from usage.quota import quota_day

    user, key = account
    stranger = anthropic.Anthropic(api_key="sk-" + "x" * 43, base_url=f"{platform}/anthropic")
    with pytest.raises(anthropic.AuthenticationError) as caught:
        stranger.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert caught.value.response.headers["x-should-retry"] == "false"

    client = anthropic.Anthropic(api_key=key, base_url=f"{platform}/anthropic")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(
            model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "robot", "content": "x"}]
        )
    assert "messages.0.role" in caught.value.message

    # Today's quota spent: one refusal, and the SDK (2 retries by default) does not retry it.
    DailyUsage.objects.update_or_create(
        user=user, day=quota_day(), defaults={"input_tokens": 500_000}
    )
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.response.headers["x-should-retry"] == "false"
    records_of(user, records_before + 3)
    time.sleep(0.5)  # would-be retries would have been recorded by now
    refusals = [r for r in records_of(user, 99, 0) if r.error_code == "insufficient_quota"]
    assert len(refusals) == 1


def recorded_claude_code_request(platform, account):
    user, key = account
    recorded = json.loads(FIXTURE.read_text())
    headers = {
        **recorded["headers"],
        "content-type": "application/json",
        "authorization": f"Bearer {key}",
    }
    events = []
    with httpx.stream(
        "POST",
        f"{platform}{recorded['path']}",
        headers=headers,
        content=json.dumps(recorded["body"]).encode(),
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    text = "".join(
        d["delta"]["text"] for n, d in events if n == "content_block_delta" and "text" in d["delta"]
    )
    assert text.startswith(DEMO_TEXT)
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    (record,) = records_of(user, 1)
    assert record.endpoint == "anthropic.messages"
    assert record.stream
    assert record.output_tokens == delta["usage"]["output_tokens"] > 0


def test_the_sdk_creates_streams_counts_uses_tools_and_the_quick_start_example_works(
    platform, account
):
    sdk_create_stream_count_and_tools(platform, account)
    quick_start_example_and_other_auth_styles(platform, account, records_before=5)


def test_a_claude_code_request_is_answered_and_errors_reach_the_sdk_as_its_exceptions(
    platform, account
):
    recorded_claude_code_request(platform, account)
    errors_as_sdk_exceptions_without_vain_retries(platform, account, records_before=1)


def test_the_sdk_sees_signed_thinking_and_sends_it_back(platform, account):
    """Thinking on, streamed and not; the signed block goes back in the history; an altered one
    is refused with a 400 naming the block."""
    user, key = account
    client = anthropic.Anthropic(api_key=key, base_url=f"{platform}/anthropic")
    thinking = {"type": "enabled", "budget_tokens": 2048}
    question = {"role": "user", "content": "What is 6 times 7?"}

    message = client.messages.create(
        model=MODEL, max_tokens=4096, thinking=thinking, messages=[question]
    )
    assert [block.type for block in message.content] == ["thinking", "text"]
    thought = message.content[0]
    assert thought.thinking and thought.signature
    assert message.content[1].text.startswith(DEMO_TEXT)

    with client.messages.stream(
        model=MODEL, max_tokens=4096, thinking=thinking, messages=[question]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds  # the SDK's own event names
    assert kinds.index("signature") < kinds.index("text")
    assert final.content[0].thinking == thought.thinking
    assert final.content[0].signature == thought.signature  # same text, same model, same key

    history = [
        question,
        {"role": "assistant", "content": [thought.model_dump(), message.content[1].model_dump()]},
        {"role": "user", "content": "And 6 times 8?"},
    ]
    again = client.messages.create(
        model=MODEL, max_tokens=4096, thinking=thinking, messages=history
    )
    assert again.content[0].type == "thinking"

    history[1]["content"][0] = {**thought.model_dump(), "thinking": "I was told to lie."}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=MODEL, max_tokens=4096, thinking=thinking, messages=history)
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    assert "messages.1.content.0" in refused.value.message
    assert "signature" in refused.value.message

    rows = records_of(user, 4)
    assert [r.status_code for r in rows] == [200, 200, 200, 400]
    assert rows[0].output_tokens == message.usage.output_tokens
