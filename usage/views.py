"""The Usage page (with its live fragment, CSV export and quota application); the staff
review queue is in ``staff.views``. Plain GET forms and POST/redirect/GET; htmx only
refreshes today's figures.
"""

import csv
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from usage import charts, selectors, services
from usage.forms import ExportForm, QuotaApplicationForm
from usage.models import QuotaApplication
from usage.quota import quota_zone

DEFAULT_RANGE_DAYS = 30
RECENT_PAGE_SIZE = 25
LIVE_REFRESH_SECONDS = 5


def _range_days(request) -> int:
    try:
        days = int(request.GET.get("days", DEFAULT_RANGE_DAYS))
    except ValueError:
        return DEFAULT_RANGE_DAYS
    return days if days in selectors.CHART_RANGES_DAYS else DEFAULT_RANGE_DAYS


def _today_context(request) -> dict:
    today = selectors.usage_today(user=request.user)
    hours, seconds = divmod(today.seconds_until_reset, 3600)
    return {
        "today": today,
        # Formatted here: a template would convert the datetime back to the server zone.
        "reset_beijing": f"{timezone.localtime(today.resets_at, quota_zone()):%Y-%m-%d %H:%M}",
        "countdown_hours": hours,
        "countdown_minutes": seconds // 60,
        "refresh_seconds": LIVE_REFRESH_SECONDS,
    }


def _token_title(row) -> str:
    return _("%(day)s: %(input)s input + %(output)s output tokens") % {
        "day": row.day.isoformat(),
        "input": charts.number(row.input_tokens),
        "output": charts.number(row.output_tokens),
    }


def _request_title(row) -> str:
    return _("%(day)s: %(requests)s requests, %(errors)s failed") % {
        "day": row.day.isoformat(),
        "requests": charts.number(row.requests),
        "errors": charts.number(row.errors),
    }


def _dashboard_context(request, *, application_form) -> dict:
    user = request.user
    days = _range_days(request)
    start, end = selectors.last_days(days)
    series = selectors.usage_daily_series(user=user, start=start, end=end)
    key_choices, model_choices = selectors.usage_filter_choices(
        user=user, since=end - dt.timedelta(days=max(selectors.CHART_RANGES_DAYS))
    )
    filters = {
        "key": request.GET.get("key", "")[:64],
        "model": request.GET.get("model", "")[:128],
        "status": request.GET.get("status", "")[:8],
    }
    matching = {"key_name": filters["key"], "model": filters["model"], "status": filters["status"]}
    records, next_cursor = selectors.usage_records_page(
        selectors.usage_records(user=user, **matching),
        cursor=request.GET.get("cursor", ""),
        size=RECENT_PAGE_SIZE,
        activity=lambda: selectors.usage_activity(user=user, **matching),
    )
    token_chart = charts.stacked_bars(
        series,
        [("input_tokens", "bar-input"), ("output_tokens", "bar-output")],
        _token_title,
    )
    applications = list(selectors.quota_applications_of(user=user))
    pending = next((a for a in applications if a.status == QuotaApplication.Status.PENDING), None)
    totals = selectors.DayTotals(
        day=end,
        requests=sum(r.requests for r in series),
        errors=sum(r.errors for r in series),
        input_tokens=sum(r.input_tokens for r in series),
        output_tokens=sum(r.output_tokens for r in series),
        cached_input_tokens=sum(r.cached_input_tokens for r in series),
    )
    return {
        **_today_context(request),
        "days": days,
        "ranges": selectors.CHART_RANGES_DAYS,
        "start": start,
        "end": end,
        "series": series,
        # Pre-formatted: 90 rows of template filters were a visible share of the page's time.
        "series_rows": [
            (
                row.day.isoformat(),
                f"{row.requests:,}",
                f"{row.errors:,}",
                f"{row.input_tokens:,}",
                f"{row.output_tokens:,}",
            )
            for row in reversed(series)
        ],
        "range_totals": totals,
        "token_chart": token_chart,
        "token_chart_svg": charts.svg(token_chart, _("Tokens per day, input and output stacked")),
        "request_chart_svg": charts.svg(
            charts.stacked_bars(series, [("requests", "bar-requests")], _request_title),
            _("Requests per day"),
        ),
        "by_key": selectors.usage_breakdown(user=user, start=start, end=end, by="key_name"),
        "by_model": selectors.usage_breakdown(user=user, start=start, end=end, by="model"),
        "key_choices": key_choices,
        "model_choices": model_choices,
        "status_choices": [("ok", _("Succeeded")), ("error", _("Failed"))],
        "filters": filters,
        "filtered": any(filters.values()),
        "records": records,
        "next_cursor": next_cursor,
        "paged": bool(request.GET.get("cursor")),
        "export_form": ExportForm(initial={"start": start, "end": end}),
        "applications": applications,
        "pending_application": pending,
        "application_form": application_form,
        "can_apply": pending is None,
        "increased_quota": settings.INCREASED_DAILY_QUOTA,
        "retention_days": settings.USAGE_RETENTION_DAYS,
    }


