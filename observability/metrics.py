"""Prometheus metrics, served at ``/metrics`` only when ``METRICS_ENABLED`` is true.

What is counted:

- every HTTP request by route (the URL pattern, never the raw path), method and status, and its
  duration (``RequestContextMiddleware`` in ``observability.logging`` calls
  ``observe_request``);
- the model API's outcomes: tokens charged, upstream failures, quota and rate-limit rejections
  (the gateway calls ``record_gateway_request`` once per authenticated request);
- each upstream endpoint's attempts, failures, ejections, state, requests in flight, recent
  error ratio and time to headers, and each model's queue for capped endpoints
  (``gateway.serving.routing`` records them).

Several processes (``uvicorn --workers N``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
folder, the same for all workers of one server and emptied before it starts
(``scripts/serve-web.sh`` does both); each scrape then sums every worker's numbers. Without it
each worker counts alone and a scrape sees whichever worker answered. A worker that dies
leaves its counters and histograms behind, as Prometheus expects; the gauges (upstream
endpoints' state) say how live workers' values combine (``livesum``, ``livemax``) and drop a
dead worker's.

Protection (choose one or both; see README "Deploying"): ``METRICS_TOKEN`` requires
``Authorization: Bearer <token>``; ``METRICS_ALLOWED_IPS`` (addresses or networks) limits the
clients by the address the server sees.
"""

import hmac
import ipaddress
import os
from functools import lru_cache

from django.conf import settings
from django.http import Http404, HttpResponse
from django.urls import Resolver404, resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

GATEWAY_PREFIXES = ("/openai", "/anthropic")
# The model API's own paths (DESIGN.md); any other path under its prefixes is counted as one.
GATEWAY_ROUTES = frozenset(
    {
        "/openai/v1/chat/completions",
        "/openai/chat/completions",
        "/openai/native/chat/completions",
        "/openai/v1/models",
        "/openai/models",
        "/anthropic",
        "/anthropic/v1/messages",
        "/anthropic/v1/messages/count_tokens",
    }
)
UNMATCHED_ROUTE = "<unmatched>"
# Streams run for minutes, so the buckets reach well past a page's milliseconds.
LATENCY_BUCKETS_SECONDS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip

