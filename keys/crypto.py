"""Key material: generation, the lookup prefix, the HMAC digest and the reversible copy."""

import hashlib
import hmac
import secrets
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

KEY_SCHEME = "sk-"
KEY_RANDOM_BYTES = 32  # token_urlsafe(32) gives 43 characters
PREFIX_LENGTH = 12  # "sk-" + 9 random characters: 54 bits, unique in the table


def generate_secret() -> str:
    return KEY_SCHEME + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def key_prefix(raw: str) -> str:
    return raw[:PREFIX_LENGTH]


def key_digest(raw: str) -> str:
    return hmac.new(settings.API_KEY_HMAC_SECRET.encode(), raw.encode(), hashlib.sha256).hexdigest()


class UndecryptableSecret(Exception):
    """A stored secret that none of the configured keys decrypts (KEY_ENCRYPTION_KEY was
    changed without listing the old one in KEY_ENCRYPTION_OLD_KEYS)."""


@lru_cache(maxsize=4)
def _fernet(current: str, old: tuple[str, ...] = ()) -> MultiFernet:
    # Encrypts with the current key; decrypts with it or any old one, so that a rotation
    # breaks nothing while `manage.py reencrypt_keys` moves stored secrets to the new key.
    return MultiFernet([Fernet(current), *(Fernet(key) for key in old)])


def _keys() -> MultiFernet:
    return _fernet(
        settings.KEY_ENCRYPTION_KEY,
        tuple(key.strip() for key in settings.KEY_ENCRYPTION_OLD_KEYS if key.strip()),
    )


def encrypt_secret(raw: str) -> str:
    return _keys().encrypt(raw.encode()).decode()


def decrypt_secret(token: str) -> str:
    try:
        return _keys().decrypt(token.encode()).decode()
    except InvalidToken:
        raise UndecryptableSecret from None


def under_current_key(token: str) -> bool:
    try:
        _fernet(settings.KEY_ENCRYPTION_KEY).decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def reencrypt_secret(token: str) -> str:
    """``token`` encrypted under the current key (raises UndecryptableSecret)."""
    try:
        return _keys().rotate(token.encode()).decode()
    except InvalidToken:
        raise UndecryptableSecret from None


def looks_like_key(raw: str) -> bool:
    return raw.startswith(KEY_SCHEME) and PREFIX_LENGTH < len(raw) <= 200
