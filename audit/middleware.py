"""Where a security event comes from: the request being served, for the services to read.

The services that record security events (``audit.services.security_event_record``) are
called from views, the admin, the REST API, commands and tasks. Rather than threading the
request through every one of them, this middleware keeps it in a context variable for the
length of the request; outside a request (a command, a Celery task) there is none and events
carry no address and no actor unless the caller names one.
"""

import contextvars

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

_current_request: contextvars.ContextVar = contextvars.ContextVar("security_request", default=None)


def current_request():
    """The HttpRequest being served in this context, or None."""
    return _current_request.get()


def security_context_middleware(get_response):
    if iscoroutinefunction(get_response):

        async def middleware(request):
            token = _current_request.set(request)
            try:
                return await get_response(request)
            finally:
                _current_request.reset(token)

        markcoroutinefunction(middleware)
    else:

        def middleware(request):
            token = _current_request.set(request)
            try:
                return get_response(request)
            finally:
                _current_request.reset(token)

    return middleware


security_context_middleware.sync_capable = True
security_context_middleware.async_capable = True
