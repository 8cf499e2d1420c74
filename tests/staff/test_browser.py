"""The staff console in real Chromium against the real platform (uvicorn + gateway + demo
upstream): a staff member finds an applicant by phone number, reads their 30-day usage next
to the application, approves a custom 3,000,000 tokens with a note; the applicant's Usage page
and the security log both show it."""

import json
import urllib.request

import pytest

from tests.browser import chromium, sign_in, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _chat(base_url: str, key: str) -> int:
    body = json.dumps(
        {
            "model": "LongCat-Flash-Chat",
            "messages": [{"role": "user", "content": "Hello from the applicant."}],
            "max_tokens": 20,
        }
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/openai/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def test_staff_find_an_applicant_read_their_usage_and_approve_a_custom_quota(
    transactional_db, monkeypatch, tmp_path
):
    from django.db import connection
    from playwright.sync_api import expect

    from accounts.services import account_create, account_create_with_key
    from audit.models import SecurityEvent
    from gateway.services import catalog_bootstrap
    from tests.docs.examples import live_platform
    from usage.models import QuotaApplication
    from usage.selectors import usage_today
    from usage.services import quota_application_create

    catalog_bootstrap()
    applicant, key = account_create_with_key(phone="+8613900139000", region="CN")
    staff = account_create(email="reviewer@example.com", is_staff=True)
    application = quota_application_create(
        user=applicant,
        intended_use="A support bot for our shop",
        expected_daily_tokens=3_000_000,
        contact="+86 139 0013 9000",
    )

    with (
        live_platform(connection.settings_dict, tmp_path) as base_url,
        chromium(monkeypatch) as browser,
    ):
        for _ in range(2):
            assert _chat(base_url, key) == 200
        used = usage_today(user=applicant).used_tokens
        assert used > 0

        context = browser.new_context(viewport={"width": 1200, "height": 900})
        sign_in(context, base_url, staff)
        page = context.new_page()
        errors = watch_errors(page)

        # Find the applicant by the number they typed, the way people type it.
        page.goto(f"{base_url}/staff/")
        page.get_by_role("link", name="Find an account").first.click()
        page.get_by_label("Email, phone number, key prefix or account id").fill("139 0013 9000")
        page.keyboard.press("Enter")
        expect(page.locator("h1")).to_contain_text("+8613900139000")
        expect(page.locator('[data-fact="quota"]')).to_have_text("500,000 (platform default)")

        # The review queue shows their usage beside the application.
        page.get_by_role("link", name="Quota applications").first.click()
        card = page.locator(f"#application-{application.public_id}")
        expect(card).to_contain_text("A support bot for our shop")
        expect(card).to_contain_text(f"{used:,} tokens in 2 requests")
        expect(card.locator("svg.usage-chart")).to_be_visible()
        expect(card.locator('[data-fact="days-at-quota"]')).to_have_text("0 / 30")

        # Approve a custom figure with a note, by keyboard.
        card.get_by_label("Quota if approved").fill("3000000")
        card.get_by_label("Note to the applicant (required to reject)").fill(
            "Approved for the shop launch"
        )
        card.get_by_role("button", name="Approve").focus()
        page.keyboard.press("Enter")
        expect(page.locator(".messages")).to_contain_text("3,000,000 tokens a day")
        application.refresh_from_db()
        assert application.status == QuotaApplication.Status.APPROVED

        # The staff account page's security log names the approval and the staff member.
        page.goto(f"{base_url}/staff/accounts/{applicant.public_id}/")
        log = page.locator("#security-log")
        expect(log).to_contain_text("Quota application approved")
        expect(log).to_contain_text("reviewer@example.com")
        assert errors == [], errors

        # The applicant sees it on their Usage page and in their own security log.
        applicant_context = browser.new_context()
        sign_in(applicant_context, base_url, applicant)
        mine = applicant_context.new_page()
        mine_errors = watch_errors(mine, failed_responses=False)
        mine.goto(f"{base_url}/usage/")
        expect(mine.locator('[data-stat="quota"]')).to_have_text("3,000,000")
        expect(mine.locator(".applications-table")).to_contain_text("Approved")
        expect(mine.locator(".applications-table")).to_contain_text("Approved for the shop launch")
        mine.goto(f"{base_url}/account/")
        expect(mine.locator("#security-log")).to_contain_text("Quota application approved")
        assert mine_errors == [], mine_errors

    event = SecurityEvent.objects.get(
        user=applicant, action=SecurityEvent.Action.APPLICATION_APPROVED
    )
    assert event.actor == staff and event.detail["quota"] == 3_000_000
