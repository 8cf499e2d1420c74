"""The docs in real Chromium under the real CSP: copy buttons and "Use my key"."""

import pytest

from keys import selectors as key_selectors
from keys import services as key_services
from tests.browser import chromium, sign_in, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def browser_page(live_server, monkeypatch):
    with chromium(monkeypatch) as browser:
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
        page = context.new_page()
        watch_errors(page)
        yield page


def _sign_in(page, live_server, user):
    sign_in(page.context, live_server.url, user)


def _slot_texts(page) -> list[str]:
    return page.eval_on_selector_all(".api-key-slot", "slots => slots.map(s => s.textContent)")


def test_use_my_key_fills_every_example_and_copy_takes_it_along(browser_page, live_server, alice):
    page = browser_page
    secret = key_services.api_key_reveal(
        api_key=key_selectors.api_keys_for_user(alice).get(name="default")
    )
    _sign_in(page, live_server, alice)
    page.goto(f"{live_server.url}/docs/quick-start/")

    assert set(_slot_texts(page)) == {"YOUR_API_KEY"}
    page.get_by_role("button", name="Use my key").click()
    page.wait_for_function(
        "secret => [...document.querySelectorAll('.api-key-slot')]"
        ".every(slot => slot.textContent === secret)",
        arg=secret,
    )
    assert len(_slot_texts(page)) >= 8

    # A copy button copies its block with the key in it.
    first_python = page.locator("pre:has(code.language-python)").first
    block_id = first_python.get_attribute("id")
    page.locator(f'[data-copy-target="#{block_id}"]').click()
    page.wait_for_function("() => navigator.clipboard.readText().then(t => t.length > 0)")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert f"Bearer {secret}" in copied
    assert "YOUR_API_KEY" not in copied

    # One more click puts the placeholder back.
    page.get_by_role("button", name="Show the placeholder again").click()
    assert set(_slot_texts(page)) == {"YOUR_API_KEY"}
    assert page.errors == []


def test_anonymous_readers_get_copy_buttons_but_no_key_button(browser_page, live_server):
    page = browser_page
    page.goto(f"{live_server.url}/docs/api/")
    assert page.locator("[data-key-fill]").count() == 0
    assert page.locator(".code-copy:visible").count() >= 5
    # The stylesheet for highlighted code loads (no inline styles are allowed by the CSP).
    color = page.eval_on_selector(".highlight .s2", "el => getComputedStyle(el).color")
    assert color not in ("", "rgb(226, 232, 240)")  # a token colour, not the plain <pre> colour
    assert page.errors == []


def test_without_javascript_the_js_only_controls_stay_hidden(live_server, alice, monkeypatch):
    with chromium(monkeypatch) as browser:
        page = browser.new_context(java_script_enabled=False).new_page()
        _sign_in(page, live_server, alice)
        page.goto(f"{live_server.url}/docs/quick-start/")
        assert page.locator(".code-copy:visible").count() == 0
        assert page.locator("[data-key-fill]:visible").count() == 0
        # (Playwright turns scripts off without switching the parser's scripting flag, so
        # the <noscript> hint is present but not rendered here; real browsers show it.)
        assert "<noscript>" in page.content()
        assert set(_slot_texts(page)) == {"YOUR_API_KEY"}


def test_no_docs_page_scrolls_sideways_on_a_phone(browser_page, live_server):
    page = browser_page
    page.set_viewport_size({"width": 390, "height": 844})
    for slug in ("quick-start", "api", "claude-code", "codex", "faq", "changelog"):
        for language in ("en", "zh-hans"):
            page.goto(f"{live_server.url}/docs/{slug}/?lang={language}")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (slug, language, width)
    assert page.errors == []