@never_cache
@login_required
@require_GET
def usage_page(request):
    form = QuotaApplicationForm(initial={"contact": request.user.identifier})
    return render(request, "usage/page.html", _dashboard_context(request, application_form=form))


@never_cache
@require_GET
def usage_live(request):
    """Today's figures only: what the page polls every few seconds."""
    if not request.user.is_authenticated:
        login = redirect_to_login(reverse("usage:page"))
        if request.htmx:
            # A redirect would be followed and the login page swapped into the panel;
            # htmx turns this header into a full-page visit instead.
            return HttpResponse(status=204, headers={"HX-Redirect": login["Location"]})
        return login
    return render(request, "usage/_today.html", _today_context(request))


@login_required
@require_POST
def quota_apply(request):
    form = QuotaApplicationForm(request.POST)
    if form.is_valid():
        try:
            services.quota_application_create(user=request.user, **form.cleaned_data)
        except ValidationError as error:
            if hasattr(error, "error_dict"):
                for field, errors in error.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                form.add_error(None, error)
        else:
            messages.success(
                request, _("Application sent. We will let you know when it has been reviewed.")
            )
            return redirect(reverse("usage:page") + "#quota")
    context = _dashboard_context(request, application_form=form)
    return render(request, "usage/page.html", context, status=400)


# --- CSV export ----------------------------------------------------------------------------


CSV_ROWS_PER_CHUNK = 1000


class _Echo:
    def write(self, value):
        return value


def _cell(value):
    # Key names are typed by users: keep spreadsheets from running them as formulas.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


async def _csv_chunks(rows: Iterator[list]) -> AsyncIterator[str]:
    """The CSV text, ``CSV_ROWS_PER_CHUNK`` rows at a time.

    An async iterator, because under ASGI Django collects a synchronous one into memory
    before sending a byte; the rows (an ORM ``iterator()``) are read in the thread that owns
    the database connection, one chunk per hop, so a 90-day export streams in bounded memory.
    """
    writer = csv.writer(_Echo())

    def next_chunk() -> str:
        batch = itertools.islice(rows, CSV_ROWS_PER_CHUNK)
        return "".join(writer.writerow([_cell(v) for v in row]) for row in batch)

    fetch = sync_to_async(next_chunk, thread_sensitive=True)
    while chunk := await fetch():
        yield chunk


@login_required
@require_GET
def usage_export(request):
    form = ExportForm(request.GET)
    if not form.is_valid():
        messages.error(request, " ".join(m for ms in form.errors.values() for m in ms))
        return redirect(reverse("usage:page") + "#export")
    start, end, kind = (form.cleaned_data[k] for k in ("start", "end", "kind"))
    if kind == ExportForm.KIND_DAILY:
        rows = _daily_rows(request.user, start, end)
    else:
        rows = _request_rows(request.user, start, end)
    response = StreamingHttpResponse(_csv_chunks(rows), content_type="text/csv; charset=utf-8")
    filename = f"usage-{kind}-{start.isoformat()}-{end.isoformat()}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _daily_rows(user, start, end):
    # New columns go last: spreadsheets built on the earlier ones keep working.
    yield [
        "day",
        "key",
        "model",
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
        "cached_input_tokens",
    ]
    rows = (
        selectors.DailyRollup.objects.filter(user=user, day__gte=start, day__lte=end)
        .order_by("day", "key_name", "model")
        .values_list(
            "day",
            "key_name",
            "model",
            "requests",
            "errors",
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
        )
    )
    for day, *rest in rows.iterator(chunk_size=2000):
        yield [day.isoformat(), *rest]


def _request_rows(user, start, end):
    yield [
        "time_utc",
        "quota_day",
        "key",
        "model",
        "endpoint",
        "stream",
        "input_tokens",
        "output_tokens",
        "status",
        "error_code",
        "latency_ms",
        "estimated",
        "playground",
        "cached_input_tokens",
    ]
    rows = selectors.usage_records_of_days(user=user, start=start, end=end).values_list(
        "created_at",
        "day",
        "key_name",
        "model",
        "endpoint",
        "stream",
        "input_tokens",
        "output_tokens",
        "status_code",
        "error_code",
        "latency_ms",
        "estimated",
        "playground",
        "cached_input_tokens",
    )
    for created_at, day, *rest in rows.iterator(chunk_size=2000):
        yield [created_at.astimezone(dt.UTC).isoformat(), day.isoformat(), *rest]
