import re

import pytest
from django.conf import settings
from django.shortcuts import resolve_url
from django.test import Client

from keys import services
from keys.models import ApiKey
from tests.keys.gateway_view import gateway_answer

pytestmark = pytest.mark.django_db


def _key_pages(key):
    base = f"/keys/{key.public_id}"
    return [
        f"{base}/",
        f"{base}/rename/",
        f"{base}/regenerate/",
        f"{base}/delete/",
        f"{base}/reveal/",
    ]


def _post_endpoints(key):
    base = f"/keys/{key.public_id}"
    return [
        ("/keys/", {"name": "sneaky"}),
        (f"{base}/rename/", {"name": "sneaky"}),
        (f"{base}/", {"daily_token_cap": "5", "allowed_ips": "203.0.113.7"}),
        (f"{base}/status/", {"is_active": "0"}),
        (f"{base}/regenerate/", {}),
        (f"{base}/delete/", {}),
        (f"{base}/reveal/", {}),
    ]


def _snapshot(key):
    return (
        ApiKey.objects.filter(pk=key.pk)
        .values("name", "is_active", "digest", "daily_token_cap", "allowed_ips", "controls_version")
        .first()
    )


# --- permissions ------------------------------------------------------------------------
def test_it_sends_anonymous_visitors_to_the_login_page(client, alice_key):
    login_url = resolve_url(settings.LOGIN_URL)
    for url in ["/keys/", *_key_pages(alice_key)]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.url.startswith(login_url + "?next="), url


def test_anonymous_posts_change_nothing(client, alice_key):
    before = _snapshot(alice_key)
    for url, data in _post_endpoints(alice_key):
        response = client.post(url, data)
        assert response.status_code == 302, url
        assert response.url.startswith(resolve_url(settings.LOGIN_URL)), url
    assert _snapshot(alice_key) == before
    assert ApiKey.objects.count() == 1


def test_a_stranger_gets_404_for_every_page_of_alices_key(charlie_client, alice_key, alice_secret):
    before = _snapshot(alice_key)
    for url in _key_pages(alice_key):
        response = charlie_client.get(url)
        assert response.status_code == 404, url
    for url, data in _post_endpoints(alice_key)[1:]:
        response = charlie_client.post(url, data, headers={"accept": "application/json"})
        assert response.status_code == 404, url
        assert alice_secret not in response.content.decode()
        assert alice_key.prefix not in response.content.decode()
    assert _snapshot(alice_key) == before


def test_an_unknown_key_id_is_404(alice_client):
    assert alice_client.get("/keys/00000000-0000-0000-0000-000000000000/rename/").status_code == 404
    assert alice_client.get("/keys/not-a-uuid/rename/").status_code == 404


def test_the_list_shows_only_the_users_own_keys(alice_client, alice, charlie):
    services.api_key_create(user=charlie, name="charlie-secret-project")
    html = alice_client.get("/keys/").content.decode()
    assert "charlie-secret-project" not in html


# --- the list page ----------------------------------------------------------------------
def test_the_list_shows_the_default_key_masked(alice_client, alice_key, alice_secret):
    response = alice_client.get("/keys/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "default" in html
    assert alice_key.masked in html
    assert alice_secret not in html
    assert alice_secret[len(alice_key.prefix) :] not in html
    assert "Enabled" in html
    assert "Never" in html  # last used
    assert f'action="/keys/{alice_key.public_id}/reveal/"' in html
    assert "no-store" in response["Cache-Control"]


def test_the_list_points_to_the_docs_and_the_base_urls(alice_client, settings):
    settings.PUBLIC_BASE_URL = "https://api.example.test"
    html = alice_client.get("/keys/").content.decode()
    assert "https://api.example.test/openai" in html
    assert "https://api.example.test/anthropic" in html
    assert 'href="/docs/"' in html


def test_the_base_urls_fall_back_to_the_request_host(alice_client, settings):
    settings.PUBLIC_BASE_URL = ""
    html = alice_client.get("/keys/").content.decode()
    assert "http://testserver/openai" in html


def test_the_page_has_no_inline_script(alice_client):
    # The CSP allows only our own script files.
    html = alice_client.get("/keys/").content.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"\son[a-z]+=", html)


