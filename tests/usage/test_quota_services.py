import pytest
from django.core import mail
from django.core.exceptions import ValidationError

from usage.models import QuotaApplication, QuotaChange
from usage.selectors import usage_today
from usage.services import (
    quota_application_approve,
    quota_application_create,
    quota_application_reject,
    quota_set,
)

from .conftest import record_request


def _apply(user, **overrides):
    fields = {
        "intended_use": "Summarising support tickets",
        "expected_daily_tokens": 2_000_000,
        "contact": "alice@example.com",
        "company": "Acme",
    }
    fields.update(overrides)
    return quota_application_create(user=user, **fields)


def test_it_audits_every_quota_change(alice, staff):
    change = quota_set(user=alice, new_quota=1_000_000, reason="pilot", actor=staff)
    alice.refresh_from_db()
    assert alice.daily_quota == 1_000_000
    assert (change.old_quota, change.new_quota, change.actor, change.reason) == (
        None,
        1_000_000,
        staff,
        "pilot",
    )
    quota_set(user=alice, new_quota=None, reason="back to default", actor=staff)
    alice.refresh_from_db()
    assert alice.daily_quota is None
    assert list(QuotaChange.objects.filter(user=alice).values_list("old_quota", "new_quota")) == [
        (1_000_000, None),
        (None, 1_000_000),
    ]


def test_it_requires_a_reason_and_a_sane_quota(alice):
    with pytest.raises(ValidationError):
        quota_set(user=alice, new_quota=10, reason="  ")
    with pytest.raises(ValidationError):
        quota_set(user=alice, new_quota=-1, reason="typo")
    assert not QuotaChange.objects.exists()


def test_it_writes_no_audit_row_when_nothing_changes(alice):
    assert quota_set(user=alice, new_quota=None, reason="noop") is None
    assert not QuotaChange.objects.exists()


def test_it_allows_one_pending_application_per_account(alice):
    _apply(alice)
    with pytest.raises(ValidationError):
        _apply(alice)
    assert QuotaApplication.objects.filter(user=alice).count() == 1


def test_it_validates_an_application(alice):
    with pytest.raises(ValidationError) as caught:
        _apply(alice, intended_use=" ", contact="", expected_daily_tokens=0)
    assert set(caught.value.message_dict) == {"intended_use", "contact", "expected_daily_tokens"}


def test_it_raises_today_remaining_at_once_on_approval(
    alice, staff, settings, django_capture_on_commit_callbacks
):
    settings.DAILY_FREE_QUOTA = 500_000
    settings.INCREASED_DAILY_QUOTA = 5_000_000
    record_request(alice, input_tokens=300_000, output_tokens=200_000)
    assert usage_today(user=alice).remaining_tokens == 0
    application = _apply(alice)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        quota_application_approve(application=application, reviewer=staff)

    alice.refresh_from_db()
    assert alice.daily_quota == 5_000_000
    assert usage_today(user=alice).remaining_tokens == 4_500_000
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.APPROVED
    assert application.reviewer == staff and application.decided_at is not None
    change = QuotaChange.objects.get(user=alice)
    assert (change.old_quota, change.new_quota, change.actor) == (None, 5_000_000, staff)
    assert len(callbacks) == 1
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["alice@example.com"]
    assert "5,000,000" in mail.outbox[0].body


def test_it_notifies_only_after_the_commit(alice, staff, django_capture_on_commit_callbacks):
    application = _apply(alice)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        quota_application_approve(application=application, reviewer=staff)
    assert mail.outbox == []
    assert len(callbacks) == 1


def test_it_never_lowers_a_custom_quota_on_approval(alice, staff, settings):
    settings.INCREASED_DAILY_QUOTA = 5_000_000
    quota_set(user=alice, new_quota=20_000_000, reason="partner", actor=staff)
    quota_application_approve(application=_apply(alice), reviewer=staff)
    alice.refresh_from_db()
    assert alice.daily_quota == 20_000_000
    assert QuotaChange.objects.filter(user=alice).count() == 1


def test_it_requires_a_reason_to_reject(alice, staff, django_capture_on_commit_callbacks):
    application = _apply(alice)
    with pytest.raises(ValidationError):
        quota_application_reject(application=application, reviewer=staff, reason=" ")
    with django_capture_on_commit_callbacks(execute=True):
        quota_application_reject(
            application=application, reviewer=staff, reason="Please describe the project"
        )
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.REJECTED
    assert application.review_reason == "Please describe the project"
    alice.refresh_from_db()
    assert alice.daily_quota is None
    assert not QuotaChange.objects.exists()
    assert "Please describe the project" in mail.outbox[0].body


def test_it_decides_an_application_only_once(alice, staff):
    application = _apply(alice)
    quota_application_reject(application=application, reviewer=staff, reason="no")
    with pytest.raises(ValidationError):
        quota_application_approve(application=application, reviewer=staff)
    alice.refresh_from_db()
    assert alice.daily_quota is None


def test_it_accepts_a_new_application_after_a_decision(alice, staff):
    quota_application_reject(application=_apply(alice), reviewer=staff, reason="too vague")
    second = _apply(alice, intended_use="A coding assistant for our team of 12")
    assert second.status == QuotaApplication.Status.PENDING


def test_the_worker_sends_the_decision_not_the_reviewers_request(
    alice, staff, monkeypatch, django_capture_on_commit_callbacks
):
    from usage import tasks

    queued = []
    monkeypatch.setattr(tasks.quota_application_notify, "delay", lambda **kw: queued.append(kw))
    application = _apply(alice)
    with django_capture_on_commit_callbacks(execute=True):
        quota_application_approve(application=application, reviewer=staff)
    assert queued == [{"application_id": application.pk}]
    assert mail.outbox == []  # nothing was sent inside the request
