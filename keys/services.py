"""Writes on API keys: create, rename, enable/disable, rate limits, controls, regenerate,
delete, reveal.

Nothing here authenticates a request: the gateway does (``gateway.serving.auth`` over the ledger's
``find_key``), and its reservation statement re-checks the key's digest and the key and account
flags: a key disabled, regenerated or deleted here stops working in every process at once,
without telling them. Names and rate-limit overrides reach a process's key cache within
``gateway.serving.auth.AUTH_CACHE_TTL_SECONDS``. The key's controls (``keys.controls``) do
better: every change bumps ``controls_version``, which the reservation statement compares
with the cached one (``usage.ledger``), and the daily cap is read by that statement itself.

The secret (``raw``) exists in the clear only in the return values of create, regenerate and
reveal. It is never logged, never put in an exception, and the frames that hold it are marked
with ``sensitive_variables`` so that error reports show stars instead.
"""

import logging
import unicodedata
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_variables

from audit.models import SecurityEvent
from audit.services import security_event_record
from keys import controls, crypto
from keys.models import ApiKey, ApiKeyChange
from keys.signals import daily_cap_set

logger = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "default"
NAME_MAX_LENGTH = 64
_PREFIX_ATTEMPTS = 5


# --- names ------------------------------------------------------------------------------
def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": _("Give the key a name.")})
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError(
            {"name": _("Key names are at most %(max)d characters.") % {"max": NAME_MAX_LENGTH}}
        )
    # Control characters (newlines, tabs, bidi overrides) only make names misleading.
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ValidationError({"name": _("Key names cannot contain control characters.")})
    return name


def _check_name_free(*, user_id: int, name: str, exclude_pk: int | None = None) -> None:
    # Case-insensitive: "default" and "Default" side by side would only confuse.
    clash = ApiKey.objects.filter(user_id=user_id, name__iexact=name)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ValidationError({"name": _("You already have a key with this name.")})


def api_key_validate_name(*, user_id: int, name: str, exclude_pk: int | None = None) -> str:
    """The cleaned name, or ``ValidationError`` (for forms that want to say so early)."""
    name = _clean_name(name)
    _check_name_free(user_id=user_id, name=name, exclude_pk=exclude_pk)
    return name


def _lock_account(user_id: int) -> None:
    """Serialise key changes per account (the key limit and name checks rely on it).

    On PostgreSQL this is a row lock; SQLite runs every transaction as ``BEGIN IMMEDIATE``
    here (see settings), which serialises writers just the same.
    """
    get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk").first()


def _log_event(action: str, api_key: ApiKey, **detail) -> None:
    # The name and the public prefix identify the key to its owner; never the secret.
    security_event_record(
        action=action,
        user_id=api_key.user_id,
        detail={"key": api_key.name, "prefix": api_key.prefix, **detail},
    )


# --- key material -----------------------------------------------------------------------
@sensitive_variables()
def _material() -> tuple[str, dict]:
    raw = crypto.generate_secret()
    return raw, {
        "prefix": crypto.key_prefix(raw),
        "digest": crypto.key_digest(raw),
        "encrypted": crypto.encrypt_secret(raw),
    }


