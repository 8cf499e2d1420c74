"""How one upstream attempt is spoken: the seam between the pipeline and an endpoint's protocol.

The pipeline knows the endpoint only once it picks one for an attempt (``_Call.connect``); it
then asks ``exchange_for`` how to talk to it, and leaves to that ``Exchange`` the upstream path,
body and headers, and the reading of the answer (the client's payload and the usage to charge;
for a stream, its reader, renderer, usage and estimate):

- ``Exchange``: an OpenAI-format endpoint (OpenAI-compatible, demo). The dialect's own
  chat-completions body and renderers, as every dialect was written for.
- ``AnthropicTranslated``: an OpenAI-format client (chat completions, Responses) on an
  Anthropic-native endpoint. The dialect's chat body is translated to a Messages request and
  the answer back to chat completions (``anthropic_native``), under the dialect's renderers.
- ``AnthropicPassThrough``: an Anthropic client on an Anthropic-native endpoint. Its request
  and the answer are relayed unchanged but for the model name and the output budget, less what
  the gateway cannot reserve for (server tools, ``mcp_servers``, ``container``; a document by
  URL becomes the translation's note): ``anthropic_native.passthrough_body``.
- ``ResponsesPassThrough``: a Responses client on an OpenAI-compatible endpoint that serves the
  Responses API (``responses_api``). Its request goes to ``/responses`` with the model name, the
  output budget and ``store: false``, less hosted tools and stored files
  (``openai_responses_native``); the answer comes back with the public model name.
  Chat-completions clients on that endpoint keep ``/chat/completions``.

Whatever the exchange, failover, ejection, reservation and settlement are the pipeline's.
"""

from __future__ import annotations

import dataclasses
import json
import time

from gateway.selectors import CatalogEndpoint
from gateway.serving.dialects.anthropic_native import (
    ChatChunkTranslator,
    chat_completion_from_message,
    merge_usage,
    messages_request_from_chat,
    usage_of,
    with_model,
)
from gateway.serving.dialects.anthropic_translate import MESSAGE_STOP_EVENT
from gateway.serving.dialects.base import (
    REASONING_EFFORT,
    RESPONSES_PROTOCOL,
    ChatRequest,
    Dialect,
    StreamRenderer,
    UpstreamTarget,
    Usage,
)
from gateway.serving.dialects.openai_responses_native import (
    FINAL_EVENTS,
    OUTPUT_DELTAS,
    RESPONSE_EVENTS,
    RESPONSES_PATH,
    delta_tokens,
    failure_events,
    output_tokens,
)
from gateway.serving.dialects.openai_responses_native import usage_of as responses_usage
from gateway.serving.dialects.openai_responses_native import with_model as response_with_model
from gateway.serving.dialects.openai_responses_translate import (
    ResponsesTranslation,
    new_id,
    response_object,
)
from gateway.serving.errors import GatewayError
from gateway.serving.http import Request
from gateway.serving.tokens import (
    completion_output_tokens,
    estimate_text_tokens,
    streamed_output_tokens,
)
from gateway.serving.upstream import (
    AnthropicSSEReader,
    ResponsesSSEReader,
    SSEReader,
    chunk_with_usage,
    event_type,
    usage_from,
)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

MESSAGES_PATH = "/v1/messages"
# Client headers an Anthropic-native upstream gets from an Anthropic client: the beta
# features it asked for (the request relies on them).
_PASSED_HEADERS = (b"anthropic-beta",)


class Exchange:
    """An OpenAI-format endpoint: the dialect's chat-completions body and renderers."""

    def __init__(self, dialect: Dialect, chat: ChatRequest, target: UpstreamTarget):
        self.dialect = dialect
        self.chat = chat
        self.target = target
        self.path = dialect.upstream_path

    def body(self) -> dict:
        return self.dialect.upstream_body(self.chat, self.target)

    def headers(self) -> dict:
        """Headers for the upstream besides its auth (``Upstream.post_chat`` adds that)."""
        return {}

    def _completion(self, raw: bytes) -> dict:
        """The upstream's answer as a chat completion."""
        return json.loads(raw)

    def completion(self, raw: bytes) -> tuple[bytes, Usage]:
        """The client's payload for a whole answer and the usage to charge (the upstream's
        report, else an estimate within the budget)."""
        obj = self._completion(raw)
        usage = usage_from(obj)
        if usage is None:
            output = min(completion_output_tokens(obj), self.target.max_tokens)
            usage = Usage(self.chat.input_tokens, output, True)
        return self.dialect.render_completion(self.chat, obj, self.target), usage

    def stream_renderer(self) -> StreamRenderer:
        return self.dialect.stream_renderer(self.chat, self.target)

    def reader(self, response):
        """The stream's payloads for ``chunk_usage`` and the renderer; ``done`` once complete."""
        return SSEReader(response)

    def chunk_usage(self, data: bytes) -> tuple[dict | None, Usage | None]:
        """A payload decoded if it reports usage, and that usage (the stream's total)."""
        return chunk_with_usage(data)

    def estimate(self, delivered: list[bytes]) -> Usage:
        """The charge for a stream without a usage report, from the payloads it delivered."""
        output = min(streamed_output_tokens(delivered), self.target.max_tokens)
        return Usage(self.chat.input_tokens, output, True)


