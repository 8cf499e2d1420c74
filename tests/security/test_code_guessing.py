"""Guessing a sign-in code with the production limits, as an attacker would: a fresh browser
and a new IP address for every code, starting the sign-in again whenever a code is burnt.

tests/accounts covers each limit on its own (wrong codes per code, codes per address, posts
per IP, identical answers for unknown addresses); this adds up what they allow together.
"""

from __future__ import annotations

import uuid

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import reverse

LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_limits(settings):
    caches = {name: dict(config) for name, config in settings.CACHES.items()}
    caches["default"]["KEY_PREFIX"] = f"test-guessing-{uuid.uuid4().hex}"
    settings.CACHES = caches


def _codes_per_window() -> int:
    # "…,5/15m/key": codes one address may be sent per window.
    rule = next(
        part
        for part in django_settings.ACCOUNT_RATE_LIMITS["request_login_code"].split(",")
        if part.endswith("/key")
    )
    return int(rule.split("/")[0])


def test_one_address_gets_a_few_dozen_guesses_per_window_from_any_number_of_browsers(
    alice, mailoutbox
):
    attempts_per_code = django_settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS
    codes_sent, guesses, refused = 0, 0, False
    for round_ in range(50):
        browser = Client(REMOTE_ADDR=f"10.{round_ // 250}.{round_ % 250}.7")
        sent_before = len(mailoutbox)
        browser.post(LOGIN, {"region": "OTHER", "login": "alice@example.com"})
        if len(mailoutbox) == sent_before:
            refused = True
            break
        codes_sent += 1
        code = mailoutbox[-1].body
        for guess in range(attempts_per_code + 5):
            wrong = f"{guess:06d}"
            if wrong in code:
                continue
            response = browser.post(CONFIRM, {"code": wrong})
            guesses += 1
            assert "_auth_user_id" not in browser.session
            if response.status_code == 302:  # the code is burnt: back to the sign-in form
                break
        else:
            pytest.fail("a code took more wrong guesses than the limit")

    assert refused, "the address was sent codes without end"
    assert codes_sent == _codes_per_window()
    assert guesses <= codes_sent * attempts_per_code
    # 25 guesses at a 6-digit code: a one-in-40,000 chance per 15 minutes.
    assert guesses / 10**6 < 1 / 30_000
