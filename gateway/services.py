"""Writes to the model catalog."""

from django.conf import settings
from django.db import transaction

from gateway.models import DEMO_MODEL_NAME, Model
from keys.crypto import encrypt_secret
from keys.services import Reencrypted, reencrypt_rows


def model_set_upstream_key(*, model: Model, raw_key: str) -> Model:
    """Store the upstream's API key encrypted (empty clears it)."""
    model.upstream_key_encrypted = encrypt_secret(raw_key) if raw_key else ""
    model.save(update_fields=["upstream_key_encrypted", "updated_at"])
    return model


@transaction.atomic
def catalog_bootstrap(*, name: str = DEMO_MODEL_NAME) -> tuple[Model, str]:
    """Make sure the default model exists and points where the environment says.

    With UPSTREAM_BASE_URL set it is served by that OpenAI-compatible server (model
    UPSTREAM_MODEL, key UPSTREAM_API_KEY); otherwise by the built-in demo upstream.
    Returns the model and a short description of what was done.
    """
    model, created = Model.objects.select_for_update().get_or_create(
        name=name,
        defaults={
            "description": "High-performance general-purpose chat model",
        },
    )
    if settings.UPSTREAM_BASE_URL:
        model.upstream_kind = Model.UpstreamKind.OPENAI_COMPATIBLE
        model.upstream_base_url = settings.UPSTREAM_BASE_URL.rstrip("/")
        model.upstream_model = settings.UPSTREAM_MODEL or ""
        model.upstream_key_encrypted = (
            encrypt_secret(settings.UPSTREAM_API_KEY) if settings.UPSTREAM_API_KEY else ""
        )
        where = f"upstream {model.upstream_base_url}"
    else:
        model.upstream_kind = Model.UpstreamKind.DEMO
        model.upstream_base_url = ""
        model.upstream_model = ""
        model.upstream_key_encrypted = ""
        # The demo upstream reasons (reasoning_content) when asked with reasoning_effort.
        model.reasoning = Model.Reasoning.REASONING_EFFORT
        where = "the built-in demo upstream (DEMO_UPSTREAM_URL)"
    model.enabled = True
    model.save()
    return model, f"{'Created' if created else 'Updated'} {model.name} on {where}."


def models_reencrypt_upstream_keys(*, dry_run: bool = False) -> Reencrypted:
    """Move every model's stored upstream key to the current KEY_ENCRYPTION_KEY."""
    return reencrypt_rows(Model.objects.all(), "upstream_key_encrypted", dry_run=dry_run)
