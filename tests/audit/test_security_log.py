"""The security log: every security-relevant action recorded once, by the service that acts."""

import datetime as dt

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.services import account_delete
from audit.models import SecurityEvent
from audit.services import security_event_record
from audit.tasks import security_log_prune
from keys import services as key_services
from keys.models import ApiKey
from usage import services as usage_services

pytestmark = pytest.mark.django_db

Action = SecurityEvent.Action
BROWSER = {"REMOTE_ADDR": "203.0.113.7", "HTTP_USER_AGENT": "Mozilla/5.0 (test browser)"}


def _events(user, *actions):
    query = SecurityEvent.objects.filter(user=user)
    if actions:
        query = query.filter(action__in=actions)
    return list(query.order_by("id"))


@pytest.fixture
def alice_browser(alice):
    client = Client(**BROWSER)
    client.force_login(alice)
    return client


@pytest.fixture
def alice_key(alice):
    return ApiKey.objects.get(user=alice, name=key_services.DEFAULT_KEY_NAME)


def test_it_records_the_account_creation(alice):
    (event,) = _events(alice, Action.SIGN_UP)
    assert event.actor is None
    # The default key made with it is recorded too.
    assert [e.action for e in _events(alice)] == [Action.SIGN_UP, Action.KEY_CREATED]


def test_it_records_each_key_action_with_address_and_browser(alice, alice_browser, alice_key):
    base = f"/keys/{alice_key.public_id}"
    alice_browser.post("/keys/", {"name": "ci"})
    alice_browser.post(f"{base}/reveal/")
    alice_browser.post(f"{base}/rename/", {"name": "laptop"})
    alice_browser.post(f"{base}/status/", {"is_active": "0"})
    alice_browser.post(f"{base}/status/", {"is_active": "1"})
    alice_browser.post(f"{base}/regenerate/")
    alice_browser.post(f"{base}/delete/")

    events = _events(alice)[2:]  # after sign-up and the default key
    assert [e.action for e in events] == [
        Action.KEY_CREATED,
        Action.KEY_REVEALED,
        Action.KEY_RENAMED,
        Action.KEY_DISABLED,
        Action.KEY_ENABLED,
        Action.KEY_REGENERATED,
        Action.KEY_DELETED,
    ]
    for event in events:
        assert event.ip_address == "203.0.113.7"
        assert event.user_agent == "Mozilla/5.0 (test browser)"
        assert event.actor == alice
    assert events[0].detail["key"] == "ci"
    assert events[2].detail == {"key": "laptop", "prefix": alice_key.prefix, "old_name": "default"}


def test_it_never_records_a_secret(alice, alice_key):
    secret = key_services.api_key_reveal(api_key=alice_key)
    _key, regenerated = key_services.api_key_regenerate(api_key=alice_key)
    _key, created = key_services.api_key_create(user=alice, name="second")
    logged = repr(list(SecurityEvent.objects.values()))
    for raw in (secret, regenerated, created):
        assert raw not in logged
        assert raw[12:] not in logged


def test_an_unchanged_setting_records_nothing(alice, alice_key):
    before = SecurityEvent.objects.count()
    key_services.api_key_set_active(api_key=alice_key, is_active=True)
    key_services.api_key_set_rate_limits(
        api_key=alice_key, rate_limit_rpm=None, rate_limit_tpm=None
    )
    key_services.api_key_rename(api_key=alice_key, name=alice_key.name)
    assert SecurityEvent.objects.count() == before
    key_services.api_key_set_rate_limits(api_key=alice_key, rate_limit_rpm=5, rate_limit_tpm=None)
    (event,) = _events(alice, Action.KEY_LIMITS_CHANGED)
    assert event.detail["rate_limit_rpm"] == 5


def test_it_names_the_staff_member_who_changed_a_quota(alice, staff):
    usage_services.quota_set(user=alice, new_quota=123_456, reason="trial", actor=staff)
    (event,) = _events(alice, Action.QUOTA_CHANGED)
    assert event.actor == staff
    assert event.detail == {"old_quota": None, "new_quota": 123_456, "reason": "trial"}


