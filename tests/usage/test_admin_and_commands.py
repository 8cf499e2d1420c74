import datetime as dt
import json
from io import StringIO

import pytest
import time_machine
from django.core import mail
from django.core.management import CommandError, call_command

from usage.ledger.upkeep import usage_daily_reset
from usage.models import QuotaApplication, QuotaChange
from usage.services import quota_application_create

from .conftest import record_request

CHANGELIST = "/admin/usage/quotaapplication/"


@pytest.fixture
def admin_client(client, db):
    from accounts.services import account_create

    admin = account_create(email="root@example.com", is_staff=True, is_superuser=True)
    client.force_login(admin)
    client.admin = admin
    return client


def _apply(user):
    return quota_application_create(
        user=user, intended_use="Batch translation", expected_daily_tokens=9, contact="c"
    )


def test_admin_approves_in_bulk(
    admin_client, alice, bob, charlie, settings, django_capture_on_commit_callbacks
):
    settings.INCREASED_DAILY_QUOTA = 5_000_000
    ids = [_apply(u).pk for u in (alice, bob)]
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            CHANGELIST, {"action": "approve_selected", "_selected_action": ids}, follow=True
        )
    assert response.status_code == 200
    assert set(QuotaApplication.objects.values_list("status", flat=True)) == {"approved"}
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert alice.daily_quota == bob.daily_quota == 5_000_000
    assert QuotaChange.objects.filter(actor=admin_client.admin).count() == 2
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]  # bob has only a phone


def test_admin_rejects_in_bulk_only_with_a_reason(admin_client, alice, bob):
    ids = [_apply(u).pk for u in (alice, bob)]
    page = admin_client.post(CHANGELIST, {"action": "reject_selected", "_selected_action": ids})
    assert page.status_code == 200
    assert b"Reason shown to the applicants" in page.content
    empty = admin_client.post(
        CHANGELIST,
        {"action": "reject_selected", "_selected_action": ids, "apply": "1", "reason": " "},
    )
    assert empty.status_code == 200  # the form again, with an error
    assert set(QuotaApplication.objects.values_list("status", flat=True)) == {"pending"}
    admin_client.post(
        CHANGELIST,
        {"action": "reject_selected", "_selected_action": ids, "apply": "1", "reason": "Spam"},
    )
    assert set(QuotaApplication.objects.values_list("status", "review_reason")) == {
        ("rejected", "Spam")
    }


def test_admin_sets_a_custom_quota_through_the_audited_service(admin_client, alice):
    response = admin_client.post(
        "/admin/usage/quotachange/add/",
        {"user": alice.pk, "new_quota": "20000000", "reason": "Enterprise pilot"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.daily_quota == 20_000_000
    change = QuotaChange.objects.get()
    assert (change.old_quota, change.new_quota, change.actor) == (
        None,
        20_000_000,
        admin_client.admin,
    )


def test_admin_pages_render(admin_client, alice):
    _apply(alice)
    record_request(alice)
    usage_daily_reset()
    for model in ("quotaapplication", "quotachange", "quotareset", "dailyusage", "reservation",
                  "dailyrollup", "usagerecord"):  # fmt: skip
        assert admin_client.get(f"/admin/usage/{model}/").status_code == 200, model
    application = QuotaApplication.objects.get()
    assert admin_client.get(f"{CHANGELIST}{application.pk}/change/").status_code == 200


def test_customers_cannot_use_the_admin(alice_client):
    response = alice_client.get(CHANGELIST)
    assert response.status_code == 302


def test_set_quota_command(alice):
    out = StringIO()
    call_command(
        "set_quota", account="ALICE@example.com", tokens="8,000,000", reason="partner", stdout=out
    )
    alice.refresh_from_db()
    assert alice.daily_quota == 8_000_000
    assert "500,000 -> 8,000,000" in out.getvalue()
    call_command(
        "set_quota", account=str(alice.public_id), tokens="default", reason="ended", stdout=out
    )
    alice.refresh_from_db()
    assert alice.daily_quota is None
    assert QuotaChange.objects.filter(user=alice, actor=None).count() == 2


def test_set_quota_command_refuses_bad_input(alice):
    with pytest.raises(CommandError):
        call_command("set_quota", account="nobody@example.com", tokens="1", reason="x")
    with pytest.raises(CommandError):
        call_command("set_quota", account="alice@example.com", tokens="lots", reason="x")
    with pytest.raises(CommandError):
        call_command("set_quota", account="alice@example.com", tokens="1", reason=" ")
    assert not QuotaChange.objects.exists()


def test_usage_report_command(alice, bob):
    when = dt.datetime(2026, 3, 1, 4, 0, tzinfo=dt.UTC)
    record_request(alice, input_tokens=100, output_tokens=20, when=when)
    record_request(bob, input_tokens=5, output_tokens=5, when=when, status_code=500)
    with time_machine.travel(when + dt.timedelta(days=1), tick=False):
        usage_daily_reset()
    out = StringIO()
    call_command("usage_report", day="2026-03-01", stdout=out)
    text = out.getvalue()
    assert "accounts with requests: 2" in text
    assert "input tokens: 105" in text
    assert "alice@example.com: 120 tokens" in text
    assert "closed by the reset" in text
    out = StringIO()
    call_command("usage_report", day="2026-03-01", as_json=True, stdout=out)
    data = json.loads(out.getvalue())
    assert data["counters"]["requests"] == 2
    with pytest.raises(CommandError):
        call_command("usage_report", day="March 1st")
