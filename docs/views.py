"""The docs pages: public, server-rendered Markdown with the deployment's own values filled in.

Language: one URL per page. The page follows the portal's active language (the switcher's
cookie, else ``Accept-Language``, via LocaleMiddleware), and ``?lang=en`` / ``?lang=zh-hans``
pins a language explicitly, which gives every language a stable address to share or link
(the page announces both as ``hreflang`` alternates).

The reader's API key is never put into the HTML: signed-in readers get the names of their keys
and a button that asks the API Keys reveal endpoint for the secret in the browser.
"""

import html
import re

from django.conf import settings
from django.http import Http404
from django.shortcuts import render
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils import translation
from django.utils.cache import patch_cache_control, patch_vary_headers
from django.views.decorators.http import require_safe

from docs import pages, rendering, selectors


def _chosen_language(request) -> tuple[str, bool]:
    """The page's language, and whether ``?lang=`` chose it."""
    requested = request.GET.get("lang", "")
    if requested in pages.content_languages():
        return requested, True
    active = translation.get_language() or ""
    try:
        return translation.get_supported_language_variant(active), False
    except LookupError:
        return settings.LANGUAGE_CODE, False


def _key_choices(user) -> list[dict]:
    """Names and reveal URLs of the reader's enabled keys (never the secrets)."""
    if not user.is_authenticated:
        return []
    from keys import selectors as key_selectors

    choices = []
    for key in key_selectors.api_keys_for_user(user):
        if not key.is_active:
            continue
        try:
            reveal_url = reverse("keys:reveal", args=[key.public_id])
        except NoReverseMatch:
            return []
        choices.append({"name": key.name, "reveal_url": reveal_url})
    return choices


@require_safe
def page(request, slug=None):
    doc = pages.PAGES_BY_SLUG.get(slug or pages.DEFAULT_PAGE.slug)
    if doc is None:
        raise Http404
    language, pinned = _chosen_language(request)
    with translation.override(language):
        models = selectors.catalog_models()
        variables = selectors.doc_variables(request, models)
        rendered = rendering.render_file(pages.page_path(doc, language), language)
        # Blocks of HTML a page may place as a paragraph of its own ({{ model_table }}).
        blocks = {
            "model_table": render_to_string(
                "docs/_model_table.html", {"models": models, **variables}, request=request
            ),
            "support_phone_note": render_to_string("docs/_support_phone.html", request=request),
        }
        sidebar = [
            {
                "page": entry,
                "title": _plain(
                    rendering.render_file(pages.page_path(entry, language), language).title,
                    variables,
                ),
                "current": entry == doc,
            }
            for entry in pages.PAGES
        ]
        context = {
            "doc": doc,
            "language": language,
            "lang_query": f"?lang={language}" if pinned else "",
            "title": _plain(rendered.title, variables),
            "description": _plain(rendered.description, variables),
            **_split_heading(
                _pin_links(
                    rendering.fill(rendered.html, variables, blocks),
                    language if pinned else None,
                )
            ),
            "toc": rendering.fill_toc(rendered.toc, variables),
            "sidebar": sidebar,
            "alternates": [
                (code, f"{reverse('docs:page', args=[doc.slug])}?lang={code}")
                for code in pages.content_languages()
            ],
            "key_choices": _key_choices(request.user),
        }
        response = render(request, "docs/page.html", context)
    response.headers["Content-Language"] = language
    # The same URL answers in the reader's language and, signed in, with their key names.
    patch_vary_headers(response, ("Accept-Language", "Cookie"))
    if request.user.is_authenticated:
        # Key names are personal: keep shared caches from storing this copy.
        patch_cache_control(response, private=True)
    return response


_DOCS_LINK = re.compile(r'href="(/docs/[\w-]*/?)(#[^"]*)?"')


def _pin_links(body: str, language: str | None) -> str:
    """Keep a language chosen by ``?lang=`` on the links between docs pages."""
    if not language:
        return body
    return _DOCS_LINK.sub(
        lambda match: f'href="{match.group(1)}?lang={language}{match.group(2) or ""}"', body
    )


def _split_heading(body: str) -> dict:
    """The page's leading <h1> apart from the rest, so the template can put the key bar and the
    table of contents between the title and the text."""
    if body.startswith("<h1"):
        heading, end, rest = body.partition("</h1>")
        if end:
            return {"heading": heading + end, "body": rest}
    return {"heading": "", "body": body}


def _plain(text: str, variables: dict) -> str:
    """A title or description with its variables filled in, as plain text for the template."""
    return html.unescape(rendering.fill(text, variables))
