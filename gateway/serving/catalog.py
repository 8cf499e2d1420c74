"""The model catalog as the gateway sees it: a per-process snapshot refreshed every few seconds.

A change in the admin (disable a model, new upstream URL) reaches every process within
``CATALOG_TTL_SECONDS`` without a database query per request.
"""

from __future__ import annotations

import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from gateway.selectors import CatalogModel, catalog_model, model_list_enabled
from gateway.serving.errors import GatewayError
from keys.crypto import UndecryptableSecret, decrypt_secret

log = logging.getLogger(__name__)

CATALOG_TTL_SECONDS = 5.0
CHECK_MAX_AGE_SECONDS = 1.0
# (model, stored key) pairs already reported: one error line each per process, not one per
# snapshot or per request.
_reported_undecryptable: set[tuple[str, str]] = set()


def _snapshot() -> dict[str, CatalogModel]:
    # The gateway runs no Django request, so nothing else closes this thread's connection: do
    # here what request_started/finished do for a view. A connection broken by a database
    # outage is replaced on the next snapshot instead of failing every one after it (chat
    # answered 503 long after the database came back). In a test's transaction it is left be.
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()
    try:
        return _build()
    finally:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _upstream_key(model) -> str | None:
    """The model's upstream key, or None when no configured key decrypts it."""
    if not model.upstream_key_encrypted:
        return ""
    try:
        return decrypt_secret(model.upstream_key_encrypted)
    except UndecryptableSecret:
        reported = (model.name, model.upstream_key_encrypted)
        if reported not in _reported_undecryptable:
            _reported_undecryptable.add(reported)
            log.error(
                "model %s: its stored upstream key cannot be decrypted with KEY_ENCRYPTION_KEY "
                "or KEY_ENCRYPTION_OLD_KEYS; list the previous key in KEY_ENCRYPTION_OLD_KEYS "
                "and run manage.py reencrypt_keys, or set the upstream key again",
                model.name,
            )
        return None


def _build() -> dict[str, CatalogModel]:
    models = {}
    for model in model_list_enabled():
        base_url = model.upstream_base_url or (settings.DEMO_UPSTREAM_URL if model.is_demo else "")
        models[model.name] = catalog_model(
            model,
            base_url=base_url.rstrip("/"),
            upstream_model=model.upstream_model or model.name,
            upstream_key=_upstream_key(model),
        )
    return models


class Catalog:
    def __init__(self, ttl: float = CATALOG_TTL_SECONDS):
        self.ttl = ttl
        self._models: dict[str, CatalogModel] = {}
        self._loaded_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _refresh(self, *, max_age: float | None = None) -> None:
        async with self._lock:
            if time.monotonic() - self._loaded_at < (self.ttl if max_age is None else max_age):
                return
            self._models = await sync_to_async(_snapshot)()
            self._loaded_at = time.monotonic()

    async def get(self, name: str) -> CatalogModel | None:
        if time.monotonic() - self._loaded_at >= self.ttl:
            await self._refresh()
        model = self._models.get(name)
        if model is not None and model.upstream_key is None:
            # A configuration fault the operator has been told about (logged once): a clear
            # 503 for the client, not a 500 with a traceback per request.
            raise GatewayError(
                503,
                "model_unavailable",
                f"The model {name} cannot reach its model server right now "
                "(its credentials are unusable). Retry later.",
                retry_after=30,
            )
        return model

    async def enabled(self) -> list[CatalogModel]:
        if time.monotonic() - self._loaded_at >= self.ttl:
            await self._refresh()
        return list(self._models.values())

    async def check(self) -> None:
        """Loads the snapshot unless it is under a second old, through the same thread and
        connection as requests do (for /healthz); raises what a request's refresh would.
        Concurrent checks wait for one load instead of queueing one each."""
        await self._refresh(max_age=CHECK_MAX_AGE_SECONDS)
