"""A key's daily token cap, held by the same reservation as the account's quota (both
ledgers: run on SQLite and on PostgreSQL)."""

import datetime as dt
import json
import subprocess
import sys

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from keys import services as key_services
from keys.crypto import key_digest
from keys.models import ApiKey
from usage.ledger import KeyRow, Refused, Reserved, refusal_for, reservation_grant
from usage.ledger.upkeep import reservations_release_stale, usage_daily_reset
from usage.models import DailyUsage, KeyDailyUsage, Reservation
from usage.quota import effective_quota, quota_day

from .conftest import record_request


@pytest.fixture
def alice_capped(transactional_db):
    """alice, her default key with a 10,000-token daily cap, and its secret."""
    from accounts.services import account_create_with_key

    user, secret = account_create_with_key(email="alice@example.com")
    key = ApiKey.objects.get(user=user)
    key_services.api_key_set_controls(api_key=key, daily_token_cap=10_000)
    key.refresh_from_db()
    return user, key, secret


def _reserve(ledger, key, secret, *, input_tokens=100, max_output=1_000, day=None, **extra):
    return ledger.run(
        ledger.reserve(
            key_id=key.pk,
            digest=key_digest(secret),
            day=day or quota_day(),
            input_tokens=input_tokens,
            max_output_tokens=max_output,
            **extra,
        )
    )


def _settle(ledger, reserved, input_tokens, output_tokens, *, retry=False):
    ledger.run(
        ledger.settle(
            reserved=reserved, input_tokens=input_tokens, output_tokens=output_tokens, retry=retry
        )
    )


def _key_counter(key, day=None):
    return KeyDailyUsage.objects.get(api_key=key, day=day or quota_day())


def test_it_leaves_a_key_without_a_cap_out_of_the_key_counters(ledger, transactional_db):
    from accounts.services import account_create_with_key

    user, secret = account_create_with_key(email="free@example.com")
    key = ApiKey.objects.get(user=user)
    reserved = _reserve(ledger, key, secret)
    assert isinstance(reserved, Reserved)
    assert reserved.capped_key_id is None
    assert Reservation.objects.get().capped_key_id is None
    _settle(ledger, reserved, 100, 50)
    assert not KeyDailyUsage.objects.exists()
    assert DailyUsage.objects.get(user=user).used_tokens == 150


def test_it_holds_the_cap_in_the_key_counter_with_the_account_quota(ledger, alice_capped):
    user, key, secret = alice_capped
    reserved = _reserve(ledger, key, secret, input_tokens=100, max_output=1_000)
    assert (reserved.tokens, reserved.capped_key_id) == (1_100, key.pk)
    assert Reservation.objects.get().capped_key_id == key.pk
    assert _key_counter(key).reserved_tokens == 1_100
    assert DailyUsage.objects.get(user=user).reserved_tokens == 1_100

    _settle(ledger, reserved, 100, 300)
    counter = _key_counter(key)
    assert (counter.used_tokens, counter.reserved_tokens) == (400, 0)
    assert DailyUsage.objects.get(user=user).used_tokens == 400


def test_it_caps_the_output_budget_to_what_the_key_has_left(ledger, alice_capped):
    user, key, secret = alice_capped
    KeyDailyUsage.objects.create(api_key=key, day=quota_day(), used_tokens=9_000)
    reserved = _reserve(ledger, key, secret, input_tokens=100, max_output=8_192)
    assert (reserved.tokens, reserved.output_budget) == (1_000, 900)
    refused = _reserve(ledger, key, secret, input_tokens=1, max_output=1)
    assert refused == Refused("key_quota", quota=10_000, used=10_000)
    # The account itself has plenty left: the refusal is the key's, not the account's.
    assert DailyUsage.objects.get(user=user).reserved_tokens == 1_000


def test_it_says_the_account_refused_when_the_account_runs_out_first(ledger, alice_capped):
    user, key, secret = alice_capped
    User.objects.filter(pk=user.pk).update(daily_quota=500)
    assert isinstance(_reserve(ledger, key, secret, input_tokens=100, max_output=1_000), Reserved)
    assert _reserve(ledger, key, secret, input_tokens=1, max_output=1) == Refused(
        "quota", quota=500, used=500
    )


