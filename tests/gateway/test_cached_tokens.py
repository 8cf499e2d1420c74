"""Cached input tokens: read from the upstream's usage, stored on records and rollups, and
charged at CACHED_INPUT_TOKEN_WEIGHT — with the counters still equal to the records."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from usage.checks import cached_input_token_weight_check
from usage.models import DailyRollup, DailyUsage, UsageRecord
from usage.quota import charged_input_tokens

CACHED = {"x-demo-cached-tokens": "6"}
LONG_PROMPT = {
    "model": "LongCat-Flash-Chat",
    "messages": [
        {"role": "user", "content": "A question about the platform, asked at length. " * 3}
    ],
    "max_tokens": 10,
}


def counters_equal_records(user):
    rows = list(UsageRecord.objects.filter(user=user).order_by("created_at", "id"))
    counter = DailyUsage.objects.get(user=user)
    assert counter.input_tokens == sum(r.input_tokens for r in rows)
    assert counter.output_tokens == sum(r.output_tokens for r in rows)
    assert counter.reserved_tokens == 0
    rollups = DailyRollup.objects.filter(user=user)
    assert sum(r.input_tokens for r in rollups) == counter.input_tokens
    assert sum(r.cached_input_tokens for r in rollups) == sum(r.cached_input_tokens for r in rows)
    return rows


@pytest.mark.parametrize(
    ("weight", "expected"),
    [(1.0, 100), (0.0, 70), (0.1, 73), (0.5, 85), (0.25, 78)],  # 70 uncached + ceil(30 * w)
)
def test_the_charge_weighs_only_the_cached_part(settings, weight, expected):
    settings.CACHED_INPUT_TOKEN_WEIGHT = weight
    assert charged_input_tokens(input_tokens=100, cached_input_tokens=30) == expected


def test_odd_cached_counts_never_charge_more_than_the_input(settings):
    settings.CACHED_INPUT_TOKEN_WEIGHT = 0.1
    assert charged_input_tokens(input_tokens=10, cached_input_tokens=50) == 1
    assert charged_input_tokens(input_tokens=10, cached_input_tokens=-5) == 10


@pytest.mark.parametrize("stream", [False, True])
def test_by_default_cached_tokens_are_stored_and_charged_in_full(gw, alice_key, stream):
    user, key = alice_key
    result = gw.chat(key, {**LONG_PROMPT, "stream": stream}, headers=CACHED)
    assert result.status == 200
    gw.flush()
    (record,) = counters_equal_records(user)
    assert record.cached_input_tokens == 6
    plain = gw.chat(key, LONG_PROMPT)
    assert plain.status == 200
    gw.flush()
    uncached = UsageRecord.objects.filter(user=user, cached_input_tokens=0).get()
    assert record.input_tokens == uncached.input_tokens  # weight 1: the same charge


@pytest.mark.parametrize("path", ["/openai/v1/chat/completions", "/anthropic/v1/messages"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_weight_below_one_charges_cached_tokens_less(gw, alice_key, settings, path, stream):
    user, key = alice_key
    gw.chat(key, {**LONG_PROMPT, "stream": stream}, path=path)
    settings.CACHED_INPUT_TOKEN_WEIGHT = 0.1
    result = gw.chat(key, {**LONG_PROMPT, "stream": stream}, path=path, headers=CACHED)
    assert result.status == 200
    gw.flush()
    full, weighted = counters_equal_records(user)
    assert (full.cached_input_tokens, weighted.cached_input_tokens) == (0, 6)
    # 6 cached tokens charged as ceil(0.6) = 1: 5 fewer input tokens charged.
    assert weighted.input_tokens == full.input_tokens - 5
    (rollup,) = DailyRollup.objects.filter(user=user)
    assert rollup.cached_input_tokens == 6


@pytest.mark.parametrize("weight", [1.5, -0.1, float("nan"), "0.5"])
def test_the_system_check_refuses_a_weight_outside_0_to_1(settings, weight):
    settings.CACHED_INPUT_TOKEN_WEIGHT = weight
    (error,) = cached_input_token_weight_check(None)
    assert error.id == "usage.E001"
    with pytest.raises(SystemCheckError):
        call_command("check")


@pytest.mark.parametrize("weight", [0, 0.1, 1.0])
def test_the_system_check_accepts_a_weight_from_0_to_1(settings, weight):
    settings.CACHED_INPUT_TOKEN_WEIGHT = weight
    assert cached_input_token_weight_check(None) == []
