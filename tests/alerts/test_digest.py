import datetime as dt

import time_machine
from django.core import mail

from accounts.services import account_create
from alerts.tasks import quota_application_digest
from usage.services import quota_application_create

START = dt.datetime(2026, 3, 10, 1, 0, tzinfo=dt.UTC)


def _apply(user):
    return quota_application_create(
        user=user,
        intended_use="A coding assistant",
        expected_daily_tokens=3_000_000,
        contact="alice@example.com",
    )


def test_it_lists_applications_waiting_too_long_to_staff(alice, bob, staff, settings):
    settings.QUOTA_APPLICATION_DIGEST_AFTER_HOURS = 24
    account_create(email="ops@example.com", is_staff=True)
    with time_machine.travel(START, tick=False):
        _apply(alice)
    with time_machine.travel(START + dt.timedelta(hours=20), tick=False):
        _apply(bob)
    with time_machine.travel(START + dt.timedelta(hours=25), tick=False):
        assert quota_application_digest() == 1
    [message] = mail.outbox
    assert sorted(message.to) == ["ops@example.com", "staff@example.com"]
    assert "1 quota application" in message.subject
    assert "3,000,000" in message.body
    assert "/review/" in message.body


def test_it_sends_nothing_when_none_wait(alice, staff, settings):
    settings.QUOTA_APPLICATION_DIGEST_AFTER_HOURS = 24
    with time_machine.travel(START, tick=False):
        _apply(alice)
    with time_machine.travel(START + dt.timedelta(hours=23), tick=False):
        assert quota_application_digest() == 0
    assert mail.outbox == []


def test_it_leaves_out_decided_applications(alice, staff, settings):
    from usage.services import quota_application_reject

    with time_machine.travel(START, tick=False):
        application = _apply(alice)
        quota_application_reject(application=application, reviewer=staff, reason="No details")
    with time_machine.travel(START + dt.timedelta(days=3), tick=False):
        assert quota_application_digest() == 0
    assert [m for m in mail.outbox if "waiting" in m.subject] == []