def test_it_applies_a_new_cap_on_the_very_next_reservation(ledger, alice_capped):
    _user, key, secret = alice_capped
    _settle(ledger, _reserve(ledger, key, secret, input_tokens=100, max_output=900), 100, 900)
    key_services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    assert _reserve(ledger, key, secret, input_tokens=1, max_output=1) == Refused(
        "key_quota", quota=1_000, used=1_000
    )
    key_services.api_key_set_controls(api_key=key, daily_token_cap=None)
    reserved = _reserve(ledger, key, secret, input_tokens=1, max_output=1)
    assert isinstance(reserved, Reserved) and reserved.capped_key_id is None


def test_it_counts_what_the_key_spent_earlier_that_day_when_a_cap_is_set(ledger, transactional_db):
    from accounts.services import account_create_with_key

    user, secret = account_create_with_key(email="late@example.com")
    key = ApiKey.objects.get(user=user)
    record_request(user, key=key, input_tokens=6_000, output_tokens=3_000)
    key_services.api_key_set_controls(api_key=key, daily_token_cap=10_000)
    reserved = _reserve(ledger, key, secret, input_tokens=100, max_output=5_000)
    assert reserved.tokens == 1_000  # 9,000 of the 10,000 were spent before the cap was set
    assert _key_counter(key).used_tokens == 9_000


def test_it_charges_a_swept_reservation_once_and_releases_it_once(ledger, alice_capped):
    user, key, secret = alice_capped
    reserved = _reserve(ledger, key, secret, input_tokens=100, max_output=900)
    Reservation.objects.update(created_at=timezone.now() - dt.timedelta(hours=2), lease_until=None)
    assert reservations_release_stale(older_than=dt.timedelta(minutes=15)) == (1, 1_000)
    assert _key_counter(key).reserved_tokens == 0
    _settle(ledger, reserved, 100, 200)
    counter = _key_counter(key)
    assert (counter.used_tokens, counter.reserved_tokens) == (300, 0)
    assert DailyUsage.objects.get(user=user).reserved_tokens == 0


def test_it_charges_a_retried_settlement_once(ledger, alice_capped):
    _user, key, secret = alice_capped
    reserved = _reserve(ledger, key, secret, input_tokens=100, max_output=900)
    _settle(ledger, reserved, 100, 200)
    _settle(ledger, reserved, 100, 200, retry=True)  # the first attempt had committed
    assert _key_counter(key).used_tokens == 300
    other = _reserve(ledger, key, secret, input_tokens=100, max_output=900)
    _settle(ledger, other, 100, 100, retry=True)  # a retry whose first attempt never landed
    counter = _key_counter(key)
    assert (counter.used_tokens, counter.reserved_tokens) == (500, 0)


def test_it_refuses_stale_controls_and_holds_nothing(ledger, alice_capped):
    _user, key, secret = alice_capped
    cached = key.controls_version
    assert isinstance(_reserve(ledger, key, secret, controls_version=cached), Reserved)
    key_services.api_key_set_controls(api_key=key, allowed_models=["LongCat-Flash-Chat"])
    before = _key_counter(key).reserved_tokens
    assert _reserve(ledger, key, secret, controls_version=cached) == Refused("controls")
    assert _key_counter(key).reserved_tokens == before
    assert Reservation.objects.count() == 1
    fresh = ledger.run(ledger.find_key(key.prefix))
    assert fresh.controls_version == cached + 1
    assert isinstance(
        _reserve(ledger, key, secret, controls_version=fresh.controls_version), Reserved
    )


def test_the_key_lookup_carries_the_controls(ledger, alice_capped):
    _user, key, _secret = alice_capped
    expires = timezone.now() + dt.timedelta(days=3)
    version = key.controls_version
    key_services.api_key_set_controls(
        api_key=key,
        allowed_models=["LongCat-Flash-Chat"],
        expires_at=expires,
        allowed_ips=["203.0.113.0/24", "2001:db8::1"],
        max_concurrent_requests=4,
    )
    row = ledger.run(ledger.find_key(key.prefix))
    assert isinstance(row, KeyRow)
    assert row.daily_token_cap == 10_000
    assert row.allowed_models == ("LongCat-Flash-Chat",)
    assert row.expires_at == expires
    assert row.allowed_ips == ("203.0.113.0/24", "2001:db8::1")
    assert row.max_concurrent_requests == 4
    assert row.controls_version == version + 1
    # Compiled once with the row: the checks need no further parsing.
    assert row.controls.ip_allowed("203.0.113.9") and not row.controls.ip_allowed("198.51.100.1")
    assert row.controls.model_refusal("other").code == "model_not_allowed"


