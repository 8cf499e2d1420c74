"""The Playground: try the model API from the browser, through the real gateway.

The page never holds a secret: ``static/js/playground.js`` asks the API Keys reveal endpoint
(POST + CSRF, owner-only) for the chosen key, keeps it in memory and calls
``/openai/v1/chat/completions`` or ``/anthropic/v1/messages`` on the same origin with it. After
each answer it reads back the key's latest Playground usage record and today's quota from
``playground_usage``, so the figures it shows are the ones the Usage page holds. The
conversation stays in the browser; nothing here stores it.
"""

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.views.decorators.http import require_GET

from docs.selectors import catalog_models, public_base_url
from gateway.models import DEFAULT_MAX_OUTPUT_TOKENS, DEMO_MODEL_NAME
from keys import selectors as key_selectors
from usage import selectors as usage_selectors

DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.7


def _no_store(response):
    add_never_cache_headers(response)
    patch_cache_control(response, no_store=True, private=True)
    return response


@login_required
@require_GET
def playground_page(request):
    keys = [
        {
            "public_id": str(key.public_id),
            "name": key.name,
            "masked": key.masked,
            "reveal_url": reverse("keys:reveal", args=[key.public_id]),
            "usage_url": reverse("playground:usage", args=[key.public_id]),
        }
        for key in key_selectors.api_keys_for_user(request.user)
        if key.is_active
    ]
    models = catalog_models()
    base_url = public_base_url(request)
    context = {
        "keys": keys,
        "models": models,
        "base_url": base_url,
        # An empty catalog: what the catalog starts with.
        "default_model": DEMO_MODEL_NAME,
        "max_tokens": min(
            DEFAULT_MAX_TOKENS, models[0].max_output_tokens if models else DEFAULT_MAX_OUTPUT_TOKENS
        ),
        "temperature": DEFAULT_TEMPERATURE,
    }
    return _no_store(render(request, "playground/page.html", context))


@login_required
@require_GET
def playground_usage(request, public_id):
    """The key's latest Playground usage record and today's quota, as JSON (owner-only: else
    404)."""
    key = key_selectors.api_key_get_for_user(request.user, public_id)
    record = usage_selectors.usage_record_latest_from_playground(user=request.user, api_key=key)
    today = usage_selectors.usage_today(user=request.user)
    payload = {
        "record": None,
        "today": {
            "day": today.day.isoformat(),
            "quota": today.quota,
            "used_tokens": today.used_tokens,
            "remaining_tokens": today.remaining_tokens,
            "requests": today.requests,
        },
    }
    if record is not None:
        payload["record"] = {
            "id": str(record.public_id),
            "created_at": record.created_at.isoformat(),
            "model": record.model,
            "endpoint": record.endpoint,
            "stream": record.stream,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "estimated": record.estimated,
            "playground": record.playground,
            "status_code": record.status_code,
            "error_code": record.error_code,
            "latency_ms": record.latency_ms,
            "first_token_ms": record.first_token_ms,
        }
    return _no_store(JsonResponse(payload))
