"""Writes on API keys, and the one authentication step the gateway may share.

Every function that changes a key drops it from ``api_key_authenticate``'s per-process cache,
so this process stops honouring an old secret, a disabled key or a deleted key at once. Other
processes forget within ``AUTH_CACHE_SECONDS``; the gateway's lean path re-checks the row in SQL.

The secret (``raw``) exists in the clear only in the return values of create, regenerate and
reveal. It is never logged, never put in an exception, and the frames that hold it are marked
with ``sensitive_variables`` so that error reports show stars instead.
"""

import logging
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_variables

from keys import crypto
from keys.models import ApiKey

logger = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "default"
NAME_MAX_LENGTH = 64
_PREFIX_ATTEMPTS = 5

# How long this process trusts a cached lookup; a change made here invalidates at once.
AUTH_CACHE_SECONDS = getattr(settings, "API_KEY_AUTH_CACHE_SECONDS", 10)
# Bounded, so that a flood of made-up keys cannot grow the process without limit.
AUTH_CACHE_MAX_ENTRIES = 10_000
# last_used_at is informative: one write per key per minute is plenty.
LAST_USED_RESOLUTION_SECONDS = 60


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
def api_key_create(*, user, name: str) -> tuple[ApiKey, str]:
    """Create a key for ``user``. Returns the key and its secret (shown once to the caller).

    Raises ``ValidationError`` for a bad or taken name, or when the account already holds
    ``MAX_KEYS_PER_ACCOUNT`` keys.
    """
    name = _clean_name(name)
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
            _forget(key.prefix)  # a cached "no such prefix" must not outlive the new key
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
        api_key.name = name
        api_key.save(update_fields=["name", "updated_at"])
    _forget(api_key.prefix)
    logger.info("api key renamed: key=%s", api_key.public_id)
    return api_key


def api_key_set_active(*, api_key: ApiKey, is_active: bool) -> ApiKey:
    """Enable or disable ``api_key``. A disabled key is refused by the gateway at once."""
    is_active = bool(is_active)
    if api_key.is_active != is_active:
        api_key.is_active = is_active
        api_key.save(update_fields=["is_active", "updated_at"])
        logger.info("api key %s: key=%s", "enabled" if is_active else "disabled", api_key.public_id)
    _forget(api_key.prefix)
    return api_key


def api_key_set_rate_limits(
    *, api_key: ApiKey, rate_limit_rpm: int | None, rate_limit_tpm: int | None
) -> ApiKey:
    """Set the per-key rate-limit overrides (``None`` means the platform default)."""
    api_key.rate_limit_rpm = rate_limit_rpm
    api_key.rate_limit_tpm = rate_limit_tpm
    api_key.save(update_fields=["rate_limit_rpm", "rate_limit_tpm", "updated_at"])
    _forget(api_key.prefix)
    logger.info("api key rate limits changed: key=%s", api_key.public_id)
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
        except IntegrityError:
            if attempt == _PREFIX_ATTEMPTS - 1:
                raise
            continue
        if not updated:
            raise ApiKey.DoesNotExist
        break
    _forget(old_prefix)
    api_key.refresh_from_db()
    _forget(api_key.prefix)
    logger.info("api key regenerated: key=%s", api_key.public_id)
    return api_key, raw


def api_key_delete(*, api_key: ApiKey) -> None:
    """Delete ``api_key`` for good. Usage records keep their history (see usage models)."""
    prefix, public_id = api_key.prefix, api_key.public_id
    api_key.delete()
    _forget(prefix)
    logger.info("api key deleted: key=%s", public_id)


def api_keys_deactivate_for_user(*, user) -> int:
    """Disable every key of ``user`` (account deletion or suspension). Returns how many."""
    prefixes = list(
        ApiKey.objects.filter(user=user, is_active=True).values_list("prefix", flat=True)
    )
    count = ApiKey.objects.filter(user=user, is_active=True).update(
        is_active=False, updated_at=timezone.now()
    )
    for prefix in prefixes:
        _forget(prefix)
    logger.info("api keys disabled for account: user=%s count=%d", user.pk, count)
    return count


@sensitive_variables()
def api_key_reveal(*, api_key: ApiKey) -> str:
    """The secret of ``api_key``, decrypted for its owner (callers check ownership)."""
    raw = crypto.decrypt_secret(api_key.encrypted)
    logger.info("api key revealed: key=%s", api_key.public_id)
    return raw


