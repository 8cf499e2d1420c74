"""What sign-in writes to the security log: sign-ins, wrong codes, blocked codes, spent SMS
budgets (identifiers added and 2FA changes: tests/audit/test_security_log.py,
test_admin_security.py)."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Region
from audit.models import SecurityEvent
from tests.accounts.conftest import last_mail_code

LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")
Action = SecurityEvent.Action

pytestmark = pytest.mark.django_db


def actions(user=None):
    events = SecurityEvent.objects.order_by("pk")
    if user is not None:
        events = events.filter(user=user)
    return list(events.values_list("action", flat=True))


def test_it_logs_wrong_codes_one_blocked_code_and_a_sign_in(client, alice, mailoutbox, settings):
    client.post(LOGIN, {"region": Region.OTHER, "login": alice.email})
    right = last_mail_code(mailoutbox)
    wrong = [f"{n:06d}" for n in range(10) if f"{n:06d}" != right]
    for code in wrong[: settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS]:
        client.post(CONFIRM, {"code": code})

    assert (
        actions(alice).count(Action.SIGN_IN_FAILED) == settings.ACCOUNT_LOGIN_BY_CODE_MAX_ATTEMPTS
    )
    assert actions(alice).count(Action.CODE_ATTEMPTS_EXHAUSTED) == 1

    client.post(LOGIN, {"region": Region.OTHER, "login": alice.email})
    client.post(CONFIRM, {"code": last_mail_code(mailoutbox)})
    assert actions(alice)[-1] == Action.SIGN_IN


def test_it_logs_a_spent_sms_budget_once(settings, sms_outbox):
    settings.SMS_DAILY_BUDGET = 1
    for n in range(3):
        Client(REMOTE_ADDR=f"10.6.{n}.1").post(
            reverse("account_signup"), {"region": Region.OTHER, "phone": f"+861390000010{n}"}
        )

    assert actions().count(Action.SMS_BUDGET_REACHED) == 1
