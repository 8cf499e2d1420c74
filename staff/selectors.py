"""Reads for the staff console: the overview, account search, and the facts shown beside a
quota application.

Every figure comes from the per-day counters (``DailyUsage``), the rollups (``DailyRollup``)
or small tables, through indexed queries; ``UsageRecord`` is read only through its partial
index of quota refusals, never scanned for a day. Each function issues a fixed number of
queries whatever the number of accounts or applications on the page.
"""

import contextlib
import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlparse

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Count, F, Min, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.identifiers import phone_normalize
from audit.models import SecurityEvent
from gateway.live_state import LiveEndpoint, LiveState, live_state_read
from gateway.models import Model
from keys.crypto import PREFIX_LENGTH
from keys.models import ApiKey
from usage.models import DailyRollup, DailyUsage, QuotaApplication, UsageRecord
from usage.quota import effective_quota, quota_day, quota_zone
from usage.selectors import DayTotals, last_days

User = get_user_model()

FACT_DAYS = 30
OVERVIEW_DAYS = 14
EVENTS_PER_APPLICANT = 8
# What a reviewer should see before raising a quota: sign-in trouble, key churn, staff actions.
NOTABLE_EVENTS = (
    SecurityEvent.Action.SIGN_IN_FAILED,
    SecurityEvent.Action.CODE_ATTEMPTS_EXHAUSTED,
    SecurityEvent.Action.IDENTIFIER_ADDED,
    SecurityEvent.Action.KEY_CREATED,
    SecurityEvent.Action.KEY_REGENERATED,
    SecurityEvent.Action.KEY_DELETED,
    SecurityEvent.Action.QUOTA_CHANGED,
    SecurityEvent.Action.APPLICATION_APPROVED,
    SecurityEvent.Action.APPLICATION_REJECTED,
    SecurityEvent.Action.ACCOUNT_SUSPENDED,
    SecurityEvent.Action.ACCOUNT_REACTIVATED,
    SecurityEvent.Action.KEYS_REVOKED,
)
QUOTA_REFUSAL_CODE = "insufficient_quota"


