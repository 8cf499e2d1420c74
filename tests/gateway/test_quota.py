import datetime as dt
import json

import pytest
import time_machine

from accounts.models import User
from keys.crypto import key_digest
from keys.models import ApiKey
from usage.ledger import Refused, Reserved, Settled
from usage.models import DailyUsage, Reservation, UsageRecord
from usage.quota import quota_day

UTC = dt.UTC
# 23:59:59 in Beijing on 1 March 2026 is 15:59:59 UTC.
BEFORE_MIDNIGHT = dt.datetime(2026, 3, 1, 15, 59, 59, tzinfo=UTC)
AFTER_MIDNIGHT = dt.datetime(2026, 3, 1, 16, 0, 1, tzinfo=UTC)


def _reserve(ledger, user, key, *, input_tokens=100, max_output=1000, day=None):
    api_key = ApiKey.objects.get(user=user)
    return ledger.run(
        ledger.reserve(
            key_id=api_key.pk,
            digest=key_digest(key),
            day=day or quota_day(),
            input_tokens=input_tokens,
            max_output_tokens=max_output,
        )
    )


def _counter(user, day=None):
    return DailyUsage.objects.get(user=user, day=day or quota_day())


def test_it_reserves_input_plus_output_budget(ledger, alice_key):
    user, key = alice_key
    reserved = _reserve(ledger, user, key, input_tokens=100, max_output=1000)
    assert isinstance(reserved, Reserved)
    assert (reserved.tokens, reserved.output_budget) == (1100, 1000)
    assert _counter(user).reserved_tokens == 1100
    assert Reservation.objects.get().tokens == 1100


def test_it_caps_the_output_budget_to_what_remains(ledger, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=1000)
    reserved = _reserve(ledger, user, key, input_tokens=100, max_output=8192)
    assert (reserved.tokens, reserved.output_budget) == (1000, 900)
    refused = _reserve(ledger, user, key, input_tokens=1, max_output=1)
    assert refused == Refused("quota", quota=1000, used=1000)


def test_it_refuses_when_the_input_alone_does_not_fit(ledger, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=100)
    assert isinstance(_reserve(ledger, user, key, input_tokens=100, max_output=10), Refused)
    assert isinstance(_reserve(ledger, user, key, input_tokens=99, max_output=10), Reserved)


def test_it_replaces_the_reservation_by_the_real_usage(ledger, alice_key):
    user, key = alice_key
    reserved = _reserve(ledger, user, key)
    ledger.run(ledger.settle(reserved=reserved, input_tokens=7, output_tokens=30))
    counter = _counter(user)
    assert (counter.input_tokens, counter.output_tokens, counter.reserved_tokens) == (7, 30, 0)
    assert counter.requests == 1
    assert not Reservation.objects.exists()


def test_a_settlement_returns_the_new_totals_the_quota_alerts_compare(ledger, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=5000)
    first = _reserve(ledger, user, key)
    assert first.quota == 5000 and first.key_cap is None
    assert ledger.run(ledger.settle(reserved=first, input_tokens=7, output_tokens=30)) == Settled(
        37
    )
    second = _reserve(ledger, user, key)
    settled = ledger.run(ledger.settle(reserved=second, input_tokens=100, output_tokens=3))
    assert settled == Settled(140)
    # A retry that finds the first attempt committed charged nothing: no totals to compare.
    assert (
        ledger.run(ledger.settle(reserved=second, input_tokens=1, output_tokens=1, retry=True))
        is None
    )


