"""Anthropic Messages ⇄ OpenAI chat completions, without any I/O.

``chat_request_from_messages`` turns a validated Messages request into the chat-completions body an
OpenAI-compatible upstream takes; ``message_from_chat_response`` turns the upstream's answer back;
``MessageStreamTranslator`` does the same for a stream, one upstream chunk at a time, emitting the
real Anthropic event sequence. ``error_body`` builds Anthropic's error envelope.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pypdf import PdfReader

from gateway.serving.dialects.anthropic_schema import (
    Base64Source,
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    MessagesRequest,
    TextBlock,
    TextSource,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    UrlSource,
)

# Anthropic's error type for each status this gateway answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Rough budget → effort buckets for upstreams that take OpenAI's ``reasoning_effort``.
_EFFORT_BY_BUDGET = ((4_096, "low"), (16_384, "medium"))

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def new_tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def error_type_for_status(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str, *, error_type: str | None = None) -> dict:
    """Anthropic's error envelope: ``{"type": "error", "error": {"type", "message"}}``."""
    return {
        "type": "error",
        "error": {"type": error_type or error_type_for_status(status), "message": message},
    }


def context_limit_message(*, input_tokens: int, max_tokens: int, context_window: int) -> str:
    # Worded as Anthropic words it: clients (Claude Code) parse the three numbers to shrink
    # max_tokens and retry.
    return (
        "input length and `max_tokens` exceed context limit: "
        f"{input_tokens} + {max_tokens} > {context_window}, "
        "decrease input length or `max_tokens` and try again"
    )


# --- request -------------------------------------------------------------------------------
@dataclass(slots=True)
class ChatTranslation:
    """A chat-completions body plus what the way back needs to know."""

    body: dict[str, Any]
    # Parameters only some upstreams take (``top_k`` for vLLM/SGLang, reasoning hints):
    # the caller merges them when the upstream kind accepts them.
    extra: dict[str, Any] = field(default_factory=dict)
    stop_sequences: tuple[str, ...] = ()
    # The client asked for thinking (reasoning reaches it as thinking blocks) …
    thinking: bool = False
    # … with this budget (None: no budget given, as with ``adaptive``).
    thinking_budget: int | None = None
    # The client's JSON as it came (validated): what an Anthropic-native upstream is sent.
    native: dict[str, Any] = field(default_factory=dict)


def _image_part(block: ImageBlock) -> dict:
    source = block.source
    if source.type == "base64":
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _text_of(blocks) -> str:
    return "\n\n".join(b.text for b in blocks if isinstance(b, TextBlock))


def _pdf_text(data: str, name: str) -> str:
    """The text of a base64 PDF, with its page count; a clear note when it has none."""
    try:
        reader = PdfReader(io.BytesIO(base64.b64decode(data, validate=False)))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as error:  # pypdf raises many kinds for broken or encrypted files
        return f"[PDF document {name}: it could not be read ({error.__class__.__name__}).]"
    count = len(pages)
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        return (
            f"[PDF document {name}, {count} page{'s' if count != 1 else ''}: no extractable "
            "text (it may be scanned images, which this model cannot see).]"
        )
    return f"[PDF document {name}, {count} page{'s' if count != 1 else ''}]\n\n{text}"


def url_document_note(url: str) -> str:
    """What a document by URL becomes, for every upstream: the gateway fetches nothing, and an
    Anthropic-native upstream that would is not asked to (what it bills for the document could
    not be reserved)."""
    return f"[Document at {url}: not fetched; its content is not included.]"


def _document_text(block: DocumentBlock) -> str:
    source = block.source
    name = f"'{block.title}'" if block.title else "(untitled)"
    if isinstance(source, TextSource):
        text = source.data
    elif isinstance(source, UrlSource):
        text = url_document_note(source.url)
    elif source.media_type == "application/pdf":
        text = _pdf_text(source.data, name)
    elif source.media_type.startswith("text/"):
        try:
            text = base64.b64decode(source.data, validate=False).decode("utf-8", "replace")
        except ValueError:
            text = f"[Document {name}: its base64 data could not be decoded.]"
    else:
        text = f"[Document {name} of type {source.media_type}: not included.]"
    if block.context:
        text = f"{block.context}\n\n{text}"
    if block.title and isinstance(source, TextSource | Base64Source):
        return f"{block.title}\n\n{text}"
    return text


def _user_content(parts: list[dict]) -> str | list[dict]:
    # Plain text goes as a string: the most widely accepted shape among OpenAI-compatible servers.
    if all(p["type"] == "text" for p in parts):
        return "\n\n".join(p["text"] for p in parts)
    return parts


