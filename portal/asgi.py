"""The one ASGI entry point, for the portal and the model API alike.

``/openai`` and ``/anthropic`` go to the gateway's lean ASGI handlers (``gateway.serving.app``);
every other path goes to Django, through a bound on the request body.
"""

import asyncio
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

django_application = get_asgi_application()


class PortalBodyLimit:
    """413 for a portal request body over ``max_bytes``, before Django reads any of it.

    Django's ASGI handler reads the whole body (into a temporary file past
    FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware runs: a 300 MB POST was written to disk
    before CSRF refused it. A declared length over the limit is refused unread; a body without
    one (chunked) is cut off once it passes the limit. The gateway has its own limit
    (GATEWAY_MAX_BODY_BYTES) and does not come through here.
    """

    def __init__(self, app, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        received = 0
        exceeded = started = False

        async def limited_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Django stops reading on a disconnect and answers nothing: we answer.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, tracking_send)
        if exceeded and not started:
            await self._refuse(send)

    async def _refuse(self, send):
        await _plain_response(send, 413, b"Request body too large.\n")


class PortalConcurrencyLimit:
    """At most ``limit`` Django requests at once in this process; the next wait for a slot up
    to ``wait_seconds``, then get 503.

    Each Django request under ASGI runs in a thread of its own with a database connection of
    its own: this bounds both, so an unauthenticated burst queues here instead of opening a
    connection per request (one burst took all 100 of PostgreSQL's). The gateway, which uses
    its own bounded connections, does not come through here.
    """

    def __init__(self, app, *, limit: int, wait_seconds: float):
        self.app = app
        self.limit = limit
        self.wait_seconds = wait_seconds
        self._slots: asyncio.Semaphore | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self._slots.acquire()
        except TimeoutError:
            await _plain_response(send, 503, b"Too busy right now. Retry shortly.\n", retry=5)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


async def _plain_response(send, status: int, body: bytes, *, retry: int | None = None):
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if retry is not None:
        headers.append((b"retry-after", str(retry).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


from django.conf import settings  # noqa: E402

from gateway.serving.app import GatewayApplication, serve  # noqa: E402  (needs Django set up first)

portal_application = PortalConcurrencyLimit(
    PortalBodyLimit(django_application, max_bytes=settings.PORTAL_MAX_BODY_BYTES),
    limit=settings.PORTAL_MAX_CONCURRENCY,
    wait_seconds=settings.PORTAL_QUEUE_TIMEOUT_SECONDS,
)
application = serve(GatewayApplication(portal_application))

# Outermost: request id, access log and request metrics for the portal and the gateway alike.
from observability.logging import wrap_asgi  # noqa: E402  (needs Django set up first)

application = wrap_asgi(application)
