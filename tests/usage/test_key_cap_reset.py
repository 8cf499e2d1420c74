"""A key's daily-cap counter after its cap was removed and set again the same day: it counts
what the key spent while uncapped (its rollups), on SQLite and on PostgreSQL."""

import pytest

from keys import services
from keys.models import ApiKey
from usage.models import DailyRollup, KeyDailyUsage
from usage.quota import quota_day

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(alice) -> ApiKey:
    return ApiKey.objects.get(user=alice, name=services.DEFAULT_KEY_NAME)


def _spent(key, tokens, *, model="m"):
    """The rollups of the key's requests today (what the record writer keeps)."""
    row, _ = DailyRollup.objects.get_or_create(
        user_id=key.user_id, key_name=key.name, model=model, day=quota_day(), api_key=key
    )
    DailyRollup.objects.filter(pk=row.pk).update(input_tokens=row.input_tokens + tokens)


def _counter(key) -> int:
    return KeyDailyUsage.objects.get(api_key=key, day=quota_day()).used_tokens


def test_a_cap_set_again_counts_what_the_key_spent_while_uncapped(key):
    services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    # 600 spent under the cap: the counter (created by the first capped reservation) and the
    # rollups agree.
    KeyDailyUsage.objects.create(api_key=key, day=quota_day(), used_tokens=600)
    _spent(key, 600)
    services.api_key_set_controls(api_key=key, daily_token_cap=None)
    _spent(key, 5_000, model="other")  # uncapped: only the rollups move
    services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    assert _counter(key) == 5_600


def test_changing_a_cap_also_catches_the_counter_up(key):
    services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    KeyDailyUsage.objects.create(api_key=key, day=quota_day(), used_tokens=100)
    _spent(key, 300)
    services.api_key_set_controls(api_key=key, daily_token_cap=2_000)
    assert _counter(key) == 300


def test_the_counter_never_goes_down(key):
    """Settled requests reach the counter before the record writer's rollups: a counter ahead
    of them keeps its value."""
    services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    KeyDailyUsage.objects.create(api_key=key, day=quota_day(), used_tokens=900)
    _spent(key, 400)
    services.api_key_set_controls(api_key=key, daily_token_cap=None)
    services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    assert _counter(key) == 900


def test_removing_a_cap_or_a_day_without_a_counter_changes_nothing(key):
    _spent(key, 400)
    services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    assert not KeyDailyUsage.objects.exists()  # the first capped reservation seeds it
    KeyDailyUsage.objects.create(api_key=key, day=quota_day(), used_tokens=10)
    services.api_key_set_controls(api_key=key, daily_token_cap=None)
    assert _counter(key) == 10


def test_the_catch_up_is_in_the_cap_changes_transaction(key, monkeypatch):
    from usage import services as usage_services

    def broken(**kwargs):
        raise RuntimeError("catch-up failed")

    monkeypatch.setattr(usage_services, "key_cap_counter_catch_up", broken)
    with pytest.raises(RuntimeError):
        services.api_key_set_controls(api_key=key, daily_token_cap=1_000)
    assert ApiKey.objects.get(pk=key.pk).daily_token_cap is None