def test_it_records_application_decisions_through_the_review_page(alice, bob, staff):
    client = Client(**BROWSER)
    client.force_login(staff)
    for user, decision in [(alice, "approve"), (bob, "reject")]:
        application = usage_services.quota_application_create(
            user=user, intended_use="agents", expected_daily_tokens=4_000_000, contact="me"
        )
        client.post(
            reverse("review:decide", args=[application.public_id]),
            {"decision": decision, "reason": "looks fine" if decision == "approve" else "no"},
        )
    approved = _events(alice, Action.APPLICATION_APPROVED, Action.QUOTA_CHANGED)
    assert [e.action for e in approved] == [Action.APPLICATION_APPROVED, Action.QUOTA_CHANGED]
    assert {e.actor for e in approved} == {staff}
    assert approved[0].ip_address == "203.0.113.7"
    (rejected,) = _events(bob, Action.APPLICATION_REJECTED)
    assert rejected.actor == staff and rejected.detail["reason"] == "no"


def test_it_records_a_closed_account(alice):
    account_delete(user=alice)
    assert _events(alice)[-1].action == Action.ACCOUNT_CLOSED


def test_a_command_or_task_records_without_address_or_actor(alice):
    event = security_event_record(action=Action.SMS_BUDGET_REACHED, detail={"scope": "global"})
    assert (event.user, event.actor, event.ip_address, event.user_agent) == (None, None, None, "")


def test_an_address_that_is_not_an_ip_is_left_out(rf, alice):
    request = rf.get("/", REMOTE_ADDR="unix:/run/portal.sock")
    event = security_event_record(action=Action.SIGN_IN, user=alice, request=request)
    assert event.ip_address is None


def test_the_account_page_shows_my_events_and_nobody_elses(alice, charlie, alice_browser):
    key_services.api_key_create(user=charlie, name="charlies-secret-project")
    alice_browser.post("/keys/", {"name": "my-new-key"})
    page = alice_browser.get("/account/").content.decode()
    assert "Recent security activity" in page
    assert "my-new-key" in page and "203.0.113.7" in page
    assert "charlies-secret-project" not in page


def test_the_account_page_reads_the_log_in_a_fixed_number_of_queries(
    alice, alice_browser, django_assert_max_num_queries
):
    for n in range(8):
        key_services.api_key_create(user=alice, name=f"k{n}")
    with django_assert_max_num_queries(12):
        assert alice_browser.get("/account/").status_code == 200


def test_only_staff_see_the_log_in_the_admin(alice, alice_browser, staff, staff_client):
    url = reverse("admin:audit_securityevent_changelist")
    assert staff_client.get(url).status_code == 403  # staff, but not allowed to view it
    staff.user_permissions.add(Permission.objects.get(codename="view_securityevent"))
    assert staff_client.get(url).status_code == 200
    assert staff_client.get(url, {"q": "alice@example.com"}).status_code == 200
    event = SecurityEvent.objects.filter(user=alice).first()
    detail = reverse("admin:audit_securityevent_change", args=[event.pk])
    assert staff_client.get(detail).status_code == 200
    assert staff_client.post(detail, {"action": "sign_in"}).status_code == 403
    assert alice_browser.get(url).status_code == 302  # to the admin login


def test_the_prune_task_keeps_entries_for_the_retention_period(alice, settings):
    settings.SECURITY_LOG_RETENTION_DAYS = 30
    with time_machine.travel(timezone.now() - dt.timedelta(days=31)):
        security_event_record(action=Action.SIGN_IN, user=alice)
    with time_machine.travel(timezone.now() - dt.timedelta(days=29)):
        recent = security_event_record(action=Action.SIGN_IN, user=alice)
    assert security_log_prune() == 1
    assert list(SecurityEvent.objects.filter(action=Action.SIGN_IN)) == [recent]
