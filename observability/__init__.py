"""Logs and metrics for every part of the project (the portal and the gateway alike).

Imports no project package, so that anything may import it: ``observability.logging``
(redaction, the request's log context, formatters, the ASGI and Django middleware) and
``observability.metrics`` (Prometheus counters and the ``/metrics`` view).
"""
