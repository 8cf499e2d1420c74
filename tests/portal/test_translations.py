"""The Simplified Chinese interface is complete: every string the code marks for translation has
a checked translation, the compiled catalog the server loads matches the .po file, and the key
pages come out in Chinese with Chinese number and date formats."""

import ast
import datetime as dt
import gettext
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.humanize.templatetags.humanize import intcomma
from django.utils import formats, translation

PO_PATH = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"
MO_PATH = PO_PATH.with_suffix(".mo")
# Not part of the source makemessages reads (and large, or changing while the copy is made).
NOT_SOURCE = (".git", ".venv", "var", "node_modules", "__pycache__", ".*_cache", ".hypothesis")


# --- a small .po reader (the file format is simple, and this keeps polib out of the project) ---
def parse_po(text: str) -> list[dict]:
    """Entries as dicts: msgctxt, msgid, msgid_plural (or None), msgstr {index: text}, flags.
    Obsolete ("#~") entries are skipped; the header is the entry whose msgid is ""."""
    entries, entry, field = [], None, None

    def start():
        return {"msgctxt": None, "msgid": None, "msgid_plural": None, "msgstr": {}, "flags": set()}

    def finish():
        if entry is not None and entry["msgid"] is not None:
            entries.append(entry)

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#~"):
            continue
        if line.startswith("#"):
            # A comment after a msgstr opens the next entry.
            if entry is None or entry["msgstr"]:
                finish()
                entry, field = start(), None
            if line.startswith("#,"):
                entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            continue
        if line.startswith('"'):
            value = ast.literal_eval(line)
            if field[0] == "msgstr":
                entry["msgstr"][field[1]] += value
            else:
                entry[field[0]] += value
            continue
        keyword, _, quoted = line.partition(" ")
        value = ast.literal_eval(quoted)
        if keyword in ("msgctxt", "msgid") and (entry is None or entry["msgstr"]):
            finish()
            entry = start()
        if keyword.startswith("msgstr"):
            index = int(keyword[7:-1]) if keyword.startswith("msgstr[") else 0
            entry["msgstr"][index] = value
            field = ("msgstr", index)
        else:
            entry[keyword] = value
            field = (keyword, None)
    finish()
    return entries


def untranslated_or_fuzzy(entries: list[dict]) -> list[str]:
    problems = []
    for e in entries:
        if e["msgid"] == "":
            continue
        if "fuzzy" in e["flags"]:
            problems.append(f"fuzzy: {e['msgid']!r}")
        elif not e["msgstr"] or not all(e["msgstr"].values()):
            problems.append(f"untranslated: {e['msgid']!r}")
    return problems


def test_it_reads_po_files_with_plurals_contexts_flags_and_continuations():
    text = r"""
# header
#, fuzzy
msgid ""
msgstr ""
"Language: zh_Hans\n"

#: a.py:1
#, python-format
msgid "%(n)s key"
msgid_plural "%(n)s keys"
msgstr[0] "%(n)s 个密钥"

msgctxt "button"
msgid ""
"Say \"hi\"\n"
"twice"
msgstr "说\"你好\"\n两次"

#, fuzzy
msgid "Old"
msgstr "旧"

msgid "New"
msgstr ""

#~ msgid "Gone"
#~ msgstr "没了"
"""
    entries = parse_po(text)
    assert [e["msgid"] for e in entries] == ["", "%(n)s key", 'Say "hi"\ntwice', "Old", "New"]
    assert entries[0]["msgstr"][0] == "Language: zh_Hans\n"
    assert entries[1]["msgid_plural"] == "%(n)s keys"
    assert entries[1]["msgstr"] == {0: "%(n)s 个密钥"}
    assert entries[2]["msgctxt"] == "button"
    assert entries[2]["msgstr"][0] == '说"你好"\n两次'
    assert untranslated_or_fuzzy(entries) == ["fuzzy: 'Old'", "untranslated: 'New'"]


