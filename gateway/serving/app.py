"""The ASGI application: the model API on a lean path, everything else to Django.

``/openai/…`` and ``/anthropic/…`` (one mount per dialect module) are served by raw ASGI
handlers — no middleware, sessions, CSRF or templates, one shared aiohttp session, database
work through ``usage.ledger`` — beside Django in the same process, sharing its settings. The
lifespan protocol opens and closes the gateway's pools; without it (some test clients) the
gateway starts on its first request.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging

from django.conf import settings

from gateway.serving import errors
from gateway.serving.catalog import Catalog
from gateway.serving.concurrency import ConcurrencyLimiter
from gateway.serving.dialects import DIALECT_MODULES
from gateway.serving.dialects.base import Dialect
from gateway.serving.errors import GatewayError
from gateway.serving.http import Request, error_response, send_response
from gateway.serving.pipeline import Gateway
from gateway.serving.ratelimit import RateLimiter
from gateway.serving.upstream import Upstream
from usage.ledger import ledger_for_database

log = logging.getLogger(__name__)

# Allocations between two passes over the youngest generation of the cyclic garbage collector
# (Python's default: 700). See ``tune_garbage_collector``.
GC_YOUNGEST_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Once a server process has started: everything alive now (Django, the modules, the
    catalog: long-lived by nature) is frozen out of the cyclic collector's passes, and the
    youngest generation is collected every ``GC_YOUNGEST_THRESHOLD`` allocations, so that a
    request's short-lived objects die by reference counting before a pass promotes them and
    later passes walk them again. Measured under the benchmark's load: the collector's CPU
    per request from about 90 µs to about 25 µs (bench/README.md)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, *gc.get_threshold()[1:])


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
        concurrency=ConcurrencyLimiter(
            redis_url=settings.REDIS_URL, prefix=f"{settings.CACHE_KEY_PREFIX}:gw:cc"
        ),
    )


class _Mount:
    """The dialects served below one prefix (``/openai`` has chat completions and responses).
    The first one renders errors for paths none of them has."""

    __slots__ = ("chat_paths", "dialect", "prefix", "routes", "tails")

    def __init__(self, dialects: list[Dialect]):
        self.dialect = dialects[0]
        self.prefix = self.dialect.prefix
        self.chat_paths = {path: d for d in dialects for path in d.chat_paths}
        self.routes = {
            route: (handler, d) for d in reversed(dialects) for route, handler in d.routes().items()
        }
        # Routes that end in ``/{id}`` take the rest of the path (model names hold slashes,
        # "Qwen/Qwen3-8B", and older SDKs do not escape them) as ``request.path_id``.
        self.tails = [
            (method, path.removesuffix("{id}"), target)
            for (method, path), target in self.routes.items()
            if path.endswith("/{id}")
        ]

    def route(self, method: str, subpath: str):
        """((handler, dialect), path id) for ``method subpath``, or (None, None)."""
        target = self.routes.get((method, subpath))
        if target is not None:
            return target, None
        for route_method, head, tail_target in self.tails:
            if route_method == method and subpath.startswith(head) and len(subpath) > len(head):
                return tail_target, subpath[len(head) :]
        return None, None

    def knows(self, subpath: str) -> bool:
        return any(path == subpath for _method, path in self.routes) or any(
            subpath.startswith(head) and len(subpath) > len(head) for _m, head, _t in self.tails
        )


def _mounts(dialects: list[Dialect]) -> list[_Mount]:
    by_prefix: dict[str, list[Dialect]] = {}
    for dialect in dialects:
        by_prefix.setdefault(dialect.prefix, []).append(dialect)
    return [_Mount(group) for group in by_prefix.values()]


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
        self.mounts = _mounts(load_dialects() if dialects is None else dialects)
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
                # Servers only: test clients never send the lifespan events.
                tune_garbage_collector()
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
        chat_dialect = mount.chat_paths.get(subpath)
        if chat_dialect is not None:
            if request.method != "POST":
                await send_response(send, error_response(errors.method_not_allowed(), chat_dialect))
                return
            await gateway.handle_chat(chat_dialect, request, send)
            return
        target, request.path_id = mount.route(request.method, subpath)
        if target is None:
            error = errors.method_not_allowed() if mount.knows(subpath) else errors.not_found()
            await send_response(send, error_response(error, dialect))
            return
        handler, dialect = target
        try:
            response = await handler(gateway, request)
        except GatewayError as error:
            response = error_response(error, dialect)
        await send_response(send, response)
