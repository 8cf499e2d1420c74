"""The OpenAI chat-completions dialect (``/openai``).

The upstream speaks the same protocol, so requests pass through nearly untouched: the model
name is swapped for the upstream's, the output limit is set to the granted budget, streams ask
for usage. Responses are relayed byte for byte unless the upstream model has another name.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from gateway.serving.dialects.base import (
    ChatRequest,
    Dialect,
    StreamRenderer,
    UpstreamTarget,
    Usage,
    refuse_unpaired_surrogates,
    request_reasoning,
)
from gateway.serving.errors import GatewayError, bad_request, model_not_found
from gateway.serving.http import Request, Response, json_response
from gateway.serving.tokens import estimate_chat_tokens, estimate_chat_tokens_min

# Made once: ``json.dumps`` with options builds an encoder per call (about 4 µs).
_dumps = json.JSONEncoder(ensure_ascii=False).encode

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Open(BaseModel):
    # Unknown fields are kept and passed upstream: new OpenAI parameters keep working.
    model_config = ConfigDict(extra="allow")


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Open):
    include_usage: StrictBool | None = None


class ChatCompletionRequest(_Open):
    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[FiniteFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[FiniteFloat, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    presence_penalty: Annotated[FiniteFloat, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[FiniteFloat, Field(ge=-2, le=2)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    user: str | None = None


# The error "type" OpenAI's SDKs and users expect for each status.
# A daily allowance spent (the account's, or the key's own cap): OpenAI's "insufficient_quota".
_QUOTA_CODES = frozenset({"insufficient_quota", "key_daily_limit_exceeded"})
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    # concurrency_limit_exceeded; rate_limit_exceeded has its own shape.
    429: "rate_limit_error",
    502: "upstream_error",
    504: "timeout_error",
}


# Union members and validators add their own names to an error's location; users know fields.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "literal"})


def _is_tag(part) -> bool:
    return isinstance(part, str) and (
        "[" in part or part in _TYPE_TAGS or part.startswith(("function-", "constrained-"))
    )


def _field_name(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not _is_tag(part)) or "body"


def _validation_error(error: ValidationError) -> GatewayError:
    first = error.errors(include_url=False)[0]
    where = _field_name(first["loc"])
    if first["type"] == "missing":
        return bad_request(
            f"'{where}' is required.", param=where, code="missing_required_parameter"
        )
    return bad_request(
        f"Invalid value for '{where}': {first['msg']}.", param=where, code="invalid_value"
    )


class OpenAIStream(StreamRenderer):
    __slots__ = ("drop_usage_chunk", "rename")

    def __init__(self, request: ChatRequest, target: UpstreamTarget):
        # The upstream is always asked for usage; clients that did not ask do not get the
        # extra usage-only chunk.
        self.drop_usage_chunk = not request.options.get("include_usage")
        self.rename = target.public_model if target.upstream_model != target.public_model else None

    def chunk(self, data: bytes, parsed: dict | None) -> bytes:
        if parsed is not None and self.drop_usage_chunk and not parsed.get("choices"):
            return b""
        if self.rename is not None:
            parsed = parsed if parsed is not None else json.loads(data)
            parsed["model"] = self.rename
            data = _dumps(parsed).encode()
        return b"data: " + data + b"\n\n"

    def finish(self, usage: Usage) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, error: GatewayError) -> bytes:
        return b"data: " + dialect.render_error(error) + b"\n\n"


class OpenAIDialect(Dialect):
    name = "openai"
    prefix = "/openai"
    endpoint = "openai.chat"
    chat_paths = ("/v1/chat/completions", "/chat/completions", "/native/chat/completions")

    def parse_chat(self, body: bytes, query: bytes) -> ChatRequest:
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            # RecursionError: nested deeper than Python's decoder goes ("[[[[…").
            raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
        refuse_unpaired_surrogates(body)
        if not isinstance(raw, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        try:
            parsed = ChatCompletionRequest.model_validate(raw)
        except ValidationError as error:
            raise _validation_error(error) from None
        options = {}
        if parsed.stream and parsed.stream_options and parsed.stream_options.include_usage:
            options["include_usage"] = True
        return ChatRequest(
            model=parsed.model,
            stream=bool(parsed.stream),
            max_tokens=parsed.max_completion_tokens or parsed.max_tokens,
            input_tokens=estimate_chat_tokens(raw["messages"], tools=raw.get("tools")),
            estimate_min=lambda: estimate_chat_tokens_min(raw["messages"], tools=raw.get("tools")),
            body=raw,
            options=options,
        )

    def upstream_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        body = dict(request.body)
        body["model"] = target.upstream_model
        # Keep the parameter name the client used (newer OpenAI models accept only
        # max_completion_tokens; most compatible servers only max_tokens).
        if "max_completion_tokens" in body and "max_tokens" not in body:
            body["max_completion_tokens"] = target.max_tokens
        else:
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = target.max_tokens
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        effort = body.get("reasoning_effort")
        effort = effort if isinstance(effort, str) else None
        request_reasoning(
            body, target, wanted=None if effort is None else effort != "none", effort=effort
        )
        return body

    def render_completion(
        self, request: ChatRequest, upstream: dict, target: UpstreamTarget
    ) -> bytes:
        upstream["model"] = target.public_model
        return _dumps(upstream).encode()

    def stream_renderer(self, request: ChatRequest, target: UpstreamTarget) -> StreamRenderer:
        return OpenAIStream(request, target)

    def render_error(self, error: GatewayError) -> bytes:
        if error.code == "rate_limit_exceeded":
            # Exactly the shape the platform documents for rate limits.
            payload: dict = {
                "code": error.code,
                "message": error.message,
                "type": "rate_limit_error",
                "retry_after": error.retry_after,
            }
        else:
            payload = {
                "message": error.message,
                "type": "insufficient_quota"
                if error.code in _QUOTA_CODES
                else _ERROR_TYPES.get(error.status, "api_error"),
                "param": error.param,
                "code": error.code,
            }
            if error.retry_after is not None:
                payload["retry_after"] = error.retry_after
        return _dumps({"error": payload}).encode()

    def routes(self) -> dict:
        return {
            ("GET", "/v1/models"): list_models,
            ("GET", "/models"): list_models,
            ("GET", "/v1/models/{id}"): retrieve_model,
            ("GET", "/models/{id}"): retrieve_model,
        }


def model_object(model) -> dict:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    }


async def list_models(gateway, request: Request) -> Response:
    """The enabled models the key may use, in OpenAI's list shape. Needs a valid key, like
    OpenAI's."""
    key, _digest = await gateway.authenticate(request, fresh=True)
    models = await gateway.models_for(key)
    return json_response(200, {"object": "list", "data": [model_object(m) for m in models]})


async def retrieve_model(gateway, request: Request) -> Response:
    """One enabled model (``GET /v1/models/{id}``); 404 ``model_not_found`` for any other."""
    key, _digest = await gateway.authenticate(request, fresh=True)
    model = await gateway.catalog.get(request.path_id or "")
    # A model the key may not use is not there for it, as in the list.
    if model is None or key.controls.model_refusal(model.name) is not None:
        raise model_not_found(request.path_id or "")
    return json_response(200, model_object(model))


dialect = OpenAIDialect()
