"""The proof-of-work challenge in real Chromium, under the production CSP: the page's script
(static/js/challenge.js, no inline code) solves it and the code goes out."""

import re

import pytest

from tests.browser import chromium, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def browser_page(monkeypatch):
    with chromium(monkeypatch) as browser:
        page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
        errors = watch_errors(page, failed_responses=False)
        yield page, errors


def test_it_solves_the_challenge_in_the_browser_and_sends_the_code(
    live_server, browser_page, mailoutbox, settings, transactional_db
):
    from playwright.sync_api import expect

    settings.CODE_CHALLENGE_BITS = 14
    page, errors = browser_page
    page.goto(f"{live_server.url}/accounts/signup/")
    page.get_by_label("Outside mainland China").check()
    page.get_by_label("Email address").fill("solver@example.com")
    page.get_by_role("button", name="Send me a code").click()

    expect(page).to_have_url(re.compile(r"/accounts/login/code/confirm/$"))
    assert mailoutbox[-1].to == ["solver@example.com"]
    assert errors == []  # no CSP violation, no script error
