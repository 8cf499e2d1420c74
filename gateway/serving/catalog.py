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

from gateway.models import UpstreamEndpoint
from gateway.selectors import CatalogEndpoint, CatalogModel, catalog_model, model_list_enabled
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


def _upstream_key(model_name: str, encrypted: str) -> str | None:
    """The decrypted upstream key, or None when no configured key decrypts it."""
    if not encrypted:
        return ""
    try:
        return decrypt_secret(encrypted)
    except UndecryptableSecret:
        reported = (model_name, encrypted)
        if reported not in _reported_undecryptable:
            _reported_undecryptable.add(reported)
            log.error(
                "model %s: a stored upstream key cannot be decrypted with KEY_ENCRYPTION_KEY "
                "or KEY_ENCRYPTION_OLD_KEYS; list the previous key in KEY_ENCRYPTION_OLD_KEYS "
                "and run manage.py reencrypt_keys, or set the upstream key again",
                model_name,
            )
        return None


def _endpoints(model) -> tuple[CatalogEndpoint, ...]:
    """The model's enabled endpoints, best priority first; a model without endpoint rows is
    served by its own upstream fields (from before endpoint pools) as one implicit endpoint."""
    rows = list(model.endpoints.all())
    if not rows:
        kind = UpstreamEndpoint.Kind.DEMO if model.upstream_kind == "demo" else "openai_compatible"
        base_url = model.upstream_base_url or (
            settings.DEMO_UPSTREAM_URL if kind == UpstreamEndpoint.Kind.DEMO else ""
        )
        return (
            CatalogEndpoint(
                id=None,
                kind=kind,
                base_url=base_url.rstrip("/"),
                upstream_model=model.upstream_model or model.name,
                upstream_key=_upstream_key(model.name, model.upstream_key_encrypted),
            ),
        )
    endpoints = []
    for row in sorted(rows, key=lambda row: (row.priority, row.id)):
        # An Anthropic endpoint cannot serve embeddings (the admin refuses the pair; this
        # covers a model whose kind changed after its endpoints were set).
        if not row.enabled or (
            row.kind == row.Kind.ANTHROPIC and model.kind == model.Kind.EMBEDDING
        ):
            continue
        base_url = row.base_url or (settings.DEMO_UPSTREAM_URL if row.is_demo else "")
        endpoints.append(
            CatalogEndpoint(
                id=row.id,
                kind=row.kind,
                base_url=base_url.rstrip("/"),
                upstream_model=row.upstream_model or model.name,
                upstream_key=_upstream_key(model.name, row.api_key_encrypted),
                priority=row.priority,
                weight=row.weight,
                max_concurrency=row.max_concurrency,
                connect_timeout=row.connect_timeout_seconds,
                first_byte_timeout=row.first_byte_timeout_seconds,
                # Only an OpenAI-compatible server has /responses (the admin refuses the rest;
                # this covers a kind changed behind its back).
                responses_api=row.responses_api and row.kind == row.Kind.OPENAI_COMPATIBLE,
            )
        )
    return tuple(endpoints)


def _build() -> dict[str, CatalogModel]:
    """Every enabled model by its name and by each of its aliases."""
    models = {}
    aliases = {}
    for model in model_list_enabled():
        names = [alias.name for alias in model.aliases.all()]
        models[model.name] = catalog_model(
            model,
            endpoints=_endpoints(model),
            listed_aliases=tuple(alias.name for alias in model.aliases.all() if alias.listed),
        )
        aliases.update(dict.fromkeys(names, models[model.name]))
    # A model's own name wins over another model's alias of the same text.
    for name, model in aliases.items():
        models.setdefault(name, model)
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

    def current(self) -> bool:
        """Whether ``get`` answers from the snapshot, with no database round trip, for at least
        another second (so that the caller can leave out the database's time bound)."""
        return time.monotonic() - self._loaded_at < self.ttl - 1.0

    async def get(self, name: str) -> CatalogModel | None:
        if time.monotonic() - self._loaded_at >= self.ttl:
            await self._refresh()
        model = self._models.get(name)
        if model is not None and not model.endpoints:
            raise GatewayError(
                503,
                "model_unavailable",
                f"The model {name} has no enabled model server right now. Retry later.",
                retry_after=30,
            )
        if model is not None and all(endpoint.upstream_key is None for endpoint in model.endpoints):
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
        """Each enabled model once (not once per alias), in catalog order."""
        if time.monotonic() - self._loaded_at >= self.ttl:
            await self._refresh()
        return [model for name, model in self._models.items() if name == model.name]

    async def check(self) -> None:
        """Loads the snapshot unless it is under a second old, through the same thread and
        connection as requests do (for /healthz); raises what a request's refresh would.
        Concurrent checks wait for one load instead of queueing one each."""
        await self._refresh(max_age=CHECK_MAX_AGE_SECONDS)
