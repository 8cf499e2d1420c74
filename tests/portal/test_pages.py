import re
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db


def test_it_serves_the_home_page_with_the_platform_name(client, settings):
    settings.PLATFORM_NAME = "Acme Models"
    response = client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Acme Models" in html
    for link in ("/docs/", "/keys/", "/usage/", "/account/"):
        assert f'href="{link}"' in html


def test_it_shows_support_contacts_from_settings(client, settings):
    settings.SUPPORT_EMAIL = "help@acme.test"
    settings.SUPPORT_PHONE = "+86 400 000 0000"
    html = client.get("/").content.decode()
    assert "help@acme.test" in html
    assert "+86 400 000 0000" in html


def test_it_sends_security_headers(client):
    response = client.get("/")
    assert "default-src 'self'" in response["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_the_language_switcher_changes_the_page_language(client):
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302
    html = client.get("/").content.decode()
    assert '<html lang="zh-hans">' in html
    assert "文档" in html  # "Docs" in the navigation

    client.post("/i18n/setlang/", {"language": "en", "next": "/"})
    assert '<html lang="en">' in client.get("/").content.decode()


def test_accept_language_chooses_chinese(client):
    html = client.get("/", headers={"accept-language": "zh-CN,zh;q=0.9"}).content.decode()
    assert '<html lang="zh-hans">' in html


def test_static_css_is_served_locally(client):
    html = client.get("/").content.decode()
    assert 'href="/static/css/portal.css"' in html
    assert "cdn" not in html.lower()


def test_templates_link_to_pages_by_url_name_not_by_path():
    # A path written into a template breaks silently when a URL moves; {% url %} fails loudly.
    literal = re.compile(r'(?:href|action|src|hx-get|hx-post)="/(?!static/)[^"{]*"')
    found = [
        f"{path.relative_to(settings.BASE_DIR)}: {match}"
        for path in (Path(settings.BASE_DIR) / "templates").rglob("*.html")
        for match in literal.findall(path.read_text())
    ]
    assert found == []