# --- services ---------------------------------------------------------------------------
@sensitive_variables()
def api_key_create(*, user, name: str, key_controls: dict | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``user``. Returns the key and its secret (shown once to the caller).

    ``key_controls``: the key's controls from the start (the keywords of
    ``api_key_set_controls``), recorded as its first change. Raises ``ValidationError`` for a
    bad or taken name, bad controls, or when the account already holds
    ``MAX_KEYS_PER_ACCOUNT`` keys.
    """
    name = _clean_name(name)
    wanted = api_key_validate_controls(**(key_controls or {}))
    with transaction.atomic():
        # Lock the account row so that two concurrent creates cannot pass the limit together.
        _lock_account(user.pk)
        if ApiKey.objects.filter(user=user).count() >= settings.MAX_KEYS_PER_ACCOUNT:
            raise ValidationError(
                _("An account can have at most %(max)d keys. Delete one to make room.")
                % {"max": settings.MAX_KEYS_PER_ACCOUNT}
            )
        _check_name_free(user_id=user.pk, name=name)
        for attempt in range(_PREFIX_ATTEMPTS):
            raw, material = _material()
            try:
                with transaction.atomic():
                    key = ApiKey.objects.create(user=user, name=name, **material)
            except IntegrityError:
                # A prefix collision (54 random bits: rare, not impossible): fresh material.
                if attempt == _PREFIX_ATTEMPTS - 1:
                    raise
                continue
            _log_event(SecurityEvent.Action.KEY_CREATED, key)
            if wanted:
                api_key_set_controls(api_key=key, **wanted)
            logger.info("api key created: key=%s user=%s", key.public_id, user.pk)
            return key, raw
    raise AssertionError("unreachable")


def api_key_rename(*, api_key: ApiKey, name: str) -> ApiKey:
    """Give ``api_key`` a new name (trimmed, unique per account, case-insensitively)."""
    name = _clean_name(name)
    if name == api_key.name:
        return api_key
    with transaction.atomic():
        _lock_account(api_key.user_id)
        _check_name_free(user_id=api_key.user_id, name=name, exclude_pk=api_key.pk)
        old_name = api_key.name
        api_key.name = name
        api_key.save(update_fields=["name", "updated_at"])
        _log_event(SecurityEvent.Action.KEY_RENAMED, api_key, old_name=old_name)
    logger.info("api key renamed: key=%s", api_key.public_id)
    return api_key


def api_key_set_active(*, api_key: ApiKey, is_active: bool) -> ApiKey:
    """Enable or disable ``api_key``. A disabled key is refused by the gateway at once."""
    is_active = bool(is_active)
    if api_key.is_active != is_active:
        api_key.is_active = is_active
        with transaction.atomic():
            api_key.save(update_fields=["is_active", "updated_at"])
            _log_event(
                SecurityEvent.Action.KEY_ENABLED
                if is_active
                else SecurityEvent.Action.KEY_DISABLED,
                api_key,
            )
        logger.info("api key %s: key=%s", "enabled" if is_active else "disabled", api_key.public_id)
    return api_key


def api_key_set_rate_limits(
    *, api_key: ApiKey, rate_limit_rpm: int | None, rate_limit_tpm: int | None
) -> ApiKey:
    """Set the per-key rate-limit overrides (``None`` means the platform default)."""
    if (api_key.rate_limit_rpm, api_key.rate_limit_tpm) == (rate_limit_rpm, rate_limit_tpm):
        return api_key
    api_key.rate_limit_rpm = rate_limit_rpm
    api_key.rate_limit_tpm = rate_limit_tpm
    with transaction.atomic():
        api_key.save(update_fields=["rate_limit_rpm", "rate_limit_tpm", "updated_at"])
        _log_event(
            SecurityEvent.Action.KEY_LIMITS_CHANGED,
            api_key,
            rate_limit_rpm=rate_limit_rpm,
            rate_limit_tpm=rate_limit_tpm,
        )
    logger.info("api key rate limits changed: key=%s", api_key.public_id)
    return api_key


# --- controls -----------------------------------------------------------------------------
CONTROL_FIELDS = (
    "daily_token_cap",
    "allowed_models",
    "expires_at",
    "allowed_ips",
    "max_concurrent_requests",
)


# The largest value each numeric control takes.
_CONTROL_MAXIMUM = {
    "daily_token_cap": controls.DAILY_TOKEN_CAP_MAX,
    "max_concurrent_requests": controls.MAX_CONCURRENT_REQUESTS_MAX,
}


def _positive_or_none(field: str, value) -> int | None:
    if value is None or value == "":
        return None
    maximum = _CONTROL_MAXIMUM[field]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValidationError(
            {
                field: _("Enter a whole number from 1 to %(max)s, or leave it empty.")
                % {"max": f"{maximum:,}"}
            }
        )
    return value


def api_key_validate_controls(*, api_key: ApiKey | None = None, **changes) -> dict:
    """The given controls, validated and normalised (``ValidationError`` names the field), for
    forms that want to say so early. A new expiry must be in the future; the key's stored one
    (an unchanged form) is accepted as it is."""
    cleaned = _clean_controls(**changes)
    expires_at = cleaned.get("expires_at")
    stored = api_key.expires_at if api_key is not None else None
    if expires_at is not None and expires_at != stored and expires_at <= timezone.now():
        raise ValidationError({"expires_at": _("Choose a time in the future.")})
    return cleaned


def _clean_controls(**changes) -> dict:
    unknown = set(changes) - set(CONTROL_FIELDS)
    if unknown:
        raise TypeError(f"not a key control: {', '.join(sorted(unknown))}")
    cleaned = {}
    for field in _CONTROL_MAXIMUM:
        if field in changes:
            cleaned[field] = _positive_or_none(field, changes[field])
    if "allowed_models" in changes:
        cleaned["allowed_models"] = controls.allowed_models_clean(changes["allowed_models"] or ())
    if "allowed_ips" in changes:
        cleaned["allowed_ips"] = controls.allowed_ips_clean(changes["allowed_ips"] or ())
    if "expires_at" in changes:
        expires_at = changes["expires_at"]
        if expires_at is not None and timezone.is_naive(expires_at):
            raise ValidationError({"expires_at": _("Give the expiry time with its time zone.")})
        cleaned["expires_at"] = expires_at
    return cleaned


def _control_value(value):
    # JSON for the change history: times as ISO 8601, lists as they are.
    return value.isoformat() if hasattr(value, "isoformat") else value


def api_key_controls(api_key: ApiKey) -> dict:
    """The key's controls as the change history and the REST API show them."""
    return {field: _control_value(getattr(api_key, field)) for field in CONTROL_FIELDS}