def _tool_result_messages(block: ToolResultBlock) -> tuple[dict, list[dict]]:
    """One ``role: tool`` message; images a tool returned go in a user message after it, since
    chat-completions tool messages carry text only. A document a tool returned (Claude Code's
    Read of a PDF) goes as its text."""
    text = "\n\n".join(
        b.text if isinstance(b, TextBlock) else _document_text(b)
        for b in block.content
        if isinstance(b, TextBlock | DocumentBlock)
    )
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    images = [_image_part(b) for b in block.content if isinstance(b, ImageBlock)]
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}, images


def _translate_user(content) -> list[dict]:
    out: list[dict] = []
    parts: list[dict] = []
    for block in content:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, DocumentBlock):
            parts.append({"type": "text", "text": _document_text(block)})
        elif isinstance(block, ToolResultBlock):
            tool_message, images = _tool_result_messages(block)
            out.append(tool_message)
            parts.extend(images)
        elif isinstance(block, ToolUseBlock):
            # tool_use belongs to the assistant; a client that puts it in a user turn gets it as
            # text rather than losing it.
            parts.append({"type": "text", "text": _dumps(block.input)})
        # thinking blocks in a user turn carry nothing an upstream can use.
    if parts:
        out.append({"role": "user", "content": _user_content(parts)})
    return out


def _translate_assistant(content) -> dict:
    texts: list[str] = []
    tool_calls: list[dict] = []
    for block in content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, DocumentBlock):
            texts.append(_document_text(block))
        elif isinstance(block, ToolUseBlock):
            tool_calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": _dumps(block.input)},
                }
            )
        # thinking / redacted_thinking / images in an assistant turn: not expressible upstream.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def chat_messages_from(request: CountTokensRequest) -> list[dict]:
    """The chat-completions ``messages`` for a Messages request (also what token counting sees).

    System text — the ``system`` field and any ``role: "system"`` message a client put inside
    ``messages`` — becomes one leading system message: many upstream chat templates refuse a
    system message anywhere but first.
    """
    system_texts = [b.text for b in request.system]
    body: list[dict] = []
    for message in request.messages:
        if message.role == "system":
            text = _text_of(message.content)
            if text:
                system_texts.append(text)
        elif message.role == "user":
            body.extend(_translate_user(message.content))
        else:
            body.append(_translate_assistant(message.content))
    if system_texts:
        body.insert(0, {"role": "system", "content": "\n\n".join(system_texts)})
    return body


def _tool_choice(choice) -> Any:
    if isinstance(choice, ToolChoiceAuto):
        return "auto"
    if isinstance(choice, ToolChoiceAny):
        return "required"
    if isinstance(choice, ToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, ToolChoiceNone):
        return "none"
    return None


def chat_tools_from(request: CountTokensRequest) -> list[dict]:
    tools = []
    for tool in request.tools:
        if tool.input_schema is None:
            continue  # a server tool (web search, computer use …) no upstream here can run
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tools


def reasoning_effort_for(budget: int | None, max_tokens: int) -> str:
    """The OpenAI effort level for a thinking budget, the budget first kept within the output
    budget ``max_tokens`` (reasoning is output: the upstream spends it from ``max_tokens``)."""
    if budget is None:
        return "medium"
    budget = min(budget, max(max_tokens - 1, 0))
    return next((name for limit, name in _EFFORT_BY_BUDGET if budget < limit), "high")


def chat_request_from_messages(
    request: MessagesRequest,
    *,
    max_output_tokens: int | None = None,
) -> ChatTranslation:
    """Translate a validated Messages request into a chat-completions request.

    ``max_tokens`` is clamped to ``max_output_tokens`` when given (Claude Code asks for 32,000).
    Whether and how the upstream is asked to reason is decided later, per model
    (``ChatTranslation.thinking``, ``base.request_reasoning``).
    """
    max_tokens = request.max_tokens
    if max_output_tokens is not None:
        max_tokens = min(max_tokens, max_output_tokens)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages_from(request),
        "max_tokens": max_tokens,
    }
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    tools = chat_tools_from(request)
    choice = request.tool_choice
    if tools:
        body["tools"] = tools
        kept = {tool["function"]["name"] for tool in tools}
        if isinstance(choice, ToolChoiceTool) and choice.name not in kept:
            # It named a server tool, dropped above: the model chooses among what is left.
            choice = None
        if choice is not None:
            body["tool_choice"] = _tool_choice(choice)
            if getattr(choice, "disable_parallel_tool_use", False):
                body["parallel_tool_calls"] = False
    extra: dict[str, Any] = {}
    if request.top_k is not None:
        extra["top_k"] = request.top_k
    thinking = request.thinking is not None and request.thinking.type != "disabled"
    return ChatTranslation(
        body=body,
        extra=extra,
        stop_sequences=tuple(request.stop_sequences),
        thinking=thinking,
        thinking_budget=request.thinking.budget_tokens if thinking else None,
    )