def test_the_list_page_query_count_is_pinned(alice_client, alice, django_assert_num_queries):
    for n in range(4):
        services.api_key_create(user=alice, name=f"key {n}")
    alice_client.get("/keys/")  # warm the session
    # session, user, keys: the number does not grow with the number of keys.
    with django_assert_num_queries(3):
        assert alice_client.get("/keys/").status_code == 200


# --- create -----------------------------------------------------------------------------
def test_it_creates_a_key_and_shows_the_secret_once(alice_client, alice):
    response = alice_client.post("/keys/", {"name": "  laptop  "})
    assert response.status_code == 302 and response.url == "/keys/"
    key = ApiKey.objects.get(user=alice, name="laptop")
    secret = services.api_key_reveal(api_key=key)

    first = alice_client.get("/keys/")
    assert secret in first.content.decode()
    assert "no-store" in first["Cache-Control"]
    assert "Key “laptop” created." in first.content.decode()

    second = alice_client.get("/keys/")
    assert secret not in second.content.decode()


def test_the_session_never_holds_the_secret(alice_client, alice):
    alice_client.post("/keys/", {"name": "laptop"})
    key = ApiKey.objects.get(user=alice, name="laptop")
    secret = services.api_key_reveal(api_key=key)
    assert secret not in repr(dict(alice_client.session))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        ("x" * 65, "at most 64 characters"),
        ("default", "You already have a key with this name."),
        ("DEFAULT", "You already have a key with this name."),
    ],
)
def test_it_explains_a_bad_name(alice_client, alice, name, message):
    response = alice_client.post("/keys/", {"name": name})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert ApiKey.objects.filter(user=alice).count() == 1


def test_the_eleventh_key_gets_a_clear_message(alice_client, alice):
    for n in range(9):
        assert alice_client.post("/keys/", {"name": f"key {n}"}).status_code == 302
    page = alice_client.get("/keys/").content.decode()
    assert "You have reached the limit of 10 keys" in page
    response = alice_client.post("/keys/", {"name": "eleventh"})
    assert response.status_code == 400
    assert "An account can have at most 10 keys" in response.content.decode()
    assert ApiKey.objects.filter(user=alice).count() == 10


# --- rename -----------------------------------------------------------------------------
def test_it_renames_a_key(alice_client, alice_key):
    page = alice_client.get(f"/keys/{alice_key.public_id}/rename/")
    assert page.status_code == 200
    assert 'value="default"' in page.content.decode()
    response = alice_client.post(f"/keys/{alice_key.public_id}/rename/", {"name": " prod "})
    assert response.status_code == 302
    alice_key.refresh_from_db()
    assert alice_key.name == "prod"


def test_rename_refuses_a_taken_name(alice_client, alice, alice_key):
    services.api_key_create(user=alice, name="laptop")
    response = alice_client.post(f"/keys/{alice_key.public_id}/rename/", {"name": "laptop"})
    assert response.status_code == 400
    assert "You already have a key with this name." in response.content.decode()
    alice_key.refresh_from_db()
    assert alice_key.name == "default"


# --- enable / disable -------------------------------------------------------------------
def test_it_disables_and_enables_a_key(alice_client, alice_key, alice_secret):
    url = f"/keys/{alice_key.public_id}/status/"
    assert alice_client.post(url, {"is_active": "0"}).status_code == 302
    alice_key.refresh_from_db()
    assert not alice_key.is_active
    assert gateway_answer(alice_secret) == "api_key_disabled"
    html = alice_client.get("/keys/").content.decode()
    assert "Disabled" in html and ">Enable<" in html

    assert alice_client.post(url, {"is_active": "1"}).status_code == 302
    alice_key.refresh_from_db()
    assert alice_key.is_active
    assert gateway_answer(alice_secret).key_id == alice_key.pk


def test_status_refuses_get_and_nonsense(alice_client, alice_key):
    url = f"/keys/{alice_key.public_id}/status/"
    assert alice_client.get(url).status_code == 405
    alice_client.post(url, {"is_active": "maybe"})
    alice_key.refresh_from_db()
    assert alice_key.is_active


