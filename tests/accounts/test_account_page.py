import re

import pytest
from allauth.account.models import EmailAddress
from django.urls import reverse

from accounts.models import User
from keys.models import ApiKey
from keys.services import api_key_reveal
from tests.accounts.conftest import last_mail_code, last_sms_code
from tests.keys.gateway_view import gateway_answer

pytestmark = pytest.mark.django_db

ACCOUNT = reverse("account")
CONFIRM = reverse("account_identifier_confirm")


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", reverse("account")),
        ("post", reverse("account_language")),
        ("post", reverse("account_identifier_add", args=["email"])),
        ("post", reverse("account_identifier_add", args=["phone"])),
        ("get", reverse("account_identifier_confirm")),
        ("get", reverse("account_delete")),
        ("post", reverse("account_delete")),
    ],
)
def test_it_sends_anonymous_visitors_to_sign_in(client, method, url):
    response = getattr(client, method)(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login") + "?next=")


def test_it_shows_the_account(alice_client, alice, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):
        response = alice_client.get(ACCOUNT)
    page = response.content.decode()
    assert response.status_code == 200
    assert "alice@example.com" in page
    assert "Outside mainland China" in page
    assert "Add a mobile number" in page
    assert "Add an email address" not in page
    assert reverse("account_logout") in page


def test_it_shows_only_this_accounts_details(client, alice, bob):
    client.force_login(bob)
    page = client.get(ACCOUNT).content.decode()
    assert bob.phone in page
    assert "alice@example.com" not in page


def test_it_saves_and_activates_the_language(alice_client, alice):
    response = alice_client.post(reverse("account_language"), {"language": "zh-hans"})

    assert response["Location"] == ACCOUNT
    assert response.cookies["django_language"].value == "zh-hans"
    alice.refresh_from_db()
    assert alice.language == "zh-hans"
    assert alice_client.get(ACCOUNT).context["LANGUAGE_CODE"] == "zh-hans"


def test_it_refuses_an_unknown_language(alice_client, alice):
    alice_client.post(reverse("account_language"), {"language": "xx"})
    alice.refresh_from_db()
    assert alice.language == ""


def test_it_adds_a_phone_verified_by_its_own_code(alice_client, alice, sms_outbox):
    response = alice_client.post(
        reverse("account_identifier_add", args=["phone"]), {"phone": "+44 7911 123456"}
    )
    assert response["Location"] == CONFIRM
    assert sms_outbox[-1].to == "+447911123456"
    alice.refresh_from_db()
    assert alice.phone is None  # not before the code

    response = alice_client.post(CONFIRM, {"code": last_sms_code(sms_outbox)})

    assert response["Location"] == ACCOUNT
    alice.refresh_from_db()
    assert alice.phone == "+447911123456"
    assert alice.phone_verified


def test_it_adds_an_email_verified_by_its_own_code(client, bob, mailoutbox):
    client.force_login(bob)
    client.post(reverse("account_identifier_add", args=["email"]), {"email": "Bob@Example.com"})
    assert mailoutbox[-1].to == ["bob@example.com"]

    client.post(CONFIRM, {"code": last_mail_code(mailoutbox)})

    bob.refresh_from_db()
    assert bob.email == "bob@example.com"
    assert EmailAddress.objects.get(user=bob).verified
    # ... and bob can now sign in by email as well.
    client.logout()
    client.post(reverse("account_login"), {"region": "OTHER", "login": "bob@example.com"})
    code = last_mail_code(mailoutbox)
    assert (
        client.post(reverse("account_confirm_login_code"), {"code": code})["Location"] == "/keys/"
    )


def test_it_never_verifies_an_address_of_another_account(client, bob, alice, mailoutbox):
    client.force_login(bob)
    response = client.post(
        reverse("account_identifier_add", args=["email"]), {"email": "alice@example.com"}
    )

    assert response["Location"] == CONFIRM  # the same answer as for a free address
    assert not mailoutbox  # but no code went anywhere
    client.post(CONFIRM, {"code": "123456"})
    bob.refresh_from_db()
    assert bob.email is None


def test_it_stops_an_identifier_check_after_too_many_wrong_codes(
    alice_client, alice, sms_outbox, settings
):
    settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS = 2
    alice_client.post(
        reverse("account_identifier_add", args=["phone"]), {"phone": "+44 7911 123456"}
    )
    code = last_sms_code(sms_outbox)
    wrong = "000000" if code != "000000" else "111111"

    first = alice_client.post(CONFIRM, {"code": wrong})
    assert "That code is not right" in first.content.decode()
    assert alice_client.post(CONFIRM, {"code": wrong})["Location"] == ACCOUNT
    assert alice_client.post(CONFIRM, {"code": code})["Location"] == ACCOUNT
    alice.refresh_from_db()
    assert alice.phone is None


def test_it_rate_limits_identifier_codes(alice_client, alice, sms_outbox):
    url = reverse("account_identifier_add", args=["phone"])
    alice_client.post(url, {"phone": "+44 7911 123456"})
    response = alice_client.post(url, {"phone": "+44 7911 123456"})
    assert response["Location"] == ACCOUNT
    assert len(sms_outbox) == 1


def test_it_rejects_a_bad_number_on_the_account_page(alice_client, sms_outbox):
    response = alice_client.post(
        reverse("account_identifier_add", args=["phone"]), {"phone": "12345"}
    )
    assert response.status_code == 400
    assert "valid phone number" in response.content.decode() or "country code" in (
        response.content.decode()
    )
    assert not sms_outbox


def test_it_asks_for_confirmation_before_closing(alice_client, alice):
    response = alice_client.post(reverse("account_delete"), {"confirm": "no"})
    assert response.status_code == 200
    alice.refresh_from_db()
    assert alice.is_active


def test_it_closes_the_account_and_disables_its_keys_at_once(alice_client, alice):
    key = ApiKey.objects.get(user=alice, name="default")
    secret = api_key_reveal(api_key=key)
    assert gateway_answer(secret).key_id == key.pk

    response = alice_client.post(reverse("account_delete"), {"confirm": "DELETE"})

    assert response["Location"] == reverse("home")
    alice.refresh_from_db()
    assert not alice.is_active
    assert alice.email.endswith("@deleted.invalid")
    assert alice.phone is None
    assert not ApiKey.objects.filter(user=alice, is_active=True).exists()
    assert ApiKey.objects.filter(user=alice).exists()  # kept for usage history
    # The key and the account are both disabled; the gateway names the account first.
    assert gateway_answer(secret) == "account_disabled"
    assert alice_client.get(ACCOUNT).status_code == 302  # signed out


def test_it_lets_a_closed_accounts_address_sign_up_afresh(client, alice, mailoutbox):
    from accounts.services import account_delete

    account_delete(user=alice)
    client.post(
        reverse("account_signup"), {"region": "OTHER", "email": "alice@example.com", "phone": ""}
    )
    fresh = User.objects.get(email="alice@example.com")
    assert fresh.pk != alice.pk
    assert ApiKey.objects.filter(user=fresh, name="default").exists()


def test_it_offers_sign_in_in_the_header_to_visitors(client, alice):
    def nav(response):
        return re.search(r'<nav class="main-nav".*?</nav>', response.content.decode(), re.S)[0]

    sign_in_link = f'href="{reverse("account_login")}"'
    assert sign_in_link in nav(client.get("/"))
    client.force_login(alice)
    assert sign_in_link not in nav(client.get("/"))
