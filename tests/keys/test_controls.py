"""A key's own controls: the gateway's rules (``keys.controls``), the service that changes
them, and the API Keys page, the REST API and the admin that call it."""

import datetime as dt

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError

from audit.models import SecurityEvent
from keys import services
from keys.controls import KeyControls, allowed_ips_clean, allowed_models_clean
from keys.models import ApiKey, ApiKeyChange

pytestmark = pytest.mark.django_db

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 1, 4, 0, tzinfo=UTC)  # noon in Beijing


# --- the rules the gateway applies -------------------------------------------------------
def test_it_refuses_nothing_for_a_key_without_controls():
    controls = KeyControls()
    assert controls.refusal(now=NOW, client="198.51.100.1") is None
    assert controls.refusal(now=NOW, client=None) is None
    assert controls.model_refusal("anything") is None
    assert controls.listed(["a", "b"]) == ["a", "b"]


def test_it_says_an_expired_key_expired():
    controls = KeyControls(expires_at=NOW)
    assert controls.refusal(now=NOW - dt.timedelta(seconds=1), client="x") is None
    refusal = controls.refusal(now=NOW, client="198.51.100.1")
    assert (refusal.code, refusal.status) == ("key_expired", 401)
    assert "expired at 2026-03-01 04:00:00 UTC" in refusal.message
    assert "invalid" not in refusal.message.lower()


def test_it_checks_the_client_address_against_the_allow_list():
    controls = KeyControls(allowed_ips=["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"])
    for allowed in ("203.0.113.1", "203.0.113.255", "2001:db8::5", "198.51.100.7"):
        assert controls.refusal(now=NOW, client=allowed) is None, allowed
    # A dual-stack socket reports an IPv4 client as an IPv4-mapped IPv6 address.
    assert controls.refusal(now=NOW, client="::ffff:203.0.113.9") is None
    refusal = controls.refusal(now=NOW, client="198.51.100.8")
    assert (refusal.code, refusal.status) == ("ip_not_allowed", 403)
    assert "198.51.100.8" in refusal.message
    assert controls.refusal(now=NOW, client="2001:db9::1").code == "ip_not_allowed"
    assert controls.refusal(now=NOW, client=None).message.count("unknown") == 1


def test_expiry_comes_before_the_address():
    controls = KeyControls(expires_at=NOW, allowed_ips=["203.0.113.0/24"])
    assert controls.refusal(now=NOW, client="198.51.100.1").code == "key_expired"


def test_it_limits_and_lists_the_allowed_models():
    controls = KeyControls(allowed_models=["LongCat-Flash-Chat"])
    assert controls.model_refusal("LongCat-Flash-Chat") is None
    refusal = controls.model_refusal("other-model")
    assert (refusal.code, refusal.status) == ("model_not_allowed", 403)
    assert "other-model" in refusal.message
    assert controls.listed(["other-model", "LongCat-Flash-Chat"]) == ["LongCat-Flash-Chat"]


def test_it_normalises_addresses_and_ranges():
    assert allowed_ips_clean(
        [" 203.0.113.7 ", "203.0.113.0/24", "2001:DB8::/32", "203.0.113.9/32", "", "203.0.113.7"]
    ) == ["203.0.113.7", "203.0.113.0/24", "2001:db8::/32", "203.0.113.9"]


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("203.0.113.5/24", "203.0.113.0/24"),  # host bits set: names the range meant
        ("not-an-ip", "not-an-ip"),
        ("203.0.113.300", "203.0.113.300"),
        ("2001:db8::/129", "2001:db8::/129"),
    ],
)
def test_it_refuses_a_bad_address_naming_it(value, says):
    with pytest.raises(ValidationError) as error:
        allowed_ips_clean([value])
    assert says in str(error.value.message_dict["allowed_ips"])


def test_it_refuses_too_many_addresses_and_odd_model_names():
    with pytest.raises(ValidationError):
        allowed_ips_clean([f"10.0.0.{n}" for n in range(51)])
    with pytest.raises(ValidationError) as error:
        allowed_models_clean(["two words"])
    assert "allowed_models" in error.value.message_dict
    assert allowed_models_clean(["a", " a ", "b"]) == ["a", "b"]


