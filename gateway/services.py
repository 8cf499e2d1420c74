"""Writes to the model catalog."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from gateway.models import DEMO_MODEL_NAME, Model, UpstreamEndpoint
from keys.crypto import encrypt_secret
from keys.services import Reencrypted, reencrypt_rows


def model_set_upstream_key(*, model: Model, raw_key: str) -> Model:
    """Store the upstream's API key encrypted (empty clears it) on every endpoint of the model,
    and on the model's own fields for a model without endpoints."""
    encrypted = encrypt_secret(raw_key) if raw_key else ""
    model.upstream_key_encrypted = encrypted
    model.save(update_fields=["upstream_key_encrypted", "updated_at"])
    model.endpoints.update(api_key_encrypted=encrypted)
    return model


def endpoint_set_api_key(*, endpoint: UpstreamEndpoint, raw_key: str) -> UpstreamEndpoint:
    """Store the endpoint's API key encrypted (empty clears it)."""
    endpoint.api_key_encrypted = encrypt_secret(raw_key) if raw_key else ""
    endpoint.save(update_fields=["api_key_encrypted", "updated_at"])
    return endpoint


@transaction.atomic
def catalog_bootstrap(*, name: str = DEMO_MODEL_NAME) -> tuple[Model, str]:
    """Make sure the default model exists and points where the environment says.

    With UPSTREAM_BASE_URL set it is served by that OpenAI-compatible server (model
    UPSTREAM_MODEL, key UPSTREAM_API_KEY); otherwise by the built-in demo upstream. That is the
    one-server case: a model with several endpoints (a pool managed with ``manage.py upstream``
    or the admin) keeps its pool. Returns the model and a short description of what was done.
    """
    model, created = Model.objects.select_for_update().get_or_create(
        name=name,
        defaults={
            "description": "High-performance general-purpose chat model",
        },
    )
    endpoints = list(model.endpoints.order_by("priority", "id"))
    if len(endpoints) > 1:
        model.enabled = True
        model.save()
        return model, (
            f"{'Created' if created else 'Kept'} {model.name}: its {len(endpoints)} upstream "
            "endpoints are left as they are (manage.py upstream list)."
        )
    endpoint = endpoints[0] if endpoints else UpstreamEndpoint(model=model)
    if settings.UPSTREAM_BASE_URL:
        endpoint.kind = UpstreamEndpoint.Kind.OPENAI_COMPATIBLE
        endpoint.base_url = settings.UPSTREAM_BASE_URL.rstrip("/")
        endpoint.upstream_model = settings.UPSTREAM_MODEL or ""
        endpoint.api_key_encrypted = (
            encrypt_secret(settings.UPSTREAM_API_KEY) if settings.UPSTREAM_API_KEY else ""
        )
        model.upstream_kind = Model.UpstreamKind.OPENAI_COMPATIBLE
        where = f"upstream {endpoint.base_url}"
    else:
        endpoint.kind = UpstreamEndpoint.Kind.DEMO
        endpoint.base_url = ""
        endpoint.upstream_model = ""
        endpoint.api_key_encrypted = ""
        model.upstream_kind = Model.UpstreamKind.DEMO
        # The demo upstream reasons (reasoning_content) when asked with reasoning_effort.
        model.reasoning = Model.Reasoning.REASONING_EFFORT
        where = "the built-in demo upstream (DEMO_UPSTREAM_URL)"
    # The model's own upstream fields are no longer read once it has an endpoint.
    model.upstream_base_url = ""
    model.upstream_model = ""
    model.upstream_key_encrypted = ""
    model.enabled = True
    model.save()
    endpoint.enabled = True
    endpoint.save()
    return model, f"{'Created' if created else 'Updated'} {model.name} on {where}."


def models_reencrypt_upstream_keys(*, dry_run: bool = False) -> Reencrypted:
    """Move every stored upstream key (endpoints', and models' own from before endpoint pools)
    to the current KEY_ENCRYPTION_KEY."""
    endpoints = reencrypt_rows(UpstreamEndpoint.objects.all(), "api_key_encrypted", dry_run=dry_run)
    return endpoints + reencrypt_rows(
        Model.objects.all(), "upstream_key_encrypted", dry_run=dry_run
    )


def endpoint_save(
    *,
    endpoint: UpstreamEndpoint,
    raw_key: str | None = None,
    **fields,
) -> UpstreamEndpoint:
    """Create or change an endpoint from the shell: ``fields`` are model fields (None leaves
    one as it is), ``raw_key`` a new API key (None keeps it). Validates like the admin
    (``ValidationError``): a URL unless the kind is demo, a weight of at least 1."""
    for name, value in fields.items():
        if value is not None:
            setattr(endpoint, name, value)
    if endpoint.base_url:
        endpoint.base_url = endpoint.base_url.rstrip("/")
    if raw_key is not None:
        endpoint.api_key_encrypted = encrypt_secret(raw_key) if raw_key else ""
    if not endpoint.is_demo and not endpoint.base_url:
        raise ValidationError({"base_url": "A base URL is required for this kind."})
    if endpoint.base_url and not endpoint.base_url.startswith(("http://", "https://")):
        raise ValidationError({"base_url": "Enter an http:// or https:// URL."})
    endpoint.full_clean(exclude=["model"])
    endpoint.save()
    return endpoint
