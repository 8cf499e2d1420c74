"""Which alert thresholds a charge crossed: pure functions, no I/O, cheap enough to run on
every settled request.

A threshold is a whole percentage (1..100) of a limit: the account's daily quota, or a key's
daily cap. A charge that takes the day's total from ``before`` to ``after`` crosses ``t`` when
``before < t % of limit <= after``; integer arithmetic, so 80 % of 500,000 is exactly 400,000
and a total landing on it counts as crossed once, not twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_THRESHOLDS = (80, 100)
THRESHOLD_MIN, THRESHOLD_MAX = 1, 100
ANY_THRESHOLD = range(THRESHOLD_MIN, THRESHOLD_MAX + 1)


def thresholds_crossed(
    *, limit: int, before: int, after: int, thresholds: Iterable[int]
) -> tuple[int, ...]:
    """The thresholds (ascending) a charge from ``before`` to ``after`` tokens crossed."""
    if limit <= 0 or after <= before:
        return ()
    return tuple(t for t in sorted(set(thresholds)) if before * 100 < t * limit <= after * 100)


def charge_may_alert(*, limit: int, before: int, after: int) -> bool:
    """True when the charge crossed a whole percentage of ``limit``, i.e. some threshold an
    account could have chosen. The gateway's filter: only such charges reach the writer."""
    if limit <= 0 or after <= before:
        return False
    return (min(after, limit) * 100) // limit > (before * 100) // limit


@dataclass(frozen=True, slots=True)
class Charge:
    """One settled request's effect on a limit: the account's quota (``api_key_id`` None) or
    one key's daily cap. ``before``/``after`` are the day's used tokens around the charge."""

    user_id: int
    api_key_id: int | None
    day: dt.date
    limit: int
    before: int
    after: int