# --- response ------------------------------------------------------------------------------
def _tool_input(arguments: Any) -> dict:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _cut_at_stop(text: str, stop_sequences) -> tuple[str, str | None]:
    """Enforce stop sequences an upstream ignored: cut at the earliest match."""
    best = None
    for sequence in stop_sequences:
        if not sequence:
            continue
        at = text.find(sequence)
        if at != -1 and (best is None or at < best[0]):
            best = (at, sequence)
    if best is None:
        return text, None
    return text[: best[0]], best[1]


def cached_prompt_tokens(usage: Any) -> int:
    """``prompt_tokens_details.cached_tokens`` of a chat ``usage`` (0 when absent or odd)."""
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and cached > 0 else 0


def anthropic_usage(usage: dict | None):
    """The upstream's usage in Anthropic's shape (0 for what it did not report; the dialect
    shows the gateway's estimates instead when it reported nothing). As Anthropic means it,
    ``input_tokens`` is the input *not* read from the prompt cache, and
    ``cache_read_input_tokens`` the part that was (OpenAI's ``cached_tokens``)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = min(cached_prompt_tokens(usage), prompt)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _native_stop(choice: dict) -> Any:
    # vLLM says which stop string (or token id) matched in ``stop_reason``, SGLang in
    # ``matched_stop``.
    native = choice.get("stop_reason")
    return native if native is not None else choice.get("matched_stop")


def _stop_reason(finish_reason, native_stop, stop_sequences, has_tool_calls):
    if isinstance(native_stop, str) and native_stop in stop_sequences:
        # vLLM and SGLang say which stop string matched.
        return "stop_sequence", native_stop
    if has_tool_calls and finish_reason in (None, "stop", "tool_calls", "function_call"):
        return "tool_use", None
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def message_from_chat_response(
    response: dict,
    *,
    model: str,
    stop_sequences=(),
    thinking: bool = False,
    sign: Callable[[str], str] | None = None,
    message_id: str | None = None,
) -> dict:
    """Translate a chat-completions response into an Anthropic ``message``. With ``thinking``,
    the upstream's reasoning becomes a thinking block signed by ``sign(text)``."""
    choices = response.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content: list[dict] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if thinking and isinstance(reasoning, str) and reasoning:
        signature = sign(reasoning) if sign is not None else ""
        content.append({"type": "thinking", "thinking": reasoning, "signature": signature})
    text = _content_text(message.get("content"))
    text, matched = _cut_at_stop(text, stop_sequences)
    if text:
        content.append({"type": "text", "text": text})
    tool_calls = [] if matched else (message.get("tool_calls") or [])
    for call in tool_calls:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_tool_use_id(),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    if matched:
        stop_reason, stop_sequence = "stop_sequence", matched
    else:
        stop_reason, stop_sequence = _stop_reason(
            choice.get("finish_reason"), _native_stop(choice), stop_sequences, bool(tool_calls)
        )
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": anthropic_usage(response.get("usage")),
    }


# --- streaming -----------------------------------------------------------------------------
def sse_event(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


PING_EVENT = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP_EVENT = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
# The per-stream events, pre-formatted (id, model as JSON, input tokens).
_MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"%s","type":"message",'
    b'"role":"assistant","model":%s,"content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":%d,"output_tokens":0,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":0}}}\n\n'
)
_TEXT_BLOCK_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":%d,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_MESSAGE_DELTA_AND_STOP = (
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"%s",'
    b'"stop_sequence":%s},"usage":{"input_tokens":%d,"output_tokens":%d,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":%d}}\n\n' + MESSAGE_STOP_EVENT
)


def error_event(status: int, message: str, *, error_type: str | None = None) -> bytes:
    return sse_event("error", error_body(status, message, error_type=error_type))


