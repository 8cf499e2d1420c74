"""Anthropic Messages *upstreams*, without any I/O: the reverse of ``anthropic_translate``.

An Anthropic-native endpoint (``UpstreamEndpoint.Kind.ANTHROPIC``) serves two kinds of client:

- Anthropic clients, passed through: ``passthrough_body`` is the client's own JSON with the
  upstream's model name and the granted output budget (``cache_control``, thinking, tool use
  and fields this gateway does not know travel unchanged). What the translation for other
  upstreams drops because it makes Anthropic fetch or run something and bill it beyond what
  the gateway can reserve is dropped here too, by the same rule: server tools (no
  ``input_schema``), ``mcp_servers``, ``container``, and a document by URL becomes the same
  note. ``billed_beyond_translation`` adds to the reservation what the upstream may still bill
  beyond the estimate of the translation (an image by URL, a block the translation shortens).
- OpenAI-format clients (chat completions, Responses): their dialect still builds a
  chat-completions body, ``messages_request_from_chat`` turns it into a Messages request, and
  ``chat_completion_from_message`` / ``ChatChunkTranslator`` turn the answer back into chat
  completion JSON and chunks, so that the dialects' renderers work unchanged on top.

Usage, either way: Anthropic's ``input_tokens`` is the input *not* read from or written to the
prompt cache; the gateway charges all input (``input_tokens`` + ``cache_creation_input_tokens``
+ ``cache_read_input_tokens``), the cached part being ``cache_read_input_tokens``
(``usage.quota.charged_input_tokens`` weighs it).

Thinking signatures: a thinking block is checked by whoever signed it. The gateway signs the
thinking an OpenAI-format upstream produced (``anthropic_signature``, prefix ``gw1.``) and
checks those blocks when they come back; a native upstream signs its own, and only it can check
them. So a native upstream gets its own blocks back untouched and never the gateway's (it would
refuse them: they are dropped from the history), and an OpenAI-format upstream gets no thinking
at all (it has no field for it).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from gateway.serving.dialects.anthropic_schema import (
    MESSAGE_BLOCKS,
    MIN_THINKING_BUDGET_TOKENS,
    TOOL_RESULT_BLOCKS,
    block_as_text,
)
from gateway.serving.dialects.anthropic_signature import SIGNATURE_PREFIX
from gateway.serving.dialects.anthropic_translate import url_document_note
from gateway.serving.dialects.base import Usage
from gateway.serving.tokens import ANTHROPIC_IMAGE_TOKENS, IMAGE_TOKENS, estimate_text_tokens

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# Anthropic's stop reasons as chat completions' finish reasons.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

# OpenAI reasoning efforts as thinking budgets (kept below the output budget).
_BUDGET_BY_EFFORT = {"minimal": 1_024, "low": 2_048, "medium": 8_192, "high": 24_576}


# --- usage ---------------------------------------------------------------------------------
def _count(usage: dict, name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and value > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """An Anthropic ``usage`` object as the gateway charges it (None when there is none)."""
    if not isinstance(usage, dict):
        return None
    cached = _count(usage, "cache_read_input_tokens")
    total = _count(usage, "input_tokens") + _count(usage, "cache_creation_input_tokens") + cached
    return Usage(total, _count(usage, "output_tokens"), cached_input_tokens=cached)


def merge_usage(usage: dict, update: dict) -> dict:
    """``usage`` (a stream's so far) with ``update``'s counts merged in, each the larger of the
    two: the counts are cumulative, and a ``message_delta`` may write the ones it does not
    report as null (some Anthropic-compatible servers do), which must not erase what
    ``message_start`` said."""
    for name, value in update.items():
        if isinstance(value, int) and not isinstance(value, bool):
            known = usage.get(name)
            usage[name] = max(value, known) if isinstance(known, int) else value
    return usage


def chat_usage(usage: Any) -> dict:
    """An Anthropic ``usage`` object in chat completions' shape."""
    found = usage_of(usage) or Usage(0, 0)
    return {
        "prompt_tokens": found.input_tokens,
        "completion_tokens": found.output_tokens,
        "total_tokens": found.input_tokens + found.output_tokens,
        "prompt_tokens_details": {"cached_tokens": found.cached_input_tokens},
    }


# --- pass-through --------------------------------------------------------------------------
# Request fields that have Anthropic run something on the client's behalf and bill it (MCP
# servers, a code-execution container): dropped, as the translation drops them.
_SERVER_FIELDS = ("mcp_servers", "container")


def _is_url_source(block: dict) -> bool:
    source = block.get("source")
    return isinstance(source, dict) and source.get("type") == "url"


def _upstream_block(block: Any) -> Any:
    """A block as a native upstream gets it: a document by URL as the translation's note
    (Anthropic would fetch it and bill whatever it holds), tool results' own blocks alike."""
    if not isinstance(block, dict):
        return block
    if block.get("type") == "document" and _is_url_source(block):
        text = url_document_note(str(block["source"].get("url") or ""))
        if block.get("context"):
            text = f"{block['context']}\n\n{text}"
        note: dict[str, Any] = {"type": "text", "text": text}
        if "cache_control" in block:
            note["cache_control"] = block["cache_control"]
        return note
    if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
        return {**block, "content": [_upstream_block(part) for part in block["content"]]}
    return block


def _upstream_blocks(content: Any) -> Any:
    """A message's content without the gateway's own thinking blocks (no upstream can check
    them) and with documents by URL as notes; anything else untouched."""
    if not isinstance(content, list):
        return content
    return [
        _upstream_block(block)
        for block in content
        if not (
            isinstance(block, dict)
            and block.get("type") == "thinking"
            and str(block.get("signature") or "").startswith(SIGNATURE_PREFIX)
        )
    ]


def _without_server_tools(body: dict) -> None:
    """``body`` without Anthropic's server tools (a tool without ``input_schema``: web search,
    code execution, web fetch ...) and server fields, as the translation has it; a tool
    choice left without its tool goes too."""
    for name in _SERVER_FIELDS:
        body.pop(name, None)
    if not isinstance(body.get("tools"), list):
        return
    tools = [t for t in body["tools"] if isinstance(t, dict) and t.get("input_schema") is not None]
    if len(tools) == len(body["tools"]):
        return
    choice = body.get("tool_choice")
    if tools:
        body["tools"] = tools
        if (
            isinstance(choice, dict)
            and choice.get("type") == "tool"
            and choice.get("name") not in {tool.get("name") for tool in tools}
        ):
            del body["tool_choice"]
    else:
        del body["tools"]
        body.pop("tool_choice", None)


def _blocks(content: Any) -> list:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def count_tokens_body(native: dict, *, model: str) -> dict:
    """An Anthropic client's request (``count_tokens`` or Messages) for a native upstream's
    ``model``, without the gateway's own thinking blocks, server tools and fields, and with
    documents by URL as notes (module docstring). A ``role: "system"`` message (some clients
    send them; the gateway takes them) joins ``system``, where Anthropic wants it."""
    body = dict(native)
    body["model"] = model
    _without_server_tools(body)
    messages = []
    for message in body.get("messages") or ():
        if message.get("role") == "system":
            body["system"] = [*_blocks(body.get("system") or []), *_blocks(message["content"])]
            continue
        content = _upstream_blocks(message.get("content"))
        if content == []:
            continue  # an assistant turn that held nothing but the gateway's thinking
        messages.append({**message, "content": content})
    body["messages"] = messages
    return body


def passthrough_body(native: dict, *, model: str, max_tokens: int) -> dict:
    """The Anthropic client's validated request for a native upstream: its own JSON with
    ``model`` and ``max_tokens`` (the granted budget) set. A thinking budget that no longer
    fits below ``max_tokens`` is lowered, and thinking is left out when not even Anthropic's
    minimum budget fits."""
    body = count_tokens_body(native, model=model)
    body["max_tokens"] = max_tokens
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
        budget = min(thinking["budget_tokens"], max_tokens - 1)
        if budget < MIN_THINKING_BUDGET_TOKENS:
            del body["thinking"]
        else:
            body["thinking"] = {**thinking, "budget_tokens": budget}
    return body


def _billed_beyond_note(blocks: Any, known: frozenset) -> int:
    """``billed_beyond_translation`` for one content list whose known block types are
    ``known`` (the others the translation shortens to ``block_as_text``)."""
    if not isinstance(blocks, list):
        return 0
    extra = 0
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "image" and _is_url_source(block):
            extra += ANTHROPIC_IMAGE_TOKENS - IMAGE_TOKENS
        elif kind == "tool_result":
            extra += _billed_beyond_note(block.get("content"), TOOL_RESULT_BLOCKS)
        elif isinstance(kind, str) and kind not in known:
            whole = estimate_text_tokens(_dumps(block))
            extra += max(whole - estimate_text_tokens(block_as_text(block)), 0)
    return extra


def billed_beyond_translation(native: dict) -> int:
    """The tokens an Anthropic-native upstream may bill for the client's request ``native``
    beyond the estimate of its translation, for the reservation (not the context check): an
    image by URL, which Anthropic fetches and the gateway cannot measure, at Anthropic's
    largest image cost; a block the translation shortens to a note (server tool calls and
    their results, block types newer than the gateway) at its full length."""
    return sum(
        _billed_beyond_note(message.get("content"), MESSAGE_BLOCKS)
        for message in native.get("messages") or ()
        if isinstance(message, dict)
    )


def with_model(obj: dict, model: str) -> dict:
    """``obj`` (a message) naming ``model`` instead of the upstream's name."""
    obj["model"] = model
    return obj


# --- chat completions request → Messages request -------------------------------------------
def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, dict)
        )
    return ""


