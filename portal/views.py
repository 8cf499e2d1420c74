import asyncio
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)

BROKER_CHECK_TIMEOUT_SECONDS = 2


def home(request):
    return render(request, "portal/home.html")


@never_cache
@require_GET
async def healthz(request):
    # The gateway's probes run beside Django's (not after them), so that a stalled database
    # still gets an answer within about one timeout.
    gateway = asyncio.ensure_future(_gateway_checks())
    checks = await sync_to_async(_django_checks)()
    checks.update(await gateway)
    healthy = all(c["ok"] for c in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )


def _django_checks() -> dict:
    return {
        "database": _check(_database_ok),
        "cache": _check(_cache_ok),
        "broker": _check(_broker_ok),
    }


async def _gateway_checks() -> dict:
    """What the model API itself uses: its own PostgreSQL connections (asyncpg, not Django's)
    and its catalog's source. Only in a process that serves the gateway (portal.asgi)."""
    from gateway.serving.app import serving

    application = serving()
    if application is None:
        return {}
    started = time.perf_counter()
    failures = await application.health()
    ms = round((time.perf_counter() - started) * 1000, 1)
    return {
        f"gateway_{name}": _result(f"gateway_{name}", failure, ms)
        for name, failure in failures.items()
    }


def _check(probe) -> dict:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:
        failure = exc
    else:
        failure = None
    return _result(probe.__name__, failure, round((time.perf_counter() - started) * 1000, 1))


def _result(name: str, failure: Exception | None, ms: float) -> dict:
    result = {"ok": failure is None, "ms": ms}
    if failure is not None:
        # The class name only: connection errors can carry DSNs with passwords.
        logger.warning("health check %s failed: %s", name, type(failure).__name__)
        result["error"] = type(failure).__name__
    return result


def _database_ok():
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        # Back to the pool now, not when the request ends: the gateway's catalog probe that
        # runs beside this one needs a connection from the same pool, and a burst of health
        # checks each holding one would starve it.
        connection.close()


def _cache_ok():
    cache.set("healthz", "1", 10)
    if cache.get("healthz") != "1":
        raise RuntimeError("cache did not return what was stored")


def _broker_ok():
    from portal.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_CHECK_TIMEOUT_SECONDS)
        if settings.CELERY_BROKER_URL.startswith(("redis", "amqp")):
            conn.default_channel  # noqa: B018  (opens a channel: proves the broker answers)
