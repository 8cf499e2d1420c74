import asyncio
import csv
import datetime as dt
import io
import tracemalloc

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.core.asgi import get_asgi_application
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.urls import reverse

from usage.models import QuotaApplication, UsageRecord
from usage.services import quota_application_create, quota_set

from .conftest import record_request, streamed_body

NOON_BEIJING = dt.datetime(2026, 3, 10, 4, 0, tzinfo=dt.UTC)


@pytest.fixture
def frozen():
    with time_machine.travel(NOON_BEIJING, tick=False) as traveller:
        yield traveller


def _apply(user, **extra):
    fields = {
        "intended_use": "An internal coding assistant",
        "expected_daily_tokens": 3_000_000,
        "contact": "+86 138 0013 8000",
    }
    return quota_application_create(user=user, **{**fields, **extra})


# --- permissions -----------------------------------------------------------------------------

PAGES = ["usage:page", "usage:live", "usage:export"]


@pytest.mark.parametrize("name", PAGES)
def test_it_sends_anonymous_visitors_to_login(client, db, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_sends_anonymous_applications_to_login(client, db):
    response = client.post(reverse("usage:apply"), {"intended_use": "x"})
    assert response.status_code == 302
    assert not QuotaApplication.objects.exists()


def test_it_shows_only_the_visitors_own_usage(alice_client, bob, frozen):
    record_request(bob, input_tokens=777_777, key_name="bob-secret-project")
    _apply(bob, intended_use="Bob's private plans")
    response = alice_client.get(reverse("usage:page"))
    body = response.content.decode()
    assert response.status_code == 200
    assert "777,777" not in body and "bob-secret-project" not in body
    assert "Bob&#x27;s private plans" not in body and "Bob's private plans" not in body


def test_it_hides_the_review_queue_from_customers(alice_client, bob):
    application = _apply(bob)
    assert alice_client.get(reverse("review:queue")).status_code == 404
    response = alice_client.post(
        reverse("review:decide", args=[application.public_id]), {"decision": "approve"}
    )
    assert response.status_code == 404
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.PENDING


def test_it_sends_anonymous_reviewers_to_login(client, bob):
    application = _apply(bob)
    for response in (
        client.get(reverse("review:queue")),
        client.post(
            reverse("review:decide", args=[application.public_id]), {"decision": "approve"}
        ),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


# --- the page ---------------------------------------------------------------------------------


def test_it_explains_what_to_do_when_nothing_was_used(alice_client, frozen):
    body = alice_client.get(reverse("usage:page")).content.decode()
    assert "No requests in this period yet." in body
    assert "500,000" in body  # the quota and the remaining tokens
    assert 'href="/keys/"' in body


def test_it_shows_today_charts_breakdowns_and_requests(alice_client, alice, frozen):
    key = alice.api_keys.get()
    record_request(alice, input_tokens=1_200, output_tokens=300, key=key)
    record_request(alice, input_tokens=10, output_tokens=0, status_code=429, model="other")
    record_request(
        alice, input_tokens=5_000, output_tokens=5_000, when=NOON_BEIJING - dt.timedelta(days=3)
    )
    response = alice_client.get(reverse("usage:page"))
    body = response.content.decode()
    assert response.status_code == 200
    today = response.context["today"]
    assert (today.input_tokens, today.output_tokens, today.requests) == (1_210, 300, 2)
    assert today.remaining_tokens == 500_000 - 1_510
    assert '<progress id="quota-progress"' in body
    assert 'data-countdown="' in body and "in 12 h 0 min" in body
    assert "2026-03-11 00:00 Beijing time" in body
    assert body.count('class="bar-input"') == 2 and body.count('class="bar-requests"') == 2
    by_model = {row.name: row.requests for row in response.context["by_model"]}
    assert by_model == {"LongCat-Flash-Chat": 2, "other": 1}
    assert [r.status_code for r in response.context["records"]] == [429, 200, 200]
    assert 'hx-get="/usage/live/"' in body and "vendor/htmx.min.js" in body


@pytest.mark.parametrize("days", [7, 30, 90])
def test_it_draws_one_bar_slot_per_day_of_the_range(alice_client, alice, frozen, days):
    record_request(alice)
    response = alice_client.get(reverse("usage:page"), {"days": days})
    assert len(response.context["series"]) == days
    assert len(response.context["token_chart"].bars) == days
    assert response.context["series"][-1].day == dt.date(2026, 3, 10)


def test_it_reads_charts_from_rollups_not_records(alice_client, alice, frozen):
    record_request(alice, input_tokens=42, rollup=False)
    response = alice_client.get(reverse("usage:page"))
    assert response.context["range_totals"].input_tokens == 0
    assert response.context["today"].input_tokens == 42  # the counter still knows


def test_it_filters_and_pages_recent_requests(alice_client, alice, frozen):
    for n in range(30):
        record_request(alice, input_tokens=n, when=NOON_BEIJING - dt.timedelta(minutes=n))
    record_request(alice, status_code=502, model="m2", when=NOON_BEIJING - dt.timedelta(hours=5))
    first = alice_client.get(reverse("usage:page"))
    assert len(first.context["records"]) == 25
    second = alice_client.get(reverse("usage:page"), {"cursor": first.context["next_cursor"]})
    assert len(second.context["records"]) == 6
    assert not second.context["next_cursor"]
    seen = {r.pk for r in first.context["records"]} | {r.pk for r in second.context["records"]}
    assert len(seen) == 31
    failed = alice_client.get(reverse("usage:page"), {"status": "error"})
    assert [r.model for r in failed.context["records"]] == ["m2"]
    by_model = alice_client.get(reverse("usage:page"), {"model": "m2"})
    assert len(by_model.context["records"]) == 1
    nothing = alice_client.get(reverse("usage:page"), {"key": "nope"})
    assert "No requests match these filters." in nothing.content.decode()


def test_it_ignores_a_forged_cursor(alice_client, alice, frozen):
    record_request(alice)
    response = alice_client.get(reverse("usage:page"), {"cursor": "forged:abc"})
    assert len(response.context["records"]) == 1


def test_it_renders_the_page_in_a_fixed_number_of_queries(
    alice_client, alice, frozen, django_assert_num_queries
):
    for n in range(40):
        record_request(alice, model=f"m{n % 3}", when=NOON_BEIJING - dt.timedelta(days=n % 9))
    _apply(alice)
    # session, user, counter, series, by key, by model, filter menus, records (newest day,
    # then newest 8 days: 40 records over 9 days), applications, today's alerts (the banner),
    # the alert settings (the form)
    with django_assert_num_queries(12):
        response = alice_client.get(reverse("usage:page"), {"days": 90})
    assert response.status_code == 200


def test_the_live_fragment_is_small_and_cheap(
    alice_client, alice, frozen, django_assert_num_queries
):
    record_request(alice, input_tokens=321, output_tokens=1)
    with django_assert_num_queries(3):  # session, user, counter
        response = alice_client.get(reverse("usage:live"), HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="usage-today"')
    assert 'hx-trigger="every 5s"' in body  # the swapped-in panel keeps polling
    assert "322" in body
    assert "<html" not in body


def test_it_shows_the_quota_that_applies_today(alice_client, alice, staff, frozen):
    quota_set(user=alice, new_quota=5_000_000, reason="approved", actor=staff)
    response = alice_client.get(reverse("usage:live"))
    assert response.context["today"].quota == 5_000_000
    assert "5,000,000" in response.content.decode()


# --- CSV export ---------------------------------------------------------------------------------


def _csv(response):
    return list(csv.reader(io.StringIO(streamed_body(response).decode())))


def _asgi_get(path: str, query: str, cookies: str, on_body) -> int:
    """GET ``path`` through Django's real ASGI handler (as uvicorn would); ``on_body`` sees
    each body message as it is sent. Returns the status."""
    app = get_asgi_application()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver"), (b"cookie", cookies.encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    status, requested = [], []

    async def receive():
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # the client stays connected until the answer is sent

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            on_body(message.get("body", b""))

    # As Django's test client does: the test's database connection must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        async_to_sync(app)(scope, receive, send)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return status[0]


def test_a_90_day_export_streams_in_bounded_memory(alice_client, alice, frozen):
    key = alice.api_keys.first()
    first_day = NOON_BEIJING - dt.timedelta(days=89)
    UsageRecord.objects.bulk_create(
        UsageRecord(
            user=alice,
            api_key=key,
            key_name=key.name,
            model="LongCat-Flash-Chat",
            endpoint=UsageRecord.Endpoint.OPENAI_CHAT,
            input_tokens=n,
            output_tokens=n,
            status_code=200,
            latency_ms=120,
            day=(first_day + dt.timedelta(days=n % 90)).date(),
            created_at=first_day + dt.timedelta(days=n % 90, seconds=n),
        )
        for n in range(60_000)
    )
    cookies = "; ".join(f"{k}={v.value}" for k, v in alice_client.cookies.items())
    received = {"bytes": 0, "messages": 0, "peak": 0}

    def on_body(body):
        received["bytes"] += len(body)
        received["messages"] += 1
        received["peak"] = max(received["peak"], tracemalloc.get_traced_memory()[0])

    query = f"start={first_day.date()}&end={NOON_BEIJING.date()}&kind=requests"
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        status = _asgi_get(reverse("usage:export"), query, cookies, on_body)
    finally:
        tracemalloc.stop()
    assert status == 200
    assert received["bytes"] > 6_000_000  # 60,000 rows of about 110 bytes
    assert received["messages"] > 50
    # Collected first, the body alone would sit in memory; streamed, a chunk or two does.
    assert received["peak"] - baseline < 2_500_000


def test_it_exports_daily_rows_of_a_range(alice_client, alice, frozen):
    record_request(alice, input_tokens=5, key_name="=cmd|' /C calc'!A0")
    record_request(alice, input_tokens=7, when=NOON_BEIJING - dt.timedelta(days=40))
    response = alice_client.get(
        reverse("usage:export"), {"start": "2026-03-01", "end": "2026-03-10", "kind": "daily"}
    )
    assert response["Content-Type"].startswith("text/csv")
    assert "usage-daily-2026-03-01-2026-03-10.csv" in response["Content-Disposition"]
    rows = _csv(response)
    assert rows[0][0] == "day"
    assert rows[1:] == [
        ["2026-03-10", "'=cmd|' /C calc'!A0", "LongCat-Flash-Chat", "1", "0", "5", "50", "0"]
    ]


def test_it_exports_single_requests(alice_client, alice, bob, frozen):
    record_request(alice, input_tokens=11, output_tokens=22, status_code=200)
    record_request(bob, input_tokens=99)
    response = alice_client.get(
        reverse("usage:export"), {"start": "2026-03-10", "end": "2026-03-10", "kind": "requests"}
    )
    rows = _csv(response)
    assert len(rows) == 2
    assert rows[1][6:9] == ["11", "22", "200"]
    assert rows[1][0].startswith("2026-03-10T04:00:00")


def test_the_exports_carry_cached_input_tokens_in_a_last_column(alice_client, alice, frozen):
    record_request(alice, input_tokens=100, cached_input_tokens=64)
    record_request(alice, input_tokens=30)
    params = {"start": "2026-03-10", "end": "2026-03-10"}
    daily = _csv(alice_client.get(reverse("usage:export"), {**params, "kind": "daily"}))
    assert daily[0][-1] == "cached_input_tokens"
    assert daily[1][5] == "130" and daily[1][-1] == "64"
    single = _csv(alice_client.get(reverse("usage:export"), {**params, "kind": "requests"}))
    assert single[0][-1] == "cached_input_tokens"
    assert sorted(row[-1] for row in single[1:]) == ["0", "64"]


def test_the_page_shows_cached_input_tokens(alice_client, alice, frozen):
    record_request(alice, input_tokens=100, cached_input_tokens=64)
    page = alice_client.get(reverse("usage:page")).content.decode()
    assert "64 of the input tokens were read from the model's prompt cache." in page
    assert "64 cached" in page


def test_the_page_says_nothing_of_a_cache_never_used(alice_client, alice, frozen):
    record_request(alice, input_tokens=100)
    page = alice_client.get(reverse("usage:page")).content.decode()
    assert "prompt cache" not in page and " cached<" not in page


def test_it_refuses_a_backwards_export_range(alice_client, frozen):
    response = alice_client.get(
        reverse("usage:export"), {"start": "2026-03-10", "end": "2026-03-01", "kind": "daily"}
    )
    assert response.status_code == 302


# --- applying ----------------------------------------------------------------------------------


def test_it_takes_an_application_from_the_page(alice_client, alice, frozen):
    response = alice_client.post(
        reverse("usage:apply"),
        {
            "intended_use": "Translating product manuals",
            "company": "",
            "expected_daily_tokens": "2000000",
            "contact": "alice@example.com",
        },
    )
    assert response.status_code == 302
    application = QuotaApplication.objects.get(user=alice)
    assert application.expected_daily_tokens == 2_000_000
    page = alice_client.get(reverse("usage:page")).content.decode()
    assert "waiting for review" in page
    assert 'action="/usage/apply/"' not in page  # no second form while one is pending


def test_it_shows_form_errors_and_refuses_a_second_pending(alice_client, alice, frozen):
    response = alice_client.post(reverse("usage:apply"), {"intended_use": " "})
    assert response.status_code == 400
    assert response.context["application_form"].errors
    _apply(alice)
    response = alice_client.post(
        reverse("usage:apply"),
        {"intended_use": "again", "expected_daily_tokens": "5", "contact": "me"},
    )
    assert response.status_code == 400
    assert QuotaApplication.objects.filter(user=alice).count() == 1


def test_it_shows_the_rejection_reason_to_the_applicant(alice_client, alice, staff, frozen):
    from usage.services import quota_application_reject

    quota_application_reject(
        application=_apply(alice), reviewer=staff, reason="Tell us more about the project"
    )
    body = alice_client.get(reverse("usage:page")).content.decode()
    assert "Tell us more about the project" in body
    assert "Rejected" in body
    assert 'action="/usage/apply/"' in body  # may apply again


# --- staff review ------------------------------------------------------------------------------


def test_staff_approve_from_the_queue(staff_client, alice, settings, frozen):
    settings.INCREASED_DAILY_QUOTA = 5_000_000
    application = _apply(alice)
    queue = staff_client.get(reverse("review:queue"))
    assert "An internal coding assistant" in queue.content.decode()
    response = staff_client.post(
        reverse("review:decide", args=[application.public_id]), {"decision": "approve"}
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.daily_quota == 5_000_000


def test_staff_cannot_reject_without_a_reason(staff_client, alice, frozen):
    application = _apply(alice)
    staff_client.post(
        reverse("review:decide", args=[application.public_id]), {"decision": "reject"}
    )
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.PENDING
    staff_client.post(
        reverse("review:decide", args=[application.public_id]),
        {"decision": "reject", "reason": "Not enough detail"},
    )
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.REJECTED


def test_it_answers_404_for_an_unknown_application(staff_client, db):
    response = staff_client.post(
        reverse("review:decide", args=["00000000-0000-0000-0000-000000000000"]),
        {"decision": "approve"},
    )
    assert response.status_code == 404


def test_the_live_panel_starts_from_zero_at_midnight_beijing_time(alice_client, alice):
    before = dt.datetime(2026, 3, 1, 15, 59, 59, tzinfo=dt.UTC)  # 23:59:59 in Beijing
    with time_machine.travel(before, tick=False):
        record_request(alice, input_tokens=4_000, output_tokens=1_000)
        panel = alice_client.get(reverse("usage:live"))
        assert panel.context["today"].used_tokens == 5_000
        assert "in 0 h 0 min" in panel.content.decode()
    with time_machine.travel(before + dt.timedelta(seconds=1), tick=False):
        panel = alice_client.get(reverse("usage:live"))
        assert panel.context["today"].day == dt.date(2026, 3, 2)
        assert panel.context["today"].used_tokens == 0
        assert panel.context["today"].remaining_tokens == 500_000
        assert "2026-03-03 00:00 Beijing time" in panel.content.decode()


def test_it_warns_when_the_quota_is_nearly_used(alice_client, alice, frozen):
    record_request(alice, input_tokens=460_000, output_tokens=1_000)
    body = alice_client.get(reverse("usage:live")).content.decode()
    assert "Most of today" in body
    record_request(alice, input_tokens=39_000, output_tokens=0)
    body = alice_client.get(reverse("usage:live")).content.decode()
    assert "You have used today" in body


def test_it_renders_in_simplified_chinese(alice_client, alice, frozen):
    record_request(alice)
    response = alice_client.get(reverse("usage:page"), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 200
    assert '<html lang="zh-hans">' in response.content.decode()


def test_the_live_panel_sends_a_signed_out_poller_to_the_login_page(client, db):
    response = client.get(reverse("usage:live"), HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    assert response["HX-Redirect"].startswith("/accounts/login/?next=/usage/")
    assert b"input" not in response.content
