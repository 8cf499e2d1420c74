"""Reads on API keys. Ownership is checked here, so a stranger's key is a plain 404."""

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404

from keys.models import ApiKey, ApiKeyChange


def api_keys_for_user(user) -> QuerySet[ApiKey]:
    """The keys of ``user``, oldest first (``default`` usually leads)."""
    return ApiKey.objects.filter(user=user).order_by("created_at", "id")


def api_key_count_for_user(user) -> int:
    return ApiKey.objects.filter(user=user).count()


def api_key_get_for_user(user, public_id) -> ApiKey:
    """The key ``public_id`` if ``user`` owns it; ``Http404`` otherwise (never 403)."""
    try:
        return ApiKey.objects.get(user=user, public_id=public_id)
    except (ApiKey.DoesNotExist, ValidationError, ValueError, TypeError):
        raise Http404 from None


def api_key_changes_for_key(api_key: ApiKey) -> QuerySet[ApiKeyChange]:
    """The changes of ``api_key``'s controls, newest first, with who made them."""
    return ApiKeyChange.objects.filter(api_key=api_key).select_related("actor")
