"""The few HTTP primitives the gateway needs on raw ASGI (no framework on the hot path)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from gateway.serving.errors import GatewayError, bad_request, body_too_large

# Made once: ``json.dumps`` with options builds an encoder per call (about 4 µs).
_dumps = json.JSONEncoder(ensure_ascii=False).encode

JSON = b"application/json"


class Request:
    """One API request: method, path (below the dialect prefix), headers, and its body."""

    __slots__ = ("_body", "headers", "method", "path", "path_id", "query", "receive", "scope")

    def __init__(self, scope, receive, path: str):
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path = path
        # The ``{id}`` of a route such as ``/v1/models/{id}`` (set by the application).
        self.path_id: str | None = None
        self.query: bytes = scope.get("query_string", b"")
        # ASGI servers give lower-case names; a repeated header keeps its first value.
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name, value)
        self.headers = headers
        self._body: bytes | None = None

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
        if self._body is not None:
            return self._body
        declared = self.headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise body_too_large(limit)
            except ValueError:
                raise bad_request("The Content-Length header is not a number.") from None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        self._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self._body


class ClientGone(Exception):
    """The client closed the connection."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = JSON


def json_response(status: int, payload, headers=None) -> Response:
    return Response(status, _dumps(payload).encode(), headers or [])


async def send_response(send, response: Response) -> None:
    headers = [
        (b"content-type", response.content_type),
        (b"content-length", str(len(response.body)).encode()),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})


class StreamingResponse:
    """A response sent in parts on ASGI's ``send``: ``start`` (status and headers), any number
    of ``chunk`` calls, then ``finish`` (the last bytes, which end the response); or all of it
    at once with ``send_whole``."""

    __slots__ = ("_send", "started")

    def __init__(self, send):
        self._send = send
        self.started = False

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self.started = True

    async def chunk(self, body: bytes) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def finish(self, body: bytes = b"") -> None:
        await self._send({"type": "http.response.body", "body": body})

    async def send_whole(self, response: Response) -> None:
        """The whole response at once instead (an answer not streamed, an error)."""
        self.started = True
        await send_response(self._send, response)


def error_response(error: GatewayError, dialect, extra_headers=()) -> Response:
    return Response(
        dialect.error_status(error),
        dialect.render_error(error),
        [*error.response_headers(), *extra_headers, *dialect.identity_headers()],
    )
