import datetime as dt

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from usage.models import QuotaApplication
from usage.services import quota_application_create, quota_application_reject

from .conftest import record_request

NOON_BEIJING = dt.datetime(2026, 3, 10, 4, 0, tzinfo=dt.UTC)
TODAY = "/api/v1/usage/today/"
DAILY = "/api/v1/usage/daily/"
REQUESTS = "/api/v1/usage/requests/"
APPLICATIONS = "/api/v1/quota-applications/"


@pytest.fixture
def frozen():
    with time_machine.travel(NOON_BEIJING, tick=False) as traveller:
        yield traveller


def _apply(user, **extra):
    fields = {"intended_use": "Research", "expected_daily_tokens": 1_000_000, "contact": "x"}
    return quota_application_create(user=user, **{**fields, **extra})


@pytest.mark.parametrize("url", [TODAY, DAILY, REQUESTS, APPLICATIONS])
def test_it_refuses_anonymous_callers(client, db, url):
    # Session authentication sends no WWW-Authenticate challenge, so DRF answers 403.
    response = client.get(url)
    assert response.status_code == 403
    assert "input_tokens" not in response.content.decode()


def test_it_refuses_an_anonymous_application(client, db):
    assert client.post(APPLICATIONS, {"intended_use": "x"}).status_code == 403
    assert not QuotaApplication.objects.exists()


def test_it_answers_404_for_another_accounts_application(alice_client, bob):
    application = _apply(bob)
    assert alice_client.get(f"{APPLICATIONS}{application.public_id}/").status_code == 404
    assert alice_client.get(APPLICATIONS).json() == []


def test_it_reports_today(alice_client, alice, frozen, django_assert_num_queries):
    record_request(alice, input_tokens=1_000, output_tokens=500)
    with django_assert_num_queries(3):
        data = alice_client.get(TODAY).json()
    assert data["day"] == "2026-03-10"
    assert (data["input_tokens"], data["output_tokens"], data["used_tokens"]) == (1000, 500, 1500)
    assert data["quota"] == 500_000 and data["remaining_tokens"] == 498_500
    assert data["seconds_until_reset"] == 12 * 3600
    assert data["resets_at"].startswith("2026-03-10T16:00:00")


def test_it_reports_days_with_filters(alice_client, alice, bob, frozen, django_assert_num_queries):
    record_request(alice, input_tokens=10, output_tokens=1)
    record_request(alice, input_tokens=20, output_tokens=2, model="other")
    record_request(alice, input_tokens=40, when=NOON_BEIJING - dt.timedelta(days=2))
    record_request(bob, input_tokens=999)
    with django_assert_num_queries(3):
        data = alice_client.get(DAILY, {"from": "2026-03-07", "to": "2026-03-10"}).json()
    assert (data["from"], data["to"]) == ("2026-03-07", "2026-03-10")
    assert [(d["day"], d["input_tokens"]) for d in data["days"]] == [
        ("2026-03-07", 0),
        ("2026-03-08", 40),
        ("2026-03-09", 0),
        ("2026-03-10", 30),
    ]
    only_other = alice_client.get(
        DAILY, {"from": "2026-03-10", "to": "2026-03-10", "model": "other"}
    )
    assert only_other.json()["days"][0]["input_tokens"] == 20
    default = alice_client.get(DAILY).json()
    assert len(default["days"]) == 30 and default["to"] == "2026-03-10"


@pytest.mark.parametrize(
    "params",
    [{"from": "2026-03-10", "to": "2026-03-01"}, {"from": "2020-01-01", "to": "2026-03-01"},
     {"from": "yesterday"}],
)  # fmt: skip
def test_it_refuses_bad_ranges(alice_client, frozen, params):
    assert alice_client.get(DAILY, params).status_code == 400


def test_it_lists_requests_with_a_cursor(
    alice_client, alice, bob, frozen, django_assert_num_queries
):
    for n in range(7):
        record_request(alice, input_tokens=n, when=NOON_BEIJING - dt.timedelta(minutes=n))
    record_request(alice, status_code=500, when=NOON_BEIJING - dt.timedelta(hours=1))
    record_request(bob)
    with django_assert_num_queries(3):
        page = alice_client.get(REQUESTS, {"page_size": 5}).json()
    assert [r["input_tokens"] for r in page["results"]] == [0, 1, 2, 3, 4]
    rest = alice_client.get(page["next"]).json()
    assert len(rest["results"]) == 3 and rest["next"] is None
    errors = alice_client.get(REQUESTS, {"status": "error"}).json()["results"]
    assert [r["status_code"] for r in errors] == [500]
    assert set(errors[0]) >= {
        "id",
        "created_at",
        "key",
        "model",
        "endpoint",
        "stream",
        "latency_ms",
    }


