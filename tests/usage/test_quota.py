import datetime as dt
from zoneinfo import ZoneInfo

import time_machine

from usage.quota import effective_quota, next_reset_at, quota_day, seconds_until_reset

UTC = dt.UTC
SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_it_starts_the_quota_day_at_midnight_beijing_time():
    # 15:59:59 UTC is 23:59:59 in Beijing; one second later the next quota day begins.
    assert quota_day(dt.datetime(2026, 3, 1, 15, 59, 59, tzinfo=UTC)) == dt.date(2026, 3, 1)
    assert quota_day(dt.datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC)) == dt.date(2026, 3, 2)


def test_it_ignores_the_server_time_zone():
    new_york = ZoneInfo("America/New_York")
    moment = dt.datetime(2026, 3, 1, 11, 0, 0, tzinfo=new_york)  # 00:00 in Beijing on March 2
    assert quota_day(moment) == dt.date(2026, 3, 2)


def test_it_computes_the_next_reset():
    now = dt.datetime(2026, 3, 1, 15, 59, 59, tzinfo=UTC)
    assert next_reset_at(now) == dt.datetime(2026, 3, 2, 0, 0, tzinfo=SHANGHAI)
    assert seconds_until_reset(now) == 1


@time_machine.travel(dt.datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC), tick=False)
def test_it_uses_the_current_time_by_default():
    assert quota_day() == dt.date(2026, 3, 2)
    assert seconds_until_reset() == 24 * 3600


def test_it_prefers_the_account_override(settings):
    settings.DAILY_FREE_QUOTA = 500_000
    assert effective_quota(None) == 500_000
    assert effective_quota(5_000_000) == 5_000_000
    assert effective_quota(0) == 0
