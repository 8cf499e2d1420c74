"""The staff console's pages: who may see them, what they show, what their forms do, and how
many queries they take."""

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit.models import SecurityEvent
from keys.models import ApiKey
from keys.services import api_key_create
from tests.usage.conftest import record_request
from usage.models import DailyRollup, QuotaApplication, UsageRecord
from usage.quota import quota_day
from usage.services import quota_application_create

pytestmark = pytest.mark.django_db


def _apply(user, tokens=3_000_000, **extra):
    fields = {
        "intended_use": "An internal coding assistant",
        "expected_daily_tokens": tokens,
        "contact": "+86 138 0013 8000",
    }
    return quota_application_create(user=user, **{**fields, **extra})


# --- permissions: every view, three personas ----------------------------------------------


def _views(alice):
    application = _apply(alice)
    pid = alice.public_id
    return [
        ("get", reverse("staff:overview")),
        ("get", reverse("staff:accounts")),
        ("get", reverse("staff:account", args=[pid])),
        ("post", reverse("staff:account_suspend", args=[pid])),
        ("post", reverse("staff:account_reactivate", args=[pid])),
        ("post", reverse("staff:account_quota", args=[pid])),
        ("post", reverse("staff:account_revoke_keys", args=[pid])),
        ("get", reverse("review:queue")),
        ("post", reverse("review:decide", args=[application.public_id])),
        ("post", reverse("review:bulk")),
    ]


def _action_data(alice):
    return {
        "reason": "a reason",
        "new_quota": "1",
        "decision": "approve",
        "applications": [str(QuotaApplication.objects.get(user=alice).public_id)],
    }


def _unchanged(alice):
    alice.refresh_from_db()
    assert alice.is_active and alice.daily_quota is None
    assert ApiKey.objects.filter(user=alice, is_active=True).count() == 1
    assert QuotaApplication.objects.get(user=alice).status == QuotaApplication.Status.PENDING


def test_it_sends_anonymous_visitors_to_login_from_every_staff_view(client, alice):
    for method, path in _views(alice):
        response = getattr(client, method)(path, _action_data(alice))
        assert response.status_code == 302, path
        assert response["Location"].startswith("/accounts/login/"), path
    _unchanged(alice)


def test_it_answers_404_to_signed_in_customers_on_every_staff_view(client, alice, bob):
    client.force_login(bob)
    for method, path in _views(alice):
        response = getattr(client, method)(path, _action_data(alice))
        assert response.status_code == 404, path
    _unchanged(alice)


def test_it_opens_every_staff_page_to_staff_and_refuses_get_on_actions(staff_client, alice):
    for method, path in _views(alice):
        response = staff_client.get(path)
        assert response.status_code == (200 if method == "get" else 405), path
    _unchanged(alice)


def test_every_staff_action_needs_the_csrf_token(alice, staff):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    for method, path in _views(alice):
        if method == "post":
            assert client.post(path, _action_data(alice)).status_code == 403, path
    _unchanged(alice)


def test_staff_pages_need_two_factor_authentication_when_required(staff_client, settings):
    settings.STAFF_REQUIRE_MFA = True
    for path in ("/staff/", "/staff/accounts/", "/review/"):
        response = staff_client.get(path)
        assert response.status_code == 302
        assert "/2fa/" in response["Location"] or "totp" in response["Location"], path


def test_the_nav_links_to_the_console_for_staff(staff_client):
    assert 'href="/staff/"' in staff_client.get("/").content.decode()


def test_the_nav_hides_the_console_from_customers(alice_client):
    assert 'href="/staff/"' not in alice_client.get("/").content.decode()


# --- finding accounts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["+8613800138000", "138 0013 8000", "13800138000", "BOB_ID", "BOB_PREFIX", "BOB_KEY"],
)
def test_it_finds_an_account_by_phone_key_or_id(staff_client, bob, query):
    key, secret = api_key_create(user=bob, name="laptop")
    query = {"BOB_ID": str(bob.public_id), "BOB_PREFIX": key.prefix, "BOB_KEY": secret}.get(
        query, query
    )
    response = staff_client.get(reverse("staff:accounts"), {"q": query})
    assert response.status_code == 302
    assert response["Location"] == reverse("staff:account", args=[bob.public_id])