def test_the_daily_reset_prunes_old_key_counters(alice_capped, settings):
    _user, key, _secret = alice_capped
    today = quota_day()
    old = today - dt.timedelta(days=settings.USAGE_RETENTION_DAYS + 1)
    KeyDailyUsage.objects.create(api_key=key, day=old, used_tokens=5)
    KeyDailyUsage.objects.create(api_key=key, day=today, used_tokens=7)
    usage_daily_reset()
    assert list(KeyDailyUsage.objects.values_list("day", flat=True)) == [today]


GRANT_CASES = [
    # (account quota, account total, cap, key total, input, max output)
    (500_000, 0, 10_000, 0, 100, 1_000),
    (500_000, 0, 10_000, 9_950, 100, 1_000),
    (500_000, 0, 10_000, 9_899, 100, 1_000),
    (500_000, 0, 10_000, 9_898, 100, 1_000),
    (1_000, 950, 10_000, 0, 10, 1_000),
    (1_000, 500, 800, 700, 50, 1_000),
    (1_000, 1_000, 800, 800, 1, 1),
]


@pytest.mark.parametrize(("quota", "total", "cap", "key_total", "inp", "out"), GRANT_CASES)
def test_the_reserve_statement_follows_the_python_rules(
    ledger, alice_capped, quota, total, cap, key_total, inp, out
):
    user, key, secret = alice_capped
    User.objects.filter(pk=user.pk).update(daily_quota=quota)
    ApiKey.objects.filter(pk=key.pk).update(daily_token_cap=cap)
    day = quota_day()
    DailyUsage.objects.create(user=user, day=day, input_tokens=total)
    KeyDailyUsage.objects.create(api_key=key, day=day, used_tokens=key_total)
    outcome = _reserve(ledger, key, secret, input_tokens=inp, max_output=out)
    rule = dict(quota=effective_quota(quota), total=total, input_tokens=inp, cap=cap)
    tokens = reservation_grant(**rule, max_output_tokens=out, key_total=key_total)
    if tokens is None:
        assert outcome == refusal_for(**rule, key_total=key_total)
    else:
        assert isinstance(outcome, Reserved)
        assert (outcome.tokens, outcome.output_budget) == (tokens, tokens - inp)


def test_it_never_spends_past_the_key_cap_across_processes(alice_capped):
    """Four processes, each with its own connections, race for one key's 10,000 tokens."""
    from tests.acceptance.live import server_env

    user, key, secret = alice_capped
    day = quota_day()
    args = [str(key.pk), key_digest(secret), day.isoformat(), "60"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.usage.key_cap_worker", *args],
            env=server_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    try:
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    counter = _key_counter(key, day)
    charged = sum(r["charged"] for r in results)
    assert counter.used_tokens == charged
    assert counter.used_tokens <= 10_000
    assert counter.used_tokens > 9_000  # the cap really was reached
    assert counter.reserved_tokens == 0
    assert sum(r["refused"].get("key_quota", 0) for r in results) > 0
    assert not any(set(r["refused"]) - {"key_quota"} for r in results)
    account = DailyUsage.objects.get(user=user, day=day)
    assert (account.used_tokens, account.reserved_tokens) == (charged, 0)


def test_a_capped_key_reserves_in_one_round_trip_once_known(ledger, alice_capped):
    if connection.vendor != "postgresql":
        pytest.skip("the ORM ledger runs several statements in one transaction by design")
    _user, key, secret = alice_capped
    _reserve(ledger, key, secret)  # learns the key has a cap; creates the day's counters
    trips = ledger.round_trips
    _reserve(ledger, key, secret)
    assert ledger.round_trips == trips + 1
