"""The quota policy: what a quota day is and how many tokens an account may use in one."""

import datetime as dt
import math
from functools import lru_cache
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone


@lru_cache(maxsize=4)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def quota_zone() -> ZoneInfo:
    return _zone(settings.QUOTA_TIMEZONE)


def quota_day(now: dt.datetime | None = None) -> dt.date:
    """The quota day ``now`` falls in: the calendar date in QUOTA_TIMEZONE (Asia/Shanghai)."""
    return (now or timezone.now()).astimezone(quota_zone()).date()


def next_reset_at(now: dt.datetime | None = None) -> dt.datetime:
    """The next midnight in QUOTA_TIMEZONE, as an aware datetime."""
    day = quota_day(now)
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=quota_zone())


def seconds_until_reset(now: dt.datetime | None = None) -> int:
    """Whole seconds (rounded up, at least 1) until the next reset: the 429's Retry-After and
    the Usage page's countdown."""
    now = now or timezone.now()
    return max(1, int((next_reset_at(now) - now).total_seconds() + 0.999))


def effective_quota(daily_quota_override: int | None) -> int:
    """An account's daily tokens: its own override (staff-set or approved), else the default."""
    if daily_quota_override is not None:
        return daily_quota_override
    return settings.DAILY_FREE_QUOTA


def charged_input_tokens(*, input_tokens: int, cached_input_tokens: int) -> int:
    """The input a request is charged: uncached input in full, input the upstream read from
    its prompt cache at CACHED_INPUT_TOKEN_WEIGHT (rounded up). ``cached_input_tokens`` is the
    part of ``input_tokens`` that was cached."""
    cached = min(max(0, cached_input_tokens), max(0, input_tokens))
    weight = settings.CACHED_INPUT_TOKEN_WEIGHT
    if weight >= 1 or not cached:
        return input_tokens
    return input_tokens - cached + math.ceil(cached * weight)
