"""The Usage page in real Chromium against the real platform (uvicorn + gateway + demo upstream).

A user spends tokens through the OpenAI-compatible API and watches the page follow without a
reload, runs out, applies for more; staff approve in the review queue; the user's page shows
the increased quota and requests go through again.
"""

import json
import re
import urllib.error
import urllib.request

import pytest

from tests.browser import chromium, sign_in, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SMALL_QUOTA = 600


def _chat(base_url: str, key: str, max_tokens: int = 40) -> tuple[int, dict]:
    body = json.dumps(
        {
            "model": "LongCat-Flash-Chat",
            "messages": [{"role": "user", "content": "Say hello to the usage page."}],
            "max_tokens": max_tokens,
        }
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/openai/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _stat(page, name: str) -> int:
    return int(page.locator(f'[data-stat="{name}"]').inner_text().replace(",", ""))


def test_a_user_watches_usage_live_applies_and_gets_more_quota(
    transactional_db, settings, monkeypatch, tmp_path
):
    from django.db import connection
    from playwright.sync_api import expect

    from accounts.services import account_create, account_create_with_key
    from gateway.services import catalog_bootstrap
    from tests.docs.examples import live_platform
    from usage.models import QuotaApplication
    from usage.selectors import usage_today

    # A small free quota for this platform run, so the user runs out after a few requests.
    monkeypatch.setenv("DAILY_FREE_QUOTA", str(SMALL_QUOTA))
    settings.DAILY_FREE_QUOTA = SMALL_QUOTA
    catalog_bootstrap()
    user, key = account_create_with_key(email="watcher@example.com")
    staff = account_create(email="reviewer@example.com", is_staff=True)

    with (
        live_platform(connection.settings_dict, tmp_path) as base_url,
        chromium(monkeypatch) as browser,
    ):
        user_context = browser.new_context(viewport={"width": 1200, "height": 900})
        sign_in(user_context, base_url, user)
        page = user_context.new_page()
        errors = watch_errors(page, failed_responses=False)
        page.goto(f"{base_url}/usage/")
        expect(page.locator('[data-stat="quota"]')).to_have_text(f"{SMALL_QUOTA:,}")
        assert _stat(page, "used") == 0
        # The countdown ticks in the browser, and the reset shows in local time too.
        expect(page.locator("[data-countdown]")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
        expect(page.locator("time[data-local-time]").first).to_contain_text("your time:")
        page.evaluate("window.__noReload = true")

        status, body = _chat(base_url, key)
        assert status == 200, body
        spent = body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        # The live panel catches up by itself (htmx polling), with no reload.
        expect(page.locator('[data-stat="used"]')).to_have_text(f"{spent:,}", timeout=15_000)
        assert page.evaluate("window.__noReload") is True

        refused = None
        for _ in range(40):
            status, body = _chat(base_url, key)
            if status == 429:
                refused = body
                break
            assert status == 200, body
        assert refused is not None and refused["error"]["code"] == "insufficient_quota"
        today = usage_today(user=user)
        assert today.remaining_tokens < 100  # too little left for even a short request
        expect(page.locator('[data-stat="used"]')).to_have_text(
            f"{today.used_tokens:,}", timeout=15_000
        )
        expect(page.locator('[data-stat="remaining"]')).to_have_text(f"{today.remaining_tokens:,}")
        assert page.evaluate("window.__noReload") is True

        # Apply for more on the same page.
        page.fill("#id_intended_use", "A documentation assistant for our team")
        page.fill("#id_company", "Example Co")
        page.fill("#id_expected_daily_tokens", "2000000")
        page.fill("#id_contact", "watcher@example.com")
        page.click("text=Send application")
        expect(page.locator(".usage-quota")).to_contain_text("waiting for review")
        application = QuotaApplication.objects.get(user=user)
        assert application.status == QuotaApplication.Status.PENDING

        # Staff approve in the review queue.
        staff_context = browser.new_context()
        sign_in(staff_context, base_url, staff)
        review = staff_context.new_page()
        review.goto(f"{base_url}/review/")
        card = review.locator(f"#application-{application.public_id}")
        expect(card).to_contain_text("A documentation assistant for our team")
        card.get_by_role("button", name="Approve").click()
        expect(review.locator(".messages")).to_contain_text("Approved")

        # The user's open page shows the new quota by itself, and requests go through.
        page.evaluate("window.__noReload = true")
        expect(page.locator('[data-stat="quota"]')).to_have_text("5,000,000", timeout=15_000)
        assert page.evaluate("window.__noReload") is True
        status, body = _chat(base_url, key)
        assert status == 200, body
        page.reload()
        expect(page.locator(".applications-table")).to_contain_text("Approved")
        assert errors == [], errors