class MessageStreamTranslator:
    """Turns OpenAI ``chat.completion.chunk`` objects into Anthropic stream events.

    ``start()`` once the upstream has answered, ``feed(chunk)`` per upstream chunk (returns the
    bytes to send, often several events, possibly none), ``finish()`` when the upstream stream
    ends. Text streams as ``text_delta``; each tool call (by its ``index``) opens its own
    ``tool_use`` block and streams its argument fragments as ``input_json_delta``.
    """

    __slots__ = (
        "_block_kind",
        "_block_open",
        "_finished",
        "_held",
        "_index",
        "_pending_tools",
        "_sign",
        "_stop_max",
        "_thinking_text",
        "_tool_block",
        "finish_reason",
        "input_estimate",
        "message_id",
        "model",
        "native_stop",
        "stop_sequence",
        "stop_sequences",
        "thinking",
        "tool_calls_seen",
        "usage",
    )

    def __init__(
        self,
        *,
        model: str,
        input_estimate: int = 0,
        stop_sequences=(),
        thinking: bool = False,
        sign: Callable[[str], str] | None = None,
        message_id: str | None = None,
    ):
        self.model = model
        self.message_id = message_id or new_message_id()
        self.input_estimate = input_estimate
        self.stop_sequences = tuple(s for s in stop_sequences if s)
        self._stop_max = max((len(s) for s in self.stop_sequences), default=0)
        self.thinking = thinking
        self._sign = sign
        self._thinking_text: list[str] = []  # the open thinking block's text, to sign
        self.usage: dict | None = None
        self.finish_reason: str | None = None
        self.native_stop: Any = None
        self.stop_sequence: str | None = None
        self.tool_calls_seen = False
        self._index = -1  # index of the open (or last) content block
        self._block_open = False
        self._block_kind: str | None = None
        self._tool_block: dict[int, int] = {}  # upstream tool-call index → our block index
        self._pending_tools: dict[int, dict] = {}  # tool calls whose name has not arrived yet
        self._held = ""  # text held back while it could be the start of a stop sequence
        self._finished = False

    @property
    def finished(self) -> bool:
        """True once ``finish()`` or ``fail()`` produced the stream's last event."""
        return self._finished

    @property
    def done(self) -> bool:
        """True once a stop sequence matched: the rest of the upstream stream is not wanted."""
        return self.stop_sequence is not None

    def start(self) -> bytes:
        # Formatted rather than encoded from a dict: this runs once per stream on the hot path.
        return _MESSAGE_START % (
            self.message_id.encode(),
            _dumps(self.model).encode(),
            self.input_estimate,
        )

    # blocks
    def _close_block(self) -> bytes:
        if not self._block_open:
            return b""
        out = b""
        if self._block_kind == "thinking":
            # As Anthropic does: the signature, once the whole thinking is known, last.
            text, self._thinking_text = "".join(self._thinking_text), []
            delta = {
                "type": "content_block_delta",
                "index": self._index,
                "delta": {
                    "type": "signature_delta",
                    "signature": self._sign(text) if self._sign is not None else "",
                },
            }
            out = sse_event("content_block_delta", delta)
        self._block_open = False
        self._block_kind = None
        return out + (
            b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
            % self._index
        )

    def _open_block(self, kind: str, block: dict) -> bytes:
        out = self._close_block()
        self._index += 1
        self._block_open = True
        self._block_kind = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + sse_event("content_block_start", start)

    def _open_text_block(self) -> bytes:
        out = self._close_block()
        self._index += 1
        self._block_open = True
        self._block_kind = "text"
        return out + _TEXT_BLOCK_START % self._index

    def _text_delta(self, text: str) -> bytes:
        out = b""
        if self._block_kind != "text":
            out = self._open_text_block()
        return out + (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":%s}}\n\n' % (self._index, _dumps(text).encode())
        )

    def _text(self, text: str) -> bytes:
        if not self.stop_sequences:
            return self._text_delta(text)
        buffer = self._held + text
        cut, matched = _cut_at_stop(buffer, self.stop_sequences)
        if matched:
            self._held = ""
            self.stop_sequence = matched
            return self._text_delta(cut) if cut else b""
        # Hold back a tail that could still grow into a stop sequence.
        keep = 0
        for size in range(min(self._stop_max - 1, len(buffer)), 0, -1):
            tail = buffer[-size:]
            if any(s.startswith(tail) for s in self.stop_sequences):
                keep = size
                break
        emit, self._held = (buffer[:-keep], buffer[-keep:]) if keep else (buffer, "")
        return self._text_delta(emit) if emit else b""

    def feed_text_literal(self, literal: bytes) -> bytes:
        """The same as ``feed`` for a chunk that carries nothing but text, given as the JSON
        string literal the upstream wrote (quotes included): relayed without decoding it, since
        that is most chunks of most streams. Not for streams with stop sequences."""
        if self._finished or self.stop_sequence is not None or literal == b'""':
            return b""
        out = b""
        if self._block_kind != "text":
            out = self._open_text_block()
        return out + (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":%s}}\n\n' % (self._index, literal)
        )

    def _thinking_delta(self, text: str) -> bytes:
        out = b""
        if self._block_kind != "thinking":
            out = self._open_block(
                "thinking", {"type": "thinking", "thinking": "", "signature": ""}
            )
        self._thinking_text.append(text)
        delta = {
            "type": "content_block_delta",
            "index": self._index,
            "delta": {"type": "thinking_delta", "thinking": text},
        }
        return out + sse_event("content_block_delta", delta)

    def _json_delta(self, fragment: str) -> bytes:
        delta = {
            "type": "content_block_delta",
            "index": self._index,
            "delta": {"type": "input_json_delta", "partial_json": fragment},
        }
        return sse_event("content_block_delta", delta)

    def _tool_call(self, call: dict) -> bytes:
        position = call.get("index", 0)
        function = call.get("function") or {}
        fragment = function.get("arguments") or ""
        if not isinstance(fragment, str):
            fragment = _dumps(fragment)
        out = b""
        if position not in self._tool_block:
            pending = self._pending_tools.setdefault(position, {"id": None, "name": "", "args": ""})
            pending["id"] = pending["id"] or call.get("id")
            pending["name"] += function.get("name") or ""
            pending["args"] += fragment
            if not pending["name"]:
                return b""  # wait for the name: a tool_use block cannot start without one
            del self._pending_tools[position]
            out += self._flush_held()
            out += self._open_block(
                "tool_use",
                {
                    "type": "tool_use",
                    "id": pending["id"] or new_tool_use_id(),
                    "name": pending["name"],
                    "input": {},
                },
            )
            self._tool_block[position] = self._index
            self.tool_calls_seen = True
            fragment = pending["args"]
        elif self._tool_block[position] != self._index or not self._block_open:
            # Fragments of an earlier call after another block began: Anthropic blocks cannot
            # reopen, so they are dropped (no upstream known to us interleaves calls).
            return b""
        if fragment:
            out += self._json_delta(fragment)
        return out

    def _flush_held(self) -> bytes:
        held, self._held = self._held, ""
        return self._text_delta(held) if held else b""

    def feed(self, chunk: dict) -> bytes:
        """Translate one upstream chunk (a parsed ``chat.completion.chunk``)."""
        if self._finished:
            return b""
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices or self.done:
            return b""
        choice = choices[0]
        delta = choice.get("delta") or {}
        out = b""
        if self.thinking:
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and isinstance(reasoning, str):
                out += self._thinking_delta(reasoning)
        text = delta.get("content")
        if text and isinstance(text, str):
            out += self._text(text)
        tool_calls = delta.get("tool_calls")
        if tool_calls and not self.done:
            for call in tool_calls:
                if isinstance(call, dict):
                    out += self._tool_call(call)
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
            self.native_stop = _native_stop(choice)
        return out

    def stop_reason(self) -> tuple[str, str | None]:
        if self.stop_sequence is not None:
            return "stop_sequence", self.stop_sequence
        return _stop_reason(
            self.finish_reason, self.native_stop, self.stop_sequences, self.tool_calls_seen
        )

    def finish(
        self,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> bytes:
        """Close the message: last block, ``message_delta`` (stop reason, usage), ``message_stop``.

        ``input_tokens``/``output_tokens``, when given, are what the gateway charged and win;
        else the upstream's usage chunk counts (0 output tokens when it sent none).
        """
        if self._finished:
            return b""
        self._finished = True
        out = self._flush_held()
        for position in list(self._pending_tools):
            # A tool call whose name never came: still close it as a block rather than lose it.
            pending = self._pending_tools.pop(position)
            out += self._open_block(
                "tool_use",
                {
                    "type": "tool_use",
                    "id": pending["id"] or new_tool_use_id(),
                    "name": pending["name"],
                    "input": {},
                },
            )
            self.tool_calls_seen = True
            if pending["args"]:
                out += self._json_delta(pending["args"])
        out += self._close_block()
        stop_reason, stop_sequence = self.stop_reason()
        usage = self.usage or {}
        if output_tokens is None:
            output_tokens = usage.get("completion_tokens")
        if output_tokens is None:
            output_tokens = 0
        if input_tokens is None:
            input_tokens = usage.get("prompt_tokens") or self.input_estimate
        cached = min(cached_prompt_tokens(usage), int(input_tokens))
        return out + _MESSAGE_DELTA_AND_STOP % (
            stop_reason.encode(),
            _dumps(stop_sequence).encode(),
            int(input_tokens) - cached,
            int(output_tokens),
            cached,
        )

    def fail(self, status: int, message: str, *, error_type: str | None = None) -> bytes:
        """A mid-stream failure: Anthropic sends an ``error`` event and nothing after it."""
        self._finished = True
        return error_event(status, message, error_type=error_type)
