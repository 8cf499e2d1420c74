"""The docs pages, in sidebar order. Titles come from each Markdown file's ``title:`` line, so
the sidebar speaks the page's language without a round trip through the .po files."""

import dataclasses
from pathlib import Path

from django.conf import settings

CONTENT_DIR = Path(__file__).resolve().parent / "content"


@dataclasses.dataclass(frozen=True)
class Page:
    slug: str
    filename: str


PAGES = (
    Page("quick-start", "quick-start.md"),
    Page("api", "api.md"),
    Page("claude-code", "claude-code.md"),
    Page("codex", "codex.md"),
    Page("faq", "faq.md"),
    Page("changelog", "changelog.md"),
)
PAGES_BY_SLUG = {page.slug: page for page in PAGES}
DEFAULT_PAGE = PAGES[0]


def content_languages() -> list[str]:
    """The portal's languages (settings.LANGUAGES); each has a folder under docs/content/."""
    return [code for code, _name in settings.LANGUAGES]


def page_path(page: Page, language: str) -> Path:
    """The page's Markdown file in ``language``, falling back to the default language."""
    path = CONTENT_DIR / language / page.filename
    if path.exists():
        return path
    return CONTENT_DIR / settings.LANGUAGE_CODE / page.filename
