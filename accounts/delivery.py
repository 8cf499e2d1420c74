"""Sending codes off the request path, so that a page takes as long for an unknown address as
for a known one.

Every message a sign-in, sign-up or "add an address" request sends (a code, the "no account
here" email) goes through ``deliver``: with ``CODE_DELIVERY_BACKGROUND`` (the production
default) it runs on a small thread pool of this process after the response is decided, so
the provider's round trip (tens to hundreds of milliseconds) no longer shows in the response
time. The messages stay in this process: no code passes through the Celery broker. A message
lost to a crash in that window is the same as one lost by the provider: "send a new code".
``CODE_REQUEST_MIN_SECONDS`` (``equal_time``) then pads what is left (creating an account
takes longer than finding one) to one floor.
"""

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections
from django.utils import translation

logger = logging.getLogger(__name__)

_executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="code-delivery")


def deliver(send, /, **kwargs) -> None:
    """Call ``send(**kwargs)``: now, or on the delivery threads with the same language."""
    if not settings.CODE_DELIVERY_BACKGROUND:
        send(**kwargs)
        return
    _executor.submit(_run, send, translation.get_language(), kwargs)


def _run(send, language, kwargs) -> None:
    try:
        with translation.override(language):
            send(**kwargs)
    except Exception:
        logger.exception("could not deliver a code")
    finally:
        close_old_connections()


def equal_time(view):
    """Make every POST to ``view`` take at least ``CODE_REQUEST_MIN_SECONDS``."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        started = time.monotonic()
        response = view(request, *args, **kwargs)
        if request.method == "POST":
            left = settings.CODE_REQUEST_MIN_SECONDS - (time.monotonic() - started)
            if left > 0:
                time.sleep(left)
        return response

    return wrapper
