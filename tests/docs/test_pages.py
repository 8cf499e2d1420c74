import os
import re
from html.parser import HTMLParser

import pytest

from docs import pages, rendering
from gateway.services import catalog_bootstrap

pytestmark = pytest.mark.django_db

LANGUAGES = ["en", "zh-hans"]
SLUGS = [page.slug for page in pages.PAGES]


class _Collector(HTMLParser):
    """Collects the text of <pre> blocks and every attribute value, for assertions."""

    def __init__(self):
        super().__init__()
        self.pre_blocks: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        self.attributes.extend((name, value or "") for name, value in attrs)
        if tag == "pre":
            self._depth += 1
            self.pre_blocks.append("")

    def handle_endtag(self, tag):
        if tag == "pre":
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.pre_blocks[-1] += data


def _get(client, path, **headers):
    response = client.get(path, **headers)
    assert response.status_code == 200, path
    return response, response.content.decode()


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("slug", SLUGS)
def test_it_renders_every_page_in_every_language(client, slug, language):
    response, html = _get(client, f"/docs/{slug}/?lang={language}")
    assert f'<html lang="{language}">' in html
    assert response["Content-Language"] == language
    # The sidebar lists every page, the current one marked.
    for page in pages.PAGES:
        assert f'href="/docs/{page.slug}/?lang={language}"' in html
    assert re.search(rf'href="/docs/{slug}/\?lang={language}" aria-current="page"', html)
    # Every variable was filled in; no sentinel or template syntax leaked.
    assert "{{" not in html
    assert "QZDOCVAR" not in html
    # Headings carry anchors; pages with sections have a table of contents.
    assert 'class="heading-anchor"' in html
    if slug != "changelog":
        assert 'class="docs-toc"' in html


@pytest.mark.parametrize("slug", SLUGS)
def test_every_page_exists_in_both_languages_with_its_own_title(slug):
    titles = set()
    for language in LANGUAGES:
        path = pages.CONTENT_DIR / language / pages.PAGES_BY_SLUG[slug].filename
        assert path.exists(), path
        titles.add(rendering.render_file(path, language).title)
    assert len(titles) == 2, titles  # the Chinese page is not the English one


def test_it_serves_the_quick_start_at_the_docs_root(client):
    _response, html = _get(client, "/docs/")
    assert 'aria-current="page">Quick Start<' in html


def test_it_answers_404_for_an_unknown_page(client):
    assert client.get("/docs/no-such-page/").status_code == 404


def test_accept_language_chooses_chinese(client):
    response, html = _get(client, "/docs/quick-start/", HTTP_ACCEPT_LANGUAGE="zh-CN,zh;q=0.9")
    assert '<html lang="zh-hans">' in html
    assert response["Content-Language"] == "zh-hans"
    assert "快速开始" in html
    assert "Accept-Language" in response["Vary"]


def test_the_language_switcher_chooses_the_docs_language(client):
    client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/docs/"})
    _response, html = _get(client, "/docs/faq/")
    assert '<html lang="zh-hans">' in html
    assert "常见问题" in html


def test_lang_parameter_overrides_the_browser_and_sticks_to_docs_links(client):
    _response, html = _get(client, "/docs/quick-start/?lang=en", HTTP_ACCEPT_LANGUAGE="zh-CN")
    assert '<html lang="en">' in html
    assert 'href="/docs/api/?lang=en"' in html
    # Both languages are announced as stable alternates.
    assert (
        '<link rel="alternate" hreflang="zh-hans" href="/docs/quick-start/?lang=zh-hans">' in html
    )


def test_an_unknown_lang_parameter_falls_back_to_the_active_language(client):
    _response, html = _get(client, "/docs/quick-start/?lang=xx")
    assert '<html lang="en">' in html


def test_examples_show_the_public_base_url_from_settings(client, settings):
    settings.PUBLIC_BASE_URL = "https://models.acme.test"
    _response, html = _get(client, "/docs/quick-start/")
    assert "https://models.acme.test/openai" in html
    assert "https://models.acme.test/anthropic" in html


def test_examples_fall_back_to_the_requests_own_address(client, settings):
    settings.PUBLIC_BASE_URL = ""
    settings.ALLOWED_HOSTS = ["docs.example.test"]
    _response, html = _get(client, "/docs/quick-start/", HTTP_HOST="docs.example.test")
    assert "http://docs.example.test/openai/v1/chat/completions" in html


