"""SMS pumping: someone makes the platform text numbers they are paid for.

Every path that sends a code is limited per IP address and per address, text messages more
tightly than email; daily budgets (overall and per country) stop the bill whatever the number
of IP addresses, and staff hear about it once; a proof-of-work challenge the operator can
switch on makes every message cost the sender a few hundred thousand hashes.
"""

import hashlib
import itertools

import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts import challenge
from accounts.models import Region
from accounts.services import account_create

SIGNUP = reverse("account_signup")
LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")

pytestmark = pytest.mark.django_db


def fresh_numbers():
    # Valid mainland mobile numbers, none of them registered.
    return (f"+86139{n:08d}" for n in itertools.count(10_000_000))


def fresh_us_numbers():
    return (f"+1201555{n:04d}" for n in itertools.count(100))


def signup_phone(client, phone, **extra):
    return client.post(SIGNUP, {"region": Region.OTHER, "phone": phone, **extra})


def test_it_limits_sign_up_texts_per_ip_address(sms_outbox):
    numbers = fresh_numbers()
    for _ in range(20):
        signup_phone(Client(REMOTE_ADDR="10.8.8.8"), next(numbers))

    # It used to be 20 a minute (1,200 an hour); now 5 an hour from one address.
    assert len(sms_outbox) == 5


def test_it_limits_texts_to_one_number_whatever_the_ip_address(bob, sms_outbox):
    for n in range(10):
        Client(REMOTE_ADDR=f"10.0.{n}.1").post(
            LOGIN, {"region": Region.MAINLAND_CHINA, "login": bob.phone}
        )

    assert len(sms_outbox) == 3


def test_it_limits_adding_phones_per_ip_address_across_accounts(sms_outbox):
    numbers = fresh_numbers()
    for n in range(10):
        owner = account_create(email=f"free{n}@example.com")
        browser = Client(REMOTE_ADDR="10.9.9.9")
        browser.force_login(owner)
        browser.post(reverse("account_identifier_add", args=["phone"]), {"phone": next(numbers)})

    # Ten free accounts used to mean ten texts (the limit was per account only).
    assert len(sms_outbox) == 5


def test_it_counts_resends_against_the_same_limits(client, bob, sms_outbox, settings):
    settings.ACCOUNT_RATE_LIMITS = {
        **settings.ACCOUNT_RATE_LIMITS,
        "resend_login_code": "10/h/ip",
        "send_sms_code": "2/h/key",
    }
    client.post(LOGIN, {"region": Region.MAINLAND_CHINA, "login": bob.phone})
    for _ in range(3):
        client.post(CONFIRM, {"action": "resend"})

    assert len(sms_outbox) == 2


def test_it_stops_texting_when_the_daily_budget_is_spent_and_tells_staff_once(
    staff, settings, sms_outbox, mailoutbox
):
    settings.SMS_DAILY_BUDGET = 3
    numbers = fresh_numbers()
    for n in range(6):
        signup_phone(Client(REMOTE_ADDR=f"10.1.{n}.1"), next(numbers))

    assert len(sms_outbox) == 3
    alerts = [m for m in mailoutbox if "SMS budget" in m.subject]
    assert len(alerts) == 1
    assert alerts[0].to == [staff.email]


def test_it_keeps_a_budget_per_country(settings, sms_outbox):
    settings.SMS_COUNTRY_DAILY_BUDGETS = {"CN": 100, "US": 1}
    us, cn = fresh_us_numbers(), fresh_numbers()
    for n in range(3):
        signup_phone(Client(REMOTE_ADDR=f"10.2.{n}.1"), next(us))
        signup_phone(Client(REMOTE_ADDR=f"10.3.{n}.1"), next(cn))

    sent_to = [message.to for message in sms_outbox]
    assert sum(to.startswith("+1") for to in sent_to) == 1
    assert sum(to.startswith("+86") for to in sent_to) == 3


def test_it_says_texts_are_unavailable_for_known_and_unknown_numbers_alike(
    bob, settings, sms_outbox
):
    settings.SMS_DAILY_BUDGET = 1
    signup_phone(Client(REMOTE_ADDR="10.4.0.1"), "+8613900000001")  # spends the budget

    known = Client(REMOTE_ADDR="10.4.0.2").post(
        LOGIN, {"region": Region.MAINLAND_CHINA, "login": bob.phone}
    )
    unknown = Client(REMOTE_ADDR="10.4.0.3").post(
        LOGIN, {"region": Region.MAINLAND_CHINA, "login": "+8613900000002"}
    )

    assert known.status_code == unknown.status_code == 200
    assert "cannot send text messages" in known.content.decode()
    assert "cannot send text messages" in unknown.content.decode()
    assert len(sms_outbox) == 1


# --- the proof-of-work challenge ----------------------------------------------------------------
def solve(value: str) -> str:
    bits = int(value.split(".")[0])
    for n in itertools.count():
        digest = hashlib.sha256(f"{value}:{n}".encode()).digest()
        if challenge.leading_zero_bits(digest) >= bits:
            return str(n)


@pytest.fixture
def challenge_on(settings):
    settings.CODE_CHALLENGE_BITS = 10


def test_it_sends_no_code_without_a_solved_challenge(client, challenge_on, sms_outbox):
    page = client.get(SIGNUP).content.decode()
    assert 'data-challenge="1"' in page
    assert "js/challenge.js" in page

    response = signup_phone(client, "+8613900000003")
    forged = signup_phone(client, "+8613900000003", challenge="10.abc:1:sig", solution="1")

    assert response.status_code == forged.status_code == 200
    assert "security check" in response.content.decode()
    assert not sms_outbox


def test_it_sends_a_code_for_a_solved_challenge_once(client, challenge_on, sms_outbox):
    value = challenge.challenge_issue()
    answer = solve(value)

    first = signup_phone(client, "+8613900000004", challenge=value, solution=answer)
    replay = signup_phone(
        Client(REMOTE_ADDR="10.5.0.1"), "+8613900000005", challenge=value, solution=answer
    )

    assert first.status_code == 302
    assert replay.status_code == 200
    assert [message.to for message in sms_outbox] == ["+8613900000004"]


def test_it_asks_for_the_challenge_on_sign_in_resend_and_adding_an_address(
    client, bob, alice, challenge_on, sms_outbox, mailoutbox
):
    login = {"region": Region.MAINLAND_CHINA, "login": bob.phone}
    assert client.post(LOGIN, login).status_code == 200
    assert not sms_outbox
    value = challenge.challenge_issue()
    client.post(LOGIN, {**login, "challenge": value, "solution": solve(value)})
    assert len(sms_outbox) == 1

    client.post(CONFIRM, {"action": "resend"})
    assert len(sms_outbox) == 1

    owner = Client()
    owner.force_login(alice)
    owner.post(reverse("account_identifier_add", args=["phone"]), {"phone": "+8613900000006"})
    assert len(sms_outbox) == 1


def test_it_refuses_a_challenge_easier_than_the_current_setting(client, settings, sms_outbox):
    settings.CODE_CHALLENGE_BITS = 4
    easy = challenge.challenge_issue()
    settings.CODE_CHALLENGE_BITS = 12

    signup_phone(client, "+8613900000007", challenge=easy, solution=solve(easy))

    assert not sms_outbox
    assert mail.outbox == []
