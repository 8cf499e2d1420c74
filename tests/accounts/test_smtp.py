"""A code by real SMTP: Django's SMTP backend talking to a local aiosmtpd server."""

import email
import socket

import pytest
from aiosmtpd.controller import Controller
from django.urls import reverse

from tests.accounts.conftest import code_in


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_inbox(settings):
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    settings.EMAIL_TIMEOUT = 10
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.mark.slow
@pytest.mark.django_db
def test_it_delivers_the_sign_up_code_over_smtp(client, smtp_inbox, settings):
    response = client.post(
        reverse("account_signup"), {"region": "OTHER", "email": "smtp@example.com", "phone": ""}
    )
    assert response["Location"] == reverse("account_confirm_login_code")

    [(recipients, message)] = smtp_inbox.messages
    assert recipients == ["smtp@example.com"]
    assert message["From"] == settings.DEFAULT_FROM_EMAIL
    assert settings.PLATFORM_NAME in message["Subject"]
    body = (
        message.get_payload(decode=True)
        if not message.is_multipart()
        else (message.get_payload(0).get_payload(decode=True))
    )
    code = code_in(body.decode())

    response = client.post(reverse("account_confirm_login_code"), {"code": code})
    assert response["Location"] == "/keys/"
