"""Typed schema of Anthropic Messages requests, and the parser that names the bad field.

Clients (the Anthropic SDKs, Claude Code) send many fields this gateway has no use for
(``cache_control``, ``service_tier``, ``context_management`` ...): every model ignores unknown
fields rather than rejecting them. Shapes that come as "a string or a list of blocks"
(``system``, message ``content``, ``tool_result.content``) are normalised to the list form before
validation, so that one code path translates them and error locations stay readable
(``messages.0.content.1.text`` rather than a union's internal names).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)


class MessagesRequestError(Exception):
    """A request the gateway refuses before calling any upstream (always a 4xx)."""

    def __init__(self, message: str, *, field: str = "body", status: int = 400):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status


def _text_list(value: Any) -> Any:
    # "a string or a list of blocks" → always the list form.
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    return value


# Block types this schema models; any other block in a message (server tool calls and their
# results, search results, types newer than this gateway) is turned into a text block that
# says what it held, rather than refused: a conversation that used them still goes on.
MESSAGE_BLOCKS = frozenset(
    {"text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking"}
)
TOOL_RESULT_BLOCKS = frozenset({"text", "image", "document"})
_BLOCK_NOTE_CHARS = 4000


def _texts_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def block_as_text(block: dict) -> str:
    """What a block no upstream here can take said, as text for the model."""
    kind = block.get("type")
    if kind == "search_result":
        head = " — ".join(str(block[k]) for k in ("title", "source") if block.get(k))
        return f"[search result: {head}]\n{_texts_of(block.get('content'))}".strip()
    if kind == "server_tool_use":
        arguments = json.dumps(block.get("input"), ensure_ascii=False)[:_BLOCK_NOTE_CHARS]
        return f"[server tool call {block.get('name', '')}: {arguments}]"
    if kind == "web_search_tool_result":
        content = block.get("content")
        if isinstance(content, list):
            lines = [
                " — ".join(str(r[k]) for k in ("title", "url") if r.get(k))
                for r in content
                if isinstance(r, dict)
            ]
            return "[web search results]\n" + "\n".join(line for line in lines if line)
        return "[web search failed]"
    rest = {k: v for k, v in block.items() if k not in ("type", "cache_control", "citations")}
    body = json.dumps(rest, ensure_ascii=False, default=str)[:_BLOCK_NOTE_CHARS]
    return f"[{str(kind)[:64]} block: {body}]"


def _known_blocks(known: frozenset):
    def normalise(value: Any) -> Any:
        value = _text_list(value)
        if not isinstance(value, list):
            return value
        return [
            {"type": "text", "text": block_as_text(block)}
            if isinstance(block, dict)
            and isinstance(block.get("type"), str)
            and block["type"] not in known
            else block
            for block in value
        ]

    return normalise


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


class Base64Source(_Lenient):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Lenient):
    type: Literal["url"]
    url: str


class TextSource(_Lenient):
    type: Literal["text"]
    media_type: str = "text/plain"
    data: str


ImageSource = Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class ImageBlock(_Lenient):
    type: Literal["image"]
    source: ImageSource


DocumentSource = Annotated[TextSource | Base64Source | UrlSource, Field(discriminator="type")]


class DocumentBlock(_Lenient):
    """Sent to a chat-completions upstream as text: plain text as is, a PDF's extracted text,
    a URL as a note naming it (nothing is fetched)."""

    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    context: str | None = None


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ToolResultContentBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")
]


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Annotated[
        list[ToolResultContentBlock], BeforeValidator(_known_blocks(TOOL_RESULT_BLOCKS))
    ] = []
    is_error: bool = False


class ThinkingBlock(_Lenient):
    # Sent back in assistant turns by clients that had thinking enabled; an OpenAI-compatible
    # upstream has no field for it, so it is accepted and not forwarded.
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Lenient):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(_Lenient):
    role: Literal["user", "assistant", "system"]
    content: Annotated[list[ContentBlock], BeforeValidator(_known_blocks(MESSAGE_BLOCKS))]


class Tool(_Lenient):
    """A client tool. Anthropic's server tools (``web_search_…``, ``bash_…``) carry a ``type``
    and no ``input_schema``; an OpenAI-compatible upstream cannot run them, so they are dropped."""

    name: str = Field(min_length=1)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoiceAuto(_Lenient):
    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(_Lenient):
    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(_Lenient):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(_Lenient):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone,
    Field(discriminator="type"),
]


class Metadata(_Lenient):
    user_id: str | None = None


class Thinking(_Lenient):
    # "enabled" with a budget, "disabled", and newer kinds ("adaptive") are all accepted.
    type: str
    budget_tokens: int | None = None


class CountTokensRequest(_Lenient):
    """The body of ``/v1/messages/count_tokens``: a Messages request without ``max_tokens``."""

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: Annotated[list[TextBlock], BeforeValidator(_text_list)] = []
    tools: list[Tool] = []
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] = []
    temperature: FiniteFloat | None = Field(default=None, ge=0, le=1)
    top_p: FiniteFloat | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def decode_body(body: bytes | str | dict) -> dict:
    """The request's JSON object (``MessagesRequestError`` for anything else)."""
    if isinstance(body, dict):
        return body
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are both ValueErrors.
        raise MessagesRequestError(
            f"body: the request body is not valid JSON ({exc.__class__.__name__})"
        ) from None
    if not isinstance(data, dict):
        raise MessagesRequestError("body: the request body must be a JSON object")
    return data


