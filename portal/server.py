"""uvicorn's HTTP protocol with the two limits it lacks, for a server reachable directly.

uvicorn (httptools) keeps reading a request's head for as long and as large as the client
sends it: eight 64 MB headers grew a worker by 570 MB, and connections that trickle one header
byte at a time (slowloris) were never closed — its keep-alive timeout only runs between
requests. This protocol answers 431 and closes once a head passes ``WEB_MAX_HEADER_BYTES``,
and closes a connection whose head is not complete ``WEB_HEADER_TIMEOUT_SECONDS`` after its
first byte (or after the connection opened). ``portal.serve`` selects it; the limits come from
``portal.settings``.
"""

from __future__ import annotations

from asyncio import TimerHandle

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_head_bytes: int = settings.WEB_MAX_HEADER_BYTES
        self.head_timeout: float = settings.WEB_HEADER_TIMEOUT_SECONDS
        self._head_pending = True
        self._head_bytes = 0
        self._head_timer: TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # httptools keeps a head it is still parsing in memory: bound it to the limit plus
        # one read. Counted after feeding, so a chunk that completes the head never counts.
        if self._head_pending and self.parser is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse(431, b"Request header fields too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True
        self._head_bytes = 0
        self._start_head_timer()

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_pending and not self.transport.is_closing():
            self._refuse(408, b"Request header timeout.")

    def _refuse(self, status: int, message: bytes) -> None:
        self._stop_head_timer()
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(message),
                    b"connection: close\r\n\r\n",
                    message,
                ]
            )
        )
        self.transport.close()