def _started_input(estimate: Usage, started: dict) -> Usage:
    """``estimate`` with the input ``message_start`` reported, when it did: an Anthropic
    stream says its input first, so a cut one is charged that, not the gateway's estimate."""
    reported = usage_of(started) if started else None
    if reported is not None:
        estimate.input_tokens = reported.input_tokens
        estimate.cached_input_tokens = reported.cached_input_tokens
    return estimate


class _TranslatedReader:
    """An Anthropic stream read as chat-completion chunks (JSON bytes, as an OpenAI upstream
    writes them)."""

    __slots__ = ("_chunks", "_events", "_translator")

    def __init__(self, response):
        self._events = AnthropicSSEReader(response)
        self._translator = ChatChunkTranslator()
        self._chunks = self._read()

    @property
    def done(self) -> bool:
        return self._events.done

    @property
    def usage(self) -> dict:
        """The stream's Anthropic usage so far ({} before ``message_start``)."""
        return self._translator.usage

    async def _read(self):
        translator = self._translator
        async for data in self._events:
            for chunk in translator.feed(json.loads(data)):
                yield _dumps(chunk).encode()
        if self._events.done:
            # message_stop (which the reader keeps) brings the usage chunk.
            for chunk in translator.feed({"type": "message_stop"}):
                yield _dumps(chunk).encode()

    def __aiter__(self):
        return self._chunks


class AnthropicTranslated(Exchange):
    """An OpenAI-format client on an Anthropic-native endpoint."""

    def __init__(self, dialect: Dialect, chat: ChatRequest, target: UpstreamTarget):
        super().__init__(dialect, chat, target)
        self.path = MESSAGES_PATH
        self._reader: _TranslatedReader | None = None

    def body(self) -> dict:
        # The dialect passes the client's reasoning effort on as ``reasoning_effort`` only to
        # upstreams that take it: this one does (as thinking), whatever the model's setting.
        target = dataclasses.replace(self.target, reasoning=REASONING_EFFORT)
        return messages_request_from_chat(
            self.dialect.upstream_body(self.chat, target),
            model=self.target.upstream_model,
            max_tokens=self.target.max_tokens,
        )

    def _completion(self, raw: bytes) -> dict:
        return chat_completion_from_message(json.loads(raw))

    def reader(self, response):
        self._reader = _TranslatedReader(response)
        return self._reader

    def estimate(self, delivered: list[bytes]) -> Usage:
        started = self._reader.usage if self._reader is not None else {}
        return _started_input(super().estimate(delivered), started)


class AnthropicRelay(StreamRenderer):
    """An Anthropic stream relayed event by event; only ``message_start`` is rewritten (the
    public model name). The upstream's own pings keep the stream alive."""

    __slots__ = ("dialect", "model")

    def __init__(self, dialect: Dialect, model: str):
        self.dialect = dialect
        self.model = model

    def chunk(self, data: bytes, parsed: dict | None) -> bytes:
        kind = event_type(data)
        if kind == "message_start":
            event = parsed if parsed is not None else json.loads(data)
            with_model(event["message"], self.model)
            data = _dumps(event).encode()
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def finish(self, usage: Usage) -> bytes:
        return MESSAGE_STOP_EVENT

    def error(self, error: GatewayError) -> bytes:
        return b"event: error\ndata: " + self.dialect.render_error(error) + b"\n\n"


def _delta_tokens(data: bytes) -> int:
    """The estimated output of one content_block_delta event (text, thinking, tool input)."""
    try:
        event = json.loads(data)
        delta = event.get("delta") if event.get("type") == "content_block_delta" else None
    except (ValueError, AttributeError):
        return 0
    if not isinstance(delta, dict):
        return 0
    text = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
    return estimate_text_tokens(text) if isinstance(text, str) and text else 0


