"""The seed's OpenAI-format examples against a live gateway: uvicorn in a subprocess serving
``portal.asgi``, the demo upstream in another, both on free ports, on the test database."""

import http.client
import json
import time
from urllib.parse import urlsplit

import openai
import pytest
import requests

from accounts.models import User
from tests.acceptance.conftest import wait_for
from usage.models import DailyUsage, Reservation, UsageRecord

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"


def _records(user, count):
    return wait_for(lambda: UsageRecord.objects.filter(user=user).count() >= count) and list(
        UsageRecord.objects.filter(user=user).order_by("created_at", "id")
    )


def _used(user) -> int:
    counter = DailyUsage.objects.get(user=user)
    assert counter.reserved_tokens == 0
    return counter.input_tokens + counter.output_tokens


def test_it_answers_the_openai_sdk_plain_and_streamed(live_base_url, live_key):
    user, key = live_key
    client = openai.OpenAI(api_key=key, base_url=f"{live_base_url}/openai")
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=1000
    )
    assert response.choices[0].message.content.startswith("This is the demo model")
    assert response.model == MODEL
    plain_tokens = response.usage.total_tokens

    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello!"}],
        max_tokens=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "This is the demo model of the"
    assert usage.completion_tokens == 7

    models = client.models.list()
    # ``in``, not ``==``: the live gateway serves every test of the session, and its catalog
    # snapshot may still list for a few seconds a model another test has just created.
    assert MODEL in [m.id for m in models.data]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")

    records = _records(user, 2)
    assert [(r.status_code, r.stream) for r in records] == [(200, False), (200, True)]
    assert _used(user) == plain_tokens + usage.total_tokens
    assert sum(r.input_tokens + r.output_tokens for r in records) == _used(user)


def test_it_answers_the_quick_start_requests_example(live_base_url, live_key):
    user, key = live_key
    response = requests.post(
        f"{live_base_url}/openai/chat/completions",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello, please introduce yourself."}],
            "max_tokens": 1000,
            "temperature": 0.7,
        },
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert int(response.headers["x-ratelimit-remaining-requests"]) >= 0
    assert _used(user) == body["usage"]["total_tokens"]
    assert _records(user, 1)[0].output_tokens == body["usage"]["completion_tokens"]


def test_it_answers_raw_http_like_curl(live_base_url, live_key):
    user, key = live_key
    parts = urlsplit(live_base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 1000}
    )
    conn.request(
        "POST",
        "/openai/v1/chat/completions",
        body=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert response.getheader("content-type") == "application/json"
    assert payload["object"] == "chat.completion"
    assert _used(user) == payload["usage"]["total_tokens"]


def test_it_relays_a_slow_stream_chunk_by_chunk(live_base_url, live_key):
    user, key = live_key
    parts = urlsplit(live_base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request(
        "POST",
        "/openai/v1/chat/completions",
        body=json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 6,
                "stream": True,
            }
        ),
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            # The demo upstream waits this long before producing each chunk.
            "x-demo-delay-ms": "400",
        },
    )
    started = time.monotonic()
    response = conn.getresponse()
    assert response.status == 200
    arrivals = []
    while True:
        line = response.fp.readline()
        if not line:
            break
        if line.startswith(b"data: {") and b'"content": "' in line:
            arrivals.append(time.monotonic() - started)
        if line.startswith(b"data: [DONE]"):
            break
    conn.close()
    assert len(arrivals) == 6
    # The first token reached us while the upstream was still producing the rest (2.4 s in all).
    assert arrivals[0] < 1.5
    assert arrivals[-1] - arrivals[0] > 1.5
    assert arrivals == sorted(arrivals)
    record = _records(user, 1)[0]
    assert record.stream is True
    assert record.first_token_ms < 1500


def test_it_stops_sdk_retries_on_auth_and_quota_errors(live_base_url, live_key):
    user, key = live_key
    client = openai.OpenAI(api_key="sk-" + "x" * 43, base_url=f"{live_base_url}/openai")
    started = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - started < 1.5  # no back-off and retry

    User.objects.filter(pk=user.pk).update(daily_quota=5)
    client = openai.OpenAI(api_key=key, base_url=f"{live_base_url}/openai")
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert refused.value.code == "insufficient_quota"
    records = _records(user, 1)
    time.sleep(0.5)
    assert UsageRecord.objects.filter(user=user).count() == len(records) == 1  # no retries
    assert not Reservation.objects.exists()


def test_the_openai_sdk_embeds_with_its_default_base64_and_floats(live_base_url, live_key):
    import math

    from gateway.models import Model

    user, key = live_key
    Model.objects.create(
        name="demo-embed", upstream_kind=Model.UpstreamKind.DEMO, kind=Model.Kind.EMBEDDING
    )
    client = openai.OpenAI(api_key=key, base_url=f"{live_base_url}/openai", max_retries=0)
    # The gateway's catalog snapshot is at most a few seconds old.
    assert wait_for(lambda: "demo-embed" in [m.id for m in client.models.list()], timeout=10)

    # The SDK asks for base64 and decodes it itself.
    answer = client.embeddings.create(model="demo-embed", input=["hello", "world"])
    assert [item.index for item in answer.data] == [0, 1]
    vector = answer.data[0].embedding
    assert len(vector) == 64 and math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-4)
    floats = client.embeddings.create(
        model="demo-embed", input="hello", encoding_format="float", dimensions=16
    )
    assert len(floats.data[0].embedding) == 16
    assert answer.usage.prompt_tokens > 0

    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input="hello")
    assert refused.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="demo-embed", messages=[{"role": "user", "content": "hi"}]
        )

    records = _records(user, 4)
    embedded = [r for r in records if r.endpoint == "openai.embeddings" and r.status_code == 200]
    assert [r.input_tokens for r in embedded][:1] == [answer.usage.prompt_tokens]
    assert all(r.output_tokens == 0 for r in embedded)
    assert _used(user) == sum(r.input_tokens + r.output_tokens for r in records)

    # A spent quota refuses embeddings like chat.
    from usage.quota import quota_day

    DailyUsage.objects.filter(user=user, day=quota_day()).update(input_tokens=10_000_000)
    with pytest.raises(openai.RateLimitError) as spent:
        client.embeddings.create(model="demo-embed", input="hello")
    assert spent.value.code == "insufficient_quota"