def api_key_touch_last_used(*, key_id: int, now=None) -> bool:
    """Record that key ``key_id`` was just used, writing at most once a minute per key.

    A per-process memo skips the database entirely for a key touched recently here; the
    conditional UPDATE keeps other processes from writing the same minute again. Returns
    whether a row was written.
    """
    now = now or timezone.now()
    moment = now.timestamp()
    with _touch_lock:
        last = _touched.get(key_id)
        if last is not None and moment - last < LAST_USED_RESOLUTION_SECONDS:
            return False
        _touched[key_id] = moment
        if len(_touched) > AUTH_CACHE_MAX_ENTRIES:
            _touched.popitem(last=False)
    cutoff = now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS)
    written = ApiKey.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=cutoff), pk=key_id
    ).update(last_used_at=now)
    return bool(written)


_touched: OrderedDict[int, float] = OrderedDict()
_touch_lock = threading.Lock()


# --- authentication ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthenticatedKey:
    """What a caller needs to know about a key that matched. Holds no secret."""

    key_id: int
    public_id: str
    name: str
    user_id: int
    is_active: bool
    user_is_active: bool
    rate_limit_rpm: int | None  # the per-key override, None for the platform default
    rate_limit_tpm: int | None

    @property
    def usable(self) -> bool:
        return self.is_active and self.user_is_active

    @property
    def effective_rate_limit_rpm(self) -> int:
        return self.rate_limit_rpm if self.rate_limit_rpm is not None else settings.RATE_LIMIT_RPM

    @property
    def effective_rate_limit_tpm(self) -> int:
        return self.rate_limit_tpm if self.rate_limit_tpm is not None else settings.RATE_LIMIT_TPM


@dataclass(frozen=True, slots=True)
class _CachedLookup:
    expires_at: float
    digest: str | None  # None: no key has this prefix
    key: AuthenticatedKey | None


_auth_cache: OrderedDict[str, _CachedLookup] = OrderedDict()
_auth_lock = threading.Lock()


@sensitive_variables()
def api_key_authenticate(raw: str) -> AuthenticatedKey | None:
    """The key that ``raw`` is the secret of, or ``None``.

    Disabled keys (or keys of disabled accounts) are returned with their flags so that the
    caller can tell "invalid" (401) from "disabled" (403): check ``usable``. Strings that do
    not look like a key are refused without touching the database. Lookups are cached in
    this process by prefix for ``AUTH_CACHE_SECONDS``; the digest is compared in constant
    time on every call, so the cache never accepts a wrong secret.
    """
    if not isinstance(raw, str) or not crypto.looks_like_key(raw):
        return None
    prefix = crypto.key_prefix(raw)
    now = time.monotonic()
    with _auth_lock:
        cached = _auth_cache.get(prefix)
        if cached is not None and cached.expires_at <= now:
            del _auth_cache[prefix]
            cached = None
    if cached is None:
        cached = _lookup(prefix, now)
        with _auth_lock:
            _auth_cache[prefix] = cached
            _auth_cache.move_to_end(prefix)
            while len(_auth_cache) > AUTH_CACHE_MAX_ENTRIES:
                _auth_cache.popitem(last=False)
    if cached.digest is None:
        # Spend the same HMAC as a real comparison so that timing says nothing either way.
        crypto.digests_match(raw, "0" * 64)
        return None
    if not crypto.digests_match(raw, cached.digest):
        return None
    return cached.key


def _lookup(prefix: str, now: float) -> _CachedLookup:
    row = (
        ApiKey.objects.filter(prefix=prefix)
        .values(
            "pk",
            "public_id",
            "name",
            "user_id",
            "digest",
            "is_active",
            "user__is_active",
            "rate_limit_rpm",
            "rate_limit_tpm",
        )
        .first()
    )
    expires_at = now + AUTH_CACHE_SECONDS
    if row is None:
        return _CachedLookup(expires_at=expires_at, digest=None, key=None)
    return _CachedLookup(
        expires_at=expires_at,
        digest=row["digest"],
        key=AuthenticatedKey(
            key_id=row["pk"],
            public_id=str(row["public_id"]),
            name=row["name"],
            user_id=row["user_id"],
            is_active=row["is_active"],
            user_is_active=row["user__is_active"],
            rate_limit_rpm=row["rate_limit_rpm"],
            rate_limit_tpm=row["rate_limit_tpm"],
        ),
    )


def _forget(prefix: str) -> None:
    """Drop ``prefix`` from the auth cache now and again after the surrounding commit.

    The second drop covers a lookup that ran inside the transaction window and cached
    the row as it was before the change.
    """
    _drop(prefix)
    transaction.on_commit(lambda: _drop(prefix))


def _drop(prefix: str) -> None:
    with _auth_lock:
        _auth_cache.pop(prefix, None)


def api_key_auth_cache_clear() -> None:
    """Forget every cached lookup (tests, and operators after bulk SQL changes)."""
    with _auth_lock:
        _auth_cache.clear()
    with _touch_lock:
        _touched.clear()


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
