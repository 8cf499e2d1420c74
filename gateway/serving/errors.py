"""The gateway's errors, dialect-neutral. Each dialect renders them in its own envelope."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GatewayError(Exception):
    """A request the gateway answers with an error instead of a completion.

    ``code`` is a stable machine name (``invalid_api_key``, ``model_not_found``,
    ``insufficient_quota`` …); a dialect maps ``status``/``code`` to its own error ``type``.
    ``retry_after`` (seconds) goes into the body and the ``Retry-After`` headers when set;
    ``should_retry=False`` adds ``x-should-retry: false`` so SDKs do not retry in vain.
    """

    status: int
    code: str
    message: str
    param: str | None = None
    retry_after: int | None = None
    retry_after_ms: int | None = None
    should_retry: bool | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __post_init__(self):
        super().__init__(self.message)

    def response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = list(self.headers)
        if self.retry_after is not None:
            headers.append((b"retry-after", str(self.retry_after).encode()))
            ms = self.retry_after_ms if self.retry_after_ms is not None else self.retry_after * 1000
            headers.append((b"retry-after-ms", str(ms).encode()))
        if self.should_retry is False:
            headers.append((b"x-should-retry", b"false"))
        return headers


def bad_request(
    message: str, *, param: str | None = None, code: str = "invalid_request"
) -> GatewayError:
    return GatewayError(400, code, message, param=param)


def missing_key() -> GatewayError:
    return GatewayError(
        401,
        "missing_api_key",
        "No API key was sent. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'.",
        should_retry=False,
    )


def invalid_key() -> GatewayError:
    return GatewayError(
        401,
        "invalid_api_key",
        "The API key is not valid. Copy it again from the API Keys page.",
        should_retry=False,
    )


def key_disabled() -> GatewayError:
    return GatewayError(
        403,
        "api_key_disabled",
        "This API key is disabled. Enable it on the API Keys page or use another key.",
        should_retry=False,
    )


def account_disabled() -> GatewayError:
    return GatewayError(
        403,
        "account_disabled",
        "This account is disabled. Contact support if you think this is a mistake.",
        should_retry=False,
    )


def key_refused(refusal) -> GatewayError:
    """One of the key's own controls refused the request (``keys.controls.Refusal``: expired,
    address or model not allowed). Retrying cannot help until the key's owner changes it."""
    return GatewayError(refusal.status, refusal.code, refusal.message, should_retry=False)


def model_not_found(name: str) -> GatewayError:
    return GatewayError(
        404,
        "model_not_found",
        f"The model '{name[:128]}' does not exist or is not available.",
        param="model",
    )


def wrong_model_kind(name: str, *, embedding: bool) -> GatewayError:
    """A chat endpoint asked for an embedding model, or the embeddings endpoint for a chat one."""
    if embedding:
        message = (
            f"The model '{name[:128]}' is an embedding model: use it with "
            "POST /openai/v1/embeddings, not a chat endpoint."
        )
    else:
        message = (
            f"The model '{name[:128]}' is not an embedding model: /openai/v1/embeddings takes "
            "only the embedding models of GET /openai/v1/models."
        )
    return GatewayError(400, "model_not_supported", message, param="model")


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(
        413,
        "request_too_large",
        f"The request body is larger than {limit} bytes.",
        should_retry=False,
    )


def not_found() -> GatewayError:
    return GatewayError(404, "not_found", "There is no such endpoint.")


def method_not_allowed() -> GatewayError:
    return GatewayError(405, "method_not_allowed", "This endpoint does not accept that method.")


def context_length_exceeded(*, input_tokens: int, max_tokens: int, limit: int) -> GatewayError:
    # The "X + Y > Z" form is what Claude Code parses to shrink its next request.
    return GatewayError(
        400,
        "context_length_exceeded",
        f"input length and `max_tokens` exceed context limit: "
        f"{input_tokens} + {max_tokens} > {limit}, "
        "decrease input length or `max_tokens` and try again",
        param="messages",
    )


def insufficient_quota(*, seconds_until_reset: int) -> GatewayError:
    hours, rest = divmod(seconds_until_reset, 3600)
    minutes = rest // 60
    return GatewayError(
        429,
        "insufficient_quota",
        f"Today's token quota is used up. It starts over at midnight Beijing time, in "
        f"{hours} h {minutes} min ({seconds_until_reset} seconds). "
        f"You can apply for a larger quota on the Usage page.",
        retry_after=seconds_until_reset,
        should_retry=False,
    )


