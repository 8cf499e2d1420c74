"""The admin reads as the platform's own: its name, one Accounts section, in both languages."""

import re

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, staff):
    staff.is_superuser = True
    staff.save(update_fields=["is_superuser"])
    client.force_login(staff)
    return client


def _sections(html: str) -> list[str]:
    return re.findall(r'<caption>\s*<a [^>]*class="section"[^>]*>([^<]+)</a>', html)


def test_it_names_the_admin_after_the_platform_with_one_accounts_section(admin_client, settings):
    html = admin_client.get("/admin/").content.decode()
    assert f"<title>Platform administration | {settings.PLATFORM_NAME}</title>" in html
    assert re.search(rf'id="site-name"><a href="/admin/">{settings.PLATFORM_NAME}</a>', html)
    assert 'href="/staff/"' in html  # "View site" opens the staff console
    sections = _sections(html)
    assert sections.count("Accounts") == 1
    assert "Email addresses" not in html


def test_it_shows_the_admin_sections_in_chinese(admin_client):
    html = admin_client.get("/admin/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    sections = _sections(html)
    assert "账号" in sections and "用量与额度" in sections and "API Key" in sections
    assert "Accounts" not in sections


def test_the_accounts_list_finds_an_account_by_key_prefix(admin_client, alice, bob):
    prefix = alice.api_keys.get().prefix
    response = admin_client.get("/admin/accounts/user/", {"q": prefix})
    assert list(response.context["cl"].result_list) == [alice]