# --- regenerate -------------------------------------------------------------------------
def test_regenerate_asks_first_then_replaces_the_secret(alice_client, alice_key, alice_secret):
    url = f"/keys/{alice_key.public_id}/regenerate/"
    confirm = alice_client.get(url)
    assert confirm.status_code == 200
    assert alice_secret not in confirm.content.decode()
    assert gateway_answer(alice_secret).key_id == alice_key.pk

    response = alice_client.post(url)
    assert response.status_code == 302
    assert gateway_answer(alice_secret) == "invalid_api_key"
    alice_key.refresh_from_db()
    new_secret = services.api_key_reveal(api_key=alice_key)
    page = alice_client.get("/keys/").content.decode()
    assert new_secret in page  # shown once, like a new key
    assert "The old one no longer works." in page
    assert new_secret not in alice_client.get("/keys/").content.decode()


# --- delete -----------------------------------------------------------------------------
def test_delete_asks_first_then_deletes(alice_client, alice_key, alice_secret):
    url = f"/keys/{alice_key.public_id}/delete/"
    confirm = alice_client.get(url)
    assert confirm.status_code == 200
    assert "cannot be undone" in confirm.content.decode()
    assert ApiKey.objects.filter(pk=alice_key.pk).exists()

    assert alice_client.post(url).status_code == 302
    assert not ApiKey.objects.filter(pk=alice_key.pk).exists()
    assert gateway_answer(alice_secret) == "invalid_api_key"
    assert "Key “default” deleted." in alice_client.get("/keys/").content.decode()


# --- reveal -----------------------------------------------------------------------------
def test_reveal_get_shows_a_button_not_the_secret(alice_client, alice_key, alice_secret):
    response = alice_client.get(f"/keys/{alice_key.public_id}/reveal/")
    assert response.status_code == 200
    assert alice_secret not in response.content.decode()
    assert "Reveal the key" in response.content.decode()


def test_reveal_post_shows_the_secret_to_its_owner_without_js(
    alice_client, alice_key, alice_secret
):
    response = alice_client.post(f"/keys/{alice_key.public_id}/reveal/")
    assert response.status_code == 200
    assert alice_secret in response.content.decode()
    assert "no-store" in response["Cache-Control"]


def test_reveal_answers_json_for_the_page_script(alice_client, alice_key, alice_secret):
    response = alice_client.post(
        f"/keys/{alice_key.public_id}/reveal/", headers={"accept": "application/json"}
    )
    assert response.status_code == 200
    assert response.json() == {"id": str(alice_key.public_id), "key": alice_secret}
    assert "no-store" in response["Cache-Control"]


# --- CSRF -------------------------------------------------------------------------------
def test_every_post_needs_the_csrf_token(alice_csrf_client, alice_key):
    before = _snapshot(alice_key)
    for url, data in _post_endpoints(alice_key):
        response = alice_csrf_client.post(url, data, headers={"accept": "application/json"})
        assert response.status_code == 403, url
    assert _snapshot(alice_key) == before
    assert ApiKey.objects.count() == 1


def test_the_forms_carry_the_csrf_token(alice_csrf_client, alice):
    html = alice_csrf_client.get("/keys/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    response = alice_csrf_client.post("/keys/", {"name": "laptop", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert ApiKey.objects.filter(user=alice, name="laptop").exists()


def test_a_fresh_client_can_follow_the_whole_cycle(alice):
    client = Client()
    client.force_login(alice)
    client.post("/keys/", {"name": "temp"})
    key = ApiKey.objects.get(user=alice, name="temp")
    client.post(f"/keys/{key.public_id}/status/", {"is_active": "0"})
    client.post(f"/keys/{key.public_id}/delete/")
    assert not ApiKey.objects.filter(pk=key.pk).exists()


def test_staff_cannot_reach_a_customers_key_pages_either(staff_client, alice_key, alice_secret):
    # Staff manage keys in the admin, which never shows a secret; the pages are owner-only.
    for url in _key_pages(alice_key):
        assert staff_client.get(url).status_code == 404, url
    response = staff_client.post(f"/keys/{alice_key.public_id}/reveal/")
    assert response.status_code == 404
    assert alice_secret not in response.content.decode()