def test_requests_pages_are_looked_for_in_recent_days_first_and_stay_exact(
    alice_client, alice, frozen
):
    # Four records an hour for today, then one a day for a month: the first pages come from
    # the one-day window, the later ones from wider windows, in order, none lost or repeated.
    when = [NOON_BEIJING - dt.timedelta(minutes=15 * n) for n in range(8)]
    when += [NOON_BEIJING - dt.timedelta(days=n, minutes=7) for n in range(1, 31)]
    for n, at in enumerate(when):
        record_request(alice, input_tokens=n, when=at)
    with CaptureQueriesContext(connection) as queries:
        page = alice_client.get(REQUESTS, {"page_size": 5}).json()
    windowed = [q["sql"] for q in queries if "usage_usagerecord" in q["sql"]]
    assert len(windowed) == 1 and '"created_at" >=' in windowed[0]
    seen = [r["input_tokens"] for r in page["results"]]
    while page["next"]:
        page = alice_client.get(page["next"]).json()
        seen += [r["input_tokens"] for r in page["results"]]
    assert seen == list(range(len(when)))
    # A page going back (DRF's reverse cursor) reads the whole history, as before.
    back = alice_client.get(page["previous"]).json()
    assert [r["input_tokens"] for r in back["results"]] == list(range(30, 35))


def test_a_quiet_accounts_pages_are_read_back_only_as_far_as_its_rollups_say(
    alice_client, alice, frozen
):
    # One record a day: eight days never hold a page of ten, and the rollups say how far back
    # the next ten go; only the last page (fewer than ten left) reads the whole history.
    for n in range(30):
        record_request(alice, input_tokens=n, when=NOON_BEIJING - dt.timedelta(days=n, minutes=7))
    page = {"next": f"{REQUESTS}?page_size=10"}
    seen = []
    with CaptureQueriesContext(connection) as queries:
        while page["next"]:
            page = alice_client.get(page["next"]).json()
            seen += [r["input_tokens"] for r in page["results"]]
    assert seen == list(range(30))
    unbounded = [
        q["sql"]
        for q in queries
        if "usage_usagerecord" in q["sql"] and '"created_at" >=' not in q["sql"]
    ]
    assert len(unbounded) == 1, unbounded


def test_it_reports_cached_input_tokens_per_day_and_per_request(alice_client, alice, frozen):
    record_request(alice, input_tokens=100, cached_input_tokens=64)
    record_request(alice, input_tokens=10)
    days = alice_client.get(DAILY, {"from": "2026-03-10", "to": "2026-03-10"}).json()["days"]
    assert (days[0]["input_tokens"], days[0]["cached_input_tokens"]) == (110, 64)
    results = alice_client.get(REQUESTS).json()["results"]
    assert sorted(r["cached_input_tokens"] for r in results) == [0, 64]


def test_it_creates_and_lists_applications(alice_client, alice, staff):
    response = alice_client.post(
        APPLICATIONS,
        {"intended_use": "Agents", "expected_daily_tokens": 4_000_000, "contact": "a@b.c"},
        content_type="application/json",
    )
    assert response.status_code == 201
    assert response.json()["status"] == "pending"
    again = alice_client.post(
        APPLICATIONS,
        {"intended_use": "Agents", "expected_daily_tokens": 4_000_000, "contact": "a@b.c"},
        content_type="application/json",
    )
    assert again.status_code == 400
    application = QuotaApplication.objects.get(user=alice)
    quota_application_reject(application=application, reviewer=staff, reason="More detail please")
    listed = alice_client.get(APPLICATIONS).json()
    assert [(a["status"], a["review_reason"]) for a in listed] == [
        ("rejected", "More detail please")
    ]
    detail = alice_client.get(f"{APPLICATIONS}{application.public_id}/").json()
    assert detail["id"] == str(application.public_id)


def test_it_validates_an_application(alice_client):
    response = alice_client.post(
        APPLICATIONS,
        {"intended_use": "", "expected_daily_tokens": 0},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert {"intended_use", "expected_daily_tokens", "contact"} <= set(response.json())


def test_the_endpoints_are_in_the_schema(client, db):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    for path in (TODAY, DAILY, REQUESTS, APPLICATIONS, APPLICATIONS + "{public_id}/"):
        assert path in schema["paths"], path
    daily_params = {p["name"] for p in schema["paths"][DAILY]["get"]["parameters"]}
    assert {"from", "to", "key", "model"} <= daily_params
