"""The audited services behind the staff console: each writes one security-log entry naming
the staff member, and suspension stops the account's keys in the gateway at once."""

import pytest
from django.core.exceptions import ValidationError

from accounts.services import account_keys_revoke, account_reactivate, account_suspend
from audit.models import SecurityEvent
from keys.models import ApiKey
from keys.services import api_key_create, api_key_set_active
from tests.keys.gateway_view import gateway_answer
from usage.models import QuotaApplication
from usage.services import (
    quota_application_approve,
    quota_application_create,
    quota_applications_approve_bulk,
    quota_applications_reject_bulk,
    quota_set,
)

pytestmark = pytest.mark.django_db


def _apply(user, tokens=3_000_000):
    return quota_application_create(
        user=user, intended_use="A coding assistant", expected_daily_tokens=tokens, contact="x"
    )


def _events(user, action):
    return list(SecurityEvent.objects.filter(user=user, action=action))


def test_it_suspends_an_account_and_the_gateway_refuses_its_keys_at_once(alice, staff):
    _key, secret = api_key_create(user=alice, name="laptop")
    assert gateway_answer(secret).key_name == "laptop"

    account_suspend(user=alice, actor=staff, reason="Abuse report #12")

    assert gateway_answer(secret) == "account_disabled"
    alice.refresh_from_db()
    assert alice.is_active is False
    # The key flags are untouched: the account flag alone blocks.
    assert ApiKey.objects.filter(user=alice, is_active=True).count() == 2
    [event] = _events(alice, SecurityEvent.Action.ACCOUNT_SUSPENDED)
    assert event.actor == staff and event.detail == {"reason": "Abuse report #12"}


def test_the_gateway_reservation_refuses_a_suspended_account(alice, staff):
    from asgiref.sync import async_to_sync

    from tests.keys.gateway_view import OrmLedger  # wherever the ledger package keeps it
    from usage.quota import quota_day

    key, secret = api_key_create(user=alice, name="laptop")
    row = gateway_answer(secret)
    account_suspend(user=alice, actor=staff, reason="Abuse")
    # A process that had the key cached before the suspension still reserves through here.
    outcome = async_to_sync(OrmLedger().reserve)(
        key_id=key.pk, digest=key.digest, day=quota_day(), input_tokens=10, max_output_tokens=10
    )
    assert row.key_id == key.pk
    assert getattr(outcome, "reason", None) == "auth"


def test_reactivation_restores_the_account_but_not_keys_the_owner_disabled(alice, staff):
    key, secret = api_key_create(user=alice, name="laptop")
    default = alice.api_keys.get(name="default")
    api_key_set_active(api_key=key, is_active=False)
    account_suspend(user=alice, actor=staff, reason="Abuse")

    account_reactivate(user=alice, actor=staff, reason="Resolved")

    alice.refresh_from_db()
    assert alice.is_active is True
    assert gateway_answer(secret) == "api_key_disabled"
    assert ApiKey.objects.get(pk=default.pk).is_active is True
    [event] = _events(alice, SecurityEvent.Action.ACCOUNT_REACTIVATED)
    assert event.actor == staff and event.detail["reason"] == "Resolved"


def test_suspension_needs_a_reason_and_refuses_oneself_and_repeats(alice, staff):
    with pytest.raises(ValidationError):
        account_suspend(user=alice, actor=staff, reason=" ")
    with pytest.raises(ValidationError):
        account_suspend(user=staff, actor=staff, reason="oops")
    account_suspend(user=alice, actor=staff, reason="x")
    with pytest.raises(ValidationError):
        account_suspend(user=alice, actor=staff, reason="again")
    assert len(_events(alice, SecurityEvent.Action.ACCOUNT_SUSPENDED)) == 1


def test_a_closed_account_cannot_be_reactivated(alice, staff):
    from accounts.services import account_delete

    account_delete(user=alice)
    with pytest.raises(ValidationError):
        account_reactivate(user=alice, actor=staff, reason="no")
    alice.refresh_from_db()
    assert alice.is_active is False


def test_it_revokes_all_keys_in_one_audited_step(alice, staff):
    _key, secret = api_key_create(user=alice, name="laptop")

    count = account_keys_revoke(user=alice, actor=staff, reason="Leaked on GitHub")

    assert count == 2
    assert not ApiKey.objects.filter(user=alice, is_active=True).exists()
    assert gateway_answer(secret) == "api_key_disabled"
    [event] = _events(alice, SecurityEvent.Action.KEYS_REVOKED)
    assert event.actor == staff and event.detail == {"reason": "Leaked on GitHub", "keys": 2}


def test_it_approves_with_a_custom_quota(alice, staff):
    application = _apply(alice)

    quota_application_approve(
        application=application, reviewer=staff, reason="Enjoy", quota=3_000_000
    )

    alice.refresh_from_db()
    assert alice.daily_quota == 3_000_000
    [event] = _events(alice, SecurityEvent.Action.APPLICATION_APPROVED)
    assert event.actor == staff
    assert event.detail["quota"] == 3_000_000 and event.detail["reason"] == "Enjoy"


def test_a_custom_approval_never_lowers_a_higher_quota(alice, staff):
    quota_set(user=alice, new_quota=8_000_000, reason="Partner", actor=staff)
    quota_application_approve(application=_apply(alice), reviewer=staff, quota=3_000_000)
    alice.refresh_from_db()
    assert alice.daily_quota == 8_000_000


def test_a_custom_approval_refuses_nonsense(alice, staff):
    application = _apply(alice)
    for quota in (0, -5, 10**13):
        with pytest.raises(ValidationError):
            quota_application_approve(application=application, reviewer=staff, quota=quota)
    application.refresh_from_db()
    assert application.status == QuotaApplication.Status.PENDING


def test_bulk_approval_gives_the_standard_quota_and_skips_decided_ones(
    alice, bob, charlie, staff, settings
):
    settings.INCREASED_DAILY_QUOTA = 5_000_000
    applications = [_apply(alice), _apply(bob), _apply(charlie)]
    quota_application_approve(application=applications[2], reviewer=staff)

    done = quota_applications_approve_bulk(applications=applications, reviewer=staff)

    assert [a.user_id for a in done] == [alice.pk, bob.pk]
    for user in (alice, bob):
        user.refresh_from_db()
        assert user.daily_quota == 5_000_000
        [event] = _events(user, SecurityEvent.Action.APPLICATION_APPROVED)
        assert event.actor == staff


def test_bulk_rejection_needs_one_reason_for_all(alice, bob, staff):
    applications = [_apply(alice), _apply(bob)]
    with pytest.raises(ValidationError):
        quota_applications_reject_bulk(applications=applications, reviewer=staff, reason="")
    assert not QuotaApplication.objects.exclude(status="pending").exists()

    done = quota_applications_reject_bulk(
        applications=applications, reviewer=staff, reason="Tell us more"
    )

    assert len(done) == 2
    for user in (alice, bob):
        [event] = _events(user, SecurityEvent.Action.APPLICATION_REJECTED)
        assert event.actor == staff and event.detail["reason"] == "Tell us more"
    assert set(QuotaApplication.objects.values_list("review_reason", flat=True)) == {"Tell us more"}
