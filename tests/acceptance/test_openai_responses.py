"""The official ``openai`` SDK's ``responses.create`` against a live platform (uvicorn serving
``portal.asgi`` in a subprocess) over a scripted chat-only upstream: plain, streamed, and a
function tool round trip, with the records and the quota they leave."""

import json
import time

import openai
import pytest

from tests.acceptance.scripted import REASONING, TEXT, scripted_upstream
from tests.docs.examples import live_platform

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def platform(transactional_db, tmp_path):
    from django.db import connection

    from gateway.models import UpstreamEndpoint
    from gateway.services import catalog_bootstrap
    from tests.gateway.harness import DemoUpstreamThread

    received: list = []
    upstream = DemoUpstreamThread(app_factory=lambda: scripted_upstream(received)).start()
    try:
        catalog_bootstrap()
        UpstreamEndpoint.objects.filter(model__name=MODEL).update(
            kind=UpstreamEndpoint.Kind.OPENAI_COMPATIBLE, base_url=upstream.url
        )
        with live_platform(connection.settings_dict, tmp_path) as base_url:
            yield base_url, received
    finally:
        upstream.stop()


def _records(user, count, timeout=10.0):
    from usage.models import UsageRecord

    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageRecord.objects.filter(user=user).order_by("created_at", "id"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_the_openai_sdk_creates_responses_plain_streamed_and_with_a_tool(platform):
    from accounts.services import account_create_with_key
    from usage.models import DailyUsage

    base_url, received = platform
    user, key = account_create_with_key(email="responses@example.com")
    client = openai.OpenAI(api_key=key, base_url=f"{base_url}/openai/v1")

    # plain
    response = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input="Hello!",
        max_output_tokens=200,
        reasoning={"effort": "low"},
        store=False,
    )
    assert response.output_text == TEXT
    assert response.status == "completed" and response.model == MODEL
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == REASONING
    assert response.usage.input_tokens == 100 and response.usage.output_tokens == 12
    assert response.usage.input_tokens_details.cached_tokens == 64
    assert response.usage.output_tokens_details.reasoning_tokens == 5
    sent = received[-1]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["reasoning_effort"] == "low" and sent["max_tokens"] == 200

    # streamed, events iterated
    stream = client.responses.create(model=MODEL, input="Hello!", stream=True)
    events = list(stream)
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert "response.reasoning_text.delta" in types
    assert types[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.total_tokens == 112

    # a function tool round trip (streamed, as agents do)
    conversation: list = [{"role": "user", "content": "What is the weather in Paris?"}]
    with client.responses.stream(model=MODEL, input=conversation, tools=[WEATHER]) as stream:
        first = stream.get_final_response()
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    conversation += [
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 °C"},
    ]
    second = client.responses.create(model=MODEL, input=conversation, tools=[WEATHER])
    assert second.output_text == "The tool said: sunny, 21 °C"
    messages = received[-1]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == call.call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 °C"}

    # refused clearly: nothing is stored
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input="Hi", previous_response_id=second.id)
    assert "previous_response_id" in str(refused.value)

    rows = _records(user, 5)
    assert [(r.endpoint, r.stream, r.status_code) for r in rows] == [
        ("openai.responses", False, 200),
        ("openai.responses", True, 200),
        ("openai.responses", True, 200),
        ("openai.responses", False, 200),
        ("openai.responses", False, 400),
    ]
    counter = DailyUsage.objects.get(user=user)
    assert counter.reserved_tokens == 0
    assert counter.input_tokens + counter.output_tokens == 4 * 112
