import uuid

import pytest

from keys import services
from keys.models import ApiKey
from tests.keys.gateway_view import gateway_answer

pytestmark = pytest.mark.django_db

URL = "/api/v1/keys/"


def _detail(key):
    return f"{URL}{key.public_id}/"


def _endpoints(key):
    """Every (method, url, body) of the resource for one key."""
    detail = _detail(key)
    return [
        ("get", URL, None),
        ("post", URL, {"name": "sneaky"}),
        ("get", detail, None),
        ("put", detail, {"name": "sneaky", "is_active": False}),
        ("patch", detail, {"is_active": False}),
        ("patch", detail, {"daily_token_cap": 5, "allowed_ips": ["203.0.113.7"]}),
        ("get", f"{detail}changes/", None),
        ("delete", detail, None),
        ("post", f"{detail}regenerate/", None),
        ("post", f"{detail}reveal/", None),
    ]


def _call(client, method, url, body):
    return getattr(client, method)(url, body, content_type="application/json")


def _snapshot():
    return list(
        ApiKey.objects.order_by("pk").values(
            "name", "is_active", "digest", "daily_token_cap", "allowed_ips", "controls_version"
        )
    )


# --- permissions ------------------------------------------------------------------------
def test_anonymous_requests_get_403_and_no_data(client, alice_key, alice_secret):
    before = _snapshot()
    for method, url, body in _endpoints(alice_key):
        response = _call(client, method, url, body)
        # Session auth sends no WWW-Authenticate challenge, so DRF answers 403 (not 401)
        # for every anonymous call, the same across the whole portal API.
        assert response.status_code == 403, (method, url)
        assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert _snapshot() == before


def test_a_stranger_gets_404_and_no_data(charlie_client, alice_key, alice_secret):
    before = _snapshot()
    for method, url, body in _endpoints(alice_key)[2:]:
        response = _call(charlie_client, method, url, body)
        assert response.status_code == 404, (method, url)
        assert alice_key.prefix not in response.content.decode()
        assert alice_secret not in response.content.decode()
    assert _snapshot() == before
    listed = charlie_client.get(URL).json()
    assert [k["name"] for k in listed] == ["default"]
    assert str(alice_key.public_id) not in str(listed)


def test_an_unknown_or_malformed_id_is_404(alice_client):
    assert alice_client.get(f"{URL}{uuid.uuid4()}/").status_code == 404
    assert alice_client.get(f"{URL}12/").status_code == 404  # never integer ids


def test_unsafe_methods_need_the_csrf_token(alice_csrf_client, alice_key):
    before = _snapshot()
    for method, url, body in _endpoints(alice_key):
        if method == "get":
            continue
        response = _call(alice_csrf_client, method, url, body)
        assert response.status_code == 403, (method, url)
        assert "CSRF" in response.json()["detail"]
    assert _snapshot() == before


def test_a_csrf_token_from_the_cookie_is_accepted(alice_csrf_client, alice):
    alice_csrf_client.get("/keys/")  # sets the csrftoken cookie, as a browser visit would
    token = alice_csrf_client.cookies["csrftoken"].value
    response = alice_csrf_client.post(
        URL, {"name": "script"}, content_type="application/json", headers={"x-csrftoken": token}
    )
    assert response.status_code == 201


# --- list / retrieve never show the secret ----------------------------------------------
def test_list_shows_masked_keys_only(alice_client, alice, alice_key, alice_secret):
    services.api_key_create(user=alice, name="second")
    response = alice_client.get(URL)
    assert response.status_code == 200
    body = response.json()
    assert [k["name"] for k in body] == ["default", "second"]
    first = body[0]
    assert set(first) == {
        "id",
        "name",
        "masked_key",
        "prefix",
        "is_active",
        "rate_limit_rpm",
        "rate_limit_tpm",
        "daily_token_cap",
        "allowed_models",
        "expires_at",
        "is_expired",
        "allowed_ips",
        "max_concurrent_requests",
        "created_at",
        "last_used_at",
    }
    assert first["id"] == str(alice_key.public_id)
    assert first["masked_key"].startswith(alice_key.prefix)
    assert "key" not in first
    assert alice_secret not in response.content.decode()


