"""The staff console: the overview (/staff/), accounts (/staff/accounts/) and the quota
review queue (/review/). Staff only; every change is a POST through an audited service."""

import uuid

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from accounts import services as account_services
from accounts.models import User
from staff import selectors
from staff.decorators import staff_only
from staff.forms import (
    REJECTION_REASONS,
    AccountSearchForm,
    BulkDecisionForm,
    QuotaForm,
    ReasonForm,
    ReviewDecisionForm,
)
from usage import charts, services
from usage.models import QuotaApplication
from usage.selectors import quota_applications_decided

REVIEW_PAGE_SIZE = 10


def _errors(request, error: ValidationError | dict) -> None:
    texts = error.messages if isinstance(error, ValidationError) else error.values()
    for text in texts:
        for message in [text] if isinstance(text, str) else text:
            messages.error(request, message)


def _token_title(row) -> str:
    return _("%(day)s: %(tokens)s tokens, %(requests)s requests, %(errors)s failed") % {
        "day": row.day.isoformat(),
        "tokens": charts.number(row.total_tokens),
        "requests": charts.number(row.requests),
        "errors": charts.number(row.errors),
    }


def usage_chart(series, label):
    chart = charts.stacked_bars(
        series, [("input_tokens", "bar-input"), ("output_tokens", "bar-output")], _token_title
    )
    return charts.svg(chart, label)


# --- the review queue ------------------------------------------------------------------------