def _image_block(url: str) -> dict:
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _user_blocks(content: Any) -> list[dict]:
    if not isinstance(content, list):
        text = _text(content)
        return [{"type": "text", "text": text}] if text else []
    blocks = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                blocks.append(_image_block(url))
        elif part.get("text"):
            blocks.append({"type": "text", "text": str(part["text"])})
    return blocks


def _tool_input(arguments: Any) -> dict:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if arguments else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _assistant_blocks(message: dict) -> list[dict]:
    blocks = []
    text = _text(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + secrets.token_hex(12),
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments")),
            }
        )
    return blocks


def _tool_result(message: dict) -> dict:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    text = _text(message.get("content"))
    if text:
        block["content"] = text
    return block


def _messages(chat_messages: list) -> tuple[list[dict], list[str]]:
    """Messages and system texts. Tool results become user turns; consecutive turns of one
    role are merged, as Anthropic's alternation wants."""
    system: list[str] = []
    messages: list[dict] = []
    for message in chat_messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "assistant":
            blocks = _assistant_blocks(message)
        elif role in ("tool", "function"):
            role, blocks = "user", [_tool_result(message)]
        else:
            role, blocks = "user", _user_blocks(message.get("content"))
        if not blocks:
            continue  # Anthropic refuses empty turns and empty text blocks
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return messages, system


