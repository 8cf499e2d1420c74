"""A minimal pipelined Redis client for the rate limiter's one script call per request.

redis-py's asyncio client spent about 0.25 ms CPU per call here (connection pool, command
packing, RESP3 parser); the limiter needs one ``EVALSHA`` returning three integers. This client
keeps one connection, writes commands as they come and matches replies in order (Redis answers
in order on a connection), so concurrent requests share it without a pool. A new connection
takes no command before its AUTH and SELECT have succeeded. Any failure fails
the pending calls and drops the connection; the next call reconnects, at most once a second.
"""

from __future__ import annotations

import asyncio
import collections
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


def _parse(data: bytes, pos: int):
    """The reply starting at ``pos`` and the position after it, or None if ``data`` does not
    hold all of it yet. Raises ValueError on bytes that are not a RESP2 reply."""
    end = data.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, rest, pos = data[pos], data[pos + 1 : end], end + 2
    if kind == 58:  # ":" an integer
        return int(rest), pos
    if kind == 36:  # "$" a bulk string
        size = int(rest)
        if size < 0:
            return None, pos
        if len(data) < pos + size + 2:
            return None
        return data[pos : pos + size], pos + size + 2
    if kind == 42:  # "*" an array
        count = int(rest)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            parsed = _parse(data, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    if kind == 43:  # "+" a simple string
        return rest, pos
    if kind == 45:  # "-" an error, handed to its caller
        return RedisError(rest.decode("utf-8", "replace")), pos
    raise ValueError("unexpected reply from Redis")


class _Connection(asyncio.Protocol):
    """One connection's bytes: whole replies are handed to the client as they arrive, without
    a reader task (a coroutine step per reply line cost more than the parsing)."""

    def __init__(self, client: RespClient):
        self.client = client
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        # Commands sent while others await their replies, written together at the end of the
        # loop iteration: one system call for every request that called meanwhile.
        self._outgoing: list[bytes] = []

    def send(self, command: bytes, *, alone: bool) -> None:
        """Write ``command`` now if it is the only one awaiting a reply (nothing to wait for),
        else with the others of this loop iteration."""
        if alone:
            self.transport.write(command)
            return
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(command)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if not self.transport.is_closing():  # else its callers have been failed already
            self.transport.write(b"".join(outgoing))

    def connection_made(self, transport) -> None:
        self.transport = transport
        # Its replies are matched from its first byte: a Redis that turns the client away (at
        # its client limit, in protected mode) sends its error at once and closes.
        self.client._connection = self

    def data_received(self, data: bytes) -> None:
        if self._rest:
            data = self._rest + data
        pos, size = 0, len(data)
        try:
            while pos < size:
                parsed = _parse(data, pos)
                if parsed is None:
                    break
                reply, pos = parsed
                if not self.client._reply(self, reply):
                    return
        except ValueError as error:
            self.client._lost(self, error)
            return
        self._rest = data[pos:]

    def connection_lost(self, exc) -> None:
        self.client._lost(self, exc or ConnectionResetError())


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
        # The connection whose replies are matched to ``_pending``, from its first byte, and
        # the same once AUTH and SELECT have succeeded on it: only then do callers write.
        self._connection: _Connection | None = None
        self._ready: _Connection | None = None
        # Each call's future and the loop time its reply is due by, in the order sent.
        self._pending: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        # One timer for all calls, due when the oldest call is: replies come in order, so the
        # oldest is the first to be late (a timer per call cost about 3 µs each).
        self._watchdog: asyncio.TimerHandle | None = None
        # The set-up of a new connection under way, which every caller meanwhile waits for.
        self._setup: asyncio.Task | None = None
        self._failed_at = float("-inf")
        self._last_error: RedisError | None = None
        self._closed = False

    async def _connect(self) -> None:
        if self._setup is None:
            self._setup = asyncio.get_running_loop().create_task(self._open())
        setup = self._setup
        try:
            # Shielded: a caller that gives up (its client left) does not abort the set-up
            # that the others wait for.
            await asyncio.shield(setup)
        except asyncio.CancelledError:
            if setup.cancelled() and not asyncio.current_task().cancelling():
                # The set-up was stopped by ``close``, not this caller: a failed call.
                raise RedisError("Redis client closed") from None
            raise

    async def _open(self) -> None:
        try:
            if self._closed:
                raise RedisError("Redis client closed")
            if time.monotonic() - self._failed_at < RECONNECT_AFTER_SECONDS:
                raise RedisError("Redis was unreachable a moment ago")
            await self._set_up()
        finally:
            self._setup = None

    async def _set_up(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _transport, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl or None
                ),
                self.timeout,
            )
        except (OSError, TimeoutError) as error:
            self._failed_at = time.monotonic()
            raise RedisError(f"cannot connect to Redis: {error.__class__.__name__}") from None
        hello = []
        if self.password:
            hello.append(
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
        if self.db:
            hello.append(("SELECT", self.db))
        waiters = []
        try:
            if connection is not self._connection:  # turned away before it could be used
                raise self._last_error or RedisError("Redis closed the connection")
            # Callers wait for this set-up meanwhile: no command of theirs is written before
            # both replies are in, so none runs unauthenticated or on another database.
            waiters = [self._write(connection, command) for command in hello]
            for waiter in waiters:
                await waiter
        except RedisError as error:
            refused = RedisError(f"Redis refused the connection's set-up: {error}")
            self._drop(refused)
            raise refused from None
        except BaseException:  # cancelled by ``close``
            self._drop(RedisError("Redis connection set-up was interrupted"))
            raise
        finally:
            for waiter in waiters:  # failed together: their errors are the one raised
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()
        self._ready = connection

    def _reply(self, connection: _Connection, reply) -> bool:
        """Hand ``reply`` to the oldest call; False once ``connection`` is not ours any more."""
        if connection is not self._connection:
            return False
        if not self._pending:
            self._drop(
                RedisError(f"Redis turned the connection away: {reply}")
                if isinstance(reply, RedisError)
                else RedisError("Redis sent a reply nobody asked for")
            )
            return False
        waiter, _due = self._pending.popleft()
        if not waiter.done():
            if isinstance(reply, RedisError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)
        return True

    def _lost(self, connection: _Connection, error: Exception) -> None:
        if connection is self._connection:
            self._drop(RedisError(f"Redis connection lost: {error.__class__.__name__}"))

    def _drop(self, error: Exception) -> None:
        """Fail every pending call and close the connection (any failure: replies could no
        longer be matched to their callers); the next call reconnects."""
        connection, self._connection, self._ready = self._connection, None, None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if connection is not None and connection.transport is not None:
            connection.transport.close()
        self._failed_at = time.monotonic()
        self._last_error = error
        while self._pending:
            waiter, _due = self._pending.popleft()
            if not waiter.done():
                # One exception each: a shared one would gather every caller's traceback.
                waiter.set_exception(RedisError(*error.args))

    def _write(self, connection: _Connection, args) -> asyncio.Future:
        """Send one command now; the future gets its reply (replies come in order), or fails
        when no reply came within ``timeout``."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        due = loop.time() + self.timeout
        self._pending.append((waiter, due))
        if self._watchdog is None:
            self._watchdog = loop.call_at(due, self._watch)
        connection.send(_encode(args), alone=len(self._pending) == 1)
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

    async def call(self, *args):
        connection = self._ready
        if connection is None:
            await self._connect()
            connection = self._ready
            if connection is None:  # dropped again before this caller resumed
                raise self._last_error or RedisError("Redis connection lost")
        return await self._write(connection, args)

    async def close(self) -> None:
        self._closed = True
        if self._setup is not None:
            self._setup.cancel()
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
