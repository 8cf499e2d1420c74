"""Sign-up and sign-in reveal nothing by their timing, and survive Redis going away.

Known and unknown addresses used to differ by the time it takes to send a message (33-38 ms
against 20-23 ms): now every message goes through one background route and the request is
padded to one floor. With Redis down sign-in used to answer 500: rate limits now fail open,
while the per-code attempt limit, in the database, still holds.
"""

import os
import socket
import subprocess
import sys
import time

import pytest
from django.core.mail.backends.locmem import EmailBackend
from django.test import Client
from django.urls import reverse

from accounts import delivery
from accounts.models import Region
from tests.accounts.conftest import last_mail_code

SIGNUP = reverse("account_signup")
LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")
SLOW_SEND_SECONDS = 0.4
FLOOR_SECONDS = 0.2

pytestmark = pytest.mark.django_db


class SlowEmailBackend(EmailBackend):
    """An SMTP server that takes its time, as real ones do."""

    def send_messages(self, messages):
        time.sleep(SLOW_SEND_SECONDS)
        return super().send_messages(messages)


class RecordingExecutor:
    def __init__(self):
        self.jobs = []

    def submit(self, fn, *args):
        self.jobs.append((fn, args))


@pytest.fixture
def background(settings):
    settings.CODE_DELIVERY_BACKGROUND = True


def test_it_sends_for_known_and_unknown_addresses_through_the_same_background_route(
    alice, background, monkeypatch, mailoutbox
):
    executor = RecordingExecutor()
    monkeypatch.setattr(delivery, "_executor", executor)
    steps = [
        (SIGNUP, {"region": Region.OTHER, "email": alice.email}),
        (SIGNUP, {"region": Region.OTHER, "email": "new@example.com"}),
        (LOGIN, {"region": Region.OTHER, "login": alice.email}),
        (LOGIN, {"region": Region.OTHER, "login": "nobody@example.com"}),
    ]
    for url, data in steps:
        before = len(executor.jobs)
        assert Client().post(url, data).status_code == 302
        assert len(executor.jobs) == before + 1, url

    assert not mailoutbox  # nothing was sent on the request path


def test_it_answers_known_and_unknown_addresses_in_the_same_time(
    alice, background, settings, mailoutbox
):
    settings.EMAIL_BACKEND = "tests.accounts.test_timing_and_outages.SlowEmailBackend"
    settings.CODE_REQUEST_MIN_SECONDS = FLOOR_SECONDS
    timings = {}
    for name, url, data in [
        ("signup-known", SIGNUP, {"region": Region.OTHER, "email": alice.email}),
        ("signup-new", SIGNUP, {"region": Region.OTHER, "email": "new@example.com"}),
        ("login-known", LOGIN, {"region": Region.OTHER, "login": alice.email}),
        ("login-unknown", LOGIN, {"region": Region.OTHER, "login": "nobody@example.com"}),
    ]:
        started = time.monotonic()
        Client().post(url, data)
        timings[name] = time.monotonic() - started

    # One time class: the floor, plus far less than a message takes to send.
    assert all(FLOOR_SECONDS <= t < SLOW_SEND_SECONDS for t in timings.values()), timings
    deadline = time.monotonic() + 10
    while len(mailoutbox) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(mailoutbox) == 4  # and every message did go out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_down(settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "accounts.cache.FailOpenRedisCache",
            "LOCATION": f"redis://127.0.0.1:{_closed_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


def test_it_signs_in_while_redis_is_down(client, alice, redis_down, mailoutbox):
    response = client.post(LOGIN, {"region": Region.OTHER, "login": alice.email})
    assert response.status_code == 302

    response = client.post(CONFIRM, {"code": last_mail_code(mailoutbox)})

    assert response["Location"] == "/keys/"


def test_it_still_limits_attempts_per_code_while_redis_is_down(
    client, alice, redis_down, mailoutbox, settings
):
    client.post(LOGIN, {"region": Region.OTHER, "login": alice.email})
    right = last_mail_code(mailoutbox)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    wrong = [f"{n:06d}" for n in range(20) if f"{n:06d}" != right]
    # Replaying the same session cookie, as parallel requests would: the session's own
    # count never moves, the database's does.
    for code in wrong[: settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS]:
        replay = Client()
        replay.cookies[settings.SESSION_COOKIE_NAME] = session
        replay.post(CONFIRM, {"code": code})

    replay = Client()
    replay.cookies[settings.SESSION_COOKIE_NAME] = session
    response = replay.post(CONFIRM, {"code": right})

    assert response.status_code == 302
    assert response["Location"] != "/keys/"
    assert "_auth_user_id" not in replay.session


def test_it_uses_the_fail_open_cache_whenever_redis_is_configured():
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print(settings.CACHES['default']['BACKEND'])",
        ],
        env={**env, "DJANGO_SETTINGS_MODULE": "portal.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "accounts.cache.FailOpenRedisCache"