def test_numbers_come_from_settings(client, settings):
    settings.DAILY_FREE_QUOTA = 123_456
    settings.INCREASED_DAILY_QUOTA = 7_654_321
    settings.RATE_LIMIT_RPM = 77
    _response, html = _get(client, "/docs/quick-start/")
    assert "123,456" in html
    assert "7,654,321" in html
    assert "77" in html
    assert "500,000" not in html


def test_code_is_highlighted_with_classes_never_inline_styles(client):
    _response, html = _get(client, "/docs/quick-start/")
    assert '<div class="highlight">' in html
    assert '<span class="kn">import</span>' in html  # Pygments token classes
    assert "style=" not in html
    assert "<script>" not in html
    assert 'href="/static/css/pygments.css"' in html


def test_every_code_block_has_a_copy_button_pointing_at_it(client):
    _response, html = _get(client, "/docs/quick-start/")
    blocks = re.findall(r'<pre id="(code-\d+)">', html)
    assert len(blocks) >= 8
    for block_id in blocks:
        assert f'data-copy-target="#{block_id}"' in html


def test_the_static_pygments_stylesheet_matches_the_generator():
    from django.conf import settings

    path = settings.BASE_DIR / "static" / "css" / "pygments.css"
    assert path.read_text(encoding="utf-8") == rendering.pygments_css()


def test_anonymous_readers_see_the_placeholder_and_a_login_hint(client):
    _response, html = _get(client, "/docs/quick-start/")
    assert html.count('<span class="api-key-slot">YOUR_API_KEY</span>') >= 8
    assert "data-key-fill" not in html
    assert 'href="/accounts/login/"' in html
    assert not re.search(r"sk-[A-Za-z0-9_-]{20,}", html)


def test_the_model_table_comes_from_the_catalog(client):
    from gateway.models import Model

    Model.objects.update(enabled=False)
    Model.objects.create(
        name="Acme-Large",
        description="A catalog entry made by this test",
        upstream_kind=Model.UpstreamKind.OPENAI_COMPATIBLE,
        upstream_base_url="http://upstream.invalid/v1",
        context_window=65536,
        max_output_tokens=4096,
        sort_order=-1,
    )
    Model.objects.create(
        name="Acme-Demo", upstream_kind=Model.UpstreamKind.DEMO, max_output_tokens=1024
    )
    _response, html = _get(client, "/docs/quick-start/")
    table = html[
        html.index('<table class="docs-models">') : html.index(
            "</table>", html.index('<table class="docs-models">')
        )
    ]
    assert "<code>Acme-Large</code>" in table
    assert "65,536" in table
    assert "A catalog entry made by this test" in table
    assert "LongCat-Flash-Chat" not in table  # disabled models are not listed
    # Only the demo model carries the demo badge.
    rows = table.split("<tr>")[2:]
    assert "badge" not in rows[0]
    assert "Demo" in rows[1] and "badge" in rows[1]
    # The first model of the catalog is the one the examples use, with its own output limit.
    collector = _Collector()
    collector.feed(html)
    assert any('model="Acme-Large"' in block for block in collector.pre_blocks)
    assert "4,096 tokens" in html


def test_an_empty_catalog_says_so_and_the_page_still_renders(client):
    from gateway.models import Model

    Model.objects.update(enabled=False)
    _response, html = _get(client, "/docs/quick-start/")
    assert "No model is enabled" in html
    assert "{{" not in html


def test_signed_in_readers_get_a_fill_button_for_their_own_keys_but_never_a_secret(
    client, alice, charlie
):
    from keys import selectors as key_selectors
    from keys import services as key_services

    key_services.api_key_create(user=alice, name="ci-runner")
    disabled, _secret = key_services.api_key_create(user=alice, name="retired")
    key_services.api_key_set_active(api_key=disabled, is_active=False)
    alice_keys = list(key_selectors.api_keys_for_user(alice))
    charlie_key = key_selectors.api_keys_for_user(charlie).get()
    client.force_login(alice)

    response, html = _get(client, "/docs/quick-start/")

    assert "data-key-fill" in html
    for key in alice_keys:
        secret = key_services.api_key_reveal(api_key=key)
        assert secret not in html
        if key.is_active:
            assert f'value="/keys/{key.public_id}/reveal/"' in html
        else:
            assert str(key.public_id) not in html
    assert str(charlie_key.public_id) not in html
    assert key_services.api_key_reveal(api_key=charlie_key) not in html
    # The placeholder stays in the HTML; only the browser swaps it.
    assert '<span class="api-key-slot">YOUR_API_KEY</span>' in html
    assert "private" in response["Cache-Control"]
    assert "Cookie" in response["Vary"]


