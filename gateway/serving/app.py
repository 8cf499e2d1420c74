"""The ASGI application: the model API on a lean path, everything else to Django.

``/openai/…`` and ``/anthropic/…`` (one mount per dialect module) are served by raw ASGI
handlers — no middleware, sessions, CSRF or templates, one shared aiohttp session, database
work through ``usage.ledger`` — beside Django in the same process, sharing its settings. The
lifespan protocol opens and closes the gateway's pools; without it (some test clients) the
gateway starts on its first request.
"""

from __future__ import annotations

import asyncio
import importlib
import logging

from django.conf import settings

from gateway.serving import errors
from gateway.serving.catalog import Catalog
from gateway.serving.dialects import DIALECT_MODULES
from gateway.serving.dialects.base import Dialect
from gateway.serving.errors import GatewayError
from gateway.serving.http import Request, error_response, send_response
from gateway.serving.pipeline import Gateway
from gateway.serving.ratelimit import RateLimiter
from gateway.serving.upstream import Upstream
from usage.ledger import ledger_for_database

log = logging.getLogger(__name__)


def load_dialects(modules=DIALECT_MODULES) -> list[Dialect]:
    return [importlib.import_module(name).dialect for name in modules]


def build_gateway() -> Gateway:
    return Gateway(
        ledger=ledger_for_database(),
        # Under the cache prefix: deployments (and test runs) sharing a Redis count apart.
        limiter=RateLimiter(
            redis_url=settings.REDIS_URL, prefix=f"{settings.CACHE_KEY_PREFIX}:gw:rl"
        ),
        upstream=Upstream(),
        catalog=Catalog(),
        max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES,
    )


class _Mount:
    __slots__ = ("chat_paths", "dialect", "prefix", "routes")

    def __init__(self, dialect: Dialect):
        self.dialect = dialect
        self.prefix = dialect.prefix
        self.chat_paths = frozenset(dialect.chat_paths)
        self.routes = dialect.routes()


# The gateway this process serves (set by portal.asgi), so that /healthz can probe the
# connections and catalog the gateway really uses rather than Django's own connection.
_serving: GatewayApplication | None = None


def serve(application: GatewayApplication) -> GatewayApplication:
    global _serving
    _serving = application
    return application


def serving() -> GatewayApplication | None:
    return _serving


class GatewayApplication:
    def __init__(self, fallback, *, dialects: list[Dialect] | None = None, factory=build_gateway):
        self.fallback = fallback
        self.mounts = [_Mount(d) for d in (load_dialects() if dialects is None else dialects)]
        self.factory = factory
        self.gateway: Gateway | None = None
        self._starting: asyncio.Lock | None = None

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            for mount in self.mounts:
                prefix = mount.prefix
                if path.startswith(prefix) and (
                    len(path) == len(prefix) or path[len(prefix)] == "/"
                ):
                    await self._dispatch(mount, scope, receive, send, path[len(prefix) :])
                    return
            await self.fallback(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.fallback(scope, receive, send)

    async def _started(self) -> Gateway:
        if self.gateway is None:
            if self._starting is None:
                self._starting = asyncio.Lock()
            async with self._starting:
                if self.gateway is None:
                    gateway = self.factory()
                    await gateway.startup()
                    self.gateway = gateway
        return self.gateway

    async def health(self) -> dict[str, Exception | None]:
        """Probes the ledger's connections and the catalog's source, each bounded like a
        request's database step; maps each to the exception it raised, or None."""

        async def probe(step) -> Exception | None:
            try:
                async with asyncio.timeout(settings.GATEWAY_DATABASE_TIMEOUT_SECONDS):
                    await step()
            except Exception as error:
                return error
            return None

        try:
            gateway = self.gateway or await self._started()
        except Exception as error:
            return {"ledger": error, "catalog": error}
        ledger, catalog = await asyncio.gather(
            probe(gateway.ledger.ping), probe(gateway.catalog.check)
        )
        return {"ledger": ledger, "catalog": catalog}

    async def shutdown(self) -> None:
        if self.gateway is not None:
            gateway, self.gateway = self.gateway, None
            await gateway.shutdown()

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._started()
                except Exception as error:
                    log.exception("gateway start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, mount: _Mount, scope, receive, send, subpath: str):
        gateway = self.gateway or await self._started()
        dialect = mount.dialect
        if len(subpath) > 1 and subpath.endswith("/"):
            subpath = subpath.rstrip("/")
        subpath = subpath or "/"
        request = Request(scope, receive, subpath)
        if subpath in mount.chat_paths:
            if request.method != "POST":
                await send_response(send, error_response(errors.method_not_allowed(), dialect))
                return
            await gateway.handle_chat(dialect, request, send)
            return
        handler = mount.routes.get((request.method, subpath))
        if handler is None:
            known = any(path == subpath for _method, path in mount.routes)
            error = errors.method_not_allowed() if known else errors.not_found()
            await send_response(send, error_response(error, dialect))
            return
        try:
            response = await handler(gateway, request)
        except GatewayError as error:
            response = error_response(error, dialect)
        await send_response(send, response)