def test_retrieve_shows_one_key_without_its_secret(alice_client, alice_key, alice_secret):
    response = alice_client.get(_detail(alice_key))
    assert response.status_code == 200
    assert response.json()["name"] == "default"
    assert alice_secret not in response.content.decode()


# --- create -----------------------------------------------------------------------------
def test_create_returns_the_secret_once(alice_client, alice):
    response = alice_client.post(URL, {"name": " ci "}, content_type="application/json")
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    key = ApiKey.objects.get(user=alice, public_id=body["id"])
    assert body["name"] == "ci"
    assert body["key"] == services.api_key_reveal(api_key=key)
    assert gateway_answer(body["key"]).key_id == key.pk
    assert body["key"] not in alice_client.get(URL).content.decode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "Default"}, "name"),
    ],
)
def test_create_explains_a_bad_name(alice_client, body, field):
    response = alice_client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    assert field in response.json()


def test_create_refuses_the_eleventh_key(alice_client, alice):
    for n in range(9):
        assert (
            alice_client.post(URL, {"name": f"k{n}"}, content_type="application/json").status_code
            == 201
        )
    response = alice_client.post(URL, {"name": "k10"}, content_type="application/json")
    assert response.status_code == 400
    assert "at most 10 keys" in response.json()["non_field_errors"][0]
    assert ApiKey.objects.filter(user=alice).count() == 10


# --- update / delete --------------------------------------------------------------------
def test_patch_renames_and_disables(alice_client, alice_key, alice_secret):
    response = alice_client.patch(
        _detail(alice_key), {"name": "prod", "is_active": False}, content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["name"] == "prod" and response.json()["is_active"] is False
    assert alice_secret not in response.content.decode()
    assert gateway_answer(alice_secret) == "api_key_disabled"


def test_put_needs_both_fields(alice_client, alice_key):
    response = alice_client.put(_detail(alice_key), {"name": "x"}, content_type="application/json")
    assert response.status_code == 400
    assert "is_active" in response.json()


def test_a_failed_rename_changes_nothing(alice_client, alice, alice_key):
    services.api_key_create(user=alice, name="other")
    response = alice_client.patch(
        _detail(alice_key), {"name": "other", "is_active": False}, content_type="application/json"
    )
    assert response.status_code == 400
    alice_key.refresh_from_db()
    assert (alice_key.name, alice_key.is_active) == ("default", True)


def test_delete_removes_the_key(alice_client, alice_key, alice_secret):
    response = alice_client.delete(_detail(alice_key))
    assert response.status_code == 204
    assert not ApiKey.objects.filter(pk=alice_key.pk).exists()
    assert gateway_answer(alice_secret) == "invalid_api_key"


# --- regenerate / reveal ----------------------------------------------------------------
def test_regenerate_returns_a_new_secret_and_kills_the_old(alice_client, alice_key, alice_secret):
    response = alice_client.post(f"{_detail(alice_key)}regenerate/")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    assert body["id"] == str(alice_key.public_id) and body["name"] == "default"
    assert body["key"] != alice_secret
    assert gateway_answer(alice_secret) == "invalid_api_key"
    assert gateway_answer(body["key"]).key_id == alice_key.pk


def test_reveal_returns_the_secret_to_its_owner(alice_client, alice_key, alice_secret):
    response = alice_client.post(f"{_detail(alice_key)}reveal/")
    assert response.status_code == 200
    assert response.json()["key"] == alice_secret
    assert "no-store" in response["Cache-Control"]


def test_reveal_refuses_get(alice_client, alice_key):
    assert alice_client.get(f"{_detail(alice_key)}reveal/").status_code == 405


def test_staff_cannot_reveal_a_customers_key(staff_client, alice_key, alice_secret):
    response = staff_client.post(f"{_detail(alice_key)}reveal/")
    assert response.status_code == 404
    assert alice_secret not in response.content.decode()