class AnthropicPassThrough(Exchange):
    """An Anthropic client on an Anthropic-native endpoint."""

    def __init__(
        self, dialect: Dialect, chat: ChatRequest, target: UpstreamTarget, client: Request
    ):
        super().__init__(dialect, chat, target)
        self.path = MESSAGES_PATH
        self.client = client
        # The stream's usage so far: message_start's, updated by message_delta's.
        self.usage: dict = {}

    def body(self) -> dict:
        return self.dialect.native_body(self.chat, self.target)

    def headers(self) -> dict:
        return {
            name.decode(): value.decode("latin-1")
            for name in _PASSED_HEADERS
            if (value := self.client.headers.get(name)) is not None
        }

    def completion(self, raw: bytes) -> tuple[bytes, Usage]:
        message = json.loads(raw)
        usage = usage_of(message.get("usage"))
        if usage is None:
            output = sum(
                estimate_text_tokens(block.get("text") or block.get("thinking") or "")
                + (estimate_text_tokens(_dumps(block["input"])) if "input" in block else 0)
                for block in message.get("content") or ()
            )
            usage = Usage(self.chat.input_tokens, min(output, self.target.max_tokens), True)
        payload = _dumps(with_model(message, self.target.public_model)).encode()
        return payload, usage

    def stream_renderer(self) -> StreamRenderer:
        return AnthropicRelay(self.dialect, self.target.public_model)

    def reader(self, response):
        return AnthropicSSEReader(response)

    def chunk_usage(self, data: bytes) -> tuple[dict | None, Usage | None]:
        # The total is known at message_delta (output); message_start's input alone would
        # charge a cut stream nothing for what it delivered.
        if b'"usage"' not in data:
            return None, None
        event = json.loads(data)
        if event.get("type") == "message_start":
            self.usage = dict((event.get("message") or {}).get("usage") or {})
            return event, None
        if event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
            merge_usage(self.usage, event["usage"])
            return event, usage_of(self.usage)
        return event, None

    def estimate(self, delivered: list[bytes]) -> Usage:
        output = min(sum(_delta_tokens(data) for data in delivered), self.target.max_tokens)
        return _started_input(Usage(self.chat.input_tokens, output, True), self.usage)


class ResponsesRelay(StreamRenderer):
    """A Responses stream relayed event by event; only the events that carry the Response
    object are rewritten (the public model name). The final event is held back until the
    charge is settled (``finish``), as the translated stream's is."""

    __slots__ = ("dialect", "final", "model", "response", "sequence")

    def __init__(self, dialect: Dialect, model: str, response: dict):
        self.dialect = dialect
        self.model = model
        # The Response object as last relayed (the start of a failure's response.failed).
        self.response = response
        self.sequence = 0  # events relayed: the upstream numbers them from 0
        self.final = b""

    def chunk(self, data: bytes, parsed: dict | None) -> bytes:
        kind = event_type(data)
        if kind in RESPONSE_EVENTS:
            event = parsed if parsed is not None else json.loads(data)
            if isinstance(event.get("response"), dict):
                self.response = response_with_model(event["response"], self.model)
                data = _dumps(event).encode()
        self.sequence += 1
        out = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        if kind in FINAL_EVENTS:
            self.final = out
            return b""
        return out

    def finish(self, usage: Usage) -> bytes:
        return self.final

    def error(self, error: GatewayError) -> bytes:
        return failure_events(
            response=self.response,
            sequence=self.sequence,
            code=error.code,
            message=error.message,
            param=error.param,
        )


class ResponsesPassThrough(Exchange):
    """A Responses client on an OpenAI-compatible endpoint that serves the Responses API."""

    def __init__(self, dialect: Dialect, chat: ChatRequest, target: UpstreamTarget):
        super().__init__(dialect, chat, target)
        self.path = RESPONSES_PATH

    def body(self) -> dict:
        return self.dialect.native_body(self.chat, self.target)

    def completion(self, raw: bytes) -> tuple[bytes, Usage]:
        response = json.loads(raw)
        usage = responses_usage(response.get("usage"))
        if usage is None:
            output = min(output_tokens(response), self.target.max_tokens)
            usage = Usage(self.chat.input_tokens, output, True)
        payload = _dumps(response_with_model(response, self.target.public_model)).encode()
        return payload, usage

    def stream_renderer(self) -> StreamRenderer:
        translation: ResponsesTranslation = self.chat.body
        # What a failure before the upstream's response.created reports.
        unstarted = response_object(
            response_id=new_id("resp"),
            created_at=int(time.time()),
            model=self.target.public_model,
            echo=translation.echo,
            status="in_progress",
            output=[],
        )
        return ResponsesRelay(self.dialect, self.target.public_model, unstarted)

    def reader(self, response):
        return ResponsesSSEReader(response)

    def chunk_usage(self, data: bytes) -> tuple[dict | None, Usage | None]:
        # Only the final event reports usage (response.created's is null).
        if event_type(data) not in FINAL_EVENTS:
            return None, None
        event = json.loads(data)
        response = event.get("response")
        if not isinstance(response, dict):
            return event, None
        return event, responses_usage(response.get("usage"))

    def estimate(self, delivered: list[bytes]) -> Usage:
        output = sum(
            delta_tokens(json.loads(data))
            for data in delivered
            if event_type(data) in OUTPUT_DELTAS
        )
        return Usage(self.chat.input_tokens, min(output, self.target.max_tokens), True)


def exchange_for(
    endpoint: CatalogEndpoint,
    dialect: Dialect,
    chat: ChatRequest,
    target: UpstreamTarget,
    client: Request,
) -> Exchange:
    """How this attempt talks to ``endpoint`` (``target`` already names its model)."""
    if not endpoint.is_anthropic:
        if endpoint.responses_api and dialect.native_protocol == RESPONSES_PROTOCOL:
            return ResponsesPassThrough(dialect, chat, target)
        return Exchange(dialect, chat, target)
    if dialect.native_protocol == endpoint.kind:
        return AnthropicPassThrough(dialect, chat, target, client)
    return AnthropicTranslated(dialect, chat, target)