HTTP_REQUESTS = Counter(
    "portal_http_requests_total",
    "HTTP requests by route, method and status code.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "portal_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response (streams included).",
    ["route", "method"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
GATEWAY_REQUESTS = Counter(
    "portal_gateway_requests_total",
    "Model API requests that got past authentication, by dialect, status and error code.",
    ["dialect", "status", "code"],
)
GATEWAY_TOKENS = Counter(
    "portal_gateway_tokens_total",
    "Tokens charged to accounts, by direction (input/output) and model.",
    ["direction", "model"],
)
GATEWAY_UPSTREAM_ERRORS = Counter(
    "portal_gateway_upstream_errors_total",
    "Requests that failed at the model server, by model and error code.",
    ["model", "code"],
)
GATEWAY_QUOTA_REJECTIONS = Counter(
    "portal_gateway_quota_rejections_total",
    "Requests refused because the account's daily quota was spent.",
    ["dialect"],
)
GATEWAY_RATE_LIMIT_REJECTIONS = Counter(
    "portal_gateway_rate_limit_rejections_total",
    "Requests refused by the key's requests-per-minute or tokens-per-minute limit.",
    ["dialect"],
)
# Upstream endpoints (gateway.serving.routing), labelled by model and "id:host" (bounded by the
# operator's configuration). Gauges sum (in flight, queue depth) or take the maximum (ejected,
# error ratio) over the live worker processes; each process ejects and queues on its own.
UPSTREAM_ENDPOINT_REQUESTS = Counter(
    "portal_gateway_upstream_endpoint_requests_total",
    "Attempts sent to an upstream endpoint (a failed-over request counts once per endpoint).",
    ["model", "endpoint"],
)
UPSTREAM_ENDPOINT_ERRORS = Counter(
    "portal_gateway_upstream_endpoint_errors_total",
    "Attempts an upstream endpoint failed (no connection, no headers in time, 5xx, cut).",
    ["model", "endpoint"],
)
UPSTREAM_ENDPOINT_EJECTIONS = Counter(
    "portal_gateway_upstream_endpoint_ejections_total",
    "Times a gateway process ejected an upstream endpoint after failures in a row.",
    ["model", "endpoint"],
)
UPSTREAM_ENDPOINT_IN_FLIGHT = Gauge(
    "portal_gateway_upstream_endpoint_in_flight",
    "Requests in flight to an upstream endpoint.",
    ["model", "endpoint"],
    multiprocess_mode="livesum",
)
UPSTREAM_ENDPOINT_EJECTED = Gauge(
    "portal_gateway_upstream_endpoint_ejected",
    "1 while a gateway process has the endpoint ejected (or awaiting its trial request).",
    ["model", "endpoint"],
    multiprocess_mode="livemax",
)
UPSTREAM_ENDPOINT_ERROR_RATIO = Gauge(
    "portal_gateway_upstream_endpoint_error_ratio",
    "Failed attempts / attempts over the last one to two minutes (the worst process).",
    ["model", "endpoint"],
    multiprocess_mode="livemax",
)
UPSTREAM_ENDPOINT_FIRST_BYTE = Histogram(
    "portal_gateway_upstream_endpoint_first_byte_seconds",
    "Time from sending an attempt to the upstream endpoint's response headers.",
    ["model", "endpoint"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
UPSTREAM_QUEUE_DEPTH = Gauge(
    "portal_gateway_upstream_queue_depth",
    "Requests waiting for a slot on a model's capped endpoints.",
    ["model"],
    multiprocess_mode="livesum",
)
UPSTREAM_QUEUE_REFUSALS = Counter(
    "portal_gateway_upstream_queue_refusals_total",
    "Requests refused with 503 because the model's endpoints stayed at their caps, by reason "
    "(full: no place in the queue; timeout: waited the longest allowed).",
    ["model", "reason"],
)
QUOTA_CODE = "insufficient_quota"
RATE_LIMIT_CODE = "rate_limit_exceeded"
UPSTREAM_CODES = frozenset({"upstream_error", "upstream_timeout", "overloaded_error"})


def _enabled() -> bool:
    return settings.METRICS_ENABLED


@lru_cache(maxsize=2048)
def route_label(path: str) -> str:
    """The route a path belongs to, with a bounded set of values (no ids, no raw paths)."""
    if path.startswith(GATEWAY_PREFIXES):
        if path in GATEWAY_ROUTES:
            return path
        return "/" + path.split("/", 2)[1] + "/*"
    static_url = settings.STATIC_URL or "/static/"
    if path.startswith(static_url):
        return static_url + "*"
    try:
        match = resolve(path)
    except Resolver404:
        return UNMATCHED_ROUTE
    return "/" + str(match.route)


# Each metric's labelled series, by label values, as ``labels()`` returns them: it validates
# and takes a lock on every call (about 2 µs, some ten calls per model API request). Bounded as
# the metrics' own series are (routes, dialects, codes, catalog models and endpoints).
_children: dict[tuple, object] = {}


def _child(metric, *labels: str):
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def observe_request(*, path: str, method: str, status: int, seconds: float) -> None:
    route = route_label(path)
    _child(HTTP_REQUESTS, route, method, str(status)).inc()
    _child(HTTP_LATENCY, route, method).observe(seconds)


def record_gateway_request(
    *,
    dialect: str,
    model: str,
    status: int,
    error_code: str,
    input_tokens: int,
    output_tokens: int,
) -> None:
    """One authenticated model API request's outcome (the gateway calls this once per request).

    ``model`` is used as a label only for charged tokens and upstream failures, where it is a
    catalog model; a client's unknown model names never become series.
    """
    if not _enabled():
        return
    _child(GATEWAY_REQUESTS, dialect, str(status), error_code or "").inc()
    if input_tokens:
        _child(GATEWAY_TOKENS, "input", model).inc(input_tokens)
    if output_tokens:
        _child(GATEWAY_TOKENS, "output", model).inc(output_tokens)
    if error_code == QUOTA_CODE:
        _child(GATEWAY_QUOTA_REJECTIONS, dialect).inc()
    elif error_code == RATE_LIMIT_CODE:
        _child(GATEWAY_RATE_LIMIT_REJECTIONS, dialect).inc()
    elif error_code in UPSTREAM_CODES or error_code.startswith("upstream"):
        _child(GATEWAY_UPSTREAM_ERRORS, model, error_code).inc()


def record_upstream_attempt(*, model: str, endpoint: str, in_flight: int) -> None:
    if not _enabled():
        return
    _child(UPSTREAM_ENDPOINT_REQUESTS, model, endpoint).inc()
    _child(UPSTREAM_ENDPOINT_IN_FLIGHT, model, endpoint).set(in_flight)


def record_upstream_outcome(
    *,
    model: str,
    endpoint: str,
    in_flight: int,
    failed: bool,
    ejected: bool,
    error_ratio: float,
) -> None:
    if not _enabled():
        return
    _child(UPSTREAM_ENDPOINT_IN_FLIGHT, model, endpoint).set(in_flight)
    if failed:
        _child(UPSTREAM_ENDPOINT_ERRORS, model, endpoint).inc()
    _child(UPSTREAM_ENDPOINT_EJECTED, model, endpoint).set(1 if ejected else 0)
    _child(UPSTREAM_ENDPOINT_ERROR_RATIO, model, endpoint).set(error_ratio)


def record_upstream_latency(*, model: str, endpoint: str, seconds: float) -> None:
    if not _enabled():
        return
    _child(UPSTREAM_ENDPOINT_FIRST_BYTE, model, endpoint).observe(seconds)


def record_upstream_queue(*, model: str, depth: int) -> None:
    if not _enabled():
        return
    _child(UPSTREAM_QUEUE_DEPTH, model).set(depth)


def record_upstream_queue_refusal(*, model: str, reason: str) -> None:
    if not _enabled():
        return
    _child(UPSTREAM_QUEUE_REFUSALS, model, reason).inc()


def record_upstream_ejection(*, model: str, endpoint: str) -> None:
    if not _enabled():
        return
    _child(UPSTREAM_ENDPOINT_EJECTIONS, model, endpoint).inc()
    _child(UPSTREAM_ENDPOINT_EJECTED, model, endpoint).set(1)


def render_latest() -> bytes:
    """Every process's numbers when multiprocess mode is on, this process's otherwise."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@lru_cache(maxsize=8)
def _networks(allowed: tuple[str, ...]):
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in allowed)


def _client_allowed(request) -> bool:
    allowed = tuple(settings.METRICS_ALLOWED_IPS)
    if not allowed:
        return True
    try:
        client = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(client in network for network in _networks(allowed))


def _token_ok(request) -> bool:
    expected = settings.METRICS_TOKEN
    if not expected:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), expected)


@never_cache
@require_GET
def metrics_view(request):
    if not _enabled():
        raise Http404
    if not _client_allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    if not _token_ok(request):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(render_latest(), content_type=CONTENT_TYPE_LATEST)
