from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.translation import gettext as _

from keys import crypto
from keys.models import ApiKey

DEFAULT_KEY_NAME = "default"
_PREFIX_ATTEMPTS = 5


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": _("Give the key a name.")})
    if len(name) > 64:
        raise ValidationError({"name": _("Key names are at most 64 characters.")})
    return name


def _material() -> tuple[str, dict]:
    raw = crypto.generate_secret()
    return raw, {
        "prefix": crypto.key_prefix(raw),
        "digest": crypto.key_digest(raw),
        "encrypted": crypto.encrypt_secret(raw),
    }


def api_key_create(*, user, name: str) -> tuple[ApiKey, str]:
    """Create a key for ``user``. Returns the key and its secret (shown once to the caller)."""
    name = _clean_name(name)
    with transaction.atomic():
        # Lock the account row so that two concurrent creates cannot pass the limit together.
        type(user).objects.select_for_update().filter(pk=user.pk).first()
        if ApiKey.objects.filter(user=user).count() >= settings.MAX_KEYS_PER_ACCOUNT:
            raise ValidationError(
                _("An account can have at most %(max)d keys. Delete one to make room.")
                % {"max": settings.MAX_KEYS_PER_ACCOUNT}
            )
        if ApiKey.objects.filter(user=user, name=name).exists():
            raise ValidationError({"name": _("You already have a key with this name.")})
        for attempt in range(_PREFIX_ATTEMPTS):
            raw, material = _material()
            try:
                with transaction.atomic():
                    key = ApiKey.objects.create(user=user, name=name, **material)
            except IntegrityError:
                # A prefix collision (or a racing duplicate name): try fresh material once more.
                if attempt == _PREFIX_ATTEMPTS - 1:
                    raise
                continue
            return key, raw
    raise AssertionError("unreachable")
