"""A minimal pipelined Redis client for the rate limiter's one script call per request.

redis-py's asyncio client spent about 0.25 ms CPU per call here (connection pool, command
packing, RESP3 parser); the limiter needs one ``EVALSHA`` returning three integers. This client
keeps one connection, writes commands as they come and matches replies in order (Redis answers
in order on a connection), so concurrent requests share it without a pool. Any failure fails
the pending calls and drops the connection; the next call reconnects, at most once a second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from urllib.parse import unquote, urlsplit

RECONNECT_AFTER_SECONDS = 1.0


class RedisError(Exception):
    pass


def _encode(args) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespClient:
    def __init__(self, url: str, *, timeout: float = 0.5):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.password = unquote(parts.password) if parts.password else None
        self.username = unquote(parts.username) if parts.username else None
        self.db = int((parts.path or "/0").strip("/") or 0)
        self.ssl = parts.scheme == "rediss"
        self.timeout = timeout
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        # Each call's future and the loop time its reply is due by, in the order sent.
        self._pending: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        # One timer for all calls, due when the oldest call is: replies come in order, so the
        # oldest is the first to be late (a timer per call cost about 3 µs each).
        self._watchdog: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Lock | None = None
        self._failed_at = float("-inf")

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None:
                return
            if time.monotonic() - self._failed_at < RECONNECT_AFTER_SECONDS:
                raise RedisError("Redis was unreachable a moment ago")
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=self.ssl or None),
                    self.timeout,
                )
            except (OSError, TimeoutError) as error:
                self._failed_at = time.monotonic()
                raise RedisError(f"cannot connect to Redis: {error.__class__.__name__}") from None
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
            hello = []
            if self.password:
                hello.append(
                    ("AUTH", self.username, self.password)
                    if self.username
                    else ("AUTH", self.password)
                )
            if self.db:
                hello.append(("SELECT", self.db))
            # Written together, before this coroutine yields: a caller that finds the writer
            # set while the replies are awaited writes its command behind them, never between
            # AUTH and SELECT (where it would run on database 0, or unauthenticated).
            waiters = [self._write(command) for command in hello]
            try:
                for waiter in waiters:
                    await waiter
            except RedisError as error:
                # A refused AUTH or SELECT: nothing sent on this connection may run.
                self._drop(RedisError(f"Redis refused the connection's set-up: {error}"))
                for waiter in waiters:  # their errors are this one
                    if waiter.done() and not waiter.cancelled():
                        waiter.exception()
                raise

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await self._parse(reader)
                waiter, _due = self._pending.popleft()
                if not waiter.done():
                    if isinstance(reply, RedisError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        except Exception as error:  # any failure of the stream: fail the callers, reconnect later
            self._drop(RedisError(f"Redis connection lost: {error.__class__.__name__}"))
        except asyncio.CancelledError:
            self._drop(RedisError("Redis client closed"))
            raise

    async def _parse(self, reader: asyncio.StreamReader):
        line = await reader.readuntil(b"\r\n")
        kind, rest = line[:1], line[1:-2]
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return (await reader.readexactly(size + 2))[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [await self._parse(reader) for _ in range(count)]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        raise ValueError("unexpected reply from Redis")

    def _drop(self, error: Exception) -> None:
        writer, self._writer = self._writer, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if writer is not None:
            writer.close()
        self._failed_at = time.monotonic()
        while self._pending:
            waiter, _due = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _write(self, args) -> asyncio.Future:
        """Send one command now; the future gets its reply (replies come in order), or fails
        when no reply came within ``timeout``."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        due = loop.time() + self.timeout
        self._pending.append((waiter, due))
        if self._watchdog is None:
            self._watchdog = loop.call_at(due, self._watch)
        self._writer.write(_encode(args))
        return waiter

    def _watch(self) -> None:
        """At the oldest pending call's due time: fail everything if it is still unanswered,
        else wait for the next oldest."""
        self._watchdog = None
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        due = self._pending[0][1]
        if due > loop.time():
            self._watchdog = loop.call_at(due, self._watch)
            return
        # The reply may still come and would be matched to the wrong caller: start over.
        self._drop(RedisError("Redis did not answer in time"))

    async def _send(self, args):
        return await self._write(args)

    async def call(self, *args):
        if self._writer is None:
            await self._connect()
        return await self._send(args)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
            self._reader_task = None
        self._drop(RedisError("Redis client closed"))


class Script:
    """A Lua script run by its SHA1, loaded on first use (and again after a Redis restart)."""

    def __init__(self, client: RespClient, source: str):
        import hashlib

        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(self, keys: list[str], args: list) -> object:
        try:
            return await self.client.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        await self.client.call("SCRIPT", "LOAD", self.source)
        return await self.client.call("EVALSHA", self.sha, len(keys), *keys, *args)
