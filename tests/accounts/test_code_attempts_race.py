"""Many guesses at one sign-in code at once, against a real threaded server.

The attempt limit used to live in the session: every parallel request carried the same
snapshot ("0 wrong so far"), so 60 simultaneous guesses were all checked and a right code
sent after them still signed in. Now every entry is counted against the code in the database.
"""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings
from django.urls import reverse

from tests.accounts.conftest import last_mail_code

LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")
GUESSES = 60

pytestmark = pytest.mark.django_db(transaction=True)


def _csrf(html: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def _start_sign_in(base: str, email: str) -> httpx.Client:
    browser = httpx.Client(base_url=base, timeout=30)
    page = browser.get(LOGIN)
    response = browser.post(
        LOGIN,
        data={"csrfmiddlewaretoken": _csrf(page.text), "region": "OTHER", "login": email},
        headers={"referer": base + LOGIN},
    )
    assert response.status_code == 302, response.text
    return browser


def _guess_all_at_once(base: str, cookies, guesses: list[str]) -> list[httpx.Response]:
    """Send every guess from its own connection, released together by a barrier."""
    barrier = threading.Barrier(len(guesses), timeout=30)
    token = cookies["csrftoken"]

    def guess(code: str) -> httpx.Response:
        with httpx.Client(base_url=base, cookies=dict(cookies), timeout=60) as browser:
            barrier.wait()
            # The test server's listen queue is short: a refused connection is sent again,
            # as an attacker's script would.
            for _ in range(50):
                try:
                    return browser.post(
                        CONFIRM,
                        data={"csrfmiddlewaretoken": token, "code": code},
                        headers={"referer": base + CONFIRM},
                    )
                except (httpx.ReadError, httpx.ConnectError, httpx.RemoteProtocolError):
                    time.sleep(0.05)
            raise AssertionError("the server never answered")

    with ThreadPoolExecutor(max_workers=len(guesses)) as pool:
        return list(pool.map(guess, guesses))


def test_it_checks_only_the_allowed_number_of_parallel_guesses_and_then_refuses_the_right_code(
    live_server, alice, mailoutbox
):
    browser = _start_sign_in(live_server.url, alice.email)
    right = last_mail_code(mailoutbox)
    wrong = [f"{n:06d}" for n in range(GUESSES + 1) if f"{n:06d}" != right][:GUESSES]

    answers = _guess_all_at_once(live_server.url, browser.cookies, wrong)

    assert all(answer.status_code in (200, 302) for answer in answers)
    checked = [answer for answer in answers if answer.status_code == 200]
    assert len(checked) <= settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS
    # The attacker now sends the right code: the code is spent, nobody signs in.
    response = browser.post(
        CONFIRM,
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"], "code": right},
        headers={"referer": live_server.url + CONFIRM},
    )
    assert response.status_code == 302
    assert browser.get(reverse("account")).status_code == 302  # still signed out
    assert not _signed_in(browser, live_server.url)


def test_it_still_signs_in_with_the_right_code_after_a_few_wrong_ones(
    live_server, alice, mailoutbox
):
    browser = _start_sign_in(live_server.url, alice.email)
    right = last_mail_code(mailoutbox)
    wrong = [f"{n:06d}" for n in range(10) if f"{n:06d}" != right][:3]

    _guess_all_at_once(live_server.url, browser.cookies, wrong)
    response = browser.post(
        CONFIRM,
        data={"csrfmiddlewaretoken": browser.cookies["csrftoken"], "code": right},
        headers={"referer": live_server.url + CONFIRM},
    )

    assert response.status_code == 302
    assert response.headers["location"] == "/keys/"
    assert _signed_in(browser, live_server.url)


def _signed_in(browser: httpx.Client, base: str) -> bool:
    return browser.get(reverse("account")).status_code == 200