def api_key_set_controls(*, api_key: ApiKey, actor=None, **changes) -> ApiKey:
    """Change some of the key's controls (keywords: ``CONTROL_FIELDS``; None or an empty list
    removes a control). Validates and normalises them (``ValidationError`` names the field),
    bumps ``controls_version`` so that every gateway process notices at its next reservation,
    and records who changed what: an ``ApiKeyChange`` (before and after) and the security log.

    An expiry in the past is accepted when it is the key's stored one (an unchanged form), and
    refused as a new value: a key that should stop now is disabled instead. Setting a daily
    cap sends ``keys.signals.daily_cap_set`` in the same transaction (the usage app catches
    the key's daily counter up with what it spent while uncapped).
    """
    cleaned = _clean_controls(**changes)
    with transaction.atomic():
        stored = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        changed = {
            field: value for field, value in cleaned.items() if getattr(stored, field) != value
        }
        if not changed:
            return api_key
        api_key_validate_controls(api_key=stored, **changed)
        before = {field: _control_value(getattr(stored, field)) for field in changed}
        after = {field: _control_value(value) for field, value in changed.items()}
        for field, value in changed.items():
            setattr(api_key, field, value)
        api_key.controls_version = stored.controls_version + 1
        api_key.save(update_fields=[*changed, "controls_version", "updated_at"])
        event = security_event_record(
            action=SecurityEvent.Action.KEY_LIMITS_CHANGED,
            user_id=api_key.user_id,
            actor=actor,
            detail={"key": api_key.name, "prefix": api_key.prefix, **after},
        )
        ApiKeyChange.objects.create(
            api_key=api_key,
            user_id=api_key.user_id,
            key_name=api_key.name,
            actor=event.actor,
            before=before,
            after=after,
        )
        if changed.get("daily_token_cap") is not None:
            # While the key had no cap nothing kept its daily counter: the usage app brings
            # it up to today's spend before the new cap is enforced.
            daily_cap_set.send(sender=ApiKey, api_key=api_key)
    logger.info(
        "api key controls changed: key=%s fields=%s", api_key.public_id, ",".join(sorted(changed))
    )
    return api_key


