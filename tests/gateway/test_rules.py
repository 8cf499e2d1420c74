"""Rules written once: each has one owner, and where SQL mirrors it, both give the same answers."""

import asyncio
import datetime as dt

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from accounts.models import User
from gateway.serving.ratelimit import RateLimiter
from keys.crypto import key_digest
from keys.limits import effective_rate_limits
from keys.models import ApiKey
from usage.ledger import Refused, Reserved, reservation_grant
from usage.models import DailyUsage
from usage.quota import effective_quota, quota_day, seconds_until_reset
from usage.selectors import usage_today


# --- a key's rate limits ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rpm", "tpm", "expected"),
    [(None, None, (60, 1_000_000)), (5, None, (5, 1_000_000)), (None, 7, (60, 7)), (1, 1, (1, 1))],
)
def test_a_keys_limits_are_its_own_else_the_platforms(settings, rpm, tpm, expected, db):
    settings.RATE_LIMIT_RPM, settings.RATE_LIMIT_TPM = 60, 1_000_000
    assert effective_rate_limits(rpm, tpm) == expected
    key = ApiKey(rate_limit_rpm=rpm, rate_limit_tpm=tpm)
    # The portal (model, REST API) and the gateway show and enforce the same numbers.
    assert (key.effective_rate_limit_rpm, key.effective_rate_limit_tpm) == expected
    state = asyncio.run(RateLimiter().check(key_id=1, rpm=rpm, tpm=tpm, tokens=0))
    assert (state.limit_requests, state.limit_tokens) == expected


@pytest.mark.parametrize("field", ["rate_limit_rpm", "rate_limit_tpm"])
def test_a_limit_of_zero_is_refused(alice_key, field):
    user, _secret = alice_key
    key = ApiKey.objects.get(user=user)
    setattr(key, field, 0)
    with pytest.raises(ValidationError) as refused:
        key.full_clean()
    assert field in refused.value.message_dict
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(**{field: 0})


# --- the quota and the reservation grant: usage.quota / usage.ledger = the reserve statement --
# (daily_quota override, tokens already used today, input estimate, max output)
GRANT_CASES = [
    (None, 0, 100, 1000),
    (None, 499_000, 100, 8192),
    (None, 499_899, 100, 1000),
    (None, 499_900, 100, 1000),
    (1000, 0, 100, 8192),
    (1000, 899, 100, 10),
    (1000, 900, 100, 10),
    (1000, 1000, 1, 1),
    (100, 0, 99, 10),
    (100, 0, 100, 10),
    (0, 0, 1, 1),
    (5_000_000, 600_000, 3, 4096),
]


@pytest.mark.parametrize(("override", "used", "input_tokens", "max_output"), GRANT_CASES)
def test_the_reserve_statement_follows_the_python_rules(
    ledger, alice_key, settings, override, used, input_tokens, max_output
):
    settings.DAILY_FREE_QUOTA = 500_000
    user, secret = alice_key
    User.objects.filter(pk=user.pk).update(daily_quota=override)
    day = quota_day()
    DailyUsage.objects.create(user=user, day=day, input_tokens=used)
    outcome = ledger.run(
        ledger.reserve(
            key_id=ApiKey.objects.get(user=user).pk,
            digest=key_digest(secret),
            day=day,
            input_tokens=input_tokens,
            max_output_tokens=max_output,
        )
    )
    quota = effective_quota(override)
    tokens = reservation_grant(
        quota=quota, total=used, input_tokens=input_tokens, max_output_tokens=max_output
    )
    if tokens is None:
        assert outcome == Refused("quota", quota=quota, used=used)
    else:
        assert isinstance(outcome, Reserved)
        assert (outcome.tokens, outcome.output_budget) == (tokens, tokens - input_tokens)


def test_the_effective_quota_is_the_override_else_the_default(settings):
    settings.DAILY_FREE_QUOTA = 500_000
    assert [effective_quota(q) for q in (None, 0, 7)] == [500_000, 0, 7]


# --- seconds until the reset ------------------------------------------------------------------
def test_the_usage_page_and_the_429_count_down_alike(alice_key):
    user, _secret = alice_key
    for now in (
        dt.datetime(2026, 3, 1, 15, 59, 59, 500_000, tzinfo=dt.UTC),  # half a second before
        dt.datetime(2026, 3, 1, 16, 0, 0, tzinfo=dt.UTC),  # Beijing midnight exactly
        dt.datetime(2026, 3, 1, 3, 17, 42, 123, tzinfo=dt.UTC),
    ):
        assert usage_today(user=user, now=now).seconds_until_reset == seconds_until_reset(now)
    assert seconds_until_reset(dt.datetime(2026, 3, 1, 15, 59, 59, 500_000, tzinfo=dt.UTC)) == 1
    assert seconds_until_reset(dt.datetime(2026, 3, 1, 16, 0, 0, tzinfo=dt.UTC)) == 86_400
