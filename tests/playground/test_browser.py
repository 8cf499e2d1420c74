"""The Playground in real Chromium against the real platform (uvicorn + gateway + demo upstream).

A signed-in user sends prompts in both API formats and watches them stream (the demo's slow
mode, ``x-demo-delay-ms``, set as an extra browser header: the gateway forwards ``x-demo-*`` to
the demo model outside production), sees the usage record's own figures, stops a slow answer
midway, gets a clear error for a disabled key, and copies a curl command that answers 200 when
run as is. The key is never in the page's HTML nor in any log.
"""

import subprocess

import pytest

from tests.browser import chromium, sign_in, watch_errors

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PROMPT = "Hello from the playground."


def _stat(page, name: str) -> str:
    return page.locator(f'[data-pg-stat="{name}"]').inner_text()


def _ms(value) -> str:
    return f"{value:,} ms"


def _wait_finished(page, count: int) -> None:
    page.wait_for_function(
        "n => Number(document.querySelector('[data-playground]')"
        ".getAttribute('data-pg-finished') || 0) >= n",
        arg=count,
        timeout=30_000,
    )


def _send_and_watch(page, expect, send_with: str) -> tuple[str, str]:
    """Send the typed message; return (the answer when its first words showed, the final one)."""
    answer = page.locator("[data-pg-answer]").last
    page.locator("#pg-message").press(send_with)
    expect(page.locator("[data-playground]")).to_have_attribute("data-pg-state", "streaming")
    expect(answer).to_contain_text("This is", timeout=15_000)
    early = answer.inner_text()
    # Still streaming when the first words are on screen: the answer is not buffered.
    assert page.locator("[data-playground]").get_attribute("data-pg-state") == "streaming"
    return early, answer


def _assert_stats_match(page, record, today) -> None:
    assert _stat(page, "input_tokens") == f"{record.input_tokens:,}"
    assert _stat(page, "output_tokens") == f"{record.output_tokens:,}"
    assert _stat(page, "latency_ms") == _ms(record.latency_ms)
    assert _stat(page, "first_token_ms") == _ms(record.first_token_ms)
    assert _stat(page, "remaining_tokens") == f"{today.remaining_tokens:,}"


