import io
import logging

import pytest
from asgiref.sync import async_to_sync

from observability.logging import JsonFormatter


@pytest.fixture
def json_log():
    """Everything logged during the test, formatted as production formats it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@pytest.fixture
def asgi_get():
    """GET through the real ASGI stack (Django wrapped in the request-context middleware).

    Runs the event loop through ``async_to_sync`` so that Django's sync views come back to this
    thread and see the test's database transaction.
    """
    import httpx
    from django.core import signals
    from django.core.handlers.asgi import ASGIHandler
    from django.db import close_old_connections

    from observability.logging import RequestContextMiddleware

    def get(path, *, headers=None, metrics=False):
        # ASGIHandler directly: get_asgi_application() would re-run django.setup() and with
        # it the LOGGING config, dropping the json_log fixture's handler.
        app = RequestContextMiddleware(ASGIHandler(), access_log=True, metrics=metrics)

        async def call():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                return await c.get(path, headers=headers or {})

        # As Django's test client does: keep the test's connection (and its transaction) open.
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            return async_to_sync(call)()
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)

    return get
