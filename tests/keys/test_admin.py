import pytest
from django.contrib.auth.models import Permission

from keys import services
from keys.models import ApiKey
from tests.keys.gateway_view import gateway_answer

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/keys/apikey/"


@pytest.fixture
def key_admin_client(client, staff):
    """Staff with the permissions to manage keys (not a superuser)."""
    staff.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="keys",
            codename__in=["view_apikey", "change_apikey", "delete_apikey"],
        )
    )
    client.force_login(staff)
    return client


def test_the_admin_is_for_staff_only(client, alice_client):
    response = client.get(CHANGELIST)
    assert response.status_code == 302 and "/admin/login/" in response.url
    response = alice_client.get(CHANGELIST)
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_the_changelist_shows_owner_name_prefix_and_no_secret(
    key_admin_client, alice, alice_key, alice_secret
):
    response = key_admin_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert "alice@example.com" in html
    assert alice_key.prefix in html
    assert alice_secret not in html
    assert alice_key.digest not in html


def test_the_change_page_shows_no_digest_or_encrypted_copy(
    key_admin_client, alice_key, alice_secret
):
    html = key_admin_client.get(f"{CHANGELIST}{alice_key.pk}/change/").content.decode()
    assert alice_key.digest not in html
    assert alice_key.encrypted not in html
    assert alice_secret not in html
    assert 'name="rate_limit_rpm"' in html


def test_staff_can_set_rate_limit_overrides(key_admin_client, alice_key, alice_secret):
    assert gateway_answer(alice_secret).rate_limit_rpm is None
    response = key_admin_client.post(
        f"{CHANGELIST}{alice_key.pk}/change/",
        {"name": "default", "is_active": "on", "rate_limit_rpm": "5", "rate_limit_tpm": "2000"},
    )
    assert response.status_code == 302
    alice_key.refresh_from_db()
    assert (alice_key.rate_limit_rpm, alice_key.rate_limit_tpm) == (5, 2000)
    answer = gateway_answer(alice_secret)
    assert (answer.rate_limit_rpm, answer.rate_limit_tpm) == (5, 2000)


def test_staff_cannot_give_a_taken_name(key_admin_client, alice, alice_key):
    services.api_key_create(user=alice, name="other")
    response = key_admin_client.post(
        f"{CHANGELIST}{alice_key.pk}/change/", {"name": "Other", "is_active": "on"}
    )
    assert response.status_code == 200
    assert "You already have a key with this name." in response.content.decode()
    alice_key.refresh_from_db()
    assert alice_key.name == "default"


def test_the_disable_action_disables_at_once(key_admin_client, alice_key, alice_secret, bob):
    assert gateway_answer(alice_secret).key_id == alice_key.pk
    bob_key = ApiKey.objects.get(user=bob)
    response = key_admin_client.post(
        CHANGELIST,
        {"action": "disable_keys", "_selected_action": [alice_key.pk, bob_key.pk]},
    )
    assert response.status_code == 302
    assert not ApiKey.objects.filter(pk__in=[alice_key.pk, bob_key.pk], is_active=True).exists()
    assert gateway_answer(alice_secret) == "api_key_disabled"


def test_keys_cannot_be_added_in_the_admin(key_admin_client):
    assert key_admin_client.get(f"{CHANGELIST}add/").status_code == 403


def test_deleting_in_the_admin_forgets_the_key(key_admin_client, alice_key, alice_secret):
    assert gateway_answer(alice_secret).key_id == alice_key.pk
    response = key_admin_client.post(f"{CHANGELIST}{alice_key.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert gateway_answer(alice_secret) == "invalid_api_key"
