"""Drive the gateway's ASGI application in-process, as uvicorn would, and a demo upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from dataclasses import dataclass, field

from aiohttp import web


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoUpstreamThread:
    """The demo upstream on a free port, in its own thread and event loop."""

    def __init__(self, app_factory=None):
        from gateway.demo_upstream import make_app

        self.app_factory = app_factory or make_app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.app_factory(), access_log=None)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def start(self):
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class Result:
    status: int
    headers: dict[str, str]
    body: bytes
    chunks: list[bytes] = field(default_factory=list)

    def json(self):
        return json.loads(self.body)

    def events(self) -> list:
        """The ``data:`` payloads of an SSE body, JSON-decoded ([DONE] kept as the string)."""
        out = []
        for line in self.body.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
                out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
        return out


async def asgi_call(
    app, method, path, *, headers=None, body=b"", disconnect_after_chunks=None, query=b""
) -> Result:
    """One request through ``app``: ``receive`` reports a disconnect once the response is
    complete (as uvicorn does), or after ``disconnect_after_chunks`` body messages."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    sent = False
    gone = asyncio.Event()
    messages: list[dict] = []

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if gone.is_set() and disconnect_after_chunks is not None:
            return  # the client is gone; uvicorn drops what is sent after that
        messages.append(message)
        if message["type"] == "http.response.body":
            chunks = sum(1 for m in messages if m["type"] == "http.response.body")
            if not message.get("more_body"):
                gone.set()
            elif disconnect_after_chunks is not None and chunks >= disconnect_after_chunks:
                gone.set()
                await asyncio.sleep(0)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    chunks = [m.get("body", b"") for m in messages if m["type"] == "http.response.body"]
    return Result(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(chunks),
        chunks,
    )


class GatewayClient:
    """A gateway application on one event loop kept across calls (``asyncio.Runner``)."""

    def __init__(self, *, ledger_factory=None):
        from django.conf import settings

        from gateway.serving.app import GatewayApplication
        from gateway.serving.catalog import Catalog
        from gateway.serving.concurrency import ConcurrencyLimiter
        from gateway.serving.pipeline import Gateway
        from gateway.serving.ratelimit import RateLimiter
        from gateway.serving.upstream import Upstream
        from usage.ledger import ledger_for_database

        def factory():
            return Gateway(
                ledger=(ledger_factory or ledger_for_database)(),
                limiter=RateLimiter(
                    redis_url=settings.REDIS_URL, prefix=f"test:{uuid.uuid4().hex}:rl"
                ),
                upstream=Upstream(),
                catalog=Catalog(ttl=0),
                max_body_bytes=settings.GATEWAY_MAX_BODY_BYTES,
                concurrency=ConcurrencyLimiter(
                    redis_url=settings.REDIS_URL, prefix=f"test:{uuid.uuid4().hex}:cc"
                ),
            )

        self.app = GatewayApplication(None, factory=factory)
        self.runner = asyncio.Runner()

    @property
    def gateway(self):
        return self.app.gateway

    def run(self, coro):
        return self.runner.run(coro)

    def request(self, method, path, **kwargs) -> Result:
        return self.run(asgi_call(self.app, method, path, **kwargs))

    def chat(self, key, payload=None, *, path="/openai/v1/chat/completions", headers=None, **kw):
        if payload is None:
            payload = {
                "model": "LongCat-Flash-Chat",
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 10,
            }
        all_headers = {"content-type": "application/json"}
        if key:
            all_headers["authorization"] = f"Bearer {key}"
        all_headers.update(headers or {})
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.request("POST", path, headers=all_headers, body=body, **kw)

    def flush(self):
        """Write the batched usage records now."""
        if self.gateway is not None:
            self.run(self.gateway.recorder.flush())

    def close(self):
        from asgiref.sync import sync_to_async
        from django.db import connections

        try:
            self.run(self.app.shutdown())
            # The catalog's ORM reads ran in asgiref's worker thread: close its connections.
            self.run(sync_to_async(connections.close_all)())
        finally:
            self.runner.close()