def _continues_tool_use(messages: list[dict]) -> bool:
    """True when the last turn carries tool results (the model's tool-use turn goes on)."""
    return bool(messages) and any(
        block["type"] == "tool_result" for block in messages[-1]["content"]
    )


def _tool_choice(choice: Any, *, parallel: Any) -> dict | None:
    if choice == "auto":
        result: dict = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name") or ""}
    elif parallel is False:
        result = {"type": "auto"}
    else:
        return None
    if parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def _tools(tools: Any) -> list[dict]:
    out = []
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        schema = function.get("parameters")
        # Anthropic wants an object schema with its ``type``; OpenAI takes ``{}`` or none.
        schema = dict(schema) if isinstance(schema, dict) else {}
        schema.setdefault("type", "object")
        entry: dict[str, Any] = {"name": function["name"], "input_schema": schema}
        if function.get("description"):
            entry["description"] = function["description"]
        out.append(entry)
    return out


def messages_request_from_chat(chat: dict, *, model: str, max_tokens: int) -> dict:
    """A chat-completions body (as an OpenAI-format dialect builds it for an upstream) as an
    Anthropic Messages request for ``model`` with ``max_tokens``.

    Only what the Messages API takes is sent (it refuses unknown fields): no sampling
    parameters (``temperature``, ``top_p``, ``top_k``: the current API, as its 2.x SDKs, has
    none), no ``n``, penalties, ``seed``, ``logprobs`` or ``response_format``. A
    ``reasoning_effort`` other than ``none`` becomes ``thinking`` with a budget for the effort
    (below ``max_tokens`` and at least 1,024 tokens, else no thinking), except when the request
    answers tool calls: Anthropic then wants the turn's signed thinking back, which an
    OpenAI-format client has no way to keep, so that step goes without thinking; and when the
    tool choice forces a tool (``required``, a named function), which Anthropic refuses with
    thinking.
    """
    messages, system = _messages(chat.get("messages") or [])
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = "\n\n".join(system)
    stop = chat.get("stop")
    if isinstance(stop, str) and stop:
        body["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        body["stop_sequences"] = [s for s in stop if isinstance(s, str) and s]
    tools = _tools(chat.get("tools"))
    if tools:
        body["tools"] = tools
        choice = _tool_choice(chat.get("tool_choice"), parallel=chat.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    if isinstance(chat.get("user"), str) and chat["user"]:
        body["metadata"] = {"user_id": chat["user"]}
    budget = _BUDGET_BY_EFFORT.get(chat.get("reasoning_effort"))
    if (
        budget is not None
        and min(budget, max_tokens - 1) >= MIN_THINKING_BUDGET_TOKENS
        and not _continues_tool_use(messages)
        and (body.get("tool_choice") or {}).get("type") not in ("any", "tool")
    ):
        body["thinking"] = {"type": "enabled", "budget_tokens": min(budget, max_tokens - 1)}
    if chat.get("stream"):
        body["stream"] = True
    return body


# --- Messages response → chat completion ---------------------------------------------------
def _chat_tool_call(block: dict, index: int) -> dict:
    call = {
        "id": block.get("id") or "toolu_" + secrets.token_hex(12),
        "type": "function",
        "function": {
            "name": block.get("name") or "",
            "arguments": _dumps(block.get("input") or {}),
        },
    }
    return {"index": index, **call}


def chat_completion_from_message(message: dict) -> dict:
    """An Anthropic message as a chat completion (text, ``reasoning_content`` from thinking
    blocks, tool calls, finish reason, usage with the cached part). Without a usage in the
    message there is none in the completion: zeros would be charged as the upstream's report,
    where the gateway's estimate belongs."""
    texts, thinking, tool_calls = [], [], []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            call = _chat_tool_call(block, len(tool_calls))
            del call["index"]
            tool_calls.append(call)
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if thinking:
        reply["reasoning_content"] = "".join(thinking)
    if tool_calls:
        reply["tool_calls"] = tool_calls
    elif reply["content"] is None:
        reply["content"] = ""
    stop_reason = message.get("stop_reason")
    completion = {
        "id": message.get("id") or "msg_" + secrets.token_hex(12),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model") or "",
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": FINISH_REASONS.get(stop_reason, "stop"),
            }
        ],
    }
    if isinstance(message.get("usage"), dict):
        completion["usage"] = chat_usage(message["usage"])
    return completion


