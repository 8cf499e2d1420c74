"""The API Keys page and Swagger UI in real Chromium, under the real CSP."""

from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import pytest
from django.db import connections
from django.test import Client

from keys import services
from keys.models import ApiKey

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser_page(live_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(
                viewport={"width": 1200, "height": 900}, timezone_id="Asia/Shanghai"
            )
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", lambda message: _console_error(errors, message))
            page.on(
                "response",
                lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            page.errors = errors
            yield page
        finally:
            browser.close()
            # Inside Playwright's loop Django keeps the ORM connection in a context-local slot,
            # apart from the thread's usual one; close it here or PostgreSQL refuses to drop
            # the test database later ("being accessed by other users").
            connections.close_all()


def _console_error(errors, message):
    # Chromium asks for /favicon.ico on its own, and its 404 shows up here as "Failed to load
    # resource"; the resources the page itself loads are checked through "response" events.
    if message.type != "error" or message.text.startswith("Failed to load resource"):
        return
    errors.append(message.text)


def _sign_in(page, live_server, user):
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [
            {
                "name": "sessionid",
                "value": client.cookies["sessionid"].value,
                "domain": urlparse(live_server.url).hostname,
                "path": "/",
            }
        ]
    )


def test_it_reveals_copies_creates_and_deletes_keys_in_chromium(
    browser_page, live_server, alice, alice_key
):
    page = browser_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    secret = services.api_key_reveal(api_key=alice_key)
    _sign_in(page, live_server, alice)

    page.goto(f"{live_server.url}/keys/")
    row = page.locator(f"#key-{alice_key.public_id}")
    created = alice_key.created_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    assert row.locator("time").first.inner_text() == created  # in the visitor's time zone
    cell = page.locator(f"#secret-{alice_key.public_id}")
    assert cell.inner_text() == alice_key.masked

    row.get_by_role("button", name="Reveal").click()
    page.wait_for_function(
        "([id, secret]) => document.getElementById(id).textContent === secret",
        arg=[f"secret-{alice_key.public_id}", secret],
    )
    assert page.url.endswith("/keys/")  # revealed in place, no navigation
    row.get_by_role("button", name="Hide").click()
    assert cell.inner_text() == alice_key.masked

    row.get_by_role("button", name="Copy").click()
    row.get_by_role("button", name="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    assert cell.inner_text() == alice_key.masked  # copying does not show it

    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    laptop = ApiKey.objects.get(user=alice, name="laptop")
    laptop_secret = services.api_key_reveal(api_key=laptop)
    assert page.locator("#fresh-key-secret").inner_text() == laptop_secret

    page.locator(f"#key-{laptop.public_id}").get_by_role("link", name="Delete").click()
    page.get_by_role("button", name="Delete the key").click()
    page.get_by_text("Key “laptop” deleted.").wait_for()
    assert not ApiKey.objects.filter(pk=laptop.pk).exists()
    assert page.errors == []


def test_the_key_table_fits_a_phone_screen(browser_page, live_server, alice, alice_key):
    page = browser_page
    page.set_viewport_size({"width": 375, "height": 740})
    _sign_in(page, live_server, alice)
    page.goto(f"{live_server.url}/keys/")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    assert (
        page.locator(f"#key-{alice_key.public_id}")
        .get_by_role("button", name="Reveal")
        .is_visible()
    )


def test_swagger_ui_renders_the_key_endpoints_under_the_csp(browser_page, live_server, alice):
    page = browser_page
    _sign_in(page, live_server, alice)
    page.goto(f"{live_server.url}/api/docs/")
    page.get_by_text("/api/v1/keys/{public_id}/reveal/").first.wait_for(timeout=15_000)
    assert page.get_by_text("API keys").first.is_visible()
    assert not [e for e in page.errors if "Content Security Policy" in e and "script" in e]


def test_without_javascript_reveal_is_a_page_and_copy_is_hidden(
    browser_page, live_server, alice, alice_key
):
    page = browser_page.context.browser.new_context(java_script_enabled=False).new_page()
    secret = services.api_key_reveal(api_key=alice_key)
    _sign_in(page, live_server, alice)
    page.goto(f"{live_server.url}/keys/")
    row = page.locator(f"#key-{alice_key.public_id}")
    assert not row.get_by_role("button", name="Copy").is_visible()

    row.get_by_role("button", name="Reveal").click()
    page.wait_for_url(f"**/keys/{alice_key.public_id}/reveal/")
    assert page.locator("#revealed-secret").inner_text() == secret

    page.goto(f"{live_server.url}/keys/")
    row.get_by_role("button", name="Disable").click()
    page.get_by_text("is disabled").wait_for()
    alice_key.refresh_from_db()
    assert not alice_key.is_active
    page.context.close()
