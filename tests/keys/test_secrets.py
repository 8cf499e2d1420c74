"""A key's secret never reaches logs, error pages or error reports.

The only places it may appear: the create/regenerate/reveal answers (pages and REST).
"""

import logging

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client
from django.utils import timezone
from django.views.debug import ExceptionReporter

from keys import crypto, services
from keys.models import ApiKey
from tests.keys.gateway_view import gateway_answer
from usage.ledger import KeyRow
from usage.ledger.orm import OrmLedger

pytestmark = pytest.mark.django_db


def _fragments(secret: str) -> list[str]:
    # The prefix is public (shown masked on the page); the rest must never leak.
    return [secret, secret[crypto.PREFIX_LENGTH :]]


def _assert_absent(secrets, text: str, where: str) -> None:
    for secret in secrets:
        for fragment in _fragments(secret):
            assert fragment not in text, f"a secret leaked into {where}"


@pytest.fixture
def everything_logged(caplog):
    """Capture every log record at DEBUG, SQL included."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")
    forced = connection.force_debug_cursor
    connection.force_debug_cursor = True
    yield caplog
    connection.force_debug_cursor = forced


def _log_text(caplog) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        parts.append(repr({k: v for k, v in vars(record).items() if k not in {"args", "msg"}}))
    return "\n".join(parts) + caplog.text


def test_a_full_key_lifecycle_never_logs_a_secret(alice, alice_key, everything_logged):
    client = Client()
    client.force_login(alice)
    secrets = [services.api_key_reveal(api_key=alice_key)]

    # The page: create, see it once, reveal (page and JSON), rename, disable, enable, regenerate.
    client.post("/keys/", {"name": "laptop"})
    laptop = ApiKey.objects.get(user=alice, name="laptop")
    secrets.append(services.api_key_reveal(api_key=laptop))
    client.get("/keys/")
    client.post(f"/keys/{laptop.public_id}/reveal/")
    client.post(f"/keys/{laptop.public_id}/reveal/", headers={"accept": "application/json"})
    client.post(f"/keys/{laptop.public_id}/rename/", {"name": "laptop 2"})
    client.post(f"/keys/{laptop.public_id}/status/", {"is_active": "0"})
    client.post(f"/keys/{laptop.public_id}/status/", {"is_active": "1"})
    client.post(f"/keys/{laptop.public_id}/regenerate/")
    laptop.refresh_from_db()
    secrets.append(services.api_key_reveal(api_key=laptop))
    client.get("/keys/")

    # The REST API: create, reveal, regenerate, update, delete.
    created = client.post("/api/v1/keys/", {"name": "ci"}, content_type="application/json").json()
    secrets.append(created["key"])
    client.post(f"/api/v1/keys/{created['id']}/reveal/")
    regenerated = client.post(f"/api/v1/keys/{created['id']}/regenerate/").json()
    secrets.append(regenerated["key"])
    client.patch(
        f"/api/v1/keys/{created['id']}/", {"is_active": False}, content_type="application/json"
    )
    client.get("/api/v1/keys/")

    # The gateway's steps: right, wrong and dead secrets; last-used, as its recorder writes it.
    touched = {}
    for secret in secrets:
        answer = gateway_answer(secret)
        if isinstance(answer, KeyRow):
            touched[answer.key_id] = timezone.now()
        gateway_answer(secret[:-1] + "!")
    assert touched  # the walk really reached keys the gateway accepts
    async_to_sync(OrmLedger().write_batch)([], touched)
    client.delete(f"/api/v1/keys/{created['id']}/")
    client.post(f"/keys/{laptop.public_id}/delete/")

    assert len(set(secrets)) == 5
    text = _log_text(everything_logged)
    assert "SELECT" in text  # SQL really was captured
    assert "api key created" in text  # and our own events
    _assert_absent(secrets, text, "the logs")


def test_rest_responses_other_than_create_regenerate_reveal_hold_no_secret(
    alice_client, alice_key, alice_secret
):
    detail = f"/api/v1/keys/{alice_key.public_id}/"
    responses = [
        alice_client.get("/api/v1/keys/"),
        alice_client.get(detail),
        alice_client.patch(detail, {"name": "renamed"}, content_type="application/json"),
        alice_client.put(
            detail, {"name": "renamed", "is_active": True}, content_type="application/json"
        ),
        alice_client.patch(detail, {"name": ""}, content_type="application/json"),
        alice_client.post("/api/v1/keys/", {"name": "renamed"}, content_type="application/json"),
        alice_client.get("/api/schema/"),
    ]
    for response in responses:
        _assert_absent([alice_secret], response.content.decode(), response.request["PATH_INFO"])


def test_pages_other_than_reveal_hold_no_secret(alice_client, alice_key, alice_secret):
    base = f"/keys/{alice_key.public_id}"
    for url in [
        "/keys/",
        f"{base}/rename/",
        f"{base}/regenerate/",
        f"{base}/delete/",
        f"{base}/reveal/",
    ]:
        _assert_absent([alice_secret], alice_client.get(url).content.decode(), url)


def _crash(*args, **kwargs):
    raise RuntimeError("the template engine fell over")


@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_a_crash_while_revealing_leaks_nothing(
    alice, alice_key, alice_secret, everything_logged, monkeypatch, settings, accept
):
    settings.DEBUG = False
    monkeypatch.setattr("keys.views.render", _crash)
    monkeypatch.setattr("keys.views.JsonResponse", _crash)
    client = Client(raise_request_exception=False)
    client.force_login(alice)

    response = client.post(f"/keys/{alice_key.public_id}/reveal/", headers={"accept": accept})

    assert response.status_code == 500
    _assert_absent([alice_secret], response.content.decode(), "the error page")
    _assert_absent([alice_secret], _log_text(everything_logged), "the logs")
    # What an AdminEmailHandler would mail: frame variables included, but cleansed.
    record = next(r for r in everything_logged.records if r.name == "django.request")
    report = ExceptionReporter(record.request, *record.exc_info, is_email=True)
    assert "the template engine fell over" in report.get_traceback_text()
    _assert_absent([alice_secret], report.get_traceback_text(), "the error report")
    _assert_absent([alice_secret], report.get_traceback_html(), "the error report")


def test_a_crash_in_the_rest_create_leaks_nothing(alice, everything_logged, monkeypatch, settings):
    settings.DEBUG = False
    monkeypatch.setattr("keys.api.views.ApiKeyWithSecretSerializer", _crash)
    client = Client(raise_request_exception=False)
    client.force_login(alice)

    response = client.post("/api/v1/keys/", {"name": "ci"}, content_type="application/json")

    assert response.status_code == 500
    secret = services.api_key_reveal(api_key=ApiKey.objects.get(user=alice, name="ci"))
    _assert_absent([secret], response.content.decode(), "the error page")
    _assert_absent([secret], _log_text(everything_logged), "the logs")
    record = next(r for r in everything_logged.records if r.name == "django.request")
    report = ExceptionReporter(record.request, *record.exc_info, is_email=True)
    _assert_absent([secret], report.get_traceback_text(), "the error report")
    _assert_absent([secret], report.get_traceback_html(), "the error report")