# --- (a) makemessages on the current source leaves nothing to translate ---------------------
@pytest.mark.slow
def test_it_leaves_no_string_untranslated_after_makemessages(tmp_path):
    """Extract the strings from the source as it is now (`make messages` does the same) into a
    copy of the project, so that the repository's own .po is not touched, then read the result:
    a string added or changed in the code without a translation shows up here."""
    copy = tmp_path / "project"
    shutil.copytree(settings.BASE_DIR, copy, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var")}
    result = subprocess.run(
        [
            *(sys.executable, "manage.py", "makemessages", "-l", "zh_Hans", "--no-obsolete"),
            *("--ignore=.venv", "--ignore=var", "--ignore=node_modules"),
        ],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    extracted = parse_po((copy / PO_PATH.relative_to(settings.BASE_DIR)).read_text("utf-8"))
    assert len(extracted) > 100  # the extraction really found the portal's strings
    problems = untranslated_or_fuzzy(extracted)
    assert not problems, "translate these in locale/zh_Hans (make messages):\n" + "\n".join(
        problems
    )


def test_the_committed_catalog_is_complete_and_says_how_chinese_plurals_work():
    entries = parse_po(PO_PATH.read_text("utf-8"))
    assert not untranslated_or_fuzzy(entries)
    header = entries[0]
    assert header["msgid"] == ""
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"][0]


def test_it_keeps_every_placeholder_and_tag_in_the_translations():
    # A lost %(name)s raises KeyError at render time; a lost tag breaks the page.
    placeholder = re.compile(r"%\(\w+\)[sd]|%%|<[^>]+>")
    wrong = []
    for e in parse_po(PO_PATH.read_text("utf-8"))[1:]:
        for source in filter(None, (e["msgid"], e["msgid_plural"])):
            for translated in e["msgstr"].values():
                if sorted(placeholder.findall(source)) != sorted(placeholder.findall(translated)):
                    wrong.append((source, translated))
    assert not wrong


# --- (b) the compiled .mo is the .po -----------------------------------------------------
def test_the_compiled_catalog_matches_the_po_file():
    """The server reads the .mo; an edited .po that was not compiled would leave it behind.
    Build the catalog the .po describes in the shape Python's gettext reads from a .mo."""
    expected = {}
    for e in parse_po(PO_PATH.read_text("utf-8")):
        if e["msgid"] == "" or "fuzzy" in e["flags"] or not all(e["msgstr"].values()):
            continue  # msgfmt leaves the header aside here, and fuzzy/empty ones out
        key = e["msgid"] if e["msgctxt"] is None else f"{e['msgctxt']}\x04{e['msgid']}"
        if e["msgid_plural"] is None:
            expected[key] = e["msgstr"][0]
        else:
            for index, text in e["msgstr"].items():
                expected[(key, index)] = text

    with MO_PATH.open("rb") as f:
        # _catalog is the parsed .mo as a dict: the one way to compare every message at once.
        compiled = dict(gettext.GNUTranslations(f)._catalog)
    compiled.pop("", None)
    stale = sorted(str(k) for k in expected.keys() ^ compiled.keys())
    stale += sorted(str(k) for k in expected.keys() & compiled.keys() if expected[k] != compiled[k])
    assert not stale, "run `make messages` (compilemessages) and commit the .mo:\n" + "\n".join(
        stale[:20]
    )


# --- (c) the pages in Chinese --------------------------------------------------------------
class VisibleText(HTMLParser):
    """Text nodes and the attributes people read or hear, outside code, scripts and styles."""

    READ_ATTRIBUTES = {"aria-label", "title", "placeholder", "alt"}

    def __init__(self):
        super().__init__()
        self.texts, self._hidden = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "pre", "code"):
            self._hidden += 1
        for name, value in attrs:
            if value and (name in self.READ_ATTRIBUTES or name.endswith("-label")):
                self.texts.append(" ".join(value.split()))

    def handle_endtag(self, tag):
        if tag in ("script", "style", "pre", "code"):
            self._hidden -= 1

    def handle_data(self, data):
        text = " ".join(data.split())
        if text and not self._hidden:
            self.texts.append(text)


def english_left_on(html: str) -> list[str]:
    """Visible texts that are still an English source string the catalog translates."""
    translated = {
        e["msgid"]
        for e in parse_po(PO_PATH.read_text("utf-8"))[1:]
        if e["msgstr"].get(0) and e["msgstr"][0] != e["msgid"]
    }
    # The language switcher names each language in that language, "English" included.
    translated -= {
        translation.get_language_info(code)["name_local"] for code, _ in settings.LANGUAGES
    }
    parser = VisibleText()
    parser.feed(html)
    return [text for text in parser.texts if text in translated]


def get_zh(client, url):
    response = client.get(url, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 200, url
    html = response.content.decode()
    assert '<html lang="zh-hans">' in html
    return html


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "chinese"),
    [
        ("/", ["文档", "用量", "注册", "登录"]),
        ("/accounts/login/", ["无需密码", "发送验证码", "手机号或邮箱"]),
        ("/accounts/signup/", ["创建账号", "你所在的地区", "已有账号"]),
    ],
)
def test_it_shows_the_public_pages_in_chinese(client, url, chinese):
    html = get_zh(client, url)
    for text in chinese:
        assert text in html
    assert english_left_on(html) == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "chinese"),
    [
        ("/account/", ["登录方式", "注册时间", "注销账号"]),
        ("/keys/", ["我的密钥", "创建密钥", "重新生成", "从未使用"]),
        ("/usage/", ["每日额度", "下次重置", "北京时间", "申请提额", "导出 CSV"]),
        ("/docs/", ["快速开始", "本页目录", "使用我的密钥"]),
    ],
)
def test_it_shows_the_signed_in_pages_in_chinese(alice_client, url, chinese):
    html = get_zh(alice_client, url)
    for text in chinese:
        assert text in html
    assert english_left_on(html) == []


