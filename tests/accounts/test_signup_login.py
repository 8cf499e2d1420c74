"""Sign-up and sign-in through allauth's real views, reading codes from the outboxes."""

import re

import pytest
import time_machine
from allauth.account.models import EmailAddress
from django.urls import reverse

from accounts.models import Region, User
from keys.models import ApiKey
from tests.accounts.conftest import last_mail_code, last_sms_code

SIGNUP = reverse("account_signup")
LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")

pytestmark = pytest.mark.django_db


def signup(client, *, region=Region.OTHER, phone="", email=""):
    return client.post(SIGNUP, {"region": region, "phone": phone, "email": email})


def login(client, identifier, *, region=Region.OTHER):
    return client.post(LOGIN, {"region": region, "login": identifier})


def confirm(client, code):
    return client.post(CONFIRM, {"code": code})


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def page_text(response) -> str:
    """The visible page, minus what differs between any two requests (CSRF tokens)."""
    html = response.content.decode()
    html = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", html)
    return re.sub(r'"X-CSRFToken": "[^"]+"', "", html)


# --- sign-up ---------------------------------------------------------------------------------
def test_it_signs_up_by_email_and_lands_on_the_keys_page(client, mailoutbox):
    response = signup(client, email="New.Person@Example.com")
    assert response.status_code == 302
    assert response["Location"] == CONFIRM

    user = User.objects.get(email="new.person@example.com")
    assert ApiKey.objects.filter(user=user, name="default", is_active=True).count() == 1
    assert not EmailAddress.objects.get(user=user).verified  # not until the code comes back

    code = last_mail_code(mailoutbox)
    assert re.fullmatch(r"\d{6}", code)
    assert mailoutbox[-1].to == ["new.person@example.com"]
    response = confirm(client, code)

    assert response.status_code == 302
    assert response["Location"] == "/keys/"
    assert EmailAddress.objects.get(user=user).verified
    assert client.get(reverse("account")).status_code == 200


def test_it_signs_up_with_a_bare_mainland_number(client, sms_outbox, mailoutbox):
    response = signup(client, region=Region.MAINLAND_CHINA, phone="138 0013 8001")
    assert response["Location"] == CONFIRM

    user = User.objects.get(phone="+8613800138001")
    assert user.region == Region.MAINLAND_CHINA
    assert user.email is None
    assert not user.phone_verified
    assert ApiKey.objects.filter(user=user, name="default").exists()
    assert sms_outbox[-1].to == "+8613800138001"
    assert not mailoutbox

    response = confirm(client, last_sms_code(sms_outbox))

    assert response["Location"] == "/keys/"
    user.refresh_from_db()
    assert user.phone_verified


def test_it_signs_up_with_an_international_number(client, sms_outbox):
    signup(client, phone="+44 7911 123456")

    user = User.objects.get(phone="+447911123456")
    assert user.region == Region.OTHER
    assert confirm(client, last_sms_code(sms_outbox))["Location"] == "/keys/"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"region": Region.OTHER}, "Enter a mobile number or an email address."),
        (
            {"region": Region.OTHER, "phone": "+447911123456", "email": "a@example.com"},
            "not both",
        ),
        ({"region": Region.MAINLAND_CHINA, "email": "a@example.com"}, "leave this empty"),
        ({"region": Region.MAINLAND_CHINA}, "Enter your mobile number."),
        ({"region": Region.MAINLAND_CHINA, "phone": "+447911123456"}, "+86 mobile number"),
        ({"region": Region.OTHER, "phone": "13800138001"}, "country code"),
        ({"phone": "+447911123456"}, "This field is required."),
    ],
)
def test_it_requires_exactly_one_fitting_identifier(client, sms_outbox, data, error):
    response = client.post(SIGNUP, {"phone": "", "email": "", **data})

    assert response.status_code == 200
    assert error in response.content.decode()
    assert not User.objects.exists()
    assert not sms_outbox


def test_it_remembers_the_language_used_to_sign_up(client, mailoutbox):
    client.cookies["django_language"] = "zh-hans"
    signup(client, email="lang@example.com")
    assert User.objects.get(email="lang@example.com").language == "zh-hans"


def test_it_treats_a_known_address_at_sign_up_like_a_new_one(client, alice, mailoutbox):
    new = signup(client, email="someone-new@example.com")
    new_page = client.get(new["Location"])
    client.logout()
    client.cookies.clear()
    known = signup(client, email="alice@example.com")
    known_page = client.get(known["Location"])

    assert new["Location"] == known["Location"]
    assert page_text(new_page).replace("someone-new@example.com", "X") == page_text(
        known_page
    ).replace("alice@example.com", "X")
    # ... and the owner simply signs in with the code: no second account appears.
    assert User.objects.filter(email="alice@example.com").count() == 1
    assert confirm(client, last_mail_code(mailoutbox))["Location"] == "/keys/"
    assert client.get(reverse("account")).context["account"] == alice


