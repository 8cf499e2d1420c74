"""The admin's door: no password guessing at /admin/login/, and two-factor authentication
for staff (required before the staff pages when STAFF_REQUIRE_MFA is on)."""

import re

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import (
    SECRET_SESSION_KEY,
    format_hotp_value,
    hotp_value,
    yield_hotp_counters_from_time,
)
from django.test import Client
from django.urls import reverse

from audit.models import SecurityEvent
from tests.accounts.conftest import last_mail_code

LOGIN = reverse("account_login")
CONFIRM = reverse("account_confirm_login_code")
ADMIN_LOGIN = reverse("admin:login")

pytestmark = pytest.mark.django_db


def totp_now(secret: str) -> str:
    return format_hotp_value(hotp_value(secret, next(yield_hotp_counters_from_time())))


def sign_in_by_code(browser, user, mailoutbox, *, next_url="/admin/"):
    browser.post(LOGIN, {"region": "OTHER", "login": user.email, "next": next_url})
    return browser.post(CONFIRM, {"code": last_mail_code(mailoutbox), "next": next_url})


def assert_strict_csp_safe(html: str) -> None:
    """Nothing the CSP (script-src/style-src 'self') would block: no inline script or style."""
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert not re.search(r"<style\b", html)
    assert not re.search(r"\sstyle=", html)
    assert not re.search(r"\son[a-z]+=", html)


def test_it_takes_no_password_at_the_admin_login(client, staff):
    for n in range(150):
        client.post(ADMIN_LOGIN, {"username": staff.email, "password": f"guess-{n}"})

    response = client.post(
        ADMIN_LOGIN, {"username": staff.email, "password": "a-staff-password", "next": "/admin/"}
    )

    assert response.status_code == 302
    assert response["Location"].startswith(LOGIN + "?next=")
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302


def test_it_signs_staff_in_to_the_admin_by_code(client, staff, mailoutbox):
    response = client.get("/admin/")
    response = client.get(response["Location"])
    assert response["Location"] == LOGIN + "?next=%2Fadmin%2F"

    response = sign_in_by_code(client, staff, mailoutbox)

    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert SecurityEvent.objects.filter(
        user=staff, action=SecurityEvent.Action.STAFF_SIGN_IN
    ).exists()


@pytest.mark.parametrize("page", ["/admin/", "/review/"])
def test_it_sends_staff_without_2fa_to_set_it_up_when_required(staff_client, settings, page):
    assert staff_client.get(page).status_code == 200
    settings.STAFF_REQUIRE_MFA = True

    response = staff_client.get(page)

    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_activate_totp")


def test_it_turns_on_totp_and_then_asks_for_it_at_sign_in(
    client, staff, settings, mailoutbox, django_capture_on_commit_callbacks
):
    settings.STAFF_REQUIRE_MFA = True
    sign_in_by_code(client, staff, mailoutbox)
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    assert_strict_csp_safe(page.content.decode())
    secret = client.session[SECRET_SESSION_KEY]

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("mfa_activate_totp"), {"code": totp_now(secret)})

    assert response.status_code == 302
    assert Authenticator.objects.filter(user=staff, type=Authenticator.Type.TOTP).exists()
    assert SecurityEvent.objects.filter(user=staff, action=SecurityEvent.Action.MFA_ENABLED)
    codes_page = client.get(reverse("mfa_view_recovery_codes"))
    assert codes_page.status_code == 200
    assert_strict_csp_safe(codes_page.content.decode())
    assert client.get("/admin/").status_code == 200

    # Next time: the email code alone is not enough.
    browser = Client()
    response = sign_in_by_code(browser, staff, mailoutbox)
    assert response["Location"] == reverse("mfa_authenticate")
    assert browser.get("/admin/").status_code == 302
    response = browser.post(reverse("mfa_authenticate"), {"code": totp_now(secret)})
    assert browser.get("/admin/").status_code == 200


def test_it_shows_the_2fa_pages_in_chinese(staff_client):
    staff_client.cookies["django_language"] = "zh-hans"
    html = staff_client.get(reverse("mfa_index")).content.decode()
    assert "两步验证" in html or "双因素" in html or "身份验证" in html
    assert_strict_csp_safe(html)
