"""Every state-changing portal request needs the CSRF token, and no URL hands one account's
objects to another. Both walk the URL configuration, so a view added later is covered too."""

from __future__ import annotations

import csv
import io
import re
import uuid

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from keys.models import ApiKey
from tests.usage.conftest import record_request, streamed_body
from usage.models import QuotaApplication

pytestmark = pytest.mark.django_db

UNSAFE = ("post", "put", "patch", "delete")
SAMPLES = {"kind": "phone", "slug": "faq", "key": "abc", "uidb36": "1", "object_id": "1"}


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def _path(route: str, public_id: str) -> str:
    """A concrete path for a route: converters and regex groups get sample values."""
    route = route.replace("^", "").replace("$", "")

    def converter(match):
        kind, name = match.group(1), match.group(2)
        return public_id if kind == "uuid" else SAMPLES.get(name, "1")

    route = re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: SAMPLES.get(m.group(1), "1"), route)
    route = re.sub(r"<(?:(\w+):)?(\w+)>", converter, route)
    route = route.replace("\\", "")
    return "/" + route


def _routes():
    return list(_walk(get_resolver().url_patterns))


def test_every_unsafe_request_without_the_csrf_token_is_refused(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    key = ApiKey.objects.get(user=alice)
    missed = []
    for route, _entry in _routes():
        path = _path(route, str(key.public_id))
        for method in UNSAFE:
            response = getattr(client, method)(path, {}, content_type="application/json")
            if response.status_code != 403:
                missed.append((method.upper(), path, response.status_code))
    assert missed == []
    # Nothing changed on the way.
    assert ApiKey.objects.get(pk=key.pk).name == "default"
    assert ApiKey.objects.filter(user=alice).count() == 1


def test_the_same_request_with_the_token_gets_through(alice):
    # The test above could pass for a wrong reason (every URL refusing everything): with the
    # token from the page, the same client creates a key.
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    client.get("/keys/")
    token = client.cookies["csrftoken"].value
    response = client.post("/keys/", {"name": "laptop"}, headers={"x-csrftoken": token})
    assert response.status_code in (200, 302)
    assert ApiKey.objects.filter(user=alice, name="laptop").exists()


def test_anonymous_unsafe_requests_are_refused_too(db):
    client = Client(enforce_csrf_checks=True)
    for route, _entry in _routes():
        path = _path(route, str(uuid.uuid4()))
        response = client.post(path, {})
        assert response.status_code in (403, 405), (path, response.status_code)


# --- IDOR ---------------------------------------------------------------------------------------
BOB_MODEL = "bob-private-model"
BOB_KEY_NAME = "bob-private-key"
BOB_TOKENS = 7_319_577
PARAMETERISED_FOR_CUSTOMERS = [
    "keys/<uuid:public_id>/",
    "keys/<uuid:public_id>/rename/",
    "keys/<uuid:public_id>/status/",
    "keys/<uuid:public_id>/regenerate/",
    "keys/<uuid:public_id>/delete/",
    "keys/<uuid:public_id>/reveal/",
    "api/v1/keys/<uuid:public_id>/",
    "api/v1/keys/<uuid:public_id>/regenerate/",
    "api/v1/keys/<uuid:public_id>/reveal/",
    "api/v1/keys/<uuid:public_id>/changes/",
    "api/v1/quota-applications/<uuid:public_id>/",
    "playground/keys/<uuid:public_id>/usage/",
]


@pytest.fixture
def bobs_things(bob):
    from keys.services import api_key_create
    from usage.services import quota_application_create

    key, secret = api_key_create(user=bob, name=BOB_KEY_NAME)
    record_request(bob, key=key, key_name=BOB_KEY_NAME, model=BOB_MODEL, input_tokens=BOB_TOKENS)
    application = quota_application_create(
        user=bob,
        intended_use="bob-private-use",
        company="bob-private-company",
        expected_daily_tokens=4_000_000,
        contact="bob-private-contact",
    )
    return {"key": key, "secret": secret, "application": application}


def test_every_customer_url_with_an_id_is_covered_here():
    # A new URL taking an id must be added to the IDOR list below (or consciously left out).
    routes = {route for route, _ in _routes() if "<uuid:" in route}
    staff_only = {
        "review/<uuid:public_id>/",
        "staff/accounts/<uuid:public_id>/",
        "staff/accounts/<uuid:public_id>/suspend/",
        "staff/accounts/<uuid:public_id>/reactivate/",
        "staff/accounts/<uuid:public_id>/quota/",
        "staff/accounts/<uuid:public_id>/revoke-keys/",
    }
    assert routes - staff_only == set(PARAMETERISED_FOR_CUSTOMERS)


@pytest.mark.parametrize("route", PARAMETERISED_FOR_CUSTOMERS)
def test_alice_gets_404_for_bobs_objects_by_every_method(alice_client, bobs_things, route):
    target = bobs_things["application" if "quota" in route else "key"]
    before = (
        ApiKey.objects.filter(pk=bobs_things["key"].pk).values().first(),
        QuotaApplication.objects.filter(pk=bobs_things["application"].pk).values().first(),
    )
    path = _path(route, str(target.public_id))
    for method in ("get", *UNSAFE):
        response = getattr(alice_client, method)(path, {}, content_type="application/json")
        # 405 only where the URL has no such method at all (it says nothing about the object).
        assert response.status_code in (404, 405), (method, path, response.status_code)
        assert bobs_things["secret"] not in response.content.decode()
    after = (
        ApiKey.objects.filter(pk=bobs_things["key"].pk).values().first(),
        QuotaApplication.objects.filter(pk=bobs_things["application"].pk).values().first(),
    )
    assert after == before


LISTS = [
    "/keys/",
    "/usage/",
    "/usage/live/",
    "/account/",
    "/api/v1/keys/",
    "/api/v1/usage/today/",
    "/api/v1/usage/daily/",
    "/api/v1/usage/requests/",
    "/api/v1/quota-applications/",
    "/playground/",
]


def _bob_markers(things) -> list[str]:
    return [
        BOB_MODEL,
        BOB_KEY_NAME,
        "bob-private",
        str(things["key"].public_id),
        str(things["application"].public_id),
        things["key"].prefix,
        things["secret"],
    ]


@pytest.mark.parametrize("path", LISTS)
def test_alice_never_sees_bobs_usage_keys_or_applications_in_lists(
    alice_client, alice, bobs_things, path
):
    record_request(alice, input_tokens=5)
    response = alice_client.get(path)
    assert response.status_code == 200
    text = response.content.decode()
    for marker in _bob_markers(bobs_things):
        assert marker not in text, (path, marker)
    # Bob's token count, as a number or formatted (an odd figure: "777" once matched the
    # microseconds of a timestamp).
    assert str(BOB_TOKENS) not in text and f"{BOB_TOKENS:,}" not in text


@pytest.mark.parametrize("kind", ["daily", "requests"])
def test_the_csv_export_holds_only_the_callers_rows(alice_client, alice, bobs_things, kind):
    from usage.quota import quota_day

    record_request(alice, input_tokens=5)
    today = quota_day().isoformat()
    response = alice_client.get("/usage/export/", {"start": today, "end": today, "kind": kind})
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(streamed_body(response).decode())))
    assert len(rows) == 2  # the header and alice's one row
    text = "\n".join(",".join(row) for row in rows)
    for marker in _bob_markers(bobs_things):
        assert marker not in text