@sensitive_variables()
def api_key_regenerate(*, api_key: ApiKey) -> tuple[ApiKey, str]:
    """Replace the secret of ``api_key`` (same name, same id). The old secret dies at once.

    Returns the key and its new secret (shown once to the caller).
    """
    old_prefix = api_key.prefix
    for attempt in range(_PREFIX_ATTEMPTS):
        raw, material = _material()
        try:
            with transaction.atomic():
                updated = ApiKey.objects.filter(pk=api_key.pk).update(
                    **material, updated_at=timezone.now()
                )
                if updated:
                    # The new prefix: the one the owner will see from now on.
                    _log_event(
                        SecurityEvent.Action.KEY_REGENERATED,
                        api_key,
                        prefix=material["prefix"],
                        old_prefix=old_prefix,
                    )
        except IntegrityError:
            if attempt == _PREFIX_ATTEMPTS - 1:
                raise
            continue
        if not updated:
            raise ApiKey.DoesNotExist
        break
    api_key.refresh_from_db()
    logger.info("api key regenerated: key=%s", api_key.public_id)
    return api_key, raw


def api_key_delete(*, api_key: ApiKey) -> None:
    """Delete ``api_key`` for good. Usage records keep their history (see usage models)."""
    public_id = api_key.public_id
    with transaction.atomic():
        _log_event(SecurityEvent.Action.KEY_DELETED, api_key)
        api_key.delete()
    logger.info("api key deleted: key=%s", public_id)


def api_keys_deactivate_for_user(*, user) -> int:
    """Disable every key of ``user`` (account deletion or suspension). Returns how many."""
    count = ApiKey.objects.filter(user=user, is_active=True).update(
        is_active=False, updated_at=timezone.now()
    )
    logger.info("api keys disabled for account: user=%s count=%d", user.pk, count)
    return count


@sensitive_variables()
def api_key_reveal(*, api_key: ApiKey) -> str:
    """The secret of ``api_key``, decrypted for its owner (callers check ownership)."""
    raw = crypto.decrypt_secret(api_key.encrypted)
    _log_event(SecurityEvent.Action.KEY_REVEALED, api_key)
    logger.info("api key revealed: key=%s", api_key.public_id)
    return raw


@dataclass(frozen=True)
class Reencrypted:
    """What a re-encryption pass did: rows moved to the current key, rows already under it,
    and rows no configured key decrypts (left as they are)."""

    moved: int = 0
    current: int = 0
    undecryptable: int = 0

    def __add__(self, other: "Reencrypted") -> "Reencrypted":
        return Reencrypted(
            self.moved + other.moved,
            self.current + other.current,
            self.undecryptable + other.undecryptable,
        )


def reencrypt_rows(queryset, field: str, *, dry_run: bool = False) -> Reencrypted:
    """Re-encrypt ``field`` of every row of ``queryset`` under the current KEY_ENCRYPTION_KEY.

    Each row is written by a conditional UPDATE (still the token that was read), so a value
    changed meanwhile (a key regenerated) is left to its writer, and running it again does
    nothing more: safe to interrupt and to rerun.
    """
    moved = current = undecryptable = 0
    for pk, token in queryset.exclude(**{field: ""}).values_list("pk", field).iterator():
        if crypto.under_current_key(token):
            current += 1
            continue
        try:
            fresh = crypto.reencrypt_secret(token)
        except crypto.UndecryptableSecret:
            undecryptable += 1
            continue
        if not dry_run:
            queryset.model.objects.filter(pk=pk, **{field: token}).update(**{field: fresh})
        moved += 1
    return Reencrypted(moved, current, undecryptable)


def api_keys_reencrypt(*, dry_run: bool = False) -> Reencrypted:
    """Move the encrypted copies of every API key to the current KEY_ENCRYPTION_KEY."""
    done = reencrypt_rows(ApiKey.objects.all(), "encrypted", dry_run=dry_run)
    logger.info(
        "api keys re-encrypted: moved=%d current=%d undecryptable=%d dry_run=%s",
        done.moved,
        done.current,
        done.undecryptable,
        dry_run,
    )
    return done
