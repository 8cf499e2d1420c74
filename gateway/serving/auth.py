"""Who is calling: the API key from the headers, checked against a short per-process cache.

The cache saves a query per request; it cannot let a revoked key through, because the quota
reservation statement re-checks the key's digest and the key and account flags in the same
round trip. Cheap endpoints that reserve nothing (``/v1/models``) ask for a fresh lookup.
"""

from __future__ import annotations

import hmac
import time

from gateway.serving import errors
from keys.crypto import key_digest, key_prefix, looks_like_key
from observability.logging import bind as bind_log_context
from usage.ledger import KeyRow, Ledger

AUTH_CACHE_TTL_SECONDS = 30.0
AUTH_CACHE_MAX_ENTRIES = 10_000
# How long an entry must still have to live for ``answers_alone`` to count on it.
_ALONE_MARGIN_SECONDS = 1.0
_BEARER = "bearer "


def _strip_bearer(value: str) -> str:
    value = value.strip()
    # Also undoes the doubled forms real clients produce: "Authorization: Bearer K" (an SDK's
    # api_key sent as x-api-key) and "Bearer Authorization: Bearer K".
    for _ in range(3):
        lowered = value.lower()
        if lowered.startswith("authorization:"):
            value = value[len("authorization:") :].strip()
        elif lowered.startswith(_BEARER):
            value = value[len(_BEARER) :].strip()
        else:
            break
    return value


def api_key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    """The first header that holds something shaped like a key, else the first non-empty one."""
    candidates = []
    for name in (b"authorization", b"x-api-key"):
        raw = headers.get(name)
        if raw:
            value = _strip_bearer(raw.decode("latin-1"))
            if value:
                candidates.append(value)
    for value in candidates:
        if looks_like_key(value):
            return value
    return candidates[0] if candidates else None


class KeyCache:
    def __init__(self, ledger: Ledger, ttl: float = AUTH_CACHE_TTL_SECONDS):
        self.ledger = ledger
        self.ttl = ttl
        self._rows: dict[str, tuple[float, KeyRow | None]] = {}

    async def _lookup(self, prefix: str, fresh: bool) -> KeyRow | None:
        now = time.monotonic()
        hit = None if fresh else self._rows.get(prefix)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        row = await self.ledger.find_key(prefix)
        if len(self._rows) >= AUTH_CACHE_MAX_ENTRIES:
            self._rows.clear()
        self._rows[prefix] = (now, row)
        return row

    def answers_alone(self, raw_key: str | None) -> bool:
        """Whether ``authenticate`` (not fresh) answers from the cache, with no database
        round trip, so that the caller can leave out the database's time bound (a timer per
        request). A second to spare: the entry cannot expire between this and the call."""
        if not raw_key or not looks_like_key(raw_key):
            return True
        hit = self._rows.get(key_prefix(raw_key))
        if hit is None or time.monotonic() - hit[0] >= self.ttl - _ALONE_MARGIN_SECONDS:
            return False
        row = hit[1]
        return row is None or (row.key_active and row.user_active)

    async def authenticate(self, raw_key: str | None, *, fresh: bool = False) -> tuple[KeyRow, str]:
        """The key's row and digest, or a 401/403 ``GatewayError``."""
        if not raw_key:
            raise errors.missing_key()
        if not looks_like_key(raw_key):
            raise errors.invalid_key()
        prefix = key_prefix(raw_key)
        row = await self._lookup(prefix, fresh)
        if row is not None and not fresh and not (row.key_active and row.user_active):
            # A cached "disabled" may be stale (re-enabled since): look again before refusing.
            row = await self._lookup(prefix, True)
        digest = key_digest(raw_key)
        if row is None or not hmac.compare_digest(digest, row.digest):
            raise errors.invalid_key()
        if not row.user_active:
            raise errors.account_disabled()
        # Log lines of this request name the account and the key's public prefix (never the key).
        bind_log_context(account_id=row.user_id, key_prefix=prefix)
        if not row.key_active:
            raise errors.key_disabled()
        return row, digest
