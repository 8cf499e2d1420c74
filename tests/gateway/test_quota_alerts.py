"""Quota alerts from the gateway: a settlement that crosses a threshold of the account's quota or
a key's cap is queued on the recorder and written with its batch (never per request), then
delivered once (email, eager in tests)."""

import asyncio

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from alerts.models import Alert
from gateway.serving import recorder as recorder_module
from keys.models import ApiKey
from keys.services import api_key_set_controls


def spend(gw, key, tokens, *, max_tokens=2000, headers=None):
    payload = {
        "model": "LongCat-Flash-Chat",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
    }
    return gw.chat(key, payload, headers={"x-demo-tokens": str(tokens), **(headers or {})})


@pytest.fixture
def quota_1000(alice_key):
    user, _key = alice_key
    get_user_model().objects.filter(pk=user.pk).update(daily_quota=1000)
    return alice_key


def test_crossing_80_and_100_percent_alerts_once_per_threshold(gw, quota_1000):
    user, key = quota_1000
    assert spend(gw, key, 500).status == 200  # about 51 %: nothing
    gw.flush()
    assert not Alert.objects.exists()
    assert spend(gw, key, 300).status == 200  # past 80 %
    gw.flush()
    assert list(Alert.objects.values_list("threshold", "api_key")) == [(80, None)]
    # No usage reported: charged by estimate, the whole reservation, i.e. exactly the quota.
    assert spend(gw, key, 900, headers={"x-demo-fault": "nousage"}).status == 200
    assert spend(gw, key, 10).status == 429
    gw.flush()
    assert sorted(Alert.objects.values_list("threshold", flat=True)) == [80, 100]
    assert Alert.objects.get(threshold=100).used_tokens == 1000
    assert len(mail.outbox) == 2
    assert {m.to[0] for m in mail.outbox} == {user.email}


def test_a_capped_keys_crossings_alert_for_the_key(gw, alice_key):
    user, key = alice_key
    api_key = ApiKey.objects.get(user=user)
    api_key_set_controls(api_key=api_key, daily_token_cap=1000)
    assert spend(gw, key, 850).status == 200
    gw.flush()
    assert list(Alert.objects.values_list("threshold", "api_key", "limit_tokens")) == [
        (80, api_key.pk, 1000)
    ]


def test_charges_are_written_once_per_batch_not_per_request(gw, alice_key, monkeypatch):
    user, key = alice_key
    get_user_model().objects.filter(pk=user.pk).update(daily_quota=100_000)
    calls = []
    monkeypatch.setattr(
        recorder_module, "alert_crossings_record", lambda *, charges: calls.append(len(charges))
    )
    spend(gw, key, 10)  # starts the gateway, crosses nothing
    gw.flush()
    assert calls == []
    gw.gateway.recorder.flush_seconds = 3600
    gw.run(asyncio.sleep(0.3))  # the pending 0.2 s wait ends; from now on only gw.flush writes
    for _ in range(3):
        spend(gw, key, 2000, max_tokens=2000)  # 2 % each
    assert calls == []
    gw.flush()
    assert calls == [3]


def test_charges_wait_for_the_next_batch_when_the_write_fails(gw, quota_1000, monkeypatch):
    _user, key = quota_1000
    real = recorder_module.alert_crossings_record
    failures = []

    def fail_once(*, charges):
        if not failures:
            failures.append(1)
            raise ConnectionError("database away")
        return real(charges=charges)

    monkeypatch.setattr(recorder_module, "alert_crossings_record", fail_once)
    assert spend(gw, key, 850).status == 200
    gw.flush()
    assert failures and not Alert.objects.exists()
    gw.flush()
    assert list(Alert.objects.values_list("threshold", flat=True)) == [80]
    assert len(mail.outbox) == 1