def test_the_fill_buttons_reveal_url_returns_the_readers_key_as_json(client, alice):
    from keys import selectors as key_selectors
    from keys import services as key_services

    client.force_login(alice)
    _response, html = _get(client, "/docs/quick-start/")
    reveal_url = re.search(r'data-key-select value="([^"]+)"', html).group(1)

    response = client.post(reveal_url, HTTP_ACCEPT="application/json")

    key = key_selectors.api_keys_for_user(alice).get(name="default")
    assert response.status_code == 200
    assert response.json()["key"] == key_services.api_key_reveal(api_key=key)


def test_a_docs_page_costs_two_queries_anonymous_and_five_signed_in(
    client, alice, django_assert_num_queries
):
    # A catalog with its model (a transactional test run earlier may have emptied the table
    # the migrations filled): without rows, the endpoints' prefetch costs no query.
    catalog_bootstrap()
    client.get("/docs/api/")  # warm the render cache
    with django_assert_num_queries(2):  # the model catalog and its endpoints
        assert client.get("/docs/api/").status_code == 200
    client.force_login(alice)
    with django_assert_num_queries(5):  # session, user, catalog (2), the reader's keys
        assert client.get("/docs/api/").status_code == 200


def test_rendering_is_cached_per_file_language_and_mtime(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("title: One\n\n# One\n", encoding="utf-8")
    first = rendering.render_file(page, "en")
    assert rendering.render_file(page, "en") is first
    assert rendering.render_file(page, "zh-hans") is not first

    page.write_text("title: Two\n\n# Two\n", encoding="utf-8")
    stat = page.stat()
    os.utime(page, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert rendering.render_file(page, "en").title == "Two"


def test_variables_are_escaped_and_unknown_ones_stay_visible():
    rendered = rendering.render_markdown(
        "Hello {{ name }} and {{ typo }}.\n\n```python\nprint('{{ name }}')\n```\n"
    )
    html = rendering.fill(rendered.html, {"name": "<b>&</b>"})
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in html
    assert "<b>&</b>" not in html
    assert "{{ typo }}" in html


def test_every_error_code_in_the_api_docs_exists_in_the_gateway():
    """The error table must not drift from what the gateway really sends."""
    from django.conf import settings

    # The key's own refusals (expired, model or address not allowed) are written beside the
    # rules that make them, in keys/controls.py; the gateway sends them as they are.
    sources = [
        *(settings.BASE_DIR / "gateway").rglob("*.py"),
        settings.BASE_DIR / "keys" / "controls.py",
    ]
    gateway_source = "\n".join(path.read_text(encoding="utf-8") for path in sources)
    for language in LANGUAGES:
        source = (pages.CONTENT_DIR / language / "api.md").read_text(encoding="utf-8")
        table = source[source.index("{#errors}") :]
        rows = [line for line in table.splitlines() if re.match(r"\| \d{3}", line)]
        assert len(rows) >= 12
        names = set()
        for row in rows:
            cells = row.split("|")[2:5]  # OpenAI code, OpenAI type, Anthropic type
            names.update(re.findall(r"`([a-z_]+)`", "".join(cells)))
        assert "rate_limit_exceeded" in names
        for name in names:
            assert f'"{name}"' in gateway_source, name


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_link_between_pages_and_to_the_portal_resolves(client, language):
    from urllib.parse import urlsplit

    from django.urls import resolve

    htmls = {slug: _get(client, f"/docs/{slug}/?lang={language}")[1] for slug in SLUGS}
    for slug, html in htmls.items():
        content = html[html.index('class="docs-content"') :]
        for href in re.findall(r'href="([^"]+)"', content):
            url = urlsplit(href)
            if url.scheme:  # external (Anthropic's docs)
                continue
            if not url.path:  # an anchor on this page
                assert f'id="{url.fragment}"' in html, (slug, href)
                continue
            resolve(url.path)  # raises Resolver404 for a broken link
            target = url.path.removeprefix("/docs/").strip("/")
            if url.path.startswith("/docs/") and url.fragment:
                assert f'id="{url.fragment}"' in htmls[target], (slug, href)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_json_example_parses_and_claude_codes_settings_are_complete(client, language):
    import json

    from tests.docs.examples import extract_examples

    for slug in SLUGS:
        html = _get(client, f"/docs/{slug}/?lang={language}")[1]
        for example in extract_examples(html):
            if example.language == "json":
                json.loads(example.code)
    html = _get(client, f"/docs/claude-code/?lang={language}")[1]
    settings_json = next(json.loads(e.code) for e in extract_examples(html) if e.language == "json")
    env = settings_json["env"]
    assert env["ANTHROPIC_BASE_URL"] == "http://testserver/anthropic"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "YOUR_API_KEY"
    assert env["ANTHROPIC_MODEL"] == env["ANTHROPIC_SMALL_FAST_MODEL"] == "LongCat-Flash-Chat"
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "8192"
    assert env["DISABLE_TELEMETRY"] == env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


@pytest.mark.parametrize("language", LANGUAGES)
def test_codex_s_config_toml_names_the_responses_api_and_the_key_variable(client, language):
    import tomllib

    from tests.acceptance.test_codex import KEY_VARIABLE, codex_config
    from tests.docs.examples import extract_examples

    html = _get(client, f"/docs/codex/?lang={language}")[1]
    examples = extract_examples(html)
    config = tomllib.loads(next(e.code for e in examples if e.language == "toml"))
    provider = config["model_providers"][config["model_provider"]]
    assert provider["base_url"] == "http://testserver/openai/v1"
    assert provider["wire_api"] == "responses" and provider["env_key"] == KEY_VARIABLE
    assert config["model"] == "LongCat-Flash-Chat"
    # What the acceptance test runs Codex with is this, plus its approval and sandbox choices.
    tested = tomllib.loads(codex_config("http://testserver"))
    assert tested["model_providers"]["platform"] | {"name": provider["name"]} == provider
    assert any(f'export {KEY_VARIABLE}="YOUR_API_KEY"' in e.code for e in examples)


def test_the_language_switcher_leaves_a_pinned_docs_address_for_the_plain_one(client):
    _response, html = _get(client, "/docs/api/?lang=en")
    assert '<input name="next" type="hidden" value="/docs/api/">' in html
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/docs/api/"})
    assert response["Location"] == "/docs/api/"
    assert '<html lang="zh-hans">' in _get(client, "/docs/api/")[1]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_faq_offers_the_support_phone_only_when_one_is_configured(client, settings, language):
    settings.SUPPORT_PHONE = ""
    html = _get(client, f"/docs/faq/?lang={language}")[1]
    assert 'href="tel:' not in html.split('class="docs-content"', 1)[1].split("</article>")[0]
    assert "<p></p>" not in html

    settings.SUPPORT_PHONE = "+86 400 000 0000"
    html = _get(client, f"/docs/faq/?lang={language}")[1]
    content = html.split('class="docs-content"', 1)[1].split("</article>")[0]
    assert '<a href="tel:+86 400 000 0000">+86 400 000 0000</a>' in content


def test_the_change_log_is_newest_first_and_the_same_dates_in_both_languages():
    dates = {}
    for language in LANGUAGES:
        source = (pages.CONTENT_DIR / language / "changelog.md").read_text(encoding="utf-8")
        dates[language] = re.findall(r"^## (\d{4}-\d{2}-\d{2})", source, flags=re.MULTILINE)
        assert dates[language], language
        assert dates[language] == sorted(dates[language], reverse=True), language
    assert dates["en"] == dates["zh-hans"]


def test_a_reader_without_an_enabled_key_is_sent_to_the_keys_page(client, alice):
    from keys import services as key_services

    key_services.api_keys_deactivate_for_user(user=alice)
    client.force_login(alice)
    html = _get(client, "/docs/quick-start/")[1]
    assert "data-key-fill" not in html
    assert "You have no enabled API key" in html
