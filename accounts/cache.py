"""The Redis cache, failing open: when Redis is down the portal still signs people in.

The cache holds allauth's rate-limit windows and nothing that must be exact. With Redis down
every call used to raise, and sign-in answered 500. Here a failing call logs a warning (at
most every 30 s) and answers as an empty cache would, and for a few seconds after a failure
Redis is not asked at all, so a stalled Redis does not add its timeout to every call. Rate
limits thus fail open, like the gateway's; what must not fail open does not live here: code
attempts, SMS budgets and used challenges are counted in the database (accounts.codes).
"""

import functools
import logging
import time

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_PAUSE_SECONDS = 5.0
_WARN_EVERY_SECONDS = 30.0


def _fail_open(default):
    def decorator(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if time.monotonic() < self._paused_until:
                return default(args, kwargs) if callable(default) else default
            try:
                return method(self, *args, **kwargs)
            except (RedisError, OSError) as exc:
                now = time.monotonic()
                self._paused_until = now + _PAUSE_SECONDS
                if now - self._warned_at >= _WARN_EVERY_SECONDS:
                    self._warned_at = now
                    logger.warning("cache unavailable, rate limits fail open: %s", exc)
                return default(args, kwargs) if callable(default) else default

        return wrapper

    return decorator


def _get_default(args, kwargs):
    return kwargs.get("default", args[1] if len(args) > 1 else None)


class FailOpenRedisCache(RedisCache):
    _paused_until = 0.0
    _warned_at = -_WARN_EVERY_SECONDS

    get = _fail_open(_get_default)(RedisCache.get)
    # "added": allauth's rate-limit lock is then taken and the limit counts nothing.
    add = _fail_open(True)(RedisCache.add)
    set = _fail_open(None)(RedisCache.set)
    touch = _fail_open(False)(RedisCache.touch)
    delete = _fail_open(False)(RedisCache.delete)
    has_key = _fail_open(False)(RedisCache.has_key)
    get_many = _fail_open(lambda args, kwargs: {})(RedisCache.get_many)
    set_many = _fail_open(lambda args, kwargs: [])(RedisCache.set_many)
    delete_many = _fail_open(None)(RedisCache.delete_many)
    clear = _fail_open(False)(RedisCache.clear)