@pytest.mark.django_db
def test_the_english_check_finds_english_on_an_english_page(client):
    html = client.get("/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert {"Docs", "Usage", "Sign up"} <= set(english_left_on(html))


@pytest.mark.django_db
def test_the_docs_button_has_the_name_the_chinese_quick_start_uses(alice_client):
    # The Chinese Quick Start tells the reader to press 使用我的密钥: the button must say so.
    html = get_zh(alice_client, "/docs/")
    assert re.search(r"<button[^>]*>\s*使用我的密钥\s*</button>", html)
    assert "Use my key" not in html
    assert "**使用我的密钥**" not in html  # the Markdown bold around it was rendered


@pytest.mark.django_db
def test_it_shows_the_review_queue_in_chinese_to_staff(staff_client):
    html = get_zh(staff_client, "/review/")
    assert "额度申请" in html
    assert "暂无待审核的申请" in html
    assert english_left_on(html) == []


@pytest.mark.django_db
def test_it_writes_the_join_date_the_chinese_way(alice_client, alice):
    alice.date_joined = dt.datetime(2026, 3, 1, 4, 0, tzinfo=dt.UTC)
    alice.save(update_fields=["date_joined"])
    assert "2026年3月1日" in get_zh(alice_client, "/account/")


def test_it_groups_digits_in_chinese_as_chinese_consoles_do():
    # Django's own zh_Hans format writes 131072; the Usage page and the docs write 131,072.
    with translation.override("zh-hans"):
        assert intcomma(131072) == "131,072"
        assert formats.number_format(5000000, force_grouping=True) == "5,000,000"
        assert formats.date_format(dt.date(2026, 3, 1)) == "2026年3月1日"
    with translation.override("en"):
        assert intcomma(131072) == "131,072"