_ABSENT = object()


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, dict) and isinstance(part, str):
        return node.get(part, _ABSENT)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _ABSENT


def _field_path(data: Any, loc: tuple) -> str:
    """Follow a pydantic error location through the input, keeping only the parts that exist in
    the client's JSON (union and tag names that pydantic inserts are dropped)."""
    parts: list[str] = []
    node = data
    last = len(loc) - 1
    for position, part in enumerate(loc):
        child = _child(node, part)
        if child is not _ABSENT:
            node = child
            parts.append(str(part))
        elif (
            isinstance(node, dict | list)
            and isinstance(part, str)
            and (position == last or not _is_marker(part))
        ):
            # A missing field (the last part) is named; union/tag markers pydantic inserts
            # (not in the input) are skipped.
            parts.append(part)
        # A string normalised into a one-block list: the path stops at the string itself.
    return ".".join(parts) or "body"


_TAGS = {
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "base64",
    "url",
    "auto",
    "any",
    "tool",
    "none",
}


def _is_marker(part: str) -> bool:
    return part in _TAGS or "[" in part or part.startswith(("function-", "tagged-union"))


def _describe(error: dict) -> str:
    message = error.get("msg", "invalid value")
    if error.get("type") == "union_tag_invalid":
        ctx = error.get("ctx") or {}
        message = f"unsupported type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    elif error.get("type") == "union_tag_not_found":
        message = "a `type` field is required"
    elif error.get("type") == "list_type" and error.get("loc", ())[-1:] in (
        ("content",),
        ("system",),
    ):
        message = "expected a string or a list of content blocks"
    return message


def _parse(model: type[BaseModel], body: bytes | str | dict):
    data = decode_body(body)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        field = _field_path(data, tuple(error.get("loc", ())))
        raise MessagesRequestError(f"{field}: {_describe(error)}", field=field) from None
    except RecursionError:
        raise MessagesRequestError("body: the request is nested too deeply") from None


def messages_request_parse(body: bytes | str | dict) -> MessagesRequest:
    """Validate a Messages request; raise ``MessagesRequestError`` naming the first bad field."""
    request = _parse(MessagesRequest, body)
    _check_tool_choice(request)
    _check_thinking(request)
    return request


# Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET_TOKENS = 1024


def _check_thinking(request: MessagesRequest) -> None:
    """``thinking: {type: "enabled"}`` as Anthropic checks it: a budget of at least 1,024 tokens
    and below ``max_tokens`` (the thinking is part of the output)."""
    thinking = request.thinking
    if thinking is None or thinking.type != "enabled":
        return
    budget = thinking.budget_tokens
    if budget is None:
        raise MessagesRequestError(
            "thinking.budget_tokens: Field required", field="thinking.budget_tokens"
        )
    if budget < MIN_THINKING_BUDGET_TOKENS:
        raise MessagesRequestError(
            "thinking.budget_tokens: Input should be greater than or equal to "
            f"{MIN_THINKING_BUDGET_TOKENS}",
            field="thinking.budget_tokens",
        )
    if budget >= request.max_tokens:
        raise MessagesRequestError(
            "max_tokens: `max_tokens` must be greater than `thinking.budget_tokens`. See "
            "https://docs.claude.com/en/docs/build-with-claude/"
            "extended-thinking#max-tokens-and-context-window-size",
            field="max_tokens",
        )


def count_tokens_request_parse(body: bytes | str | dict) -> CountTokensRequest:
    request = _parse(CountTokensRequest, body)
    _check_tool_choice(request)
    return request


def _check_tool_choice(request: CountTokensRequest) -> None:
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceTool) and choice.name not in {t.name for t in request.tools}:
        raise MessagesRequestError(
            f"tool_choice.name: no tool named {choice.name!r} is defined in `tools`",
            field="tool_choice.name",
        )
