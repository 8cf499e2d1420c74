"""Per-key concurrent requests (``ApiKey.max_concurrent_requests``): at most N in flight.

With Redis, across every process and machine: one sorted set per key whose members are the
requests in flight (a random id each) scored by their lease's expiry (Redis's own clock). A
Lua script takes a slot atomically: it drops expired members, then adds the request if fewer
than N remain. The process renews the leases of its slots from the gateway's lease loop (one
script call for all of them), and a request gives its slot back when it ends, however it ends
(the answer sent, the stream over, the client gone, the task cancelled). A process that dies
cannot give its slots back: they expire after ``GATEWAY_CONCURRENCY_LEASE_SECONDS``.

Without Redis (the embedded defaults: one server process) a counter in this process.

Like the rate limiter, a Redis that does not answer fails *open* (logged at most every 30 s):
the daily quota and the key's cap, which protect money, live in the database regardless.
Keys without a limit never reach this module.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from django.conf import settings

log = logging.getLogger(__name__)

_WARN_EVERY_SECONDS = 30.0

# KEYS[1] the key's set; ARGV limit, lease (ms), member. Returns 1 when the slot is taken.
_ACQUIRE_LUA = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""

# KEYS the sets; ARGV lease (ms), then one member per key. Moves each held slot's expiry on
# (XX: a slot already released or expired is not taken again).
_RENEW_LUA = """
local now = redis.call('TIME')
local until_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', until_ms, ARGV[i + 1])
  redis.call('PEXPIRE', key, tonumber(ARGV[1]))
end
return #KEYS
"""


class Slot:
    """One request's place among its key's requests in flight: counted in this process
    (``member`` None), held in Redis (its member), or admitted unheld because Redis did not
    answer (``member`` "")."""

    __slots__ = ("key_id", "member")

    def __init__(self, key_id: int, member: str | None):
        self.key_id = key_id
        self.member = member


class ConcurrencyLimiter:
    def __init__(self, *, redis_url: str = "", prefix: str = "gw:cc"):
        self.redis_url = redis_url
        self.prefix = prefix
        self._redis = None
        self._acquire = None
        self._renew = None
        self._local: dict[int, int] = {}
        # Slots of this process held in Redis (renewed by ``renew``), and releases under way.
        self._held: dict[str, Slot] = {}
        self._releasing: set[asyncio.Task] = set()
        self._warned_at = float("-inf")

    async def open(self) -> None:
        if self.redis_url:
            from gateway.serving.redis_wire import RespClient, Script

            self._redis = RespClient(self.redis_url)
            self._acquire = Script(self._redis, _ACQUIRE_LUA)
            self._renew = Script(self._redis, _RENEW_LUA)

    async def close(self) -> None:
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._redis is not None:
            await self._redis.close()
            self._redis = None

    def _set(self, key_id: int) -> str:
        return f"{self.prefix}:{key_id}"

    def _warn(self, error: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > _WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("concurrency limits: Redis unavailable (%s); admitting requests", error)

    async def acquire(self, key_id: int, limit: int) -> Slot | None:
        """A slot for one more request of the key, or None when ``limit`` are in flight."""
        if self._redis is None:
            if self._local.get(key_id, 0) >= limit:
                return None
            self._local[key_id] = self._local.get(key_id, 0) + 1
            return Slot(key_id, None)
        member = secrets.token_hex(8)
        lease_ms = int(settings.GATEWAY_CONCURRENCY_LEASE_SECONDS * 1000)
        try:
            taken = await self._acquire([self._set(key_id)], [limit, lease_ms, member])
        except Exception as error:
            self._warn(error)
            return Slot(key_id, "")
        if not taken:
            return None
        slot = Slot(key_id, member)
        self._held[member] = slot
        return slot

    def release(self, slot: Slot | None) -> None:
        """Give the slot back. Synchronous (a task does the Redis call), so that it runs to the
        end even from a cancelled request's ``finally``."""
        if slot is None or slot.member == "":
            return
        if slot.member is None:
            left = self._local.get(slot.key_id, 0) - 1
            if left > 0:
                self._local[slot.key_id] = left
            else:
                self._local.pop(slot.key_id, None)
            return
        self._held.pop(slot.member, None)
        if self._redis is None:
            return  # closed meanwhile: the lease runs out
        task = asyncio.get_running_loop().create_task(self._release(slot))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, slot: Slot) -> None:
        try:
            await self._redis.call("ZREM", self._set(slot.key_id), slot.member)
        except Exception as error:
            # The lease runs out instead, no renewal keeping it.
            self._warn(error)

    async def renew(self) -> None:
        """Move on the leases of every slot this process holds (one script call)."""
        if self._redis is None or not self._held:
            return
        slots = list(self._held.values())
        lease_ms = int(settings.GATEWAY_CONCURRENCY_LEASE_SECONDS * 1000)
        await self._renew(
            [self._set(slot.key_id) for slot in slots], [lease_ms, *(s.member for s in slots)]
        )

    def in_flight(self, key_id: int) -> int:
        """This process's own count without Redis (for tests)."""
        return self._local.get(key_id, 0)
