"""OpenAI Responses ⇄ OpenAI chat completions, without any I/O.

``chat_request_from_responses`` validates a Responses request (``POST /v1/responses``) and turns
it into the chat-completions body an OpenAI-compatible upstream takes; ``response_from_chat``
turns the upstream's answer into a Response object; ``ResponseStreamTranslator`` does the same
for a stream, one upstream chunk at a time, emitting the real Responses event sequence
(``response.created`` … ``response.completed``, every event with its ``sequence_number``).

Nothing is stored: ``previous_response_id`` (and the ``item_reference`` items that need stored
state) are refused with a 400 that says to send the full input, and ``store`` is accepted and
echoed as ``false``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})
# Fields of the request echoed in the Response object as sent (OpenAI's shape).
_ECHOED = ("instructions", "max_output_tokens", "metadata", "temperature", "top_p", "user")
# Statuses a chat ``finish_reason`` stands for, with the Responses ``incomplete_details``.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
_SAMPLING = ("temperature", "top_p")


class ResponsesRequestError(Exception):
    """A request this translation refuses: a 400 naming ``field``."""

    def __init__(self, message: str, field: str = "body"):
        super().__init__(message)
        self.message = message
        self.field = field


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(slots=True)
class ResponsesTranslation:
    """The chat-completions body plus what the way back needs (the request's echoed fields)."""

    model: str
    stream: bool
    max_output_tokens: int | None
    body: dict[str, Any]
    echo: dict[str, Any] = field(default_factory=dict)
    # The client's own request (validated), for an upstream that serves the Responses API.
    native: dict[str, Any] = field(default_factory=dict)


# --- request -------------------------------------------------------------------------------
def _fail(message: str, where: str):
    raise ResponsesRequestError(message, where)


def _check(condition: bool, message: str, where: str) -> None:
    if not condition:
        _fail(message, where)


def _number(raw: dict, name: str, low: float, high: float) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    _check(
        isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high,
        f"Invalid value for '{name}': expected a number from {low:g} to {high:g}.",
        name,
    )
    return value


def _text_part(part: dict, where: str) -> str:
    text = part.get("text")
    _check(isinstance(text, str), f"'{where}.text' must be a string.", f"{where}.text")
    return text


def _content_parts(content: Any, where: str, *, images: bool) -> list[dict]:
    """Responses content → chat content parts (text and image_url)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    _check(isinstance(content, list), f"'{where}' must be a string or a list.", where)
    parts: list[dict] = []
    for n, part in enumerate(content):
        at = f"{where}[{n}]"
        _check(isinstance(part, dict), f"'{at}' must be an object.", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            parts.append({"type": "text", "text": _text_part(part, at)})
        elif kind == "refusal":
            refusal = part.get("refusal")
            _check(isinstance(refusal, str), f"'{at}.refusal' must be a string.", at)
            parts.append({"type": "text", "text": refusal})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                _fail(
                    f"'{at}.image_url' is required: files stored with OpenAI (file_id) are "
                    "not available here; send the image as a URL or a data: URL.",
                    f"{at}.image_url",
                )
            if images:
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append({"type": "text", "text": f"[image: {url[:200]}]"})
        elif kind == "input_file":
            name = part.get("filename") or part.get("file_url") or part.get("file_id") or "file"
            parts.append({"type": "text", "text": f"[file not included: {str(name)[:200]}]"})
        else:
            _fail(f"'{at}.type' {kind!r} is not a supported content type.", f"{at}.type")
    return parts


def _joined_text(parts: list[dict]) -> str:
    return "\n\n".join(p["text"] for p in parts if p["type"] == "text")


def _plain_or_parts(parts: list[dict]) -> str | list[dict]:
    # Plain text goes as a string: the most widely accepted shape among compatible servers.
    if all(p["type"] == "text" for p in parts):
        return _joined_text(parts)
    return parts


def _tool_output(output: Any, where: str) -> str:
    if isinstance(output, str):
        return output
    parts = _content_parts(output, where, images=False)
    return _joined_text(parts)


def _assistant(messages: list[dict]) -> dict:
    """The assistant message to add tool calls to: the last one, or a new one."""
    if messages and messages[-1]["role"] == "assistant":
        return messages[-1]
    message: dict[str, Any] = {"role": "assistant", "content": None}
    messages.append(message)
    return message


def chat_messages_from_input(instructions: str | None, items: Any) -> list[dict]:
    """The chat ``messages`` for a Responses ``input`` (a string or a list of items).

    System text (``instructions`` and ``system``/``developer`` messages) becomes one leading
    system message: many upstream chat templates refuse a system message anywhere else.
    """
    system: list[str] = [instructions] if instructions else []
    messages: list[dict] = []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    _check(isinstance(items, list) and items != [], "'input' must be a string or items.", "input")
    for n, item in enumerate(items):
        at = f"input[{n}]"
        _check(isinstance(item, dict), f"'{at}' must be an object.", at)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            _check(
                role in ("user", "assistant", "system", "developer"),
                f"'{at}.role' must be user, assistant, system or developer.",
                f"{at}.role",
            )
            parts = _content_parts(item.get("content"), f"{at}.content", images=role == "user")
            if role in ("system", "developer"):
                system.append(_joined_text(parts))
            elif role == "assistant":
                text = _joined_text(parts)
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                    last["content"] = (last["content"] or "") + text
                else:
                    messages.append({"role": "assistant", "content": text})
            else:
                messages.append({"role": "user", "content": _plain_or_parts(parts)})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                value = item.get(name)
                _check(
                    isinstance(value, str) and (name == "arguments" or value),
                    f"'{at}.{name}' must be a non-empty string.",
                    f"{at}.{name}",
                )
            _assistant(messages).setdefault("tool_calls", []).append(
                {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"] or "{}"},
                }
            )
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            _check(
                isinstance(call_id, str) and call_id != "",
                f"'{at}.call_id' must be a non-empty string.",
                f"{at}.call_id",
            )
            output = _tool_output(item.get("output"), f"{at}.output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
        elif kind == "reasoning":
            continue  # the model's own reasoning of an earlier turn: not sent back upstream
        elif kind == "item_reference":
            _fail(
                "Items are not stored here, so 'item_reference' cannot be resolved; "
                "send the full input.",
                f"{at}.type",
            )
        else:
            _fail(f"'{at}.type' {kind!r} is not a supported input item type.", f"{at}.type")
    for message in messages:
        if message["role"] == "assistant" and message["content"] is None:
            message["content"] = "" if "tool_calls" not in message else None
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    _check(
        any(m["role"] != "system" for m in messages),
        "'input' must hold at least one message or tool output.",
        "input",
    )
    return messages


def chat_tools_from(tools: Any) -> list[dict]:
    """Responses function tools (flat: ``{type, name, description, parameters, strict}``) →
    chat tools. Tools a chat upstream cannot run (OpenAI's hosted web or file search, custom
    grammar tools, tool namespaces …) are left out rather than refused: clients such as Codex
    offer them beside their function tools, and the model simply does not see them."""
    if tools is None:
        return []
    _check(isinstance(tools, list), "'tools' must be a list.", "tools")
    out = []
    for n, tool in enumerate(tools):
        at = f"tools[{n}]"
        _check(isinstance(tool, dict), f"'{at}' must be an object.", at)
        if tool.get("type") != "function":
            continue
        name = tool.get("name")
        _check(isinstance(name, str) and name != "", f"'{at}.name' is required.", f"{at}.name")
        function: dict[str, Any] = {"name": name}
        if tool.get("description") is not None:
            function["description"] = str(tool["description"])
        parameters = tool.get("parameters")
        function["parameters"] = (
            parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
        )
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        _check(
            isinstance(name, str) and name != "", "'tool_choice.name' is required.", "tool_choice"
        )
        return {"type": "function", "function": {"name": name}}
    _fail("'tool_choice' must be auto, none, required or a function.", "tool_choice")
    return None


def _response_format(text: Any) -> dict | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    fmt = text["format"]
    if fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
        if isinstance(fmt.get("strict"), bool):
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def chat_request_from_responses(raw: Any) -> ResponsesTranslation:
    """A Responses request (decoded JSON) as a chat-completions body; raises
    ``ResponsesRequestError`` (a 400 naming the field) for anything it cannot serve."""
    _check(isinstance(raw, dict), "The request body must be a JSON object.", "body")
    model = raw.get("model")
    _check(
        isinstance(model, str) and 0 < len(model) <= 256,
        "'model' is required (a string of 1 to 256 characters).",
        "model",
    )
    for stateful in ("previous_response_id", "conversation"):
        if raw.get(stateful) is not None:
            _fail(
                f"'{stateful}' is not supported: responses are not stored here. "
                "Send the full input (earlier messages, function calls and their outputs) "
                "with every request.",
                stateful,
            )
    if raw.get("background"):
        _fail("'background' responses are not supported.", "background")
    for flag in ("stream", "store", "parallel_tool_calls"):
        _check(
            raw.get(flag) is None or isinstance(raw[flag], bool),
            f"'{flag}' must be true or false.",
            flag,
        )
    instructions = raw.get("instructions")
    _check(
        instructions is None or isinstance(instructions, str),
        "'instructions' must be a string.",
        "instructions",
    )
    _check("input" in raw, "'input' is required.", "input")
    max_out = raw.get("max_output_tokens")
    _check(
        max_out is None
        or (isinstance(max_out, int) and not isinstance(max_out, bool) and max_out >= 1),
        "'max_output_tokens' must be a positive integer.",
        "max_output_tokens",
    )
    body: dict[str, Any] = {"messages": chat_messages_from_input(instructions, raw["input"])}
    for name, high in zip(_SAMPLING, (2, 1), strict=True):
        value = _number(raw, name, 0, high)
        if value is not None:
            body[name] = value
    tools = chat_tools_from(raw.get("tools"))
    if tools:
        body["tools"] = tools
        choice = chat_tool_choice(raw.get("tool_choice"))
        if choice is not None:
            body["tool_choice"] = choice
        if isinstance(raw.get("parallel_tool_calls"), bool):
            body["parallel_tool_calls"] = raw["parallel_tool_calls"]
    else:
        chat_tool_choice(raw.get("tool_choice"))  # still validated
    reasoning = raw.get("reasoning")
    effort = None
    if reasoning is not None:
        _check(isinstance(reasoning, dict), "'reasoning' must be an object.", "reasoning")
        effort = reasoning.get("effort")
        _check(
            effort is None or effort in EFFORTS,
            "'reasoning.effort' must be one of " + ", ".join(sorted(EFFORTS)) + ".",
            "reasoning.effort",
        )
        if effort is not None:
            body["reasoning_effort"] = effort
    response_format = _response_format(raw.get("text"))
    if response_format is not None:
        body["response_format"] = response_format
    if isinstance(raw.get("user"), str):
        body["user"] = raw["user"]
    echo = {name: raw.get(name) for name in _ECHOED}
    echo["metadata"] = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    echo["tools"] = [t for t in raw.get("tools") or [] if isinstance(t, dict)]
    echo["tool_choice"] = raw.get("tool_choice") or "auto"
    echo["parallel_tool_calls"] = raw.get("parallel_tool_calls") is not False
    echo["reasoning"] = {
        "effort": effort,
        "summary": (reasoning or {}).get("summary") if isinstance(reasoning, dict) else None,
    }
    echo["text"] = (
        raw["text"] if isinstance(raw.get("text"), dict) else {"format": {"type": "text"}}
    )
    return ResponsesTranslation(
        model=model,
        stream=bool(raw.get("stream")),
        max_output_tokens=max_out,
        body=body,
        echo=echo,
        native=raw,
    )


# --- response ------------------------------------------------------------------------------
def usage_object(
    input_tokens: int, output_tokens: int, *, cached: int = 0, reasoning: int = 0
) -> dict:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def usage_details(usage: Any) -> tuple[int, int]:
    """(cached input tokens, reasoning tokens) of a chat ``usage`` object, 0 when absent."""
    if not isinstance(usage, dict):
        return 0, 0

    def detail(group: str, name: str) -> int:
        value = (usage.get(group) or {}).get(name) if isinstance(usage.get(group), dict) else 0
        return value if isinstance(value, int) and value > 0 else 0

    return detail("prompt_tokens_details", "cached_tokens"), detail(
        "completion_tokens_details", "reasoning_tokens"
    )


def _reasoning_of(message: dict) -> str:
    # vLLM and SGLang say ``reasoning_content``; newer vLLM and OpenRouter ``reasoning``.
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content if text or status == "completed" else [],
    }


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    echo: dict,
    status: str,
    output: list[dict],
    usage: dict | None = None,
    finish_reason: str | None = None,
    error: dict | None = None,
) -> dict:
    incomplete = _INCOMPLETE.get(finish_reason or "") if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "metadata": echo.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": echo.get("temperature"),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": echo.get("tools") or [],
        "top_p": echo.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": echo.get("user"),
    }


def _final_status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason in _INCOMPLETE else "completed"


def response_from_chat(
    upstream: dict,
    *,
    model: str,
    echo: dict,
    usage: tuple[int, int] | None = None,
    ids: Callable[[str], str] = new_id,
    created_at: int | None = None,
) -> dict:
    """A chat completion → a Response object. ``usage`` (input, output) overrides the
    upstream's report (the pipeline's estimate when it reported none)."""
    choice = upstream["choices"][0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    output: list[dict] = []
    reasoning = _reasoning_of(message)
    if reasoning:
        output.append(reasoning_item(ids("rs"), reasoning))
    text = message.get("content") or ""
    tool_calls = message.get("tool_calls") or []
    if text or not tool_calls:
        output.append(message_item(ids("msg"), text))
    for call in tool_calls:
        function = call.get("function") or {}
        output.append(
            function_call_item(
                ids("fc"),
                call.get("id") or ids("call"),
                function.get("name") or "",
                function.get("arguments") or "",
            )
        )
    reported = upstream.get("usage") if isinstance(upstream.get("usage"), dict) else {}
    cached, reasoning_tokens = usage_details(reported)
    if usage is None:
        usage = (
            int(reported.get("prompt_tokens") or 0),
            int(reported.get("completion_tokens") or 0),
        )
    return response_object(
        response_id=ids("resp"),
        created_at=int(time.time()) if created_at is None else created_at,
        model=model,
        echo=echo,
        status=_final_status(finish),
        output=output,
        usage=usage_object(*usage, cached=cached, reasoning=reasoning_tokens),
        finish_reason=finish,
    )


# --- stream --------------------------------------------------------------------------------
class ResponseStreamTranslator:
    """Upstream chat chunks in, Responses events out. One output item is open at a time
    (reasoning, then the message, then each function call), as OpenAI streams them."""

    def __init__(
        self,
        *,
        model: str,
        echo: dict,
        ids: Callable[[str], str] = new_id,
        created_at: int | None = None,
    ):
        self.model = model
        self.echo = echo
        self.ids = ids
        self.response_id = ids("resp")
        self.created_at = int(time.time()) if created_at is None else created_at
        self.sequence = 0
        self.output: list[dict] = []
        self.open: dict | None = None  # the item being streamed
        self.text = ""  # of the open item
        self.tool_index: int | None = None  # the upstream index of the open function call
        self.finish_reason: str | None = None
        self.details = (0, 0)
        self.finished = False

    # -- events
    def _event(self, kind: str, **data) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _dumps(payload).encode() + b"\n\n"

    def _response(self, status: str, **extra) -> dict:
        return response_object(
            response_id=self.response_id,
            created_at=self.created_at,
            model=self.model,
            echo=self.echo,
            status=status,
            output=list(self.output),
            **extra,
        )

    def start(self) -> bytes:
        response = self._response("in_progress")
        return self._event("response.created", response=response) + self._event(
            "response.in_progress", response=response
        )

    def _open(self, item: dict) -> bytes:
        self.open, self.text = item, ""
        return self._event("response.output_item.added", output_index=len(self.output), item=item)

    def _close(self) -> bytes:
        item = self.open
        if item is None:
            return b""
        index = len(self.output)
        out = b""
        if item["type"] == "reasoning":
            done = reasoning_item(item["id"], self.text)
            out += self._event(
                "response.reasoning_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=self.text,
            )
            out += self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part={"type": "reasoning_text", "text": self.text},
            )
        elif item["type"] == "message":
            done = message_item(item["id"], self.text)
            part = done["content"][0]
            out += self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=self.text,
                logprobs=[],
            )
            out += self._event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        else:
            done = function_call_item(item["id"], item["call_id"], item["name"], self.text)
            out += self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=self.text,
            )
        out += self._event("response.output_item.done", output_index=index, item=done)
        self.output.append(done)
        self.open, self.text, self.tool_index = None, "", None
        return out

    def _text_delta(self, kind: str, delta: str) -> bytes:
        out = b""
        if self.open is None or self.open["type"] != kind:
            out += self._close()
            item_id = self.ids("rs" if kind == "reasoning" else "msg")
            if kind == "reasoning":
                out += self._open(reasoning_item(item_id, "", "in_progress"))
                part = {"type": "reasoning_text", "text": ""}
            else:
                out += self._open(message_item(item_id, "", "in_progress"))
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out += self._event(
                "response.content_part.added",
                item_id=item_id,
                output_index=len(self.output),
                content_index=0,
                part=part,
            )
        if not delta:
            return out
        self.text += delta
        name = (
            "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        )
        extra = {} if kind == "reasoning" else {"logprobs": []}
        return out + self._event(
            name,
            item_id=self.open["id"],
            output_index=len(self.output),
            content_index=0,
            delta=delta,
            **extra,
        )

    def _tool_delta(self, call: dict) -> bytes:
        out = b""
        index = call.get("index", 0)
        function = call.get("function") or {}
        if self.open is None or self.open["type"] != "function_call" or self.tool_index != index:
            out += self._close()
            item = function_call_item(
                self.ids("fc"),
                call.get("id") or self.ids("call"),
                function.get("name") or "",
                "",
                "in_progress",
            )
            out += self._open(item)
            self.tool_index = index
        elif function.get("name") and not self.open["name"]:
            self.open["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.text += arguments
            out += self._event(
                "response.function_call_arguments.delta",
                item_id=self.open["id"],
                output_index=len(self.output),
                delta=arguments,
            )
        return out

    def feed(self, chunk: dict) -> bytes:
        if self.finished:
            return b""
        if isinstance(chunk.get("usage"), dict):
            self.details = usage_details(chunk["usage"])
        out = b""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            reasoning = _reasoning_of(delta)
            if reasoning:
                out += self._text_delta("reasoning", reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._text_delta("message", content)
            for call in delta.get("tool_calls") or []:
                if isinstance(call, dict):
                    out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self, *, input_tokens: int, output_tokens: int) -> bytes:
        if self.finished:
            return b""
        out = self._close()
        if not any(item["type"] != "reasoning" for item in self.output):
            # No text and no call came back: still one (empty) message, as OpenAI answers.
            out += self._text_delta("message", "")
            out += self._close()
        self.finished = True
        status = _final_status(self.finish_reason)
        cached, reasoning = self.details
        response = self._response(
            status,
            usage=usage_object(input_tokens, output_tokens, cached=cached, reasoning=reasoning),
            finish_reason=self.finish_reason,
        )
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=response)

    def fail(self, code: str, message: str, param: str | None = None) -> bytes:
        """An ``error`` event (the gateway's own code) and ``response.failed`` (whose
        ``error.code`` is one of the Responses API's own): the stream ends without its answer."""
        if self.finished:
            return b""
        self.finished = True
        out = self._event("error", code=code, message=message, param=param)
        failed = "rate_limit_exceeded" if code == "rate_limit_exceeded" else "server_error"
        response = self._response("failed", error={"code": failed, "message": message})
        return out + self._event("response.failed", response=response)
