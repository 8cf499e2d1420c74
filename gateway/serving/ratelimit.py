"""Per-key rate limits: requests and tokens per minute.

Fixed one-minute windows, counted in Redis by one Lua script per request (atomic across all
processes and machines), or in this process when ``REDIS_URL`` is unset (``make run``: one
server process). Tokens are the input estimate, counted when a request is admitted, plus the
output tokens of settled requests, added with the key's next check (so settling costs no extra
round trip).

Requests are counted (RPM) before their body is read, so that a key over its limit cannot make
a process read and parse megabytes; the input estimate, known only after parsing, is judged
against the tokens left at that check (``admit_tokens``) and counted with the key's next check.
Failed key checks are counted per client address (``note_auth_failure``), in the same store.

When Redis is down the limiter fails *open*: it logs a warning (at most every 30 s) and lets
requests through. The daily quota, the limit that protects money, lives in the database and
is enforced regardless; refusing every call because a cache is down would turn a Redis outage
into a platform outage.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings

from gateway.serving import errors
from keys.limits import effective_rate_limits

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
_WARN_EVERY_SECONDS = 30.0

# KEYS[1] the key's window hash; ARGV rpm, tpm, cost (input estimate), pending (settled output)
# Returns {verdict, requests, tokens}: verdict 2 = admitted, 0 = over RPM, 1 = over TPM.
_LUA = """
local r = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local pending = tonumber(ARGV[4])
if pending > 0 then t = redis.call('HINCRBY', KEYS[1], 't', pending) end
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local verdict = 2
if r + 1 > rpm then verdict = 0
elseif t > 0 and t + cost > tpm then verdict = 1
else
  r = redis.call('HINCRBY', KEYS[1], 'r', 1)
  t = redis.call('HINCRBY', KEYS[1], 't', cost)
end
redis.call('PEXPIRE', KEYS[1], 61000)
return {verdict, r, t}
"""


# KEYS[1] the address's window of failed key checks. Returns the failures in the window.
_FAILURES_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], 61000) end
return n
"""


@dataclass(slots=True)
class RateState:
    limit_requests: int
    remaining_requests: int
    limit_tokens: int
    remaining_tokens: int
    reset_seconds: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        reset = f"{max(0.0, self.reset_seconds):.0f}s".encode()
        return [
            (b"x-ratelimit-limit-requests", str(self.limit_requests).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, self.remaining_requests)).encode()),
            (b"x-ratelimit-reset-requests", reset),
            (b"x-ratelimit-limit-tokens", str(self.limit_tokens).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, self.remaining_tokens)).encode()),
            (b"x-ratelimit-reset-tokens", reset),
        ]


class RateLimiter:
    """``check`` admits a request or raises the documented 429; ``add_output`` is free."""

    def __init__(self, *, redis_url: str = "", prefix: str = "gw:rl"):
        self.redis_url = redis_url
        self.prefix = prefix
        self._redis = None
        self._script = None
        self._failures_script = None
        self._local: dict[int, list] = {}
        # Per address: [window, failed key checks] (without Redis), and the window until whose
        # end this process refuses the address without a database lookup.
        self._local_failures: dict[str, list] = {}
        self._blocked: dict[str, int] = {}
        self._pending: dict[int, int] = {}
        self._warned_at = float("-inf")

    async def open(self) -> None:
        if self.redis_url:
            from gateway.serving.redis_wire import RespClient, Script

            self._redis = RespClient(self.redis_url)
            self._script = Script(self._redis, _LUA)
            self._failures_script = Script(self._redis, _FAILURES_LUA)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
            self._redis = None

    def add_output(self, key_id: int, tokens: int) -> None:
        if tokens > 0:
            self._pending[key_id] = self._pending.get(key_id, 0) + tokens

    def admit_tokens(self, state: RateState, *, key_id: int, tokens: int) -> None:
        """Judge a request's input estimate against what ``state`` (its check, made before the
        body was read) left, as ``check`` would have; count it with the key's next check."""
        used = state.limit_tokens - state.remaining_tokens
        if used > 0 and tokens > state.remaining_tokens:
            error = errors.rate_limited(retry_after=state.reset_seconds, what="tokens")
            error.headers.extend(state.headers())
            raise error
        state.remaining_tokens -= tokens
        self.add_output(key_id, tokens)

    def refuse_blocked(self, client: str) -> None:
        """429 at once for an address over its failed key checks in this window (no I/O)."""
        window = self._blocked.get(client)
        if window is None:
            return
        now = time.time()
        if window != int(now // WINDOW_SECONDS):
            del self._blocked[client]
            return
        raise errors.too_many_auth_failures(retry_after=(window + 1) * WINDOW_SECONDS - now)

    async def note_auth_failure(self, client: str) -> None:
        """Count a failed key check of ``client``; 429 once it is over the limit. Fails open."""
        limit = settings.GATEWAY_AUTH_FAILURES_PER_MINUTE
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        if self._redis is not None:
            try:
                failures = await self._failures_script(
                    [f"{self.prefix}:auth:{client}:{window}"], []
                )
            except Exception as error:
                if now - self._warned_at > _WARN_EVERY_SECONDS:
                    self._warned_at = now
                    log.warning("rate limiter: Redis unavailable (%s); admitting requests", error)
                return
        else:
            slot = self._local_failures.get(client)
            if slot is None or slot[0] != window:
                if len(self._local_failures) > 100_000:
                    self._local_failures.clear()
                slot = self._local_failures[client] = [window, 0]
            slot[1] += 1
            failures = slot[1]
        if failures > limit:
            if len(self._blocked) > 100_000:
                self._blocked.clear()
            self._blocked[client] = window
            raise errors.too_many_auth_failures(retry_after=(window + 1) * WINDOW_SECONDS - now)

    async def check(
        self, *, key_id: int, rpm: int | None, tpm: int | None, tokens: int
    ) -> RateState:
        rpm, tpm = effective_rate_limits(rpm, tpm)
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        reset = (window + 1) * WINDOW_SECONDS - now
        pending = self._pending.pop(key_id, 0)
        if self._redis is not None:
            try:
                verdict, used_r, used_t = await self._script(
                    [f"{self.prefix}:{key_id}:{window}"], [rpm, tpm, tokens, pending]
                )
            except Exception as error:
                if now - self._warned_at > _WARN_EVERY_SECONDS:
                    self._warned_at = now
                    log.warning("rate limiter: Redis unavailable (%s); admitting requests", error)
                return RateState(rpm, rpm, tpm, tpm, reset)
        else:
            verdict, used_r, used_t = self._check_local(key_id, window, rpm, tpm, tokens, pending)
        state = RateState(rpm, max(0, rpm - used_r), tpm, max(0, tpm - used_t), reset)
        if verdict == 0:
            error = errors.rate_limited(retry_after=reset, what="requests")
        elif verdict == 1:
            error = errors.rate_limited(retry_after=reset, what="tokens")
        else:
            return state
        error.headers.extend(state.headers())
        raise error

    def _check_local(self, key_id, window, rpm, tpm, tokens, pending):
        slot = self._local.get(key_id)
        if slot is None or slot[0] != window:
            if len(self._local) > 100_000:
                self._local.clear()
            slot = self._local[key_id] = [window, 0, 0]
        slot[2] += pending
        if slot[1] + 1 > rpm:
            return 0, slot[1], slot[2]
        if slot[2] > 0 and slot[2] + tokens > tpm:
            return 1, slot[1], slot[2]
        slot[1] += 1
        slot[2] += tokens
        return 2, slot[1], slot[2]