def test_it_finds_an_account_by_email_in_any_case(staff_client, alice):
    response = staff_client.get(reverse("staff:accounts"), {"q": " Alice@Example.com "})
    assert response["Location"] == reverse("staff:account", args=[alice.public_id])


def test_it_says_when_nothing_matches(staff_client, alice):
    response = staff_client.get(reverse("staff:accounts"), {"q": "alice"})
    assert response.status_code == 200
    assert "No account matches." in response.content.decode()


def test_the_account_page_shows_usage_keys_and_the_security_log(staff_client, alice):
    record_request(alice, input_tokens=12_345, output_tokens=1)
    body = staff_client.get(reverse("staff:account", args=[alice.public_id])).content.decode()
    assert "12,346 tokens in 1 requests" in body
    assert "<svg" in body
    assert alice.api_keys.get().prefix in body
    assert "Account created" in body  # the security log


# --- account actions through the page ---------------------------------------------------------


def test_staff_suspend_and_reactivate_from_the_account_page(staff_client, staff, alice):
    url = reverse("staff:account_suspend", args=[alice.public_id])
    assert staff_client.post(url, {"reason": ""}).status_code == 302
    alice.refresh_from_db()
    assert alice.is_active  # no reason, no suspension
    staff_client.post(url, {"reason": "Abuse report"})
    alice.refresh_from_db()
    assert not alice.is_active
    page = staff_client.get(reverse("staff:account", args=[alice.public_id])).content.decode()
    assert "Account suspended by staff" in page and "Reactivate account" in page
    staff_client.post(
        reverse("staff:account_reactivate", args=[alice.public_id]), {"reason": "Resolved"}
    )
    alice.refresh_from_db()
    assert alice.is_active
    actors = set(
        SecurityEvent.objects.filter(
            user=alice,
            action__in=[
                SecurityEvent.Action.ACCOUNT_SUSPENDED,
                SecurityEvent.Action.ACCOUNT_REACTIVATED,
            ],
        ).values_list("actor", flat=True)
    )
    assert actors == {staff.pk}


def test_staff_set_a_quota_and_revoke_keys_from_the_account_page(staff_client, staff, alice):
    staff_client.post(
        reverse("staff:account_quota", args=[alice.public_id]),
        {"new_quota": "2000000", "reason": "Partner"},
    )
    alice.refresh_from_db()
    assert alice.daily_quota == 2_000_000
    staff_client.post(
        reverse("staff:account_quota", args=[alice.public_id]), {"new_quota": "", "reason": "End"}
    )
    alice.refresh_from_db()
    assert alice.daily_quota is None
    staff_client.post(
        reverse("staff:account_revoke_keys", args=[alice.public_id]), {"reason": "Leaked"}
    )
    assert not ApiKey.objects.filter(user=alice, is_active=True).exists()
    assert SecurityEvent.objects.filter(
        user=alice, action=SecurityEvent.Action.KEYS_REVOKED, actor=staff
    ).exists()


# --- the review queue -------------------------------------------------------------------------


def test_the_queue_shows_the_applicants_facts(staff_client, alice):
    old = timezone.now() - dt.timedelta(days=3)
    record_request(alice, input_tokens=499_000, output_tokens=1_000, when=old)  # at quota
    record_request(alice, input_tokens=10, output_tokens=0, status_code=500)
    _apply(alice, intended_use="First try")
    earlier = QuotaApplication.objects.get(user=alice)
    earlier.status = QuotaApplication.Status.REJECTED
    earlier.review_reason = "Too vague"
    earlier.save()
    _apply(alice)
    body = staff_client.get(reverse("review:queue")).content.decode()
    assert alice.api_keys.get().prefix in body
    assert "Too vague" in body  # earlier application and its outcome
    assert 'data-fact="days-at-quota">1 / 30' in body
    assert 'data-fact="error-rate">50.0 %' in body
    assert "<svg" in body