def test_a_user_streams_stops_sees_errors_and_copies_curl_in_the_playground(
    transactional_db, settings, monkeypatch, tmp_path
):
    from django.db import connection
    from playwright.sync_api import expect

    from accounts.services import account_create_with_key
    from gateway.demo_upstream import answer_pieces
    from gateway.services import catalog_bootstrap
    from keys import services as key_services
    from keys.models import ApiKey
    from tests.docs.examples import live_platform
    from usage.models import UsageRecord
    from usage.selectors import usage_today

    catalog_bootstrap()
    user, secret = account_create_with_key(email="player@example.com")
    key = ApiKey.objects.get(user=user)

    def latest_record():
        return UsageRecord.objects.filter(api_key=key).order_by("-created_at", "-id").first()

    with (
        live_platform(connection.settings_dict, tmp_path) as base_url,
        chromium(monkeypatch) as browser,
    ):
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        sign_in(context, base_url, user)
        page = context.new_page()
        errors = watch_errors(page, failed_responses=False)
        gateway_requests = []
        page.on(
            "request",
            lambda r: (
                gateway_requests.append(r) if "/v1/" in r.url and r.method == "POST" else None
            ),
        )
        page.set_extra_http_headers({"x-demo-delay-ms": "120"})

        response = page.goto(f"{base_url}/playground/")
        assert secret not in response.text()
        page.evaluate("window.__noReload = true")
        expect(page.get_by_role("link", name="Playground")).to_be_visible()

        # --- OpenAI format, sent with Enter ---------------------------------------------
        page.get_by_label("Max tokens").fill("24")
        page.get_by_label("System prompt").fill("Answer briefly.")
        page.get_by_label("Your message").fill(PROMPT)
        early, answer = _send_and_watch(page, expect, "Enter")
        _wait_finished(page, 1)
        final = "".join(answer_pieces(24))
        expect(answer).to_have_text(final)
        assert len(early) < len(final)
        expect(page.locator("[data-playground]")).to_have_attribute("data-pg-usage", "record")
        record = latest_record()
        assert record.endpoint == "openai.chat" and record.stream and record.status_code == 200
        assert record.output_tokens == 24
        assert record.first_token_ms < record.latency_ms
        _assert_stats_match(page, record, usage_today(user=user))
        sent = gateway_requests[-1]
        assert sent.url == f"{base_url}/openai/v1/chat/completions"
        assert sent.headers["x-playground"] == "1"
        assert sent.headers["authorization"] == f"Bearer {secret}"
        assert "cookie" not in sent.all_headers()  # the gateway call carries no session
        assert secret not in page.content()  # in memory only, never in the DOM

        # --- Anthropic format, the same conversation, sent with Ctrl+Enter ---------------
        page.get_by_label("Anthropic").check()
        page.get_by_label("Your message").fill("And once more, please.")
        early, answer = _send_and_watch(page, expect, "Control+Enter")
        _wait_finished(page, 2)
        expect(answer).to_have_text(final)
        assert len(early) < len(final)
        expect(page.locator("[data-pg-log] > li")).to_have_count(4)
        record = latest_record()
        assert record.endpoint == "anthropic.messages" and record.status_code == 200
        _assert_stats_match(page, record, usage_today(user=user))
        sent = gateway_requests[-1]
        assert sent.url == f"{base_url}/anthropic/v1/messages"
        assert sent.headers["x-playground"] == "1" and sent.headers["x-api-key"] == secret
        assert [m["role"] for m in sent.post_data_json["messages"]] == [
            "user",
            "assistant",
            "user",
        ]
        assert sent.post_data_json["system"] == "Answer briefly."

        # --- copy as curl: prefix only until the owner shows the key; runs as is ---------
        snippet = page.locator("[data-pg-snippet]")
        page.get_by_role("button", name="Copy as curl").click()
        expect(snippet).to_contain_text(key.prefix)
        assert secret not in snippet.inner_text()
        page.get_by_role("button", name="Show my key in the code").click()
        expect(snippet).to_contain_text(secret)
        page.get_by_role("button", name="Copy as curl").click()
        expect(page.locator("[data-pg-copy-status]")).to_have_text("Copied")
        command = page.evaluate("navigator.clipboard.readText()")
        assert command.startswith(f"curl -sS -N '{base_url}/anthropic/v1/messages'")
        ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert "event: message_stop" in ran.stdout and "event: error" not in ran.stdout
        status = subprocess.run(
            ["bash", "-c", command + " -o /dev/null -w '%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.stdout == "200", status
        page.get_by_role("button", name="Copy as Python (openai)").click()
        expect(snippet).to_contain_text("from openai import OpenAI")
        expect(snippet).to_contain_text(f'base_url="{base_url}/openai/v1"')
        page.get_by_role("button", name="Hide the key").click()
        expect(snippet).not_to_contain_text(secret)

        # --- a slow answer stopped midway: charged what was delivered ---------------------
        page.set_extra_http_headers({"x-demo-delay-ms": "250"})
        page.get_by_role("button", name="New chat").click()
        expect(page.locator("[data-pg-log] > li")).to_have_count(0)
        page.get_by_label("OpenAI").check()
        page.get_by_label("Max tokens").fill("40")
        page.get_by_label("Your message").fill("Tell me a long story.")
        _early, answer = _send_and_watch(page, expect, "Enter")
        page.get_by_role("button", name="Stop").click()
        _wait_finished(page, 3)
        expect(page.locator("[data-playground]")).to_have_attribute("data-pg-outcome", "stopped")
        expect(page.locator("[data-pg-status]")).to_contain_text("Stopped")
        stopped_text = answer.inner_text()
        assert stopped_text and len(stopped_text) < len("".join(answer_pieces(40)))
        expect(page.locator("[data-playground]")).to_have_attribute("data-pg-usage", "record")
        record = latest_record()
        assert record.status_code == 499 and record.error_code == "client_disconnected"
        assert 0 < record.output_tokens < 40
        _assert_stats_match(page, record, usage_today(user=user))

        # --- a disabled key: the gateway's message and the way to the Keys page -----------
        page.set_extra_http_headers({})
        key_services.api_key_set_active(api_key=key, is_active=False)
        page.get_by_label("Your message").fill("Are you still there?")
        page.get_by_role("button", name="Send").click()
        _wait_finished(page, 4)
        error = page.locator("[data-pg-error]")
        expect(error).to_be_visible()
        expect(error).to_contain_text("This API key is disabled")
        expect(error.get_by_role("link", name="Open API Keys")).to_have_attribute("href", "/keys/")
        # The refused message goes back into the box, to send again later.
        expect(page.get_by_label("Your message")).to_have_value("Are you still there?")
        assert page.evaluate("window.__noReload") is True
        assert errors == [], errors

    # The key is in no log of the platform or the demo model.
    for log in tmp_path.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log.name


def test_the_playground_on_a_phone_in_simplified_chinese(
    transactional_db, settings, monkeypatch, tmp_path
):
    from django.db import connection
    from playwright.sync_api import expect

    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from tests.docs.examples import live_platform

    catalog_bootstrap()
    user, _secret = account_create_with_key(email="phone@example.com")

    with (
        live_platform(connection.settings_dict, tmp_path) as base_url,
        chromium(monkeypatch) as browser,
    ):
        context = browser.new_context(
            viewport={"width": 375, "height": 740},
            locale="zh-CN",
            extra_http_headers={"Accept-Language": "zh-Hans"},
            has_touch=True,
        )
        sign_in(context, base_url, user)
        page = context.new_page()
        errors = watch_errors(page, failed_responses=False)
        page.goto(f"{base_url}/playground/")
        expect(page.locator("h1")).to_have_text("试用")
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        page.get_by_label("你的消息").fill("你好")
        page.get_by_role("button", name="发送").click()
        _wait_finished(page, 1)
        expect(page.locator("[data-pg-status]")).to_have_text("回答完成。")
        expect(page.locator("[data-pg-stat='latency_ms']")).to_contain_text("毫秒")
        assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
        expect(page.get_by_role("button", name="复制为 curl")).to_be_visible()
        assert errors == [], errors


def test_failures_show_the_gateways_message_and_what_to_do_next(
    transactional_db, settings, monkeypatch, tmp_path
):
    from django.db import connection
    from playwright.sync_api import expect

    from accounts.models import User
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from tests.docs.examples import live_platform

    catalog_bootstrap()
    user, _secret = account_create_with_key(email="unlucky@example.com")

    with (
        live_platform(connection.settings_dict, tmp_path) as base_url,
        chromium(monkeypatch) as browser,
    ):
        context = browser.new_context(viewport={"width": 1200, "height": 900})
        sign_in(context, base_url, user)
        page = context.new_page()
        errors = watch_errors(page, failed_responses=False)
        page.goto(f"{base_url}/playground/")
        error = page.locator("[data-pg-error]")
        message = page.get_by_label("Your message")

        # The model server fails before answering (OpenAI envelope, 502).
        page.set_extra_http_headers({"x-demo-fault": "error500"})
        message.fill("First try.")
        message.press("Enter")
        _wait_finished(page, 1)
        expect(error).to_contain_text("The model server could not be reached or failed.")
        expect(error).to_contain_text("Try again in a little while")

        # The model server cuts the stream halfway (an Anthropic SSE error event).
        page.get_by_label("Anthropic").check()
        page.set_extra_http_headers({"x-demo-fault": "cut"})
        message.press("Enter")
        _wait_finished(page, 2)
        # What came before the cut stays on screen, the error event's message under it.
        expect(page.locator("[data-pg-answer]").last).to_contain_text("This is")
        expect(error).to_contain_text("The model server could not be reached or failed.")
        expect(error).to_have_attribute("data-pg-error-code", "upstream_error")

        # The daily quota is used up (Anthropic envelope: no code, told apart by status).
        page.set_extra_http_headers({})
        User.objects.filter(pk=user.pk).update(daily_quota=1)
        message.fill("Third try.")
        message.press("Enter")
        _wait_finished(page, 3)
        expect(error).to_contain_text("Today's token quota is used up")
        expect(error).to_have_attribute("data-pg-error-code", "insufficient_quota")
        link = error.get_by_role("link", name="Apply for more quota")
        expect(link).to_have_attribute("href", "/usage/#quota")
        assert errors == [], errors
