"""Test helpers: read Anthropic SSE bytes the way the official SDK does, and check that a
chat-completions body is one an OpenAI-compatible server accepts."""

import json
from typing import Any, Literal

from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

_EVENT = TypeAdapter(RawMessageStreamEvent)


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    """Split an SSE byte stream into (event name, data) pairs, checking that every event carries
    both lines and that the name matches the data's ``type``."""
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        assert set(lines) == {"event", "data"}, frame
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"], frame
        events.append((lines["event"], data))
    return events


def sdk_message(raw: bytes):
    """Accumulate a stream with the anthropic SDK's own accumulator; returns its Message."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, data in sse_events(raw):
        if name in ("ping", "error"):
            continue
        event = _EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


# --- a strict model of the chat-completions body we send upstream ----------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageUrl(_Strict):
    url: str


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageUrl


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str


class UserMessage(_Strict):
    role: Literal["user"]
    content: str | list[TextPart | ImagePart]


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCall] = Field(default=None, min_length=1)


class ToolMessage(_Strict):
    role: Literal["tool"]
    tool_call_id: str
    content: str


class Function(_Strict):
    name: str
    description: str = None
    parameters: dict[str, Any]


class ToolDef(_Strict):
    type: Literal["function"]
    function: Function


class StreamOptions(_Strict):
    include_usage: Literal[True]


class ChatRequest(_Strict):
    model: str
    messages: list[SystemMessage | UserMessage | AssistantMessage | ToolMessage] = Field(
        min_length=1
    )
    max_tokens: int = Field(ge=1)
    stream: Literal[True] = None
    stream_options: StreamOptions = None
    stop: list[str] = None
    temperature: float = Field(default=None, ge=0, le=2)
    top_p: float = Field(default=None, ge=0, le=1)
    user: str = None
    tools: list[ToolDef] = None
    tool_choice: Literal["auto", "required", "none"] | dict = None
    parallel_tool_calls: bool = None


def assert_valid_chat_request(body: dict, *, paired: bool = True) -> ChatRequest:
    """Validate shape, and that the conversation is one OpenAI accepts: the system message only
    first, and (``paired``) tool messages only right after the assistant turn that made those
    calls."""
    request = ChatRequest.model_validate(body)
    json.dumps(body, allow_nan=False)  # serialisable, no NaN/Infinity
    open_calls: set[str] = set()
    for position, message in enumerate(request.messages):
        if isinstance(message, SystemMessage):
            assert position == 0, "system message only first"
        if isinstance(message, ToolMessage):
            assert message.tool_call_id in open_calls or not paired, message
        elif isinstance(message, AssistantMessage):
            open_calls = {c.id for c in message.tool_calls or ()}
        else:
            open_calls = set()
    return request
