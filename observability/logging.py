"""Structured logs with the request's context, and the request id.

In production every log line is one JSON object (``JsonFormatter``) carrying the time, level,
logger, message and, inside a request, its id and — once known — the account id and the API
key's public prefix. The key itself never appears: callers only ever bind the prefix, and both
formatters mask anything shaped like a key that slips into a message or a traceback anyway.

``RequestContextMiddleware`` wraps the whole ASGI application (portal and gateway alike): it
takes a sane incoming ``X-Request-ID`` or makes one, returns it on the response, writes one
access line per request, and feeds the request metrics when they are enabled.

This module is imported by uvicorn's ``--log-config`` before Django is set up, so nothing at
import time may touch Django settings.
"""

import contextvars
import datetime as dt
import json
import logging
import os
import re
import time

# Anything shaped like one of our keys ("sk-" + 43 URL-safe characters), wherever it appears.
# A key's public prefix ("sk-" + 9) is shorter than the threshold and stays readable.
_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-]{20,}")
_KEY_MASK = "sk-***"
# A client's request id is echoed into logs and headers, so only a short, plain token is taken.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{7,127}")
REQUEST_ID_HEADER = b"x-request-id"

# The fields a request binds; a mutable dict per request so that code running in tasks or
# threads spawned from the request (which see a copy of the context) still fills the same one.
_request_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "request_context", default=None
)
CONTEXT_FIELDS = ("request_id", "account_id", "key_prefix")

# LogRecord's own attributes; anything else on a record came in through ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()
    | {"message", "asctime", "color_message"}  # uvicorn's copy of the message with ANSI colours
)
_EXTRA_TYPES = (str, int, float, bool, type(None))
# Made once: ``json.dumps`` with options builds an encoder per call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)

access_logger = logging.getLogger("portal.access")


def redact(text: str) -> str:
    """Mask every API key in ``text``."""
    return _KEY_PATTERN.sub(_KEY_MASK, text)


def bind(**fields) -> None:
    """Attach fields (``account_id=``, ``key_prefix=``) to the current request's log lines.

    A no-op outside a request. Pass a key's public prefix, never the key.
    """
    context = _request_context.get()
    if context is not None:
        context.update({name: value for name, value in fields.items() if value is not None})


def current_request_id() -> str | None:
    context = _request_context.get()
    return context.get("request_id") if context else None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request context, extras."""

    # The time of the last second formatted, without its milliseconds: lines come many a second.
    _second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        second = int(created)
        if self._second[0] != second:
            text = dt.datetime.fromtimestamp(second, dt.UTC).isoformat(timespec="seconds")
            self._second = (second, text[:-6])  # without "+00:00", put back after the ms
        return f"{self._second[1]}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        context = _request_context.get()
        if context:
            payload.update({name: context[name] for name in CONTEXT_FIELDS if name in context})
        fields = vars(record)
        if fields.keys() - _RECORD_ATTRS:  # came in through ``extra=``; most records have none
            for name, value in fields.items():
                # Only plain values: Django passes the request object, which we must not dump.
                if (
                    name not in _RECORD_ATTRS
                    and name not in payload
                    and isinstance(value, _EXTRA_TYPES)
                ):
                    payload[name] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            payload["exception"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return redact(_JSON_ENCODER.encode(payload))


class PlainFormatter(logging.Formatter):
    """The development format, with keys masked all the same."""

    def __init__(self, fmt=None, *args, **kwargs):
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = current_request_id()
        if request_id and record.name != access_logger.name:
            text = f"{text} [request_id={request_id}]"
        return redact(text)


def _incoming_request_id(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            return candidate if _REQUEST_ID_PATTERN.fullmatch(candidate) else None
    return None


class RequestContextMiddleware:
    """ASGI wrapper: request id in and out, the access line, the request metrics."""

    def __init__(self, app, *, access_log: bool = True, metrics: bool = False):
        self.app = app
        self.access_log = access_log
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # 128 random bits in hex, as a UUID4's would be, without building the UUID.
        request_id = _incoming_request_id(scope) or os.urandom(16).hex()
        context = {"request_id": request_id}
        token = _request_context.set(context)
        started = time.perf_counter()
        status = 500  # what the client gets if the application fails before answering

        async def send_with_request_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if not isinstance(headers, list | tuple):  # any iterable, read only once
                    headers = list(headers)
                    message = {**message, "headers": headers}
                for name, _value in headers:
                    if name.lower() == REQUEST_ID_HEADER:
                        break
                else:
                    headers = [*headers, (REQUEST_ID_HEADER, request_id.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - started
            try:
                self._record(scope, status, seconds)
            finally:
                _request_context.reset(token)

    def _record(self, scope, status: int, seconds: float) -> None:
        method = scope.get("method", "")
        path = scope.get("path", "")
        if self.metrics:
            from observability import metrics

            metrics.observe_request(path=path, method=method, status=status, seconds=seconds)
        if self.access_log and access_logger.isEnabledFor(logging.INFO):
            # The path only: a query string is the client's and may carry anything. Made and
            # handed on as ``info`` would, less its search of the stack for the caller's line
            # (always this one).
            access_logger.handle(
                access_logger.makeRecord(
                    access_logger.name,
                    logging.INFO,
                    __file__,
                    0,
                    "%s %s %s",
                    (method, path, status),
                    None,
                    "_record",
                    {
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 1),
                    },
                )
            )


def request_user_middleware(get_response):
    """Django middleware: binds the signed-in account to the request's log lines.

    It reads the user only if the view already loaded it, so it never costs a query.
    """
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction

    def bind_user(request):
        user = getattr(request, "_cached_user", None) or getattr(request, "_acached_user", None)
        if user is not None and user.is_authenticated:
            bind(account_id=user.pk)

    if iscoroutinefunction(get_response):

        async def middleware(request):
            response = await get_response(request)
            bind_user(request)
            return response

        markcoroutinefunction(middleware)
    else:

        def middleware(request):
            response = get_response(request)
            bind_user(request)
            return response

    return middleware


request_user_middleware.sync_capable = True
request_user_middleware.async_capable = True


def wrap_asgi(app):
    """Wrap the ASGI application (after Django is set up) as the settings say."""
    from django.conf import settings

    return RequestContextMiddleware(
        app, access_log=settings.ACCESS_LOG, metrics=settings.METRICS_ENABLED
    )
