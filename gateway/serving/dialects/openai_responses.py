"""The OpenAI Responses dialect (``/openai/v1/responses``), for the ``responses.create`` of the
official SDKs and Codex CLI.

Mounted under the same prefix as chat completions; requests are validated and translated to
chat completions by ``openai_responses_translate``, so chat-only upstreams (vLLM, SGLang) serve
them, or passed through (``native_body``, ``openai_responses_native``) to an OpenAI-compatible
endpoint marked as serving the Responses API itself. Auth, quota, rate limits, cancellation and
records are the pipeline's, as for chat; the record's endpoint is ``openai.responses``. Errors
use OpenAI's envelope. Nothing is stored: ``previous_response_id`` is refused (send the full
input).
"""

from __future__ import annotations

import json

from gateway.serving.dialects.base import (
    RESPONSES_PROTOCOL,
    ChatRequest,
    Dialect,
    StreamRenderer,
    UpstreamTarget,
    Usage,
    refuse_unpaired_surrogates,
    request_reasoning,
)
from gateway.serving.dialects.openai import dialect as chat_dialect
from gateway.serving.dialects.openai_responses_native import passthrough_body
from gateway.serving.dialects.openai_responses_translate import (
    ResponsesRequestError,
    ResponsesTranslation,
    ResponseStreamTranslator,
    chat_request_from_responses,
    response_from_chat,
)
from gateway.serving.errors import GatewayError, bad_request
from gateway.serving.tokens import (
    completion_output_tokens,
    estimate_chat_tokens,
    estimate_chat_tokens_min,
)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ResponsesStream(StreamRenderer):
    def __init__(self, request: ChatRequest, target: UpstreamTarget):
        translation: ResponsesTranslation = request.body
        self.translator = ResponseStreamTranslator(model=target.public_model, echo=translation.echo)

    def start(self) -> bytes:
        return self.translator.start()

    def chunk(self, data: bytes, parsed: dict | None) -> bytes:
        if parsed is None:
            try:
                parsed = json.loads(data)
            except ValueError:
                return b""
        if not isinstance(parsed, dict):
            return b""
        return self.translator.feed(parsed)

    def finish(self, usage: Usage) -> bytes:
        return self.translator.finish(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
        )

    def error(self, error: GatewayError) -> bytes:
        return self.translator.fail(error.code, error.message, error.param)


class ResponsesDialect(Dialect):
    name = "openai.responses"
    prefix = "/openai"
    endpoint = "openai.responses"
    chat_paths = ("/v1/responses", "/responses")
    native_protocol = RESPONSES_PROTOCOL

    def parse_chat(self, body: bytes, query: bytes) -> ChatRequest:
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
        refuse_unpaired_surrogates(body)
        try:
            translation = chat_request_from_responses(raw)
        except ResponsesRequestError as error:
            raise bad_request(error.message, param=error.field, code="invalid_value") from None
        chat = translation.body
        return ChatRequest(
            model=translation.model,
            stream=translation.stream,
            max_tokens=translation.max_output_tokens,
            input_tokens=estimate_chat_tokens(chat["messages"], tools=chat.get("tools")),
            input_tokens_min=estimate_chat_tokens_min(chat["messages"], tools=chat.get("tools")),
            body=translation,
        )

    def upstream_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        translation: ResponsesTranslation = request.body
        body = {"model": target.upstream_model, **translation.body}
        body["max_tokens"] = target.max_tokens
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        effort = body.get("reasoning_effort")
        request_reasoning(
            body, target, wanted=None if effort is None else effort != "none", effort=effort
        )
        return body

    def native_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        translation: ResponsesTranslation = request.body
        return passthrough_body(
            translation.native, model=target.upstream_model, max_output_tokens=target.max_tokens
        )

    def render_completion(
        self, request: ChatRequest, upstream: dict, target: UpstreamTarget
    ) -> bytes:
        translation: ResponsesTranslation = request.body
        usage = None
        if not isinstance(upstream.get("usage"), dict):
            # No report from the upstream: show the estimates the gateway charges instead.
            usage = (
                request.input_tokens,
                min(completion_output_tokens(upstream), target.max_tokens),
            )
        response = response_from_chat(
            upstream, model=target.public_model, echo=translation.echo, usage=usage
        )
        return _dumps(response).encode()

    def stream_renderer(self, request: ChatRequest, target: UpstreamTarget) -> StreamRenderer:
        return ResponsesStream(request, target)

    def render_error(self, error: GatewayError) -> bytes:
        return chat_dialect.render_error(error)


dialect = ResponsesDialect()