def day_start(day: dt.date) -> dt.datetime:
    """The instant quota day ``day`` begins (midnight in QUOTA_TIMEZONE)."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=quota_zone())


# --- the review queue ------------------------------------------------------------------------

REVIEW_SORTS = {
    "oldest": ("created_at", "id"),
    "largest": ("-expected_daily_tokens", "created_at", "id"),
}


def review_queue(*, sort: str = "oldest", search: str = ""):
    """Pending applications, waiting longest first (or largest request first)."""
    rows = QuotaApplication.objects.filter(status=QuotaApplication.Status.PENDING)
    search = (search or "").strip()
    if search:
        rows = rows.filter(Q(user__email__icontains=search) | Q(user__phone__contains=search))
    return rows.select_related("user").order_by(*REVIEW_SORTS.get(sort, REVIEW_SORTS["oldest"]))


@dataclass
class ApplicantFacts:
    """What the reviewer sees about an applicant, beside the application itself."""

    user: object
    quota: int
    keys: list = field(default_factory=list)
    series: list = field(default_factory=list)
    days_at_quota: int = 0
    earlier: list = field(default_factory=list)
    events: list = field(default_factory=list)

    @property
    def account_age_days(self) -> int:
        return max(0, (timezone.now() - self.user.date_joined).days)

    @property
    def tokens(self) -> int:
        return sum(row.total_tokens for row in self.series)

    @property
    def requests(self) -> int:
        return sum(row.requests for row in self.series)

    @property
    def errors(self) -> int:
        return sum(row.errors for row in self.series)

    @property
    def error_rate(self) -> float | None:
        """Failed requests / requests over the last days, in percent (None: no requests)."""
        return round(100 * self.errors / self.requests, 1) if self.requests else None


def applicant_facts(*, users, exclude_applications=(), days: int = FACT_DAYS) -> dict:
    """``ApplicantFacts`` for each of ``users`` by user id, in five queries for any number.

    "Days at quota": quota days on which the account used at least its current quota (the
    applicants' quota rarely changed in the window: it is what they are asking to change).
    """
    users = list(users)
    ids = [u.pk for u in users]
    start, end = last_days(days)
    facts = {u.pk: ApplicantFacts(user=u, quota=effective_quota(u.daily_quota)) for u in users}
    if not ids:
        return facts
    for key in ApiKey.objects.filter(user_id__in=ids).order_by("created_at", "id"):
        facts[key.user_id].keys.append(key)
    found = defaultdict(dict)
    for row in (
        DailyRollup.objects.filter(user_id__in=ids, day__gte=start, day__lte=end)
        .values("user_id", "day")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
        )
    ):
        user_id = row.pop("user_id")
        found[user_id][row["day"]] = DayTotals(**row)
    for user_id, fact in facts.items():
        fact.series = [
            found[user_id].get(day, DayTotals(day=day))
            for day in (start + dt.timedelta(days=n) for n in range((end - start).days + 1))
        ]
    for user_id, used in DailyUsage.objects.filter(
        user_id__in=ids, day__gte=start, day__lte=end
    ).values_list("user_id", F("input_tokens") + F("output_tokens")):
        if used >= facts[user_id].quota:
            facts[user_id].days_at_quota += 1
    for application in (
        QuotaApplication.objects.filter(user_id__in=ids)
        .exclude(pk__in=[a.pk for a in exclude_applications])
        .select_related("reviewer")
        .order_by("-created_at")
    ):
        facts[application.user_id].earlier.append(application)
    since = timezone.now() - dt.timedelta(days=days)
    events = (
        SecurityEvent.objects.filter(user_id__in=ids, created_at__gte=since)
        .filter(action__in=NOTABLE_EVENTS)
        .select_related("actor")
        .order_by("-created_at", "-id")[: EVENTS_PER_APPLICANT * len(ids) * 4]
    )
    for event in events:
        bucket = facts[event.user_id].events
        if len(bucket) < EVENTS_PER_APPLICANT:
            bucket.append(event)
    return facts


# --- accounts --------------------------------------------------------------------------------


def account_search(*, query: str) -> list:
    """Accounts matching an email address, a phone number, a key prefix (or a whole key) or a
    public id, exactly; each lookup is a unique index. At most a few results."""
    query = (query or "").strip()
    if not query:
        return []
    found = Q(pk__in=[])
    with contextlib.suppress(ValueError):
        found |= Q(public_id=uuid.UUID(query))
    if "@" in query:
        found |= Q(email=query.lower())
    with contextlib.suppress(ValidationError):
        found |= Q(phone=phone_normalize(query))
    if query.startswith("sk-") and len(query) >= PREFIX_LENGTH:
        found |= Q(api_keys__prefix=query[:PREFIX_LENGTH])
    return list(User.objects.filter(found).distinct().order_by("-date_joined")[:20])


def account_events(*, user, limit: int = 50) -> list:
    return list(
        SecurityEvent.objects.filter(user=user)
        .select_related("actor")
        .order_by("-created_at", "-id")[:limit]
    )


# --- the overview ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointHealth:
    """One upstream endpoint of a model as the overview shows it: its configuration and, when
    gateway processes reported on it in the last seconds, their live state merged
    (``gateway.live_state``: state, requests in flight, recent error rate, latency)."""

    pk: int
    host: str
    kind: str
    priority: int
    weight: int
    enabled: bool
    max_concurrency: int | None = None
    live: LiveEndpoint | None = None


@dataclass(frozen=True)
class ModelHealth:
    """One catalog model as the overview shows it, with its upstream endpoints, the requests
    waiting for a slot on them (all gateway processes), and for a model without endpoint rows
    the live state of the upstream it is served by."""

    pk: int
    name: str
    enabled: bool
    kind: str
    host: str
    endpoints: tuple = ()
    queued: int = 0
    live: LiveEndpoint | None = None


def model_health(live: LiveState) -> list[ModelHealth]:
    rows = []
    for model in Model.objects.prefetch_related("endpoints").order_by("sort_order", "name"):
        endpoints = tuple(
            EndpointHealth(
                pk=endpoint.pk,
                host=urlparse(
                    settings.DEMO_UPSTREAM_URL if endpoint.is_demo else endpoint.base_url
                ).hostname
                or "",
                kind=endpoint.get_kind_display(),
                priority=endpoint.priority,
                weight=endpoint.weight,
                enabled=endpoint.enabled,
                max_concurrency=endpoint.max_concurrency,
                live=live.endpoints.get((model.name, endpoint.pk)),
            )
            for endpoint in sorted(model.endpoints.all(), key=lambda e: (e.priority, e.pk))
        )
        if endpoints:
            host, kind = endpoints[0].host, endpoints[0].kind
        else:
            url = settings.DEMO_UPSTREAM_URL if model.is_demo else model.upstream_base_url
            host, kind = urlparse(url or "").hostname or "", model.get_upstream_kind_display()
        rows.append(
            ModelHealth(
                pk=model.pk,
                name=model.name,
                enabled=model.enabled,
                kind=kind,
                host=host,
                endpoints=endpoints,
                queued=live.queued.get(model.name, 0),
                live=None if endpoints else live.endpoints.get((model.name, None)),
            )
        )
    return rows


@dataclass(frozen=True)
class Overview:
    today: dt.date
    accounts: int
    new_today: int
    active_today: int
    input_tokens: int
    output_tokens: int
    requests: int
    errors: int
    quota_refusals: int
    pending: int
    oldest_pending_at: dt.datetime | None
    by_day: list  # DayTotals, oldest first
    by_model: list  # (day, [(model, tokens or None) per model seen]), newest first
    models_seen: list  # model names in the by-model table
    health: list
    upstreams: LiveState  # the gateway processes' last reports, merged

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float | None:
        return round(100 * self.errors / self.requests, 1) if self.requests else None

    @property
    def oldest_pending_age(self) -> dt.timedelta | None:
        return timezone.now() - self.oldest_pending_at if self.oldest_pending_at else None


def platform_overview(*, now: dt.datetime | None = None) -> Overview:
    """The /staff/ figures: eight queries, each on an index (see the module docstring), and
    one cache read for the gateway processes' live view of the upstreams."""
    now = now or timezone.now()
    today = quota_day(now)
    start, end = last_days(OVERVIEW_DAYS, now=now)
    accounts = User.objects.count()
    new_today = User.objects.filter(date_joined__gte=day_start(today)).count()
    counters = DailyUsage.objects.filter(day=today).aggregate(
        active=Count("id", filter=Q(requests__gt=0)),
        input_tokens=Coalesce(Sum("input_tokens"), 0),
        output_tokens=Coalesce(Sum("output_tokens"), 0),
    )
    per_day_model = list(
        DailyRollup.objects.filter(day__gte=start, day__lte=end)
        .values("day", "model")
        .annotate(
            requests=Sum("requests"),
            errors=Sum("errors"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
        )
        .order_by("day", "model")
    )
    live = live_state_read()
    # Partial index on (created_at) of quota refusals only: reads the refusals, not the day.
    refusals = UsageRecord.objects.filter(
        error_code=QUOTA_REFUSAL_CODE, created_at__gte=day_start(today)
    ).count()
    pending = QuotaApplication.objects.filter(status=QuotaApplication.Status.PENDING).aggregate(
        count=Count("id"), oldest=Min("created_at")
    )
    days = defaultdict(lambda: defaultdict(int))
    models_by_day = defaultdict(dict)
    for row in per_day_model:
        totals = days[row["day"]]
        for name in ("requests", "errors", "input_tokens", "output_tokens"):
            totals[name] += row[name]
        models_by_day[row["day"]][row["model"]] = row["input_tokens"] + row["output_tokens"]
    span = [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]
    by_day = [DayTotals(day=day, **days[day]) for day in span]
    models_seen = sorted({m for per in models_by_day.values() for m in per})
    today_totals = days[today]
    return Overview(
        today=today,
        accounts=accounts,
        new_today=new_today,
        active_today=counters["active"],
        input_tokens=counters["input_tokens"],
        output_tokens=counters["output_tokens"],
        requests=today_totals["requests"],
        errors=today_totals["errors"],
        quota_refusals=refusals,
        pending=pending["count"],
        oldest_pending_at=pending["oldest"],
        by_day=by_day,
        by_model=[
            (day, [(m, models_by_day[day].get(m)) for m in models_seen]) for day in reversed(span)
        ],
        models_seen=models_seen,
        health=model_health(live),
        upstreams=live,
    )
