"""OpenAI's embeddings endpoint (``/openai/v1/embeddings``), for the catalog's embedding models.

Mounted under the same prefix as chat completions. The input — a string, a list of strings, a
list of token ids or a list of such lists — is charged as input tokens (the upstream's
``usage.prompt_tokens``, else the estimate) through the same pipeline as chat: reservation,
rate limits, records, errors. The upstream is always asked for floats; ``encoding_format:
"base64"`` (what the openai Python SDK asks for by default) is encoded here, as OpenAI encodes
it: little-endian float32, base64. ``dimensions`` is passed on.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from gateway.serving.dialects.base import (
    ChatRequest,
    Dialect,
    StreamRenderer,
    UpstreamTarget,
    refuse_unpaired_surrogates,
)
from gateway.serving.dialects.openai import dialect as chat_dialect
from gateway.serving.errors import GatewayError, bad_request
from gateway.serving.tokens import REQUEST_OVERHEAD_TOKENS, estimate_text_tokens

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
ENCODING_FORMATS = ("float", "base64")
# OpenAI's own limit on the number of inputs in one request.
MAX_INPUTS = 2048


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def embedding_input_tokens(value: Any) -> int:
    """The input's tokens: token ids counted, text estimated. 400 naming ``input`` for
    anything that is not one of the four shapes OpenAI takes."""
    if isinstance(value, str):
        if not value:
            raise bad_request("'input' must not be empty.", param="input", code="invalid_value")
        return estimate_text_tokens(value)
    if _is_tokens(value):
        return len(value)
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS:
        if all(isinstance(v, str) and v for v in value):
            return sum(estimate_text_tokens(v) for v in value)
        if all(_is_tokens(v) for v in value):
            return sum(len(v) for v in value)
    raise bad_request(
        "'input' must be a non-empty string, a list of up to 2048 non-empty strings, a list of "
        "token ids, or a list of such lists.",
        param="input",
        code="invalid_value",
    )


def _as_base64(vector: list) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _as_floats(encoded: str) -> list[float]:
    raw = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


class EmbeddingsDialect(Dialect):
    name = "openai.embeddings"
    prefix = "/openai"
    endpoint = "openai.embeddings"
    chat_paths = ("/v1/embeddings", "/embeddings")
    model_kind = "embedding"
    upstream_path = "/embeddings"

    def parse_chat(self, body: bytes, query: bytes) -> ChatRequest:
        try:
            raw = json.loads(body)
        except (ValueError, RecursionError):
            raise bad_request("The request body is not valid JSON.", code="invalid_json") from None
        refuse_unpaired_surrogates(body)
        if not isinstance(raw, dict):
            raise bad_request("The request body must be a JSON object.", code="invalid_json")
        model = raw.get("model")
        if not isinstance(model, str) or not 1 <= len(model) <= 256:
            raise bad_request(
                "'model' is required.", param="model", code="missing_required_parameter"
            )
        if "input" not in raw:
            raise bad_request(
                "'input' is required.", param="input", code="missing_required_parameter"
            )
        tokens = embedding_input_tokens(raw["input"])
        encoding = raw.get("encoding_format")
        if encoding is not None and encoding not in ENCODING_FORMATS:
            raise bad_request(
                "'encoding_format' must be 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
        dimensions = raw.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise bad_request(
                "'dimensions' must be a positive integer.", param="dimensions", code="invalid_value"
            )
        upstream: dict[str, Any] = {"input": raw["input"], "encoding_format": "float"}
        if dimensions is not None:
            upstream["dimensions"] = dimensions
        if isinstance(raw.get("user"), str):
            upstream["user"] = raw["user"]
        return ChatRequest(
            model=model,
            stream=False,
            # Nothing is generated; the reservation needs room for one output token all the same.
            max_tokens=1,
            input_tokens=tokens + REQUEST_OVERHEAD_TOKENS,
            body=upstream,
            options={"encoding_format": encoding or "float"},
        )

    def upstream_body(self, request: ChatRequest, target: UpstreamTarget) -> dict:
        return {"model": target.upstream_model, **request.body}

    def render_completion(
        self, request: ChatRequest, upstream: dict, target: UpstreamTarget
    ) -> bytes:
        want_base64 = request.options.get("encoding_format") == "base64"
        data = []
        for item in upstream["data"]:
            vector = item["embedding"]
            if want_base64 and isinstance(vector, list):
                vector = _as_base64(vector)
            elif not want_base64 and isinstance(vector, str):
                vector = _as_floats(vector)
            data.append(
                {"object": "embedding", "index": item.get("index", len(data)), "embedding": vector}
            )
        usage = upstream.get("usage")
        if not isinstance(usage, dict):
            # No report from the upstream: show the estimate the gateway charges instead.
            usage = {"prompt_tokens": request.input_tokens, "total_tokens": request.input_tokens}
        answer = {
            "object": "list",
            "data": data,
            "model": target.public_model,
            "usage": {
                "prompt_tokens": usage.get("prompt_tokens", 0),
                "total_tokens": usage.get("total_tokens", usage.get("prompt_tokens", 0)),
            },
        }
        return _dumps(answer).encode()

    def stream_renderer(self, request: ChatRequest, target: UpstreamTarget) -> StreamRenderer:
        raise NotImplementedError("embeddings are never streamed")

    def render_error(self, error: GatewayError) -> bytes:
        return chat_dialect.render_error(error)


dialect = EmbeddingsDialect()