# --- the service --------------------------------------------------------------------------
@time_machine.travel(NOW, tick=False)
def test_it_records_who_changed_what_and_bumps_the_version(alice_key, staff):
    version = alice_key.controls_version
    services.api_key_set_controls(
        api_key=alice_key, actor=staff, daily_token_cap=10_000, allowed_ips=["203.0.113.0/24"]
    )
    stored = ApiKey.objects.get(pk=alice_key.pk)
    assert stored.controls_version == version + 1
    assert (stored.daily_token_cap, stored.allowed_ips) == (10_000, ["203.0.113.0/24"])
    change = ApiKeyChange.objects.get()
    assert (change.actor, change.key_name, change.created_at) == (staff, "default", NOW)
    assert change.before == {"daily_token_cap": None, "allowed_ips": []}
    assert change.after == {"daily_token_cap": 10_000, "allowed_ips": ["203.0.113.0/24"]}
    event = SecurityEvent.objects.get(action=SecurityEvent.Action.KEY_LIMITS_CHANGED)
    assert (event.user_id, event.actor) == (alice_key.user_id, staff)
    assert event.detail["daily_token_cap"] == 10_000


def test_an_unchanged_value_records_nothing(alice_key):
    services.api_key_set_controls(api_key=alice_key, daily_token_cap=5)
    version = ApiKey.objects.get(pk=alice_key.pk).controls_version
    services.api_key_set_controls(api_key=alice_key, daily_token_cap=5, allowed_models=[])
    assert ApiKeyChange.objects.count() == 1
    assert ApiKey.objects.get(pk=alice_key.pk).controls_version == version


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"daily_token_cap": 0}, "daily_token_cap"),
        ({"daily_token_cap": True}, "daily_token_cap"),
        ({"max_concurrent_requests": -1}, "max_concurrent_requests"),
        ({"expires_at": dt.datetime(2020, 1, 1, tzinfo=UTC)}, "expires_at"),
        ({"expires_at": dt.datetime(2099, 1, 1)}, "expires_at"),  # naive
        ({"allowed_ips": ["nope"]}, "allowed_ips"),
    ],
)
def test_it_refuses_bad_controls_naming_the_field(alice_key, changes, field):
    with pytest.raises(ValidationError) as error:
        services.api_key_set_controls(api_key=alice_key, **changes)
    assert field in error.value.message_dict
    assert not ApiKeyChange.objects.exists()


def test_a_key_can_be_created_with_controls(alice):
    key, _secret = services.api_key_create(
        user=alice, name="ci", key_controls={"allowed_models": ["LongCat-Flash-Chat"]}
    )
    assert key.allowed_models == ["LongCat-Flash-Chat"]
    assert ApiKeyChange.objects.get(api_key=key).before == {"allowed_models": []}


def test_bad_controls_create_no_key(alice):
    with pytest.raises(ValidationError):
        services.api_key_create(user=alice, name="ci", key_controls={"allowed_ips": ["x"]})
    assert not ApiKey.objects.filter(name="ci").exists()


# --- the API Keys page ---------------------------------------------------------------------
def test_it_creates_a_key_with_limits_from_the_page(alice_client, alice):
    response = alice_client.post(
        "/keys/",
        {
            "name": "ci",
            "daily_token_cap": "10000",
            "allowed_models": "LongCat-Flash-Chat",
            "allowed_ips": "203.0.113.0/24\n2001:db8::1",
            "expires_at": "2099-01-01T08:00",
        },
    )
    assert response.status_code == 302
    key = ApiKey.objects.get(user=alice, name="ci")
    assert key.daily_token_cap == 10_000
    assert key.allowed_ips == ["203.0.113.0/24", "2001:db8::1"]
    # Entered in the quota time zone (Beijing): 08:00 there is midnight UTC.
    assert key.expires_at == dt.datetime(2099, 1, 1, 0, 0, tzinfo=UTC)


def test_a_bad_limit_on_the_page_creates_nothing_and_says_why(alice_client, alice):
    response = alice_client.post("/keys/", {"name": "ci", "allowed_ips": "203.0.113.5/24"})
    assert response.status_code == 400
    assert "203.0.113.0/24" in response.content.decode()
    assert not ApiKey.objects.filter(name="ci").exists()


def test_the_keys_page_saves_limits_and_shows_their_history(alice_client, alice_key):
    url = f"/keys/{alice_key.public_id}/"
    response = alice_client.post(url, {"daily_token_cap": "2000", "max_concurrent_requests": "3"})
    assert response.status_code == 302
    alice_key.refresh_from_db()
    assert (alice_key.daily_token_cap, alice_key.max_concurrent_requests) == (2000, 3)
    html = alice_client.get(url).content.decode()
    assert 'value="2000"' in html
    assert "— → 2,000" in html
    change = ApiKeyChange.objects.get()
    assert change.actor_id == alice_key.user_id  # the signed-in owner