def key_daily_limit_exceeded(*, cap: int, seconds_until_reset: int) -> GatewayError:
    hours, rest = divmod(seconds_until_reset, 3600)
    minutes = rest // 60
    return GatewayError(
        429,
        "key_daily_limit_exceeded",
        f"This API key's daily cap of {cap} tokens is used up. It starts over at midnight "
        f"Beijing time, in {hours} h {minutes} min ({seconds_until_reset} seconds). Raise the "
        "key's cap on the API Keys page or use another key.",
        retry_after=seconds_until_reset,
        should_retry=False,
    )


def concurrency_limit_exceeded(*, limit: int) -> GatewayError:
    # Worth retrying once one of the key's requests ends; no fixed time to say when.
    return GatewayError(
        429,
        "concurrency_limit_exceeded",
        f"This API key already has {limit} requests in flight, its limit. Retry when one "
        "of them has finished, or raise the key's limit on the API Keys page.",
        retry_after=1,
    )


def rate_limited(*, retry_after: float, what: str) -> GatewayError:
    seconds = max(1, min(60, int(retry_after + 0.999)))
    return GatewayError(
        429,
        "rate_limit_exceeded",
        f"Too many {what} per minute for this API key. Wait {seconds} s and retry.",
        retry_after=seconds,
        retry_after_ms=max(1, int(retry_after * 1000)),
    )


def upstream_unavailable(detail: str = "") -> GatewayError:
    message = "The model server could not be reached or failed."
    if detail:
        message = f"{message} ({detail})"
    return GatewayError(502, "upstream_error", message)


def upstream_overloaded() -> GatewayError:
    # A saturated model server (its 429 or 503): worth retrying shortly, unlike a broken one.
    # Anthropic clients expect this as 529 overloaded_error (see the dialect's error_status).
    return GatewayError(
        503,
        "upstream_overloaded",
        "The model server is overloaded right now. Retry in a few seconds.",
        retry_after=5,
    )


def upstream_queue_refused(*, waited: float | None) -> GatewayError:
    """Every server of the model is at its concurrency cap (``gateway.serving.routing``) and
    the request waited its longest in the queue (``waited`` seconds), or found it full (None).
    The same code as ``upstream_overloaded``, so every dialect renders it the same way
    (Anthropic: 529 ``overloaded_error``)."""
    if waited is None:
        reason = "and the queue of waiting requests is full"
    else:
        reason = f"and a place did not free up within {waited:g} s"
    return GatewayError(
        503,
        "upstream_overloaded",
        f"The model's servers are all busy {reason}. Retry in a few seconds.",
        retry_after=2,
    )


def upstream_timeout() -> GatewayError:
    return GatewayError(504, "upstream_timeout", "The model server did not answer in time.")


def service_unavailable() -> GatewayError:
    # Quota and keys live in the database: without it nothing can be admitted, so say so at
    # once (SDKs retry a 503 after Retry-After) instead of letting the client hang.
    return GatewayError(
        503,
        "service_unavailable",
        "The platform cannot reach its database right now. Retry in a few seconds.",
        retry_after=2,
    )


def stream_time_limit(seconds: float) -> GatewayError:
    # A request may not outlive the limit that lets the sweeper tell live reservations from
    # orphans (``gateway.checks``); what was delivered until then is charged.
    return GatewayError(
        504,
        "stream_time_limit",
        f"The answer took longer than the platform's limit of {seconds:g} s and was cut; "
        "what was delivered is charged. Ask for shorter answers or split the work.",
    )


def server_busy() -> GatewayError:
    # This process is already reading and parsing as many request bytes as it takes at once.
    return GatewayError(
        503,
        "server_busy",
        "The platform is busy reading other large requests. Retry in a moment.",
        retry_after=1,
    )


def too_many_auth_failures(*, retry_after: float) -> GatewayError:
    seconds = max(1, int(retry_after + 0.999))
    return GatewayError(
        429,
        "rate_limit_exceeded",
        f"Too many requests with an invalid API key from this address. Wait {seconds} s "
        "and retry with a valid key.",
        retry_after=seconds,
        retry_after_ms=max(1, int(retry_after * 1000)),
    )
