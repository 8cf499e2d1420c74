import re
import uuid

import pytest

from accounts import sms

CODE_RE = re.compile(r"\b(\d{6})\b")


@pytest.fixture(autouse=True)
def _isolated_limits(settings):
    """Rate-limit counters live in the shared cache: give every test its own key space so
    that parallel workers (and other suites on the same Redis) never see each other's."""
    caches = {name: dict(config) for name, config in settings.CACHES.items()}
    caches["default"]["KEY_PREFIX"] = f"test-accounts-{uuid.uuid4().hex}"
    settings.CACHES = caches


@pytest.fixture(autouse=True)
def sms_outbox():
    sms.outbox.clear()
    yield sms.outbox
    sms.outbox.clear()


def code_in(text: str) -> str:
    match = CODE_RE.search(text)
    assert match, f"no 6-digit code in {text!r}"
    return match.group(1)


def last_mail_code(mailoutbox) -> str:
    assert mailoutbox, "no email was sent"
    return code_in(mailoutbox[-1].body)


def last_sms_code(outbox) -> str:
    assert outbox, "no text message was sent"
    return outbox[-1].code