# --- sign-in ---------------------------------------------------------------------------------
def test_it_signs_in_by_email_code(client, alice, mailoutbox):
    response = login(client, "Alice@Example.com")
    assert response["Location"] == CONFIRM
    assert mailoutbox[-1].to == ["alice@example.com"]
    assert confirm(client, last_mail_code(mailoutbox))["Location"] == "/keys/"
    assert client.get(reverse("account")).context["account"] == alice


def test_it_signs_in_by_mainland_phone_code(client, bob, sms_outbox):
    response = login(client, "13800138000", region=Region.MAINLAND_CHINA)
    assert response["Location"] == CONFIRM
    assert sms_outbox[-1].to == bob.phone
    assert confirm(client, last_sms_code(sms_outbox))["Location"] == "/keys/"
    bob.refresh_from_db()
    assert bob.phone_verified


def test_it_sets_the_language_cookie_of_the_account_at_sign_in(client, alice, mailoutbox):
    alice.language = "zh-hans"
    alice.save()
    login(client, "alice@example.com")
    response = confirm(client, last_mail_code(mailoutbox))
    assert response.cookies["django_language"].value == "zh-hans"


def test_it_refuses_an_email_for_a_mainland_sign_in(client, alice, mailoutbox):
    response = login(client, "alice@example.com", region=Region.MAINLAND_CHINA)
    assert response.status_code == 200
    assert "choose “Outside mainland China”" in response.content.decode()
    assert not mailoutbox


# --- no account enumeration ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("known", "unknown", "region"),
    [
        ("alice@example.com", "nobody@example.com", Region.OTHER),
        ("13800138000", "13800138999", Region.MAINLAND_CHINA),
    ],
)
def test_it_answers_unknown_addresses_exactly_like_known_ones(
    client, alice, bob, known, unknown, region, mailoutbox, sms_outbox
):
    known_response = login(client, known, region=region)
    known_page = client.get(known_response["Location"])
    known_wrong = confirm(client, "000000")
    client.cookies.clear()

    unknown_response = login(client, unknown, region=region)
    unknown_page = client.get(unknown_response["Location"])
    unknown_wrong = confirm(client, "000000")

    assert known_response["Location"] == unknown_response["Location"]

    def scrub(response, address):
        text = page_text(response)
        for variant in (address, "+86" + address):
            text = text.replace(variant, "ADDRESS")
        return text

    assert scrub(known_page, known) == scrub(unknown_page, unknown)
    assert scrub(known_wrong, known) == scrub(unknown_wrong, unknown)
    # The unknown address never receives a code.
    sent_to_unknown = [m for m in mailoutbox if unknown in m.to] + [
        m for m in sms_outbox if m.to.endswith(unknown)
    ]
    assert all(not re.search(r"\b\d{6}\b", getattr(m, "body", "")) for m in sent_to_unknown)
    assert not [m for m in sms_outbox if m.to.endswith(unknown)]


# --- wrong, expired, reused codes; brute force ---------------------------------------------
def test_it_stops_after_too_many_wrong_codes(client, alice, mailoutbox, settings):
    settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS = 3
    login(client, "alice@example.com")
    code = last_mail_code(mailoutbox)
    wrong = "000000" if code != "000000" else "111111"

    first = confirm(client, wrong)
    assert first.status_code == 200
    assert "That code is not right" in first.content.decode()
    assert "2 attempts left" in first.content.decode()
    assert "1 attempt left" in confirm(client, wrong).content.decode()
    blocked = confirm(client, wrong)

    assert blocked.status_code == 302
    assert blocked["Location"] == LOGIN
    after = client.get(LOGIN)
    assert "Too many wrong codes" in " ".join(messages_of(after))
    # The right code is worthless now.
    late = confirm(client, code)
    assert late["Location"] == LOGIN
    assert "_auth_user_id" not in client.session


def test_it_limits_how_often_one_address_gets_codes(client, alice, mailoutbox, settings):
    settings.ACCOUNT_RATE_LIMITS = {
        **settings.ACCOUNT_RATE_LIMITS,
        "request_login_code": "20/m/ip,2/15m/key",
    }
    for _ in range(2):
        assert login(client, "alice@example.com").status_code == 302
        client.cookies.clear()  # a fresh browser each time: only the address is the same
    response = login(client, "alice@example.com")

    assert response.status_code == 200
    assert "Too many attempts" in response.content.decode()
    assert len(mailoutbox) == 2


