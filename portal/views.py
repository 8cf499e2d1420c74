import logging
import time

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
def healthz(request):
    checks = {
        "database": _check(_database_ok),
        "cache": _check(_cache_ok),
        "broker": _check(_broker_ok),
    }
    healthy = all(c["ok"] for c in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )


def _check(probe) -> dict:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:
        # The class name only: connection errors can carry DSNs with passwords.
        logger.warning("health check %s failed: %s", probe.__name__, type(exc).__name__)
        ok, error = False, type(exc).__name__
    else:
        ok, error = True, None
    result = {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 1)}
    if error:
        result["error"] = error
    return result


def _database_ok():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


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
