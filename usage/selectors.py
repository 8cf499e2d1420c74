"""Reads for the Usage page, the REST API, exports and reports.

Charts and breakdowns read ``DailyRollup`` only; ``UsageRecord`` is read for the recent
requests list (keyset-paginated on its (user, -created_at) index) and the per-request export.
"""

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from usage.models import DailyRollup, DailyUsage, QuotaApplication, QuotaReset, UsageRecord
from usage.quota import (
    effective_quota,
    next_reset_at,
    quota_day,
    quota_zone,
    seconds_until_reset,
)

CHART_RANGES_DAYS = (7, 30, 90)
MAX_RANGE_DAYS = 400
_CURSOR_SALT = "usage.records.cursor"


@dataclass(frozen=True)
class TodayUsage:
    day: dt.date
    input_tokens: int
    output_tokens: int
    reserved_tokens: int
    requests: int
    quota: int
    resets_at: dt.datetime
    seconds_until_reset: int

    @property
    def used_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def remaining_tokens(self) -> int:
        """What a new request may still reserve: in-flight reservations are spoken for."""
        return max(0, self.quota - self.used_tokens - self.reserved_tokens)

    @property
    def percent_used(self) -> float:
        if self.quota <= 0:
            return 100.0 if self.used_tokens else 0.0
        return min(100.0, round(100 * self.used_tokens / self.quota, 1))


def usage_today(*, user, now: dt.datetime | None = None) -> TodayUsage:
    """Today's counter for ``user`` (one query; the quota comes from the user row)."""
    now = now or timezone.now()
    day = quota_day(now)
    row = (
        DailyUsage.objects.filter(user=user, day=day)
        .values("input_tokens", "output_tokens", "reserved_tokens", "requests")
        .first()
    ) or {"input_tokens": 0, "output_tokens": 0, "reserved_tokens": 0, "requests": 0}
    resets_at = next_reset_at(now)
    return TodayUsage(
        day=day,
        quota=effective_quota(user.daily_quota),
        resets_at=resets_at,
        seconds_until_reset=seconds_until_reset(now),
        **row,
    )


