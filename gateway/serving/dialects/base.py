"""The interface between the pipeline and a dialect.

A dialect translates *client ⇄ OpenAI-compatible upstream* (the demo upstream, vLLM, SGLang,
OpenAI): an Anthropic-native endpoint gets the same chat-completions body translated once more
by ``gateway.serving.exchange``, which also passes a dialect's requests through unchanged to an
endpoint that speaks the dialect's own protocol (``native_protocol``, ``native_body``: Anthropic
Messages to an Anthropic endpoint, Responses to an OpenAI-compatible one marked
``responses_api``):

1. ``parse_chat(body, query)`` validates the client's JSON (typed schemas; raise
   ``GatewayError`` 400 naming the field) into a ``ChatRequest``: the public model name, the
   stream flag, the requested output limit (``None`` = the model's maximum), a local estimate of
   input tokens (``gateway.serving.tokens``), and ``body``, the dialect's own validated request.
2. ``upstream_body(request, target)`` returns the OpenAI chat-completions JSON (a dict) to send
   upstream, for ``target.upstream_model`` with ``max_tokens = target.max_tokens`` (already
   clamped to the model and capped to the remaining quota). For a stream it must ask for
   ``stream_options: {"include_usage": true}`` so that charges come from the upstream.
3. ``render_completion(request, upstream, target)`` turns the upstream's JSON response (a dict)
   into the response body (bytes) in the client's dialect.
4. ``stream_renderer(request, target)`` returns a ``StreamRenderer``: the pipeline feeds it each
   upstream SSE ``data:`` payload (JSON bytes; ``[DONE]`` is not fed) and sends whatever bytes it
   returns to the client at once, so streams are relayed chunk by chunk.
5. ``render_error(error)`` renders a ``GatewayError`` in the dialect's error envelope; the
   pipeline adds the status and headers (``Retry-After``, ``x-should-retry`` …).
6. ``rate_headers(rate)`` and ``identity_headers()``: headers the dialect's clients expect on
   answers (the per-key rate-limit state once it is known; a request id on every answer).
7. ``routes()`` maps extra ``(method, path)`` pairs below the prefix to handlers
   ``async def handler(gateway, request) -> Response`` (e.g. ``GET /v1/models``, Anthropic's
   ``count_tokens`` and the ``HEAD /`` probe). ``chat_paths`` are served by the pipeline.

Usage is extracted by the pipeline from the upstream (``usage.prompt_tokens`` /
``completion_tokens``); the renderer receives it in ``finish(usage)`` to emit, e.g., Anthropic's
``message_delta``. No dialect touches the database, the quota or the rate limiter.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.serving.errors import GatewayError, bad_request


@dataclass(slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    # True when the upstream did not report usage and a local estimate stands in.
    estimated: bool = False
    # Of ``input_tokens``, those the upstream read from its prompt cache.
    cached_input_tokens: int = 0


@dataclass(slots=True)
class ChatRequest:
    model: str
    stream: bool
    max_tokens: int | None
    input_tokens: int
    body: Any
    options: dict = field(default_factory=dict)
    # A lower bound of the input (``tokens.estimate_chat_tokens_min``), for the context check;
    # None: ``input_tokens`` stands for both, unless ``estimate_min`` gives it.
    input_tokens_min: int | None = None
    # Of ``input_tokens``, what an upstream may bill beyond the chat-completions body (an
    # Anthropic-native pass-through's image by URL, blocks the translation shortens): kept
    # when a model's tokenizer counts that body.
    input_tokens_beyond_body: int = 0
    # Computes ``input_tokens_min`` when the context check needs it: only for a prompt the
    # upper estimate does not fit, as the lower bound scans every text again (a regular
    # expression, about 10 µs per thousand characters).
    estimate_min: Callable[[], int] | None = None


@dataclass(slots=True)
class UpstreamTarget:
    public_model: str
    upstream_model: str
    max_tokens: int
    # Lets a dialect leave out parameters a particular server refuses (OpenAI's own API
    # rejects ``top_k``, which vLLM and SGLang take).
    base_url: str = ""
    # gateway.models.Model.Reasoning: how this upstream is asked to reason.
    reasoning: str = "none"


# The Responses API, which OpenAI-compatible endpoints marked ``responses_api`` speak.
RESPONSES_PROTOCOL = "openai_responses"

# The values of gateway.models.Model.Reasoning (the serving side does not import the ORM model).
REASONING_EFFORT = "reasoning_effort"
REASONING_CHAT_TEMPLATE = "chat_template_kwargs"


def request_reasoning(body: dict, target: UpstreamTarget, *, wanted: bool | None, effort) -> None:
    """Ask ``target``'s upstream to reason, or not, the way its catalog entry says, in the
    chat-completions ``body`` (changed in place).

    ``wanted``: True or False when the client said (Anthropic ``thinking``, an effort of
    ``none``), None when it said nothing (the upstream's default stands). ``effort`` is the
    OpenAI effort level to pass on, if any. A client's own ``reasoning_effort`` never reaches
    an upstream whose entry does not take it (vLLM refuses unknown values for some models).
    """
    body.pop("reasoning_effort", None)
    if target.reasoning == REASONING_EFFORT:
        if wanted and effort:
            body["reasoning_effort"] = effort
        elif wanted is False and effort == "none":
            body["reasoning_effort"] = "none"
    elif target.reasoning == REASONING_CHAT_TEMPLATE and wanted is not None:
        kwargs = body.get("chat_template_kwargs")
        kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
        kwargs["enable_thinking"] = wanted
        body["chat_template_kwargs"] = kwargs


def refuse_unpaired_surrogates(body: bytes) -> None:
    """A 400 for a JSON body with half a UTF-16 surrogate pair escaped on its own ("\\ud800").

    JSON allows the escape and Python decodes it into text that cannot be encoded again, so
    the token estimate or the upstream call would fail later with a 500. Cheap: the body is
    decoded a second time only when it holds such an escape at all (escaped emoji do).
    """
    if b"\\ud" not in body and b"\\uD" not in body:
        return
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise bad_request(
            "The request contains an unpaired surrogate escape (\\ud800 to \\udfff); "
            "send valid Unicode text.",
            param="body",
            code="invalid_json",
        ) from None
    except (ValueError, RecursionError):
        return  # not JSON at all: the dialect's own parsing says so


class StreamRenderer:
    """Turns upstream OpenAI stream chunks into the client's stream. One per request."""

    def start(self) -> bytes:
        """Bytes to send before the first upstream chunk (e.g. Anthropic's message_start)."""
        return b""

    def chunk(self, data: bytes, parsed: dict | None) -> bytes:
        """One upstream ``data:`` payload. ``parsed`` is its JSON if the pipeline already
        decoded it (it does so only for chunks that carry usage), else ``None``."""
        raise NotImplementedError

    def finish(self, usage: Usage) -> bytes:
        """The end of a complete stream (OpenAI: ``data: [DONE]``), with the usage charged
        (the upstream's report, else the pipeline's estimate)."""
        raise NotImplementedError

    def error(self, error: GatewayError) -> bytes:
        """A failure after the stream has started (the status line is already sent)."""
        raise NotImplementedError

    # Set by dialects whose clients expect keep-alive events during long upstream silences
    # (Anthropic's ``ping``): the pipeline then calls ``keepalive()`` this often.
    keepalive_seconds: float | None = None

    def keepalive(self) -> bytes:
        """Bytes to send now if the stream has been silent since the last call, else b""."""
        return b""


class Dialect:
    name: str = ""
    prefix: str = ""  # "/openai"
    endpoint: str = ""  # usage.models.UsageRecord.Endpoint value
    chat_paths: tuple[str, ...] = ()
    # The catalog models it serves (gateway.models.Model.Kind) and the upstream path it posts
    # ``upstream_body`` to, below the model's base URL.
    model_kind: str = "chat"
    upstream_path: str = "/chat/completions"
    error_content_type: bytes = b"application/json"
    # The upstream protocol this dialect's own requests are written in, if any: an endpoint
    # that speaks it gets them passed through. A gateway.models.UpstreamEndpoint.Kind, or
    # RESPONSES_PROTOCOL (OpenAI-compatible endpoints marked ``responses_api``).
    native_protocol: str = ""

    def parse_chat(self, body: bytes, query: bytes) -> ChatRequest:
        raise NotImplementedError

    def upstream_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        raise NotImplementedError

    def render_completion(
        self, request: ChatRequest, upstream: dict, target: UpstreamTarget
    ) -> bytes:
        raise NotImplementedError

    def native_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        """The client's request for a ``native_protocol`` endpoint, for ``target``'s model and
        output budget."""
        raise NotImplementedError

    def stream_renderer(self, request: ChatRequest, target: UpstreamTarget) -> StreamRenderer:
        raise NotImplementedError

    def render_error(self, error: GatewayError) -> bytes:
        raise NotImplementedError

    def error_status(self, error: GatewayError) -> int:
        """The HTTP status of ``error`` in this dialect (most follow the gateway's own)."""
        return error.status

    def rate_headers(self, rate) -> list[tuple[bytes, bytes]]:
        """The rate-limit headers for a ``ratelimit.RateState`` (OpenAI's ``x-ratelimit-*``)."""
        return rate.headers()

    def identity_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers on every answer of this dialect, errors included (e.g. ``request-id``)."""
        return []

    def routes(self) -> dict:
        return {}
