import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import Region, User
from keys.models import ApiKey
from tests.keys.gateway_view import gateway_answer

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-long-admin-password")
    call_command("createsuperuser", interactive=False, email="Root@Example.com", stdout=StringIO())
    return User.objects.get(email="root@example.com")


def test_it_creates_a_superuser_with_its_default_key(superuser):
    assert superuser.is_staff
    assert superuser.is_superuser
    assert superuser.check_password("a-long-admin-password")
    assert ApiKey.objects.filter(user=superuser, name="default").exists()


# Signing in to the admin (by code, never a password): tests/accounts/test_admin_security.py


def test_it_keeps_customers_out_of_the_admin(alice_client):
    response = alice_client.get("/admin/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_it_adds_an_account_in_the_admin_through_the_service(client, superuser):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:accounts_user_add"),
        {"email": "", "phone": "138 0013 8005", "region": "CN", "password": ""},
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    user = User.objects.get(phone="+8613800138005")
    assert user.region == Region.MAINLAND_CHINA
    assert not user.has_usable_password()
    assert ApiKey.objects.filter(user=user, name="default").count() == 1


def test_it_needs_an_identifier_in_the_admin(client, superuser):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:accounts_user_add"), {"email": "", "phone": "", "region": "OTHER"}
    )
    assert response.status_code == 200
    assert "Give an email address or a phone number." in response.content.decode()


def test_it_shows_accounts_in_the_admin(client, superuser, alice, bob):
    client.force_login(superuser)
    listing = client.get(reverse("admin:accounts_user_changelist"))
    assert listing.status_code == 200
    assert "alice@example.com" in listing.content.decode()
    assert client.get(reverse("admin:accounts_user_change", args=[bob.pk])).status_code == 200


def test_it_does_not_let_the_account_form_change_the_quota_without_an_audit_record(
    client, superuser, alice
):
    client.force_login(superuser)
    url = reverse("admin:accounts_user_change", args=[alice.pk])
    form = client.get(url).context["adminform"].form
    assert "daily_quota" not in form.fields
    data = {
        "email": alice.email,
        "region": alice.region,
        "is_active": "on",
        "date_joined_0": "2026-01-01",
        "date_joined_1": "00:00:00",
        "daily_quota": "99999999",
    }
    client.post(url, data)
    alice.refresh_from_db()
    assert alice.daily_quota is None


def test_it_creates_an_account_from_the_command_and_prints_its_key_once():
    out = StringIO()
    call_command("create_account", "--email", "Ops@Example.com", stdout=out)

    user = User.objects.get(email="ops@example.com")
    [raw] = re.findall(r"^sk-\S+$", out.getvalue(), re.M)
    accepted = gateway_answer(raw)
    assert accepted.key_id == ApiKey.objects.get(user=user, name="default").pk
    assert accepted.user_id == user.pk
    assert out.getvalue().count(raw) == 1


def test_it_creates_a_mainland_phone_account_from_the_command():
    call_command("create_account", "--phone", "13800138006", "--staff", stdout=StringIO())
    user = User.objects.get(phone="+8613800138006")
    assert user.region == Region.MAINLAND_CHINA
    assert user.is_staff
    assert ApiKey.objects.filter(user=user, name="default").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--phone", "12345"],
        ["--email", "not-an-email"],
        ["--email", "alice@example.com"],  # taken
    ],
)
def test_it_refuses_bad_input_in_the_command(alice, args):
    with pytest.raises(CommandError):
        call_command("create_account", *args, stdout=StringIO())
    assert User.objects.count() == 1


def test_it_requires_exactly_one_identifier_in_the_command():
    with pytest.raises(CommandError):
        call_command("create_account", stdout=StringIO())


def test_it_closes_accounts_from_the_admin_instead_of_deleting(client, superuser, alice):
    client.force_login(superuser)
    response = client.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "close_accounts", "_selected_action": [alice.pk, superuser.pk]},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    superuser.refresh_from_db()
    assert not alice.is_active
    assert not ApiKey.objects.filter(user=alice, is_active=True).exists()
    assert superuser.is_active  # not the one doing it
    assert client.get(reverse("admin:accounts_user_delete", args=[alice.pk])).status_code == 403
