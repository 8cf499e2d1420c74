import logging
import traceback

import pytest

from accounts.models import User
from keys.models import ApiKey
from usage.models import DailyUsage


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer {key}"},
        {"authorization": "bearer {key}"},
        {"x-api-key": "{key}"},
        {"x-api-key": "Authorization: Bearer {key}"},
        {"authorization": "Bearer Authorization: Bearer {key}"},
        # Either valid header is enough, whatever the other one holds.
        {"authorization": "Bearer {key}", "x-api-key": "something-else"},
        {"authorization": "Bearer nonsense", "x-api-key": "{key}"},
    ],
)
def test_it_accepts_every_documented_header_form(gw, alice_key, headers):
    _user, key = alice_key
    headers = {name: value.format(key=key) for name, value in headers.items()}
    result = gw.chat(None, headers=headers)
    assert result.status == 200, result.body


def test_it_refuses_a_missing_key_with_401_and_no_retry(gw, alice_key):
    result = gw.chat(None)
    assert result.status == 401
    assert result.headers["x-should-retry"] == "false"
    assert result.json()["error"]["code"] == "missing_api_key"
    assert result.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("bad", ["sk-not-a-real-key-at-all-0000000000000", "hello", "sk-"])
def test_it_refuses_an_invalid_key_with_401(gw, alice_key, bad):
    result = gw.chat(bad)
    assert result.status == 401
    assert result.headers["x-should-retry"] == "false"
    assert result.json()["error"]["code"] == "invalid_api_key"


def test_it_refuses_a_key_whose_secret_differs_but_prefix_matches(gw, alice_key):
    _user, key = alice_key
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert gw.chat(forged).status == 401


def test_it_refuses_a_disabled_key_at_once_even_when_cached(gw, alice_key):
    user, key = alice_key
    assert gw.chat(key).status == 200  # now cached as active in this process
    ApiKey.objects.filter(user=user).update(is_active=False)
    result = gw.chat(key)
    assert result.status == 403
    assert result.json()["error"]["code"] == "api_key_disabled"
    assert result.headers["x-should-retry"] == "false"
    # Nothing was reserved or charged for the refused call.
    counter = DailyUsage.objects.get(user=user)
    assert counter.reserved_tokens == 0
    assert counter.requests == 1


def test_it_refuses_a_deactivated_account_at_once(gw, alice_key):
    user, key = alice_key
    assert gw.chat(key).status == 200
    User.objects.filter(pk=user.pk).update(is_active=False)
    result = gw.chat(key)
    assert result.status == 403
    assert result.json()["error"]["code"] == "account_disabled"


def test_it_refuses_a_regenerated_key_at_once(gw, alice_key):
    user, key = alice_key
    assert gw.chat(key).status == 200
    # Regenerating keeps the row (and prefix lookups may hit the cache) but changes the digest.
    ApiKey.objects.filter(user=user).update(digest="0" * 64)
    assert gw.chat(key).status == 401


def test_it_refuses_a_deleted_key_at_once(gw, alice_key):
    user, key = alice_key
    assert gw.chat(key).status == 200
    ApiKey.objects.filter(user=user).delete()
    assert gw.chat(key).status == 401


def test_it_lets_a_re_enabled_key_work_again(gw, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(is_active=False)
    assert gw.chat(key).status == 403
    ApiKey.objects.filter(user=user).update(is_active=True)
    assert gw.chat(key).status == 200


def test_it_never_puts_the_key_in_error_bodies_or_logs(gw, alice_key, caplog):
    user, key = alice_key
    caplog.set_level(logging.DEBUG)
    responses = [
        gw.chat(key, b"{not json"),
        gw.chat(key, {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        gw.chat(key + "x"),
        gw.chat(key, headers={"x-demo-fault": "error500"}),
    ]
    ApiKey.objects.filter(user=user).update(is_active=False)
    responses.append(gw.chat(key))
    for result in responses:
        assert result.status >= 400
        assert key.encode() not in result.body
        assert key[12:].encode() not in result.body
    assert key not in caplog.text


def test_a_crash_while_authenticating_carries_no_key(gw, alice_key, caplog, monkeypatch):
    # What uvicorn logs for an unexpected error: the exception and its traceback (no locals).
    _user, key = alice_key
    caplog.set_level(logging.DEBUG)

    def crash(raw_key):
        raise RuntimeError("the digest fell over")

    monkeypatch.setattr("gateway.serving.auth.key_digest", crash)
    with pytest.raises(RuntimeError) as crashed:
        gw.chat(key)
    report = "".join(traceback.format_exception(crashed.value))
    assert "the digest fell over" in report
    assert key[12:] not in report
    assert key[12:] not in caplog.text


def test_it_requires_a_key_for_the_model_list(gw, alice_key):
    _user, key = alice_key
    assert gw.request("GET", "/openai/v1/models").status == 401
    result = gw.request("GET", "/openai/v1/models", headers={"authorization": f"Bearer {key}"})
    assert result.status == 200
    assert [m["id"] for m in result.json()["data"]] == ["LongCat-Flash-Chat"]
    assert result.json()["data"][0]["owned_by"] == "demo"


class _CountingLedger:
    """find_key of one row, counting the round trips it would cost."""

    def __init__(self, row):
        self.row = row
        self.lookups = 0

    async def find_key(self, prefix):
        self.lookups += 1
        return self.row


def test_the_cache_says_when_it_answers_without_the_database():
    import asyncio
    import dataclasses

    from gateway.serving.auth import KeyCache
    from gateway.serving.errors import GatewayError
    from keys.crypto import generate_secret, key_digest
    from usage.ledger import KeyRow

    raw = generate_secret()
    row = KeyRow(1, 1, "default", key_digest(raw), True, True, None, None)
    ledger = _CountingLedger(row)
    keys = KeyCache(ledger, ttl=30.0)
    # Refused from the headers alone: never the database.
    assert keys.answers_alone(None) and keys.answers_alone("hello")
    assert not keys.answers_alone(raw)
    asyncio.run(keys.authenticate(raw))
    assert keys.answers_alone(raw)
    asyncio.run(keys.authenticate(raw))
    assert ledger.lookups == 1
    # A cached refusal is looked at again before it is sent: that takes the database.
    ledger.row = dataclasses.replace(row, key_active=False)
    with pytest.raises(GatewayError):
        asyncio.run(keys.authenticate(raw, fresh=True))
    assert not keys.answers_alone(raw)
    # An entry within a second of its end is not counted on.
    ledger.row = row
    short = KeyCache(ledger, ttl=1.0)
    asyncio.run(short.authenticate(raw))
    assert not short.answers_alone(raw)


def test_the_catalog_says_when_its_snapshot_answers_alone(gw, alice_key):
    _user, key = alice_key
    assert gw.chat(key).status == 200  # the gateway started and loaded the snapshot
    catalog = gw.gateway.catalog
    assert not catalog.current()  # the tests' catalog reloads on every request (ttl 0)
    catalog.ttl = 30.0
    assert catalog.current()
    catalog.ttl = 1.0  # within a second of its reload: not counted on
    assert not catalog.current()