def test_the_queue_sorts_by_waiting_time_or_by_size_and_paginates(
    staff_client, alice, bob, charlie
):
    _apply(alice, tokens=1_000_000)
    _apply(bob, tokens=9_000_000)
    _apply(charlie, tokens=2_000_000)
    oldest = staff_client.get(reverse("review:queue")).context["items"]
    assert [i["application"].user for i in oldest] == [alice, bob, charlie]
    largest = staff_client.get(reverse("review:queue"), {"sort": "largest"}).context["items"]
    assert [i["application"].user for i in largest] == [bob, charlie, alice]
    found = staff_client.get(reverse("review:queue"), {"q": "charlie"}).context["items"]
    assert [i["application"].user for i in found] == [charlie]


def test_it_approves_a_custom_figure_with_a_note(staff_client, staff, alice):
    application = _apply(alice)
    response = staff_client.post(
        reverse("review:decide", args=[application.public_id]),
        {"decision": "approve", "custom_quota": "3000000", "reason": "Welcome"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    application.refresh_from_db()
    assert alice.daily_quota == 3_000_000
    assert application.review_reason == "Welcome"


def test_it_rejects_with_a_common_reason_and_free_text(staff_client, alice):
    application = _apply(alice)
    staff_client.post(
        reverse("review:decide", args=[application.public_id]),
        {"decision": "reject", "reason_template": "detail", "reason": "What stack?"},
    )
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.REJECTED
    assert application.review_reason.startswith("Please tell us more")
    assert application.review_reason.endswith("What stack?")


def test_bulk_decisions_from_the_queue(staff_client, alice, bob, charlie, settings):
    settings.INCREASED_DAILY_QUOTA = 5_000_000
    a, b, c = _apply(alice), _apply(bob), _apply(charlie)
    url = reverse("review:bulk")
    staff_client.post(url, {"decision": "reject", "applications": [str(a.public_id)]})
    a.refresh_from_db()
    assert a.status == QuotaApplication.Status.PENDING  # a bulk rejection needs a reason
    staff_client.post(
        url,
        {"decision": "approve", "applications": [str(a.public_id), str(b.public_id)]},
    )
    staff_client.post(
        url,
        {"decision": "reject", "applications": [str(c.public_id)], "reason_template": "usage"},
    )
    statuses = dict(QuotaApplication.objects.values_list("user_id", "status"))
    assert statuses == {alice.pk: "approved", bob.pk: "approved", charlie.pk: "rejected"}
    alice.refresh_from_db()
    assert alice.daily_quota == 5_000_000


# --- the overview -----------------------------------------------------------------------------


def test_the_overview_counts_today_from_counters_and_rollups(staff_client, alice, bob):
    from gateway.services import catalog_bootstrap

    catalog_bootstrap()
    record_request(alice, input_tokens=1_000, output_tokens=500)
    record_request(bob, input_tokens=10, output_tokens=0, status_code=429)
    UsageRecord.objects.filter(user=bob).update(error_code="insufficient_quota")
    _apply(alice)
    o = staff_client.get(reverse("staff:overview")).context["o"]
    assert o.accounts == 3 and o.new_today == 3 and o.active_today == 2
    assert o.total_tokens == 1_510 and o.requests == 2 and o.errors == 1
    assert o.quota_refusals == 1 and o.pending == 1
    assert o.by_day[-1].day == quota_day() and o.by_day[-1].total_tokens == 1_510
    assert o.health and o.health[0].host
    body = staff_client.get(reverse("staff:overview")).content.decode()
    assert 'data-stat="quota-refusals">1<' in body
    assert "?error_code=insufficient_quota" in body


def test_the_overview_links_open_the_admin_lists(staff_client, alice):
    # staff_client is not a superuser: give the member the permissions to read the lists.
    from django.contrib.auth.models import Permission

    staff = staff_client.get("/staff/").wsgi_request.user
    staff.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    record_request(alice)
    body = staff_client.get(reverse("staff:overview")).content.decode()
    import re

    links = set(re.findall(r'href="(/admin/[^"]+)"', body))
    assert len(links) >= 5
    for link in links:
        link = link.replace("&amp;", "&")
        response = staff_client.get(link)
        assert response.status_code == 200, link
        assert "?e=1" not in response.get("Location", ""), link


# --- query counts -----------------------------------------------------------------------------


def test_the_overview_takes_a_fixed_number_of_queries(
    staff_client, alice, bob, django_assert_max_num_queries
):
    for user in (alice, bob):
        record_request(user)
        _apply(user)
    # Session, user, then seven figures: accounts, new today, today's counters, rollups per
    # day and model, quota refusals, pending applications, models and their endpoints.
    with django_assert_max_num_queries(10):
        assert staff_client.get(reverse("staff:overview")).status_code == 200


def test_the_queue_takes_a_fixed_number_of_queries_whatever_the_page_holds(
    staff_client, django_assert_max_num_queries
):
    from accounts.services import account_create

    for n in range(10):
        user = account_create(email=f"applicant{n}@example.com")
        record_request(user)
        api_key_create(user=user, name="second")
        _apply(user)
    # Session, user, count and page, then keys, rollups, counters, earlier applications and
    # security events for the whole page at once, and the recently decided list.
    with django_assert_max_num_queries(10):
        assert staff_client.get(reverse("review:queue")).status_code == 200


# --- in Chinese -------------------------------------------------------------------------------


def test_the_staff_pages_are_in_chinese(staff_client, alice, bob):
    from tests.portal.test_translations import english_left_on, get_zh

    record_request(alice)
    _apply(alice)
    for url, chinese in [
        ("/staff/", ["管理概览", "今日新增", "额度不足拒绝"]),
        ("/staff/accounts/?q=nobody", ["查找账号", "没有匹配的账号。"]),
        (f"/staff/accounts/{alice.public_id}/", ["停用账号", "安全日志"]),
        ("/review/", ["额度申请", "用满额度的天数", "批量处理所选申请"]),
    ]:
        html = get_zh(staff_client, url)
        for text in chinese:
            assert text in html, (url, text)
        assert english_left_on(html) == [], url


# --- the overview's queries use indexes -------------------------------------------------------


@pytest.mark.parametrize(
    ("queryset", "index"),
    [
        (
            lambda day, start: UsageRecord.objects.filter(
                error_code="insufficient_quota", created_at__gte=start
            ),
            "usage_record_quota_refused_idx",
        ),
        (
            lambda day, start: DailyRollup.objects.filter(day__gte=day),
            "usage_rollup_day_model_idx",
        ),
        (
            lambda day, start: User.objects.filter(date_joined__gte=start),
            "accounts_user_joined_idx",
        ),
    ],
)
def test_the_overview_figures_are_read_through_their_indexes(queryset, index):
    from django.db import connection, transaction

    from staff.selectors import day_start

    day = quota_day()
    qs = queryset(day, day_start(day))
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # Tiny test tables would otherwise be read sequentially: ask whether the index
                # can serve the query at all.
                cursor.execute("SET LOCAL enable_seqscan = off")
        plan = qs.explain()
    assert index in plan, plan


def test_the_overview_lists_each_model_s_endpoints_with_their_state(staff_client):
    from gateway.models import Model

    model = Model.objects.create(name="pooled")
    model.endpoints.create(base_url="http://gpu-a.internal:8000/v1", priority=0, weight=3)
    model.endpoints.create(base_url="http://gpu-b.internal:8000/v1", priority=1, enabled=False)
    page = staff_client.get(reverse("staff:overview")).content.decode()
    assert "gpu-a.internal" in page and "gpu-b.internal" in page
    assert "priority 0, weight 3" in page
    row_b = page[page.index("gpu-b.internal") :]
    assert "disabled" in row_b[: row_b.index("</tr>")]
