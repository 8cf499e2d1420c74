"""The API Keys page and Swagger UI in real Chromium, under the real CSP."""

from zoneinfo import ZoneInfo

import pytest

from keys import services
from keys.models import ApiKey
from tests.browser import chromium, sign_in, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture
def browser_page(live_server, monkeypatch):
    with chromium(monkeypatch) as browser:
        context = browser.new_context(
            viewport={"width": 1200, "height": 900}, timezone_id="Asia/Shanghai"
        )
        page = context.new_page()
        watch_errors(page)
        yield page


def _sign_in(page, live_server, user):
    sign_in(page.context, live_server.url, user)


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


def _gateway_error(base_url, secret, dialect, model="LongCat-Flash-Chat", **extra):
    """A small request with ``secret`` in ``dialect``: "ok", or the error (code or type)."""
    import requests

    payload = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    headers = {"authorization": f"Bearer {secret}", "anthropic-version": "2023-06-01"}
    if dialect == "openai":
        url = f"{base_url}/openai/v1/chat/completions"
    else:
        url = f"{base_url}/anthropic/v1/messages"
    payload.update(extra.pop("payload", {}))
    response = requests.post(url, json=payload, headers={**headers, **extra}, timeout=30)
    if response.status_code == 200:
        return "ok"
    error = response.json()["error"]
    return (response.status_code, error.get("code") or error["type"], error["message"])


def test_a_key_limited_in_the_browser_is_refused_with_clear_errors_in_both_dialects(
    browser_page, live_server, alice, alice_key
):
    from gateway.models import Model
    from gateway.services import catalog_bootstrap
    from tests.acceptance.live import demo_upstream, gateway_servers
    from usage.models import KeyDailyUsage

    catalog_bootstrap()
    Model.objects.create(name="other-chat", upstream_kind=Model.UpstreamKind.DEMO)
    secret = services.api_key_reveal(api_key=alice_key)
    page = browser_page
    _sign_in(page, live_server, alice)

    def save_limits(**fields):
        page.goto(f"{live_server.url}/keys/{alice_key.public_id}/")
        for label, value in fields.items():
            page.get_by_label(label, exact=True).fill(value)
        page.get_by_role("button", name="Save limits").click()
        page.get_by_text("are saved").wait_for()

    save_limits(
        **{
            "Daily token cap": "10000",
            "Allowed models": "LongCat-Flash-Chat",
            "Allowed IP addresses": "203.0.113.0/24",
        }
    )
    alice_key.refresh_from_db()
    assert alice_key.daily_token_cap == 10_000
    assert (alice_key.allowed_models, alice_key.allowed_ips) == (
        ["LongCat-Flash-Chat"],
        ["203.0.113.0/24"],
    )

    with demo_upstream() as upstream, gateway_servers(1, DEMO_UPSTREAM_URL=upstream) as (url,):
        # From an address outside the range (the test's own, 127.0.0.1): 403, naming it.
        for dialect, kind in (("openai", "ip_not_allowed"), ("anthropic", "permission_error")):
            status, code, message = _gateway_error(url, secret, dialect)
            assert (status, code) == (403, kind)
            assert "127.0.0.1" in message and "IP allow-list" in message

        save_limits(**{"Allowed IP addresses": "127.0.0.0/8"})
        for dialect, kind in (("openai", "model_not_allowed"), ("anthropic", "permission_error")):
            status, code, message = _gateway_error(url, secret, dialect, model="other-chat")
            assert (status, code) == (403, kind)
            assert "may not use the model other-chat" in message
        assert _gateway_error(url, secret, "openai") == "ok"

        # Spend the 10,000 tokens of the day, then the cap refuses in both dialects.
        big = {"payload": {"max_tokens": 4000}, "x-demo-tokens": "4000"}
        for _ in range(5):
            if _gateway_error(url, secret, "openai", **big) != "ok":
                break
        for dialect, kind in (
            ("openai", "key_daily_limit_exceeded"),
            ("anthropic", "rate_limit_error"),
        ):
            status, code, message = _gateway_error(url, secret, dialect)
            assert (status, code) == (429, kind)
            assert "daily cap of 10000 tokens is used up" in message
    assert KeyDailyUsage.objects.get(api_key=alice_key).used_tokens <= 10_000
    assert page.errors == []
