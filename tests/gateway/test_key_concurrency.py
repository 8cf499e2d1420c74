"""A key's concurrent requests (``max_concurrent_requests``) at the gateway, in-process over the
demo upstream: the refusal in both dialects, and the slot given back however the request ends.
Runs on the in-process counter, and on Redis's sorted set when REDIS_URL is set."""

import asyncio
import json

import pytest
from django.conf import settings

from keys.models import ApiKey
from keys.services import api_key_set_controls
from tests.gateway.harness import asgi_call

MODEL = "LongCat-Flash-Chat"
HELLO = [{"role": "user", "content": "Hello!"}]
OPENAI = "/openai/v1/chat/completions"
ANTHROPIC = "/anthropic/v1/messages"


def limit(user, n):
    api_key_set_controls(api_key=ApiKey.objects.get(user=user), max_concurrent_requests=n)


def call(gw, key, *, path=OPENAI, stream=False, delay_ms=0, tokens=4, **kw):
    headers = {
        "authorization": f"Bearer {key}",
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-demo-tokens": str(tokens),
        "x-demo-delay-ms": str(delay_ms),
    }
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 20, "stream": stream}
    return asgi_call(gw.app, "POST", path, headers=headers, body=json.dumps(body).encode(), **kw)


def both(gw, first, second):
    """Run ``first`` and, once it is under way, ``second``; return both results."""

    async def go():
        one = asyncio.ensure_future(first)
        await asyncio.sleep(0.15)
        two = await second
        return await one, two

    return gw.run(go())


def in_flight(gw, key_id) -> int:
    limiter = gw.gateway.concurrency
    if limiter._redis is None:
        return limiter.in_flight(key_id)
    return gw.run(limiter._redis.call("ZCARD", limiter._set(key_id)))


@pytest.mark.parametrize("path", [OPENAI, ANTHROPIC])
def test_it_refuses_a_request_past_the_keys_limit_in_both_dialects(gw, alice_key, path):
    user, key = alice_key
    limit(user, 1)
    first, second = both(gw, call(gw, key, stream=True, delay_ms=100), call(gw, key, path=path))
    assert first.status == 200
    assert second.status == 429
    error = second.json()["error"]
    if path == OPENAI:
        assert (error["code"], error["type"]) == ("concurrency_limit_exceeded", "rate_limit_error")
    else:
        assert error["type"] == "rate_limit_error"
    assert "1 requests in flight" in error["message"]
    assert second.headers["retry-after"] == "1"
    # The stream over, its slot is back.
    assert in_flight(gw, ApiKey.objects.get(user=user).pk) == 0
    assert gw.run(call(gw, key, path=path)).status == 200


def test_it_admits_up_to_the_limit_at_once(gw, alice_key):
    user, key = alice_key
    limit(user, 3)

    async def go():
        return await asyncio.gather(*(call(gw, key, delay_ms=300) for _ in range(4)))

    statuses = sorted(result.status for result in gw.run(go()))
    assert statuses == [200, 200, 200, 429]


def test_a_client_that_leaves_gives_its_slot_back(gw, alice_key):
    user, key = alice_key
    limit(user, 1)
    gone = gw.run(call(gw, key, stream=True, delay_ms=50, disconnect_after_chunks=2))
    assert gone.status == 200
    gw.run(asyncio.sleep(0.05))
    assert in_flight(gw, ApiKey.objects.get(user=user).pk) == 0
    assert gw.run(call(gw, key)).status == 200


def test_a_cancelled_request_gives_its_slot_back(gw, alice_key):
    user, key = alice_key
    limit(user, 1)

    async def go():
        task = asyncio.ensure_future(call(gw, key, stream=True, delay_ms=200))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)

    gw.run(go())
    assert in_flight(gw, ApiKey.objects.get(user=user).pk) == 0
    assert gw.run(call(gw, key)).status == 200


def test_a_refusal_after_the_slot_gives_it_back(gw, alice_key):
    from django.contrib.auth import get_user_model

    user, key = alice_key
    limit(user, 1)
    get_user_model().objects.filter(pk=user.pk).update(daily_quota=5)
    for _ in range(2):
        assert gw.run(call(gw, key)).json()["error"]["code"] == "insufficient_quota"
    assert in_flight(gw, ApiKey.objects.get(user=user).pk) == 0


def test_a_key_without_a_limit_never_asks_for_a_slot(gw, alice_key, monkeypatch):
    _user, key = alice_key
    assert gw.run(call(gw, key)).status == 200  # started

    async def refuse(*args):
        raise AssertionError("a key without a limit took a slot")

    monkeypatch.setattr(gw.gateway.concurrency, "acquire", refuse)
    assert gw.run(call(gw, key)).status == 200


@pytest.mark.skipif(not settings.REDIS_URL, reason="REDIS_URL is not set")
def test_a_slot_held_past_its_lease_is_renewed_and_one_abandoned_expires(gw, alice_key, settings):
    user, key = alice_key
    settings.GATEWAY_CONCURRENCY_LEASE_SECONDS = 1.0
    limit(user, 1)
    key_id = ApiKey.objects.get(user=user).pk
    assert gw.run(call(gw, key)).status == 200  # starts the gateway and its lease loop
    gw.gateway.concurrency._held.clear()
    limiter = gw.gateway.concurrency

    async def long_request_then_another():
        # A request that outlives two leases keeps its slot (the loop renews it).
        first = asyncio.ensure_future(call(gw, key, stream=True, delay_ms=400, tokens=12))
        await asyncio.sleep(2.2)
        assert not first.done()
        refused = await call(gw, key)
        await first
        return refused

    assert gw.run(long_request_then_another()).status == 429
    # A slot nobody renews (its process died) is free once its lease is over.
    orphan = gw.run(limiter.acquire(key_id, 1))
    limiter._held.clear()
    assert orphan is not None
    assert gw.run(call(gw, key)).status == 429
    gw.run(asyncio.sleep(1.1))
    assert gw.run(call(gw, key)).status == 200


def test_a_concurrency_lease_under_a_second_is_refused_by_the_checks(settings):
    from gateway.checks import request_lifetime_check

    settings.GATEWAY_CONCURRENCY_LEASE_SECONDS = 1
    assert request_lifetime_check(None) == []
    settings.GATEWAY_CONCURRENCY_LEASE_SECONDS = 0.5
    assert [error.id for error in request_lifetime_check(None)] == ["gateway.E003"]


def test_it_admits_while_redis_is_away_and_says_so(caplog):
    from gateway.serving.concurrency import ConcurrencyLimiter
    from tests.gateway.harness import free_port

    async def go():
        limiter = ConcurrencyLimiter(redis_url=f"redis://127.0.0.1:{free_port()}/0")
        await limiter.open()
        try:
            slots = [await limiter.acquire(7, 1) for _ in range(3)]
            for slot in slots:
                limiter.release(slot)
            return slots
        finally:
            await limiter.close()

    slots = asyncio.run(go())
    assert all(slot is not None for slot in slots)  # fails open, like the rate limiter
    assert "concurrency limits: Redis unavailable" in caplog.text