def test_it_limits_sign_in_posts_per_ip(client, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "login": "2/m/ip"}
    for _ in range(2):
        login(client, "nobody@example.com")
    assert login(client, "nobody@example.com").status_code == 429


def test_it_says_when_a_code_has_expired(client, alice, mailoutbox, settings):
    with time_machine.travel("2026-03-01 10:00:00+00:00", tick=False) as clock:
        login(client, "alice@example.com")
        code = last_mail_code(mailoutbox)
        clock.shift(settings.ACCOUNT_LOGIN_BY_CODE_TIMEOUT + 1)
        response = confirm(client, code)

    assert response["Location"] == LOGIN
    assert "expired" in " ".join(messages_of(client.get(LOGIN)))
    assert "_auth_user_id" not in client.session


def test_it_says_when_a_code_was_used_already(client, alice, mailoutbox):
    login(client, "alice@example.com")
    code = last_mail_code(mailoutbox)
    assert confirm(client, code)["Location"] == "/keys/"
    client.post(reverse("account_logout"))

    response = confirm(client, code)

    assert response["Location"] == LOGIN
    assert "used already" in " ".join(messages_of(client.get(LOGIN)))
    assert "_auth_user_id" not in client.session


def test_it_resends_a_code_once_per_cooldown(client, alice, mailoutbox):
    login(client, "alice@example.com")
    first = last_mail_code(mailoutbox)

    client.post(CONFIRM, {"action": "resend"})
    assert len(mailoutbox) == 2
    second = last_mail_code(mailoutbox)
    again = client.post(CONFIRM, {"action": "resend"})

    assert len(mailoutbox) == 2
    assert "wait a minute" in " ".join(messages_of(client.get(again["Location"])))
    if first != second:
        assert "not right" in confirm(client, first).content.decode()
    assert confirm(client, second)["Location"] == "/keys/"


def test_it_has_help_for_codes_that_do_not_arrive(client, alice, mailoutbox, settings):
    settings.SUPPORT_EMAIL = "help@example.org"
    settings.SUPPORT_PHONE = "+86 400 000 0000"
    login(client, "alice@example.com")
    page = client.get(CONFIRM).content.decode()
    assert "Code did not arrive?" in page
    assert "help@example.org" in page
    assert "+86 400 000 0000" in page
    assert "sign in</a> with your email address" in page


def test_it_refuses_sign_in_to_a_closed_account(client, alice, mailoutbox):
    from accounts.services import account_delete

    account_delete(user=alice)
    login(client, "alice@example.com")
    assert not [m for m in mailoutbox if re.search(r"\b\d{6}\b", m.body)]


def test_it_returns_to_the_page_that_asked_for_sign_in(client, alice, mailoutbox):
    response = client.get(reverse("account"))
    assert response["Location"] == f"{LOGIN}?next=/account/"

    response = client.post(
        LOGIN, {"region": Region.OTHER, "login": "alice@example.com", "next": "/account/"}
    )
    response = client.post(response["Location"], {"code": last_mail_code(mailoutbox)})

    assert response["Location"] == "/account/"


def test_it_sends_the_separate_code_request_page_to_sign_in(client):
    response = client.get(reverse("account_request_login_code") + "?next=/usage/")
    assert response["Location"] == f"{LOGIN}?next=/usage/"


def test_it_signs_a_known_phone_in_from_the_sign_up_form(client, bob, sms_outbox):
    response = signup(client, region=Region.MAINLAND_CHINA, phone="13800138000")

    assert response["Location"] == CONFIRM
    assert User.objects.filter(phone=bob.phone).count() == 1
    code = last_sms_code(sms_outbox)
    assert re.fullmatch(r"\d{6}", code)
    assert confirm(client, code)["Location"] == "/keys/"
    assert client.get(reverse("account")).context["account"] == bob


def test_it_never_logs_a_code(client, alice, sms_outbox, mailoutbox, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        signup(client, region=Region.MAINLAND_CHINA, phone="13800138007")
        phone_code = last_sms_code(sms_outbox)
        confirm(client, "000000" if phone_code != "000000" else "111111")
        confirm(client, phone_code)
        client.post(reverse("account_logout"))
        login(client, "alice@example.com")
        email_code = last_mail_code(mailoutbox)
        confirm(client, email_code)

    assert phone_code not in caplog.text
    assert email_code not in caplog.text
