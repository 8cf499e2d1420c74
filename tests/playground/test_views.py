"""The Playground page and its usage read-back: sign-in, ownership, no secrets in HTML."""

import pytest
from django.conf import settings
from django.shortcuts import resolve_url
from django.test import Client

from keys import services
from keys.models import ApiKey
from tests.usage.conftest import record_request
from usage.models import UsageRecord
from usage.selectors import usage_today

pytestmark = pytest.mark.django_db


def _usage_url(key):
    return f"/playground/keys/{key.public_id}/usage/"


def test_anonymous_visitors_go_to_the_login_page(client, alice_key):
    login_url = resolve_url(settings.LOGIN_URL)
    for url in ["/playground/", _usage_url(alice_key)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith(login_url + "?next="), url


def test_the_page_lists_only_the_users_enabled_keys_and_no_secret(
    alice_client, alice, alice_key, charlie
):
    spare, spare_secret = services.api_key_create(user=alice, name="spare")
    off, off_secret = services.api_key_create(user=alice, name="switched-off")
    services.api_key_set_active(api_key=off, is_active=False)
    charlie_key = ApiKey.objects.get(user=charlie)

    response = alice_client.get("/playground/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'href="/playground/"' in html  # in the nav
    for key in (alice_key, spare):
        assert f'value="{key.public_id}"' in html
        assert key.masked in html
    assert str(off.public_id) not in html
    assert str(charlie_key.public_id) not in html
    for secret in (
        services.api_key_reveal(api_key=alice_key),
        spare_secret,
        off_secret,
        services.api_key_reveal(api_key=charlie_key),
    ):
        assert secret not in html
    assert "no-store" in response["Cache-Control"]
    # Under the strict CSP: no inline script or style.
    assert "<script>" not in html and "style=" not in html
    assert "js/playground.js" in html


def test_without_an_enabled_key_the_page_says_so_and_links_to_the_keys_page(
    alice_client, alice_key
):
    services.api_key_set_active(api_key=alice_key, is_active=False)
    html = alice_client.get("/playground/").content.decode()
    assert "data-playground-no-key" in html
    assert 'href="/keys/"' in html
    assert "data-playground " not in html and "js/playground.js" not in html


def test_the_page_in_simplified_chinese(alice_client):
    response = alice_client.get("/playground/", headers={"accept-language": "zh-hans"})
    html = response.content.decode()
    assert "试用" in html  # the title
    assert "复制为 curl" in html


def test_usage_read_back_returns_the_latest_playground_record_and_today(
    alice_client, alice, alice_key
):
    assert alice_client.get(_usage_url(alice_key)).json()["record"] is None
    UsageRecord.objects.filter(
        pk=record_request(alice, key=alice_key, input_tokens=11, output_tokens=22).pk
    ).update(playground=True)
    latest = record_request(alice, key=alice_key, input_tokens=33, output_tokens=44)
    latest.first_token_ms = 17
    latest.playground = True
    latest.save()
    # A later request from the owner's own code (its record may land late, records are batched)
    # is not taken for the Playground's answer.
    record_request(alice, key=alice_key, input_tokens=55, output_tokens=66)
    response = alice_client.get(_usage_url(alice_key))
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    data = response.json()
    assert data["record"]["id"] == str(latest.public_id)
    assert data["record"]["input_tokens"] == 33
    assert data["record"]["output_tokens"] == 44
    assert data["record"]["latency_ms"] == latest.latency_ms
    assert data["record"]["first_token_ms"] == 17
    today = usage_today(user=alice)
    assert data["today"]["remaining_tokens"] == today.remaining_tokens
    assert data["today"]["used_tokens"] == 110 + 121


def test_usage_read_back_is_owner_only(charlie_client, alice, alice_key):
    record_request(alice, key=alice_key)
    response = charlie_client.get(_usage_url(alice_key))
    assert response.status_code == 404
    assert b"input_tokens" not in response.content


def test_usage_read_back_changes_nothing_and_takes_no_post(alice, alice_key):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(_usage_url(alice_key)).status_code in (403, 405)


def test_the_key_is_revealed_only_with_the_csrf_token(alice, alice_key):
    # The playground gets the secret from the API Keys reveal endpoint, which needs the token.
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    url = f"/keys/{alice_key.public_id}/reveal/"
    refused = client.post(url, headers={"accept": "application/json"})
    assert refused.status_code == 403
    page = client.get("/playground/")
    token = page.cookies[settings.CSRF_COOKIE_NAME].value
    answer = client.post(url, headers={"accept": "application/json", "x-csrftoken": token})
    assert answer.status_code == 200
    assert answer.json()["key"] == services.api_key_reveal(api_key=alice_key)
