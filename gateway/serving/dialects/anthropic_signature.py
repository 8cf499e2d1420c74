"""Signatures of the thinking blocks the gateway hands out, checked when they come back.

Anthropic signs every ``thinking`` block and refuses a history whose thinking was altered; its
clients (Claude Code, the SDKs) send the blocks back verbatim. The gateway does the same with an
HMAC-SHA256 over the public model name and the thinking text, under a key derived from
SECRET_KEY with a purpose salt of its own (so it signs nothing else). The model's name travels
in the signature, so a conversation that changes model keeps its earlier thinking valid.
Keys in SECRET_KEY_FALLBACKS still verify, so rotating SECRET_KEY breaks no conversation.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from django.conf import settings
from django.utils.crypto import salted_hmac

_SALT = "gateway.serving.anthropic.thinking-signature"
_VERSION = "gw1"
# What every signature this gateway makes starts with (an upstream's own never does).
SIGNATURE_PREFIX = _VERSION + "."


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(model: str, text: str, secret: str) -> bytes:
    return salted_hmac(_SALT, f"{model}\n{text}", secret=secret, algorithm="sha256").digest()


def thinking_signature(text: str, model: str) -> str:
    """The signature of a thinking block the gateway produced for ``model``."""
    return f"{_VERSION}.{_b64(model.encode())}.{_b64(_mac(model, text, settings.SECRET_KEY))}"


def thinking_signature_valid(signature: str | None, text: str) -> bool:
    """True when ``signature`` is one this gateway made for exactly ``text``."""
    if not signature:
        return False
    try:
        version, model, mac = signature.split(".")
        model_name = _unb64(model).decode()
        given = _unb64(mac)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    if version != _VERSION:
        return False
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())]
    return any(hmac.compare_digest(given, _mac(model_name, text, secret)) for secret in secrets)