@never_cache
@staff_only
@require_GET
def review_queue(request):
    sort = request.GET.get("sort", "oldest")
    sort = sort if sort in selectors.REVIEW_SORTS else "oldest"
    search = request.GET.get("q", "")[:200]
    page = Paginator(selectors.review_queue(sort=sort, search=search), REVIEW_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    applications = list(page.object_list)
    facts = selectors.applicant_facts(
        users=[a.user for a in applications], exclude_applications=applications
    )
    items = [
        {
            "application": a,
            "facts": facts[a.user_id],
            "chart": usage_chart(
                facts[a.user_id].series,
                _("Tokens per day over the last %(days)d days") % {"days": selectors.FACT_DAYS},
            ),
        }
        for a in applications
    ]
    return render(
        request,
        "staff/review.html",
        {
            "page": page,
            "items": items,
            "sort": sort,
            "search": search,
            "sorts": [("oldest", _("Waiting longest")), ("largest", _("Largest request"))],
            "decided": list(quota_applications_decided(limit=20)),
            "increased_quota": settings.INCREASED_DAILY_QUOTA,
            "reasons": list(REJECTION_REASONS.items()),
            "fact_days": selectors.FACT_DAYS,
            "bulk_form": BulkDecisionForm(),
        },
    )


def _back_to_queue(request):
    back = request.POST.get("next", "")
    if back.startswith(reverse("review:queue")):
        return redirect(back)
    return redirect("review:queue")


@staff_only
@require_POST
def review_decide(request, public_id):
    application = get_object_or_404(QuotaApplication, public_id=public_id)
    form = ReviewDecisionForm(request.POST)
    if not form.is_valid():
        _errors(request, form.errors)
        return _back_to_queue(request)
    data = form.cleaned_data
    try:
        if data["decision"] == "approve":
            decided = services.quota_application_approve(
                application=application,
                reviewer=request.user,
                reason=data["reason"],
                quota=data["quota"],
            )
            messages.success(
                request,
                _("Approved: %(account)s, %(quota)s tokens a day.")
                % {
                    "account": application.user,
                    "quota": charts.number(decided.user.daily_quota or 0),
                },
            )
        else:
            services.quota_application_reject(
                application=application, reviewer=request.user, reason=data["reason"]
            )
            messages.success(request, _("Rejected: %(account)s.") % {"account": application.user})
    except ValidationError as error:
        _errors(request, error)
    return _back_to_queue(request)


@staff_only
@require_POST
def review_bulk(request):
    pending = QuotaApplication.objects.filter(
        status=QuotaApplication.Status.PENDING,
        public_id__in=[v for v in request.POST.getlist("applications") if _is_uuid(v)],
    ).select_related("user")
    pending = list(pending)
    form = BulkDecisionForm(request.POST, pending_ids=[a.public_id for a in pending])
    if not form.is_valid():
        _errors(request, form.errors)
        return _back_to_queue(request)
    data = form.cleaned_data
    try:
        if data["decision"] == "approve":
            done = services.quota_applications_approve_bulk(
                applications=pending, reviewer=request.user, reason=data["reason"]
            )
            text = ngettext(
                "%(count)d application approved.", "%(count)d applications approved.", len(done)
            )
        else:
            done = services.quota_applications_reject_bulk(
                applications=pending, reviewer=request.user, reason=data["reason"]
            )
            text = ngettext(
                "%(count)d application rejected.", "%(count)d applications rejected.", len(done)
            )
    except ValidationError as error:
        _errors(request, error)
    else:
        messages.success(request, text % {"count": len(done)})
    return _back_to_queue(request)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- the overview ----------------------------------------------------------------------------


@never_cache
@staff_only
@require_GET
def overview(request):
    data = selectors.platform_overview()
    return render(
        request,
        "staff/overview.html",
        {
            "o": data,
            "today": data.today.isoformat(),
            "joined_since": selectors.day_start(data.today).strftime("%Y-%m-%d %H:%M:%S%z"),
            "chart": usage_chart(
                data.by_day,
                _("Platform tokens per day over the last %(days)d days")
                % {"days": selectors.OVERVIEW_DAYS},
            ),
            "overview_days": selectors.OVERVIEW_DAYS,
        },
    )


# --- accounts --------------------------------------------------------------------------------


@never_cache
@staff_only
@require_GET
def accounts(request):
    form = AccountSearchForm(request.GET)
    query = form.cleaned_data["q"] if form.is_valid() else ""
    found = selectors.account_search(query=query)
    if query and len(found) == 1:
        return redirect("staff:account", public_id=found[0].public_id)
    return render(request, "staff/accounts.html", {"form": form, "query": query, "found": found})


@never_cache
@staff_only
@require_GET
def account(request, public_id):
    user = get_object_or_404(User, public_id=public_id)
    facts = selectors.applicant_facts(users=[user])[user.pk]
    return render(
        request,
        "staff/account.html",
        {
            "account": user,
            "facts": facts,
            "chart": usage_chart(
                facts.series,
                _("Tokens per day over the last %(days)d days") % {"days": selectors.FACT_DAYS},
            ),
            "events": selectors.account_events(user=user),
            "fact_days": selectors.FACT_DAYS,
            "reason_form": ReasonForm(),
            "quota_form": QuotaForm(initial={"new_quota": user.daily_quota}),
            "default_quota": settings.DAILY_FREE_QUOTA,
        },
    )


def _account_action(request, public_id, action, form_class=ReasonForm):
    user = get_object_or_404(User, public_id=public_id)
    form = form_class(request.POST)
    if not form.is_valid():
        _errors(request, form.errors)
    else:
        try:
            text = action(user, form.cleaned_data)
        except ValidationError as error:
            _errors(request, error)
        else:
            if text:
                messages.success(request, text)
    return redirect("staff:account", public_id=user.public_id)


@staff_only
@require_POST
def account_suspend(request, public_id):
    def act(user, data):
        account_services.account_suspend(user=user, actor=request.user, reason=data["reason"])
        return _("Account suspended: it can no longer sign in or use its keys.")

    return _account_action(request, public_id, act)


@staff_only
@require_POST
def account_reactivate(request, public_id):
    def act(user, data):
        account_services.account_reactivate(user=user, actor=request.user, reason=data["reason"])
        return _("Account reactivated. Its keys keep their own enabled or disabled state.")

    return _account_action(request, public_id, act)


@staff_only
@require_POST
def account_revoke_keys(request, public_id):
    def act(user, data):
        count = account_services.account_keys_revoke(
            user=user, actor=request.user, reason=data["reason"]
        )
        return ngettext("%(count)d key disabled.", "%(count)d keys disabled.", count) % {
            "count": count
        }

    return _account_action(request, public_id, act)


@staff_only
@require_POST
def account_quota(request, public_id):
    def act(user, data):
        change = services.quota_set(
            user=user, new_quota=data["new_quota"], reason=data["reason"], actor=request.user
        )
        if change is None:
            return _("The account already has this quota.")
        return _("Daily quota set.")

    return _account_action(request, public_id, act, QuotaForm)
