"""The Anthropic Messages dialect (``/anthropic``), for the Anthropic SDKs and Claude Code.

Requests are validated and translated to chat completions by ``anthropic_schema`` and
``anthropic_translate``, or passed through to an Anthropic-native endpoint (``native_body``,
``gateway.serving.exchange``); the pipeline does auth, quota, rate limits and records exactly as
for the OpenAI dialect. Besides ``POST /v1/messages`` this mounts ``count_tokens`` (a native
upstream's count, else the quota's own estimate; free of charge but rate-limited and recorded),
a models list, and the ``HEAD``/``GET /anthropic`` probe Claude Code sends before its first
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
from django.conf import settings

from gateway.serving.dialects.anthropic_native import (
    billed_beyond_translation,
    count_tokens_body,
    passthrough_body,
)
from gateway.serving.dialects.anthropic_schema import (
    MessagesRequest,
    MessagesRequestError,
    ThinkingBlock,
    count_tokens_request_parse,
    decode_body,
    messages_request_parse,
)
from gateway.serving.dialects.anthropic_signature import (
    SIGNATURE_PREFIX,
    thinking_signature,
    thinking_signature_valid,
)
from gateway.serving.dialects.anthropic_translate import (
    PING_EVENT,
    ChatTranslation,
    MessageStreamTranslator,
    chat_messages_from,
    chat_request_from_messages,
    chat_tools_from,
    error_body,
    error_type_for_status,
    message_from_chat_response,
    reasoning_effort_for,
)
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
from gateway.serving.tokens import (
    completion_output_tokens,
    estimate_chat_tokens,
    estimate_chat_tokens_min,
)
from observability.logging import current_request_id

log = logging.getLogger(__name__)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# A chunk whose only news is text (most chunks of most streams), as OpenAI-compatible servers
# write it; its JSON string is relayed as is instead of decoded and encoded again.
_TEXT_ONLY_CHUNK = re.compile(
    rb'"choices":\s*\[\s*\{\s*"index":\s*0,\s*"delta":\s*\{\s*(?:"role":\s*"assistant",\s*)?'
    rb'"content":\s*("(?:[^"\\]|\\.)*")\s*\}\s*(?:,\s*"logprobs":\s*null\s*)?'
    rb',\s*"finish_reason":\s*null\s*(?:,\s*"stop_reason":\s*null\s*)?\}\s*\]'
)

# Upstreams known to refuse parameters outside OpenAI's own set (``top_k``, ...).
_STRICT_OPENAI_HOSTS = frozenset({"api.openai.com"})


def _error_type(error: GatewayError) -> str:
    if error.code == "insufficient_quota":
        return "rate_limit_error"
    if error.code == "upstream_overloaded":
        return "overloaded_error"
    return error_type_for_status(error.status)


def _estimate(chat_body: dict) -> int:
    return estimate_chat_tokens(chat_body["messages"], tools=chat_body.get("tools"))


def _parse_failure(error: MessagesRequestError) -> GatewayError:
    return bad_request(error.message, param=error.field)


def _signer(target: UpstreamTarget):
    model = target.public_model
    return lambda text: thinking_signature(text, model)


def _forged(block: ThinkingBlock) -> bool:
    # Unsigned, or signed as by this gateway but not for this text. Another signature is an
    # Anthropic-native upstream's: only it can check it, and only it gets the block back
    # (``anthropic_native``; an OpenAI-format upstream gets no thinking at all).
    signature = block.signature or ""
    return not signature or (
        signature.startswith(SIGNATURE_PREFIX)
        and not thinking_signature_valid(signature, block.thinking)
    )


def _refuse_forged_thinking(request: MessagesRequest) -> None:
    """400 for a thinking block in the history that this gateway signed for another text, or
    that nobody signed. ``redacted_thinking`` blocks carry nothing and pass."""
    for m, message in enumerate(request.messages):
        for b, block in enumerate(message.content):
            if isinstance(block, ThinkingBlock) and _forged(block):
                field = f"messages.{m}.content.{b}"
                raise bad_request(f"{field}: Invalid `signature` in `thinking` block", param=field)


def _takes_extra_parameters(target: UpstreamTarget) -> bool:
    # ``base_url`` is optional on the target: without it, assume an OpenAI-compatible server
    # (vLLM, SGLang, the demo), which takes ``top_k``.
    host = urlsplit(getattr(target, "base_url", "") or "").hostname or ""
    return host not in _STRICT_OPENAI_HOSTS


class AnthropicStream(StreamRenderer):
    """One streamed answer: upstream chunks in, Anthropic events out, pings during silences."""

    def __init__(self, request: ChatRequest, target: UpstreamTarget):
        translation: ChatTranslation = request.body
        self.translator = MessageStreamTranslator(
            model=target.public_model,
            input_estimate=request.input_tokens,
            stop_sequences=translation.stop_sequences,
            thinking=translation.thinking,
            sign=_signer(target),
        )
        # Stop sequences need the text itself (to find them across chunks): no fast path.
        self._fast = not translation.stop_sequences
        self.chunks = 0
        self._chunks_at_last_beat = 0
        self.keepalive_seconds = settings.GATEWAY_STREAM_PING_SECONDS

    def start(self) -> bytes:
        return self.translator.start()

    def chunk(self, data: bytes, parsed: dict | None) -> bytes:
        self.chunks += 1
        if parsed is None:
            if self._fast:
                text_only = _TEXT_ONLY_CHUNK.search(data)
                if text_only is not None:
                    return self.translator.feed_text_literal(text_only.group(1))
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
        return self.translator.fail(error.status, error.message, error_type=_error_type(error))

    def keepalive(self) -> bytes:
        silent = self.chunks == self._chunks_at_last_beat
        self._chunks_at_last_beat = self.chunks
        return PING_EVENT if silent and not self.translator.finished else b""


class AnthropicDialect(Dialect):
    name = "anthropic"
    prefix = "/anthropic"
    endpoint = "anthropic.messages"
    chat_paths = ("/v1/messages",)
    native_protocol = "anthropic"

    def parse_chat(self, body: bytes, query: bytes) -> ChatRequest:
        # The query (Claude Code sends ``?beta=true``) changes nothing here.
        try:
            native = decode_body(body)
            parsed = messages_request_parse(native)
        except MessagesRequestError as error:
            raise _parse_failure(error) from None
        refuse_unpaired_surrogates(body)
        _refuse_forged_thinking(parsed)
        translation = chat_request_from_messages(parsed)
        translation.native = native
        beyond = billed_beyond_translation(native)
        return ChatRequest(
            model=parsed.model,
            stream=parsed.stream,
            # Clamped to the model's limit by the pipeline (Claude Code asks for 32,000).
            max_tokens=parsed.max_tokens,
            # The reservation covers what a native upstream may bill beyond the translation
            # (an image by URL, a block the translation shortens); the context check keeps
            # the lower bound of what is surely there.
            input_tokens=_estimate(translation.body) + beyond,
            input_tokens_beyond_body=beyond,
            estimate_min=lambda: estimate_chat_tokens_min(
                translation.body["messages"], tools=translation.body.get("tools")
            ),
            body=translation,
        )

    def upstream_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        translation: ChatTranslation = request.body
        body = dict(translation.body)
        body["model"] = target.upstream_model
        body["max_tokens"] = target.max_tokens
        if translation.extra and _takes_extra_parameters(target):
            body.update(translation.extra)
        # Anthropic's thinking is off unless asked for: say so to upstreams that think by
        # default (Qwen3 on vLLM), instead of paying for reasoning nobody sees.
        effort = (
            reasoning_effort_for(translation.thinking_budget, target.max_tokens)
            if translation.thinking
            else None
        )
        request_reasoning(body, target, wanted=translation.thinking, effort=effort)
        return body

    def native_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        translation: ChatTranslation = request.body
        return passthrough_body(
            translation.native, model=target.upstream_model, max_tokens=target.max_tokens
        )

    def render_completion(
        self, request: ChatRequest, upstream: dict, target: UpstreamTarget
    ) -> bytes:
        translation: ChatTranslation = request.body
        message = message_from_chat_response(
            upstream,
            model=target.public_model,
            stop_sequences=translation.stop_sequences,
            thinking=translation.thinking,
            sign=_signer(target),
        )
        if not isinstance(upstream.get("usage"), dict):
            # No report from the upstream: show the estimates the gateway charges instead.
            message["usage"]["input_tokens"] = request.input_tokens
            message["usage"]["output_tokens"] = min(
                completion_output_tokens(upstream), target.max_tokens
            )
        return _dumps(message).encode()

    def stream_renderer(self, request: ChatRequest, target: UpstreamTarget) -> StreamRenderer:
        return AnthropicStream(request, target)

    def render_error(self, error: GatewayError) -> bytes:
        return _dumps(
            error_body(error.status, error.message, error_type=_error_type(error))
        ).encode()

    def error_status(self, error: GatewayError) -> int:
        # Anthropic's SDKs and Claude Code know a saturated service as 529 overloaded_error.
        return 529 if error.code == "upstream_overloaded" else error.status

    def rate_headers(self, rate) -> list[tuple[bytes, bytes]]:
        # Anthropic's own names beside OpenAI's: its SDKs and Claude Code read these.
        reset = (
            (datetime.now(UTC) + timedelta(seconds=max(0.0, rate.reset_seconds)))
            .replace(microsecond=0)
            .isoformat()
            .replace("+00:00", "Z")
            .encode()
        )
        requests_left = str(max(0, rate.remaining_requests)).encode()
        tokens_left = str(max(0, rate.remaining_tokens)).encode()
        return [
            *rate.headers(),
            (b"anthropic-ratelimit-requests-limit", str(rate.limit_requests).encode()),
            (b"anthropic-ratelimit-requests-remaining", requests_left),
            (b"anthropic-ratelimit-requests-reset", reset),
            (b"anthropic-ratelimit-tokens-limit", str(rate.limit_tokens).encode()),
            (b"anthropic-ratelimit-tokens-remaining", tokens_left),
            (b"anthropic-ratelimit-tokens-reset", reset),
        ]

    def identity_headers(self) -> list[tuple[bytes, bytes]]:
        # Anthropic answers carry ``request-id``; this one is the X-Request-ID the logs use.
        request_id = current_request_id() or secrets.token_hex(12)
        if not request_id.startswith("req_"):
            request_id = "req_" + request_id
        return [(b"request-id", request_id.encode())]

    def routes(self) -> dict:
        return {
            ("POST", "/v1/messages/count_tokens"): count_tokens,
            ("GET", "/v1/models"): list_models,
            ("GET", "/v1/models/{id}"): retrieve_model,
            ("GET", "/"): probe,
            ("HEAD", "/"): probe,
        }


COUNT_TOKENS_ENDPOINT = "anthropic.count_tokens"
# Below an Anthropic-native endpoint's base URL, as /v1/messages is.
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# Anthropic counts in well under a second; a count is not worth a slow answer (Claude Code
# asks often), so an upstream this slow gets the local estimate instead.
COUNT_TOKENS_TIMEOUT_SECONDS = 5.0


async def count_tokens(gateway, request: Request) -> Response:
    """``{"input_tokens": N}``: an Anthropic-native upstream's own count when the model is
    served by one, else the model's tokenizer (``gateway.serving.counting``) or the estimate,
    as the quota reserves. Charges nothing, but is metered like
    a chat call: a fresh key check, the key's rate limit before the body is read,
    the process's body budget, and a usage record (0 tokens) — parsing a large body costs CPU.
    """

    async def work(body: bytes, key) -> tuple[str, Response]:
        try:
            native = decode_body(body)
            parsed = count_tokens_request_parse(native)
        except MessagesRequestError as error:
            raise _parse_failure(error) from None
        model = await gateway.resolve_model(key, parsed.model)
        counted = await _upstream_count(gateway, model, native, request)
        if counted is not None:
            return parsed.model, json_response(200, {"input_tokens": counted})
        chat_body = {"messages": chat_messages_from(parsed)}
        tools = chat_tools_from(parsed)
        if tools:
            chat_body["tools"] = tools
        # The model's own tokenizer where its catalog entry names one, else the estimate.
        counted = await gateway.counter.count_messages(model, chat_body["messages"], tools)
        if counted is None:
            counted = _estimate(chat_body)
        return parsed.model, json_response(200, {"input_tokens": counted})

    return await gateway.handle_metered(dialect, request, COUNT_TOKENS_ENDPOINT, work)


async def _upstream_count(gateway, model, native: dict, request: Request) -> int | None:
    """The count of the model's preferred endpoint (best priority, usable key) when it is
    Anthropic-native; None to count locally: another kind of endpoint, or an upstream that
    does not offer ``count_tokens`` (404/405), refuses it, fails or takes more than
    ``COUNT_TOKENS_TIMEOUT_SECONDS``. It bypasses routing: no failover, and no effect on the
    endpoint's health."""
    endpoint = next((e for e in model.endpoints if e.upstream_key is not None), None)
    if endpoint is None or not endpoint.is_anthropic:
        return None
    headers = {
        name.decode(): value.decode("latin-1")
        for name, value in request.headers.items()
        if name == b"anthropic-beta"
    }
    body = count_tokens_body(native, model=endpoint.upstream_model)
    try:
        async with (
            asyncio.timeout(COUNT_TOKENS_TIMEOUT_SECONDS),
            gateway.upstream.post_chat(endpoint, body, headers, path=COUNT_TOKENS_PATH) as answer,
        ):
            status, payload = answer.status, await answer.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as error:
        log.warning(
            "count_tokens: endpoint %s failed (%s); counted locally",
            endpoint.label,
            error.__class__.__name__,
        )
        return None
    if status == 200:
        with contextlib.suppress(ValueError, AttributeError):
            counted = json.loads(payload).get("input_tokens")
            if isinstance(counted, int) and counted >= 0:
                return counted
    if status not in (404, 405):
        log.warning(
            "count_tokens: endpoint %s answered %d without a count; counted locally",
            endpoint.label,
            status,
        )
    return None


def model_object(model) -> dict:
    return {
        "type": "model",
        "id": model.name,
        "display_name": model.name,
        "created_at": datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z"),
    }


async def retrieve_model(gateway, request: Request) -> Response:
    """One enabled model (``GET /v1/models/{id}``); 404 ``not_found_error`` for any other."""
    key, _digest = await gateway.authenticate(request, fresh=True)
    model = await gateway.catalog.get(request.path_id or "")
    # A model the key may not use is not there for it, as in the list.
    if model is None or key.controls.model_refusal(model.name) is not None:
        raise model_not_found(request.path_id or "")
    return json_response(200, model_object(model))


async def list_models(gateway, request: Request) -> Response:
    """The enabled models the key may use, in Anthropic's list shape."""
    key, _digest = await gateway.authenticate(request, fresh=True)
    models = await gateway.models_for(key)
    data = [model_object(model) for model in models]
    return json_response(
        200,
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        },
    )


async def probe(gateway, request: Request) -> Response:
    # Claude Code checks that the base URL answers before its first request; no key needed.
    return json_response(200, {"status": "ok", "api": "anthropic", "messages": "/v1/messages"})


dialect = AnthropicDialect()