class ChatChunkTranslator:
    """Anthropic stream events in, ``chat.completion.chunk`` objects out (``feed`` returns a
    list, often one, possibly none); ``done`` once ``message_stop`` came, whose chunk carries
    the usage as an OpenAI upstream reports it (``choices: []``), when the stream reported
    any (else there is no such chunk, and the gateway estimates)."""

    __slots__ = ("_created", "_id", "_model", "_tools", "done", "usage")

    def __init__(self):
        self._id = ""
        self._model = ""
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # Anthropic block index → chat tool-call index
        self.usage: dict = {}
        self.done = False

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def feed(self, event: dict) -> list[dict]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id = message.get("id") or ""
            self._model = message.get("model") or ""
            self.usage = merge_usage({}, message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                position = self._tools[event.get("index")] = len(self._tools)
                call = _chat_tool_call({**block, "input": None}, position)
                call["function"]["arguments"] = ""
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text") or ""})]
            if delta.get("type") == "thinking_delta":
                return [self._chunk({"reasoning_content": delta.get("thinking") or ""})]
            if delta.get("type") == "input_json_delta" and event.get("index") in self._tools:
                call = {
                    "index": self._tools[event["index"]],
                    "function": {"arguments": delta.get("partial_json") or ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            return []  # signatures, citations
        if kind == "message_delta":
            if isinstance(event.get("usage"), dict):
                merge_usage(self.usage, event["usage"])
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, FINISH_REASONS.get(stop_reason, "stop"))]
        if kind == "message_stop":
            self.done = True
            if not self.usage:
                return []
            chunk = self._chunk({})
            chunk["choices"] = []
            chunk["usage"] = chat_usage(self.usage)
            return [chunk]
        return []  # ping, and event types newer than this gateway
