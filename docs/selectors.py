"""Reads for the docs pages: the model catalog and the values the Markdown refers to."""

import logging

from django.conf import settings
from django.db import DatabaseError
from django.urls import reverse

from gateway.models import DEFAULT_MAX_OUTPUT_TOKENS, DEMO_MODEL_NAME
from gateway.selectors import CatalogModel, catalog_model, model_list_enabled

logger = logging.getLogger(__name__)


def catalog_models() -> list[CatalogModel]:
    """The enabled models in catalog order, read through the gateway's selector.

    Empty (never an error) when the catalog's table is missing, so the docs still render on a
    half-migrated database.
    """
    try:
        rows = model_list_enabled(aliases=False)
    except DatabaseError:
        logger.warning("docs: the model catalog could not be read")
        return []
    return [catalog_model(row) for row in rows]


def public_base_url(request) -> str:
    """The base URL readers reach the platform at: PUBLIC_BASE_URL, else this request's."""
    if settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL
    return request.build_absolute_uri("/").rstrip("/")


def doc_variables(request, models: list[CatalogModel]) -> dict:
    """Everything a docs page may write as ``{{ name }}``. Numbers stay ints (the Markdown
    formats them with ``|intcomma`` in prose and plain inside code)."""
    base_url = public_base_url(request)
    first = models[0] if models else None
    return {
        "base_url": base_url,
        "openai_base": f"{base_url}/openai",
        "anthropic_base": f"{base_url}/anthropic",
        # An empty catalog: what the catalog starts with.
        "model": first.name if first else DEMO_MODEL_NAME,
        "max_output": first.max_output_tokens if first else DEFAULT_MAX_OUTPUT_TOKENS,
        "daily_quota": settings.DAILY_FREE_QUOTA,
        "increased_quota": settings.INCREASED_DAILY_QUOTA,
        "cached_input_token_weight": f"{settings.CACHED_INPUT_TOKEN_WEIGHT:g}",
        "rate_limit_rpm": settings.RATE_LIMIT_RPM,
        "rate_limit_tpm": settings.RATE_LIMIT_TPM,
        "max_keys": settings.MAX_KEYS_PER_ACCOUNT,
        "max_body_bytes": settings.GATEWAY_MAX_BODY_BYTES,
        "stream_max_seconds": f"{settings.GATEWAY_STREAM_MAX_SECONDS:g}",
        "platform_name": settings.PLATFORM_NAME,
        "support_email": settings.SUPPORT_EMAIL,
        "api_docs_url": reverse("api-docs"),
    }
