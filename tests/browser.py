"""Shared plumbing for the browser tests: Debian's Chromium under Playwright.

``playwright install`` cannot download a browser here, so every test launches
``/usr/bin/chromium`` (the ``e2e`` marker skips them where it is missing, see conftest).
"""

from contextlib import contextmanager
from urllib.parse import urlparse

from django.db import connections
from django.test import Client

CHROMIUM_PATH = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling hosts this closed network
# refuses; root needs --no-sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium(monkeypatch):
    """A Chromium browser for one test, closed afterwards with the ORM connections opened
    while Playwright's loop ran (otherwise PostgreSQL cannot drop the test database)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's ORM calls beside it
    # are still plain synchronous code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
            connections.close_all()


def watch_errors(page, *, failed_responses: bool = True) -> list[str]:
    """Collect the page's script errors, console errors and (optionally) 4xx/5xx responses
    into ``page.errors`` so that a test can assert there were none."""
    errors: list[str] = []

    def on_console(message):
        # Chromium asks for /favicon.ico on its own and reports the 404 as "Failed to load
        # resource"; resources the page itself loads are checked through "response" events.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", on_console)
    if failed_responses:
        page.on(
            "response",
            lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
    page.errors = errors
    return errors


def sign_in(context, base_url: str, user) -> None:
    """Give a browser context ``user``'s session cookie (sign-in itself is tested elsewhere)."""
    client = Client()
    client.force_login(user)
    context.add_cookies(
        [
            {
                "name": "sessionid",
                "value": client.cookies["sessionid"].value,
                "domain": urlparse(base_url).hostname,
                "path": "/",
            }
        ]
    )
