"""Key material: generation, the lookup prefix, the HMAC digest and the reversible copy."""

import hashlib
import hmac
import secrets
from functools import lru_cache

from cryptography.fernet import Fernet
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


@lru_cache(maxsize=4)
def _fernet(key: str) -> Fernet:
    return Fernet(key)


def encrypt_secret(raw: str) -> str:
    return _fernet(settings.KEY_ENCRYPTION_KEY).encrypt(raw.encode()).decode()


def decrypt_secret(token: str) -> str:
    return _fernet(settings.KEY_ENCRYPTION_KEY).decrypt(token.encode()).decode()


def looks_like_key(raw: str) -> bool:
    return raw.startswith(KEY_SCHEME) and PREFIX_LENGTH < len(raw) <= 200