def test_a_capped_keys_settlement_returns_the_keys_total_too(ledger, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(daily_token_cap=10_000)
    reserved = _reserve(ledger, user, key)
    assert reserved.key_cap == 10_000
    settled = ledger.run(ledger.settle(reserved=reserved, input_tokens=70, output_tokens=30))
    assert settled == Settled(100, 100)


def test_it_charges_a_swept_reservation_once_and_releases_it_once(ledger, alice_key):
    user, key = alice_key
    reserved = _reserve(ledger, user, key)
    # What the stale-reservation sweeper does: delete the row, subtract its tokens.
    row = Reservation.objects.get()
    row.delete()
    DailyUsage.objects.filter(user=user).update(reserved_tokens=0)
    ledger.run(ledger.settle(reserved=reserved, input_tokens=7, output_tokens=30))
    counter = _counter(user)
    assert (counter.input_tokens, counter.output_tokens, counter.reserved_tokens) == (7, 30, 0)


def test_it_charges_a_retried_settlement_once(ledger, alice_key):
    user, key = alice_key
    # The first attempt committed, but its connection broke before the answer: the retry
    # finds the reservation gone and charges nothing more.
    reserved = _reserve(ledger, user, key)
    ledger.run(ledger.settle(reserved=reserved, input_tokens=7, output_tokens=30))
    ledger.run(ledger.settle(reserved=reserved, input_tokens=7, output_tokens=30, retry=True))
    # The first attempt never reached the database: the retry charges it.
    second = _reserve(ledger, user, key)
    ledger.run(ledger.settle(reserved=second, input_tokens=1, output_tokens=2, retry=True))
    counter = _counter(user)
    assert (counter.input_tokens, counter.output_tokens, counter.reserved_tokens) == (8, 32, 0)
    assert counter.requests == 2
    assert not Reservation.objects.exists()


def test_it_gives_a_reservation_a_lease_and_renews_it(ledger, alice_key, settings):
    user, key = alice_key
    settings.GATEWAY_RESERVATION_LEASE_SECONDS = 60
    reserved = _reserve(ledger, user, key)
    row = Reservation.objects.get()
    assert dt.timedelta(seconds=55) < row.lease_until - row.created_at <= dt.timedelta(seconds=61)
    ledger.run(ledger.renew_leases([reserved.reservation_id], 600))
    renewed = Reservation.objects.get().lease_until
    assert renewed - row.created_at > dt.timedelta(seconds=590)


def test_it_reads_the_account_quota_in_the_reservation(ledger, alice_key, settings):
    user, key = alice_key
    settings.DAILY_FREE_QUOTA = 500
    assert isinstance(_reserve(ledger, user, key, input_tokens=600, max_output=1), Refused)
    User.objects.filter(pk=user.pk).update(daily_quota=5_000_000)  # an approval
    assert isinstance(_reserve(ledger, user, key, input_tokens=600, max_output=1), Reserved)


def test_it_refuses_a_revoked_key_in_the_reservation_itself(ledger, alice_key):
    user, key = alice_key
    ApiKey.objects.filter(user=user).update(is_active=False)
    assert _reserve(ledger, user, key) == Refused("auth")
    ApiKey.objects.filter(user=user).update(is_active=True)
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert _reserve(ledger, user, key) == Refused("auth")


def test_it_keeps_usage_in_the_day_it_was_reserved(ledger, alice_key):
    user, key = alice_key
    with time_machine.travel(BEFORE_MIDNIGHT, tick=False):
        reserved = _reserve(ledger, user, key)
    assert reserved.day == dt.date(2026, 3, 1)
    with time_machine.travel(AFTER_MIDNIGHT, tick=False):
        ledger.run(ledger.settle(reserved=reserved, input_tokens=5, output_tokens=6))
        assert quota_day() == dt.date(2026, 3, 2)
    march_1 = _counter(user, dt.date(2026, 3, 1))
    assert (march_1.input_tokens, march_1.output_tokens, march_1.reserved_tokens) == (5, 6, 0)
    assert not DailyUsage.objects.filter(day=dt.date(2026, 3, 2)).exists()


# --- through the gateway -------------------------------------------------------------------
def test_it_answers_429_insufficient_quota_with_the_time_to_reset(gw, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=5)
    with time_machine.travel(dt.datetime(2026, 3, 1, 14, 0, 0, tzinfo=UTC), tick=False):
        result = gw.chat(key)
    assert result.status == 429
    error = result.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert error["type"] == "insufficient_quota"
    assert error["retry_after"] == 2 * 3600  # 22:00 in Beijing: two hours to midnight
    assert "2 h 0 min" in error["message"]
    assert result.headers["x-should-retry"] == "false"
    assert result.headers["retry-after"] == str(2 * 3600)
    assert "x-ratelimit-remaining-requests" in result.headers


def test_it_starts_from_zero_at_midnight_beijing_time(gw, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=20)
    with time_machine.travel(BEFORE_MIDNIGHT, tick=False):
        assert gw.chat(key).status == 200
        assert gw.chat(key).status == 429
    with time_machine.travel(AFTER_MIDNIGHT, tick=False):
        assert gw.chat(key).status == 200
    days = dict(DailyUsage.objects.values_list("day", "requests"))
    assert days == {dt.date(2026, 3, 1): 1, dt.date(2026, 3, 2): 1}
    gw.flush()
    assert set(UsageRecord.objects.values_list("day", "status_code")) == {
        (dt.date(2026, 3, 1), 200),
        (dt.date(2026, 3, 1), 429),
        (dt.date(2026, 3, 2), 200),
    }


def test_it_applies_a_quota_change_on_the_very_next_request(gw, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=5)
    assert gw.chat(key).status == 429
    User.objects.filter(pk=user.pk).update(daily_quota=5_000_000)
    assert gw.chat(key).status == 200


def test_it_caps_the_upstream_output_budget_to_the_remaining_quota(gw, alice_key):
    user, key = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=60)
    result = gw.chat(
        key,
        {"model": "LongCat-Flash-Chat", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"x-demo-echo": "1"},
    )
    sent = json.loads(result.json()["choices"][0]["message"]["content"])
    reservation_input = 3 + 4 + 1  # request + message overhead + "Hi"
    assert sent["max_tokens"] == 60 - reservation_input


@pytest.mark.parametrize("stream", [False, True])
def test_it_charges_the_upstream_usage(gw, alice_key, stream):
    user, key = alice_key
    payload = {
        "model": "LongCat-Flash-Chat",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 12,
        "stream": stream,
    }
    assert gw.chat(key, payload).status == 200
    counter = _counter(user)
    # The demo counts 3 per message + 1 + 6 // 3 for "Hello!"; it emitted 12 tokens.
    assert (counter.input_tokens, counter.output_tokens, counter.reserved_tokens) == (6, 12, 0)
    gw.flush()
    record = UsageRecord.objects.get()
    assert (record.input_tokens, record.output_tokens, record.estimated) == (6, 12, False)
    assert record.stream is stream
