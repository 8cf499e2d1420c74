"""Fault injection around real servers: a fault-capable upstream, a TCP proxy we can take down
or stall (in front of PostgreSQL or Redis), and the books every fault test checks afterwards.

Gateway processes come from ``tests.acceptance.live`` (uvicorn serving ``portal.asgi`` on the
test database); the upstream runs in a thread of this process so that a test can see when the
gateway's call to it ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web

from tests.acceptance.conftest import live_key, wait_for  # noqa: F401  (fixture re-export)
from tests.gateway.harness import DemoUpstreamThread, free_port
from usage.models import DailyUsage, Reservation, UsageRecord


# --- an upstream with more faults than the demo's switches ------------------------------------
class UpstreamLog:
    """When each tagged upstream call started and when its handler returned."""

    def __init__(self):
        self.calls: dict[str, list[float]] = {}

    def ended(self, tag: str) -> float | None:
        times = self.calls.get(tag)
        return times[1] if times and len(times) > 1 else None


def fault_upstream_app(log: UpstreamLog):
    """The demo upstream plus faults it lacks, switched by ``x-demo-test-fault`` (the gateway
    forwards ``x-demo-*`` headers to demo models): ``garbage`` (200 with a body that is not
    JSON), ``wrong-shape`` (200 with JSON that is not a completion), ``wrong-shape-stream``
    (a stream whose second chunk is JSON of the wrong shape), ``reasoning`` (a slow stream of
    ``x-demo-tokens`` ``reasoning_content`` chunks, then one of content and the usage),
    ``overreport`` (a normal answer whose usage claims ten times ``max_tokens``),
    ``negative`` (a normal answer whose usage claims -5000 output tokens). ``x-demo-tag``
    names a call so that a test can see when it ended."""
    from gateway.demo_upstream import chat_completions, list_models

    async def chat(request: web.Request):
        tag = request.headers.get("x-demo-tag")
        if tag:
            log.calls[tag] = [time.monotonic()]
        try:
            fault = request.headers.get("x-demo-test-fault", "")
            if fault == "garbage":
                await request.read()
                return web.Response(body=b'{"id": "chatcmpl-1", "choices": [{"mess', status=200)
            if fault == "wrong-shape":
                await request.read()
                return web.json_response(["not", "a", "completion"])
            if fault == "wrong-shape-stream":
                await request.read()
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                await response.write(b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n\n')
                await response.write(b'data: {"choices": 7, "usage": 7}\n\n')
                await response.write(b"data: [DONE]\n\n")
                return response
            if fault == "reasoning":
                return await _reasoning_stream(request)
            if fault in ("overreport", "negative"):
                return await _misreported(request, fault)
            return await chat_completions(request)
        finally:
            if tag:
                log.calls[tag].append(time.monotonic())

    async def _reasoning_stream(request):
        body = await request.json()
        count = int(request.headers.get("x-demo-tokens", "200"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = '{"id":"chatcmpl-r","object":"chat.completion.chunk","model":"m","choices":'
        try:
            for _ in range(count):
                delta = '{"reasoning_content":" think"}'
                await response.write(f'data: {head}[{{"index":0,"delta":{delta}}}]}}\n\n'.encode())
                await asyncio.sleep(0.01)
            await response.write(
                f'data: {head}[{{"index":0,"delta":{{"content":"Done."}}}}]}}\n\n'.encode()
            )
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 5, "completion_tokens": count + 2}
                await response.write(f'data: {head}[],"usage":{json.dumps(usage)}}}\n\n'.encode())
            await response.write(b"data: [DONE]\n\n")
        except ConnectionError:
            pass
        return response

    async def _misreported(request, fault):
        body = await request.json()
        limit = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        output = 10 * limit if fault == "overreport" else -5000
        usage = {"prompt_tokens": 5, "completion_tokens": output, "total_tokens": output + 5}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-m",
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hi."},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = '{"id":"chatcmpl-m","object":"chat.completion.chunk","model":"m","choices":'
        await response.write(
            f'data: {head}[{{"index":0,"delta":{{"content":"Hi."}}}}]}}\n\n'.encode()
        )
        await response.write(f'data: {head}[],"usage":{json.dumps(usage)}}}\n\n'.encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", list_models)
    return app


@pytest.fixture(scope="module")
def fault_upstream():
    log = UpstreamLog()
    server = DemoUpstreamThread(lambda: fault_upstream_app(log)).start()
    server.log = log
    try:
        yield server
    finally:
        server.stop()


# --- a TCP proxy that can go down or stall ------------------------------------------------------
class TcpProxy:
    """Forwards a local port to ``target``; ``down()`` drops every connection and refuses new
    ones, ``stall()`` keeps connections open but forwards nothing, ``up()`` heals both."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server = None
        self._transports: set = set()
        self._flowing: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    async def _start(self):
        if self._flowing is None:
            self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _handle(self, reader, writer):
        self._transports.add(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._transports.add(up_writer.transport)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader, writer):
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._transports.discard(writer.transport)

    async def _down(self):
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        self._flowing.set()

    async def _stall(self):
        self._flowing.clear()

    def down(self) -> None:
        self._call(self._down())

    def stall(self) -> None:
        self._call(self._stall())

    def up(self) -> None:
        async def heal():
            self._flowing.set()
            if self._server is None:
                await self._start()

        self._call(heal())

    def stop(self) -> None:
        self._call(self._down())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def url_for(self, url: str) -> str:
        """``url`` (postgres://…, redis://…) with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))


# --- the books ---------------------------------------------------------------------------------
def settled_records(user, count: int, timeout: float = 10.0) -> list[UsageRecord]:
    """Wait for ``count`` records of ``user`` and for every reservation of ``user`` to go."""
    wait_for(lambda: UsageRecord.objects.filter(user=user).count() >= count, timeout)
    wait_for(lambda: not Reservation.objects.filter(user=user).exists(), timeout)
    return list(UsageRecord.objects.filter(user=user).order_by("created_at", "id"))


def assert_books_balance(user) -> DailyUsage | None:
    """Nothing reserved or left in flight, and the counter equals the sum of the records."""
    assert not Reservation.objects.filter(user=user).exists()
    records = UsageRecord.objects.filter(user=user)
    counter = DailyUsage.objects.filter(user=user).first()
    charged = sum(r.input_tokens + r.output_tokens for r in records)
    if counter is None:
        assert charged == 0
        return None
    assert counter.reserved_tokens == 0
    assert counter.input_tokens + counter.output_tokens == charged
    # Every admitted request settles once: the counter's request count matches the records
    # that got past the quota step (refusals before it reserve nothing).
    return counter
