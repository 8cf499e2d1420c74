"""Sign-up in real Chromium: a newcomer signs up with a code and finds the ``default`` key."""

import re

import pytest

from tests.browser import chromium, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def browser_page(monkeypatch):
    with chromium(monkeypatch) as browser:
        # A phone-sized window: the pages must work there.
        page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
        errors = watch_errors(page, failed_responses=False)
        yield page, errors


def _code_from(text: str) -> str:
    return re.search(r"\b(\d{6})\b", text).group(1)


def test_a_newcomer_signs_up_by_email_and_sees_the_default_key(
    live_server, browser_page, mailoutbox, transactional_db
):
    from playwright.sync_api import expect

    from accounts.models import User
    from keys.models import ApiKey

    page, errors = browser_page
    page.goto(f"{live_server.url}/")
    page.get_by_role("link", name="Sign up").first.click()
    expect(page).to_have_url(re.compile(r"/accounts/signup/$"))

    page.get_by_label("Outside mainland China").check()
    page.get_by_label("Email address").fill("Newcomer@Example.com")
    page.get_by_role("button", name="Send me a code").click()

    expect(page).to_have_url(re.compile(r"/accounts/login/code/confirm/$"))
    expect(page.locator(".messages")).to_contain_text("newcomer@example.com")
    assert mailoutbox[-1].to == ["newcomer@example.com"]
    page.get_by_label("6-digit code").fill(_code_from(mailoutbox[-1].body))
    page.get_by_role("button", name="Continue").click()

    expect(page).to_have_url(re.compile(r"/keys/$"))
    user = User.objects.get(email="newcomer@example.com")
    key = ApiKey.objects.get(user=user, name="default")
    row = page.locator(f"#key-{key.public_id}")
    expect(row).to_contain_text("default")
    expect(row).to_contain_text(key.prefix)
    assert errors == []


def test_a_mainland_newcomer_signs_up_by_phone(live_server, browser_page, transactional_db):
    from playwright.sync_api import expect

    from accounts import sms
    from accounts.models import User

    sms.outbox.clear()
    page, errors = browser_page
    page.goto(f"{live_server.url}/accounts/signup/")
    page.get_by_label("Mainland China", exact=True).check()
    page.get_by_label("Mobile number").fill("138 0013 8009")
    page.get_by_role("button", name="Send me a code").click()

    expect(page).to_have_url(re.compile(r"/accounts/login/code/confirm/$"))
    assert sms.outbox[-1].to == "+8613800138009"
    page.get_by_label("6-digit code").fill("000000" if sms.outbox[-1].code != "000000" else "1")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator("form.auth-form")).to_contain_text("That code is not right")
    page.get_by_label("6-digit code").fill(sms.outbox[-1].code)
    page.get_by_role("button", name="Continue").click()

    expect(page).to_have_url(re.compile(r"/keys/$"))
    expect(page.locator("table.keys-table")).to_contain_text("default")
    assert User.objects.get(phone="+8613800138009").phone_verified
    assert errors == []
