"""A key's own controls as the official SDKs see them, against a live gateway (uvicorn in a
subprocess over the demo upstream): each refusal arrives as the SDK's matching exception."""

import datetime as dt
import threading

import anthropic
import openai
import pytest
from django.db.models import F
from django.utils import timezone

from gateway.models import Model
from keys.models import ApiKey
from keys.services import api_key_set_controls
from tests.acceptance.conftest import wait_for
from usage.models import UsageRecord

pytestmark = pytest.mark.slow

MODEL = "LongCat-Flash-Chat"
HELLO = [{"role": "user", "content": "Hello!"}]


def clients(base_url, key):
    # No retries: a refusal must reach the test as it reached the SDK.
    return (
        openai.OpenAI(api_key=key, base_url=f"{base_url}/openai", max_retries=0),
        anthropic.Anthropic(api_key=key, base_url=f"{base_url}/anthropic", max_retries=0),
    )


def both_refuse(base_url, key, exception_types, code):
    client, claude = clients(base_url, key)
    with pytest.raises(exception_types[0]) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    assert caught.value.code == code
    with pytest.raises(exception_types[1]) as caught_anthropic:
        claude.messages.create(model=MODEL, messages=HELLO, max_tokens=5)
    return caught.value, caught_anthropic.value


def key_of(user) -> ApiKey:
    return ApiKey.objects.get(user=user)


def test_an_expired_key_is_an_authentication_error(live_base_url, live_key):
    user, key = live_key
    # Past expiries are refused by the service (a key to stop now is disabled instead).
    ApiKey.objects.filter(user=user).update(
        expires_at=timezone.now() - dt.timedelta(minutes=1),
        controls_version=F("controls_version") + 1,
    )
    _, refused = both_refuse(
        live_base_url,
        key,
        (openai.AuthenticationError, anthropic.AuthenticationError),
        "key_expired",
    )
    assert "expired" in refused.message


def test_an_address_outside_the_allow_list_is_a_permission_error(live_base_url, live_key):
    user, key = live_key
    api_key_set_controls(api_key=key_of(user), allowed_ips=["203.0.113.0/24"])
    _, refused = both_refuse(
        live_base_url,
        key,
        (openai.PermissionDeniedError, anthropic.PermissionDeniedError),
        "ip_not_allowed",
    )
    assert "127.0.0.1" in refused.message


def test_a_model_outside_the_allowed_models_is_a_permission_error(live_base_url, live_key):
    user, key = live_key
    Model.objects.create(name="other-chat", upstream_kind=Model.UpstreamKind.DEMO)
    api_key_set_controls(api_key=key_of(user), allowed_models=["other-chat"])
    both_refuse(
        live_base_url,
        key,
        (openai.PermissionDeniedError, anthropic.PermissionDeniedError),
        "model_not_allowed",
    )
    client, claude = clients(live_base_url, key)
    # The live gateway's catalog snapshot may predate the new model by a few seconds; then it
    # lists nothing the key may use, never a model outside its list.
    listed = wait_for(lambda: [m.id for m in client.models.list()], timeout=8)
    assert listed == ["other-chat"]
    assert [m.id for m in claude.models.list()] == ["other-chat"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(MODEL)


def test_a_spent_key_cap_is_a_rate_limit_error(live_base_url, live_key):
    user, key = live_key
    api_key_set_controls(api_key=key_of(user), daily_token_cap=5)
    refused, refused_anthropic = both_refuse(
        live_base_url,
        key,
        (openai.RateLimitError, anthropic.RateLimitError),
        "key_daily_limit_exceeded",
    )
    assert int(refused.response.headers["retry-after"]) > 0
    assert refused.response.headers["x-should-retry"] == "false"
    assert refused_anthropic.response.headers["x-should-retry"] == "false"


def test_a_request_past_the_concurrency_limit_is_a_rate_limit_error(live_base_url, live_key):
    user, key = live_key
    api_key_set_controls(api_key=key_of(user), max_concurrent_requests=1)
    client, claude = clients(live_base_url, key)
    started, done = threading.Event(), threading.Event()

    def hold_a_slot():
        stream = client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=20,
            stream=True,
            extra_headers={"x-demo-delay-ms": "150", "x-demo-tokens": "20"},
        )
        for _chunk in stream:
            started.set()
        done.set()

    holder = threading.Thread(target=hold_a_slot)
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
        assert caught.value.code == "concurrency_limit_exceeded"
        with pytest.raises(anthropic.RateLimitError):
            claude.messages.create(model=MODEL, messages=HELLO, max_tokens=5)
    finally:
        holder.join(30)
    assert done.is_set()
    # The stream over, its slot is free again.
    client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5)
    # The live gateway writes the four requests' records in a batch after answering: waited
    # for, so that the test database is not flushed under that write (a deadlock in CI).
    assert wait_for(lambda: UsageRecord.objects.filter(user=user).count() >= 4, timeout=10)