def test_the_keys_page_refuses_a_bad_limit(alice_client, alice_key):
    response = alice_client.post(f"/keys/{alice_key.public_id}/", {"allowed_ips": "bogus"})
    assert response.status_code == 400
    assert "bogus" in response.content.decode()
    assert ApiKey.objects.get(pk=alice_key.pk).allowed_ips == []


def test_the_list_shows_when_keys_expire_and_which_expired(alice_client, alice, alice_key):
    with time_machine.travel(NOW, tick=False):
        services.api_key_set_controls(api_key=alice_key, expires_at=NOW + dt.timedelta(days=3))
        old, _ = services.api_key_create(user=alice, name="old")
        services.api_key_set_controls(api_key=old, expires_at=NOW + dt.timedelta(hours=1))
        services.api_key_set_controls(api_key=alice_key, daily_token_cap=10_000)
    with time_machine.travel(NOW + dt.timedelta(hours=2), tick=False):
        html = alice_client.get("/keys/").content.decode()
    assert 'data-key-expiry="soon"' in html and "expires in 2\xa0days" in html
    assert 'data-key-expiry="expired"' in html and "key-expired" in html
    assert "10,000 tokens a day" in html


# --- the REST API ---------------------------------------------------------------------------
def test_the_api_creates_and_changes_limits(alice_client):
    response = alice_client.post(
        "/api/v1/keys/",
        {"name": "ci", "allowed_ips": ["2001:DB8::/32"], "daily_token_cap": 500},
        content_type="application/json",
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["allowed_ips"], body["daily_token_cap"]) == (["2001:db8::/32"], 500)
    url = f"/api/v1/keys/{body['id']}/"
    response = alice_client.patch(
        url,
        {"daily_token_cap": None, "expires_at": "2099-01-01T00:00:00Z"},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json()["daily_token_cap"] is None
    assert response.json()["is_expired"] is False
    history = alice_client.get(f"{url}changes/").json()
    assert [c["by"] for c in history] == ["you", "you"]
    assert history[0]["after"] == {
        "daily_token_cap": None,
        "expires_at": "2099-01-01T00:00:00+00:00",
    }


def test_the_api_names_the_bad_limit(alice_client, alice_key):
    url = f"/api/v1/keys/{alice_key.public_id}/"
    response = alice_client.patch(
        url, {"allowed_ips": ["10.0.0.1/8"]}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "10.0.0.0/8" in response.json()["allowed_ips"][0]
    response = alice_client.patch(
        url, {"expires_at": "2020-01-01T00:00:00Z"}, content_type="application/json"
    )
    assert response.status_code == 400 and "expires_at" in response.json()
    response = alice_client.patch(url, {"daily_token_cap": 0}, content_type="application/json")
    assert response.status_code == 400 and "daily_token_cap" in response.json()
    assert not ApiKeyChange.objects.exists()


# --- the admin --------------------------------------------------------------------------------
@pytest.fixture
def key_admin_client(client, staff):
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="keys",
            codename__in=["view_apikey", "change_apikey", "view_apikeychange"],
        )
    )
    client.force_login(staff)
    return client


def _admin_post(client, key, **fields):
    data = {
        "name": key.name,
        "is_active": "on",
        "changes-TOTAL_FORMS": "0",
        "changes-INITIAL_FORMS": "0",
        **fields,
    }
    return client.post(f"/admin/keys/apikey/{key.pk}/change/", data)


def test_staff_set_limits_in_the_admin_as_themselves(key_admin_client, alice_key, staff):
    response = _admin_post(
        key_admin_client, alice_key, daily_token_cap="100", allowed_models="a\nb"
    )
    assert response.status_code == 302
    alice_key.refresh_from_db()
    assert (alice_key.daily_token_cap, alice_key.allowed_models) == (100, ["a", "b"])
    assert ApiKeyChange.objects.get().actor == staff
    page = key_admin_client.get(f"/admin/keys/apikey/{alice_key.pk}/change/").content.decode()
    assert "daily_token_cap" in page and "&quot;a&quot;" in page  # the history, inline


def test_the_admin_shows_a_bad_address_on_the_field(key_admin_client, alice_key):
    response = _admin_post(key_admin_client, alice_key, allowed_ips="10.0.0.1/8")
    assert response.status_code == 200
    assert "10.0.0.0/8" in response.content.decode()
    assert ApiKey.objects.get(pk=alice_key.pk).allowed_ips == []