@dataclass(frozen=True)
class DayTotals:
    day: dt.date
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Of the input, tokens read from the model's prompt cache.
    cached_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def last_days(days: int, *, now: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """The last ``days`` quota days, today included, as an inclusive (start, end)."""
    end = quota_day(now)
    return end - dt.timedelta(days=days - 1), end


def _rollups(user, start: dt.date, end: dt.date, key_name: str = "", model: str = ""):
    rows = DailyRollup.objects.filter(user=user, day__gte=start, day__lte=end)
    if key_name:
        rows = rows.filter(key_name=key_name)
    if model:
        rows = rows.filter(model=model)
    return rows


_SUMS = {
    "requests": Sum("requests"),
    "errors": Sum("errors"),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cached_input_tokens": Sum("cached_input_tokens"),
}


def usage_daily_series(
    *, user, start: dt.date, end: dt.date, key_name: str = "", model: str = ""
) -> list[DayTotals]:
    """One entry per quota day from ``start`` to ``end`` inclusive, zeros where nothing ran."""
    found = {
        row["day"]: row
        for row in _rollups(user, start, end, key_name, model)
        .values("day")
        .annotate(**_SUMS)
        .order_by("day")
    }
    series = []
    day = start
    while day <= end:
        row = found.get(day)
        series.append(
            DayTotals(**row) if row else DayTotals(day=day),
        )
        day += dt.timedelta(days=1)
    return series


@dataclass(frozen=True)
class Breakdown:
    name: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def usage_breakdown(*, user, start: dt.date, end: dt.date, by: str) -> list[Breakdown]:
    """Totals per key name or per model over the range, the biggest first."""
    if by not in ("key_name", "model"):
        raise ValueError(by)
    rows = (
        _rollups(user, start, end)
        .values(by)
        .annotate(**_SUMS)
        .order_by("-input_tokens", by)  # ordered again below by total tokens
    )
    result = [
        Breakdown(
            name=row[by],
            requests=row["requests"],
            errors=row["errors"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
        )
        for row in rows
    ]
    result.sort(key=lambda b: (-b.total_tokens, b.name))
    return result


def usage_filter_choices(*, user, since: dt.date) -> tuple[list[str], list[str]]:
    """Key names and models the account used since ``since`` (for the filter menus)."""
    rows = (
        DailyRollup.objects.filter(user=user, day__gte=since)
        .values_list("key_name", "model")
        .distinct()
    )
    keys, models = set(), set()
    for key_name, model in rows:
        keys.add(key_name)
        models.add(model)
    return sorted(keys), sorted(models)


# --- per-request records -------------------------------------------------------------------

STATUS_FILTERS = ("ok", "error")


def usage_records(*, user, key_name: str = "", model: str = "", status: str = ""):
    """The account's usage records, newest first, filtered. ``status``: ok, error or a code."""
    rows = UsageRecord.objects.filter(user=user)
    if "\x00" in key_name or "\x00" in model:
        # No stored name holds a NUL (PostgreSQL text cannot), and PostgreSQL refuses the
        # query outright: a filter typed with one matches nothing instead of failing.
        return rows.none()
    if key_name:
        rows = rows.filter(key_name=key_name)
    if model:
        rows = rows.filter(model=model)
    if status == "ok":
        rows = rows.filter(status_code__lt=400)
    elif status == "error":
        rows = rows.filter(status_code__gte=400)
    elif status.isdigit():
        rows = rows.filter(status_code=int(status))
    return rows.order_by("-created_at", "-id")


def usage_records_of_days(*, user, start: dt.date, end: dt.date):
    """The account's records of quota days ``start`` to ``end`` inclusive, newest first.

    Bounded on ``created_at`` as well as on ``day``: ``created_at`` is what the records are
    partitioned by on PostgreSQL, so only those days' partitions are read. A record's quota
    day is the day its request reserved on, and it is written when the request ends, so the
    bounds reach past the days by the longest a request may run."""
    margin = dt.timedelta(seconds=max(3600, settings.RESERVATION_STALE_SECONDS))
    zone = quota_zone()
    since = dt.datetime.combine(start, dt.time(0), tzinfo=zone) - margin
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(0), tzinfo=zone) + margin
    return usage_records(user=user).filter(
        day__gte=start, day__lte=end, created_at__gte=since, created_at__lt=until
    )


# Windows the newest records are looked for in before the whole history: most pages are
# found in the first, and a query bounded in time reads only those days' partitions
# (PostgreSQL plans and opens a partition only if the query can reach it; on a fresh
# connection, opening all 90 days' costs more than the query).
PAGE_WINDOWS = (dt.timedelta(days=1), dt.timedelta(days=8))


def usage_activity(*, user, key_name: str = "", model: str = "", status: str = ""):
    """The account's requests matching the filters, per quota day, newest first: (day,
    requests) from the rollups. None when the rollups cannot tell (a filter on an exact
    status code, or on a name no stored row can hold)."""
    if status not in ("", *STATUS_FILTERS) or "\x00" in key_name or "\x00" in model:
        return None
    counted = {
        "": F("requests"),
        "ok": F("requests") - F("errors"),
        "error": F("errors"),
    }[status]
    rollups = DailyRollup.objects.filter(user=user)
    if key_name:
        rollups = rollups.filter(key_name=key_name)
    if model:
        rollups = rollups.filter(model=model)
    return list(
        rollups.values("day").annotate(n=Sum(counted)).order_by("-day").values_list("day", "n")
    )


def record_window_starts(*, until: dt.datetime, count: int, activity=None) -> Iterator[dt.datetime]:
    """Where the newest ``count`` records before ``until`` are looked for, in turn, before the
    whole history: the last day, the last 8 days, then back to the newest quota day by which
    the rollups count ``count`` matching requests (``activity()``, ``usage_activity``'s
    answer, asked only when the first two fall short). A quiet account's page then reads the
    partitions of its last few dozen requests' days, not all of them. Each window is exact
    when it holds ``count`` rows: every row outside it is older than every row in it."""
    starts = [until - window for window in PAGE_WINDOWS]

    def from_rollups():
        seen = 0
        last_day = quota_day(until)
        for day, requests in (activity() if activity else None) or ():
            if day >= last_day:
                # Some of that day's requests may come after ``until``: counted as none (the
                # window still reads those before it).
                continue
            seen += requests
            if seen >= count:
                # A request of quota day ``day`` ended after that day began.
                start = dt.datetime.combine(day, dt.time(0), tzinfo=quota_zone())
                if start < starts[-1]:
                    yield start
                return

    yield from starts
    yield from from_rollups()


def _newest(rows, *, before: dt.datetime | None, count: int, activity=None) -> list:
    """The first ``count`` of ``rows`` (newest first), from the shortest window that holds
    them (``record_window_starts``), else from the whole history."""
    for start in record_window_starts(
        until=before or timezone.now(), count=count, activity=activity
    ):
        page = list(rows.filter(created_at__gte=start)[:count])
        if len(page) == count:
            return page
    return list(rows[:count])


def usage_records_page(rows, *, cursor: str = "", size: int = 25, activity=None):
    """A keyset page of ``rows`` (ordered newest first): (records, cursor of the next page).
    ``activity``: a callable returning ``usage_activity`` for the same filters, to bound a
    quiet account's page (asked only when needed).

    Keyset instead of page numbers: no COUNT over a busy account's records, and a page stays
    stable while new requests arrive. The cursor is signed, so it exposes no row ids.
    """
    after = None
    if cursor:
        try:
            stamp, last_id = signing.loads(cursor, salt=_CURSOR_SALT)
            after = dt.datetime.fromisoformat(stamp)
        except (signing.BadSignature, ValueError, TypeError):
            after = None
        if after is not None:
            rows = rows.filter(Q(created_at__lt=after) | Q(created_at=after, id__lt=last_id))
    page = _newest(rows, before=after, count=size + 1, activity=activity)
    next_cursor = ""
    if len(page) > size:
        page = page[:size]
        last = page[-1]
        next_cursor = signing.dumps([last.created_at.isoformat(), last.id], salt=_CURSOR_SALT)
    return page, next_cursor


# --- applications --------------------------------------------------------------------------


def quota_applications_of(*, user):
    return QuotaApplication.objects.filter(user=user).order_by("-created_at")


def quota_application_pending_of(*, user) -> QuotaApplication | None:
    return quota_applications_of(user=user).filter(status=QuotaApplication.Status.PENDING).first()


def quota_applications_pending():
    return (
        QuotaApplication.objects.filter(status=QuotaApplication.Status.PENDING)
        .select_related("user")
        .order_by("created_at")
    )


def quota_applications_decided(*, limit: int = 50):
    return (
        QuotaApplication.objects.exclude(status=QuotaApplication.Status.PENDING)
        .select_related("user", "reviewer")
        .order_by("-decided_at")[:limit]
    )


# --- operators -----------------------------------------------------------------------------


def usage_day_report(*, day: dt.date, top: int = 10) -> dict:
    """Platform totals for one quota day, from the counters and rollups."""
    counters = DailyUsage.objects.filter(day=day).aggregate(
        accounts=Count("id", filter=Q(requests__gt=0)),
        requests=Sum("requests"),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
        reserved_tokens=Sum("reserved_tokens"),
    )
    by_model = list(
        DailyRollup.objects.filter(day=day).values("model").annotate(**_SUMS).order_by("model")
    )
    top_accounts = list(
        DailyUsage.objects.filter(day=day)
        .annotate(total=F("input_tokens") + F("output_tokens"))
        .order_by("-total")
        .values("user__email", "user__phone", "user__public_id", "total", "requests")[:top]
    )
    reset = QuotaReset.objects.filter(day__gte=day, finished_at__isnull=False).last()
    return {
        "day": day,
        "counters": {k: v or 0 for k, v in counters.items()},
        "by_model": by_model,
        "top_accounts": top_accounts,
        "closed_by": reset,
    }


# --- playground ----------------------------------------------------------------------------


def usage_record_latest_from_playground(*, user, api_key) -> UsageRecord | None:
    """The newest record of a Playground request made with ``api_key`` (which ``user`` must
    own), or None. Requests from elsewhere (the owner's own code) are left out: records are
    written in batches, so one of those landing late must not pass for the Playground's."""
    return (
        UsageRecord.objects.filter(user=user, api_key=api_key, playground=True)
        .order_by("-created_at", "-id")
        .first()
    )
