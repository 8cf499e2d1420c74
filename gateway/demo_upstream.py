"""The built-in demo upstream: a small OpenAI-compatible server that needs no model.

It answers ``POST /v1/chat/completions`` (plain and streamed), ``POST /v1/embeddings``
(deterministic vectors) and ``GET /v1/models`` with
deterministic text, reports real usage of what it received and emitted by its own simple
tokenizer (``gateway.serving.tokens.estimate_text_tokens`` over each message, plus 3 per message —
never more than the gateway's estimate, so reservations always cover it), emits one token per
stream chunk, and honours ``max_tokens``/``max_completion_tokens`` and
``stream_options.include_usage``.

Switches for tests and benchmarks, as request headers (the gateway forwards ``x-demo-*``
headers to demo models only):

* ``x-demo-fault``: ``slow`` (50 ms per chunk), ``error500``, ``error400``, ``overloaded``
  (503, as a saturated vLLM answers), ``hang`` (never answers), ``cut`` (drops the connection
  halfway through a stream), ``nousage`` (reports no usage).
* ``x-demo-delay-ms``: delay before each chunk (and before a plain answer).
* ``x-demo-tokens``: length of the natural answer (default 48 tokens).
* ``x-demo-echo: 1``: answer (not streamed) with the JSON the demo received, as the content.
* ``x-demo-cached-tokens``: report this many of the prompt's tokens as read from a prompt cache
  (``usage.prompt_tokens_details.cached_tokens``, as vLLM with prefix caching does).

Asked to reason (``reasoning_effort`` other than ``none``/``minimal``, or
``chat_template_kwargs.enable_thinking``), it first thinks aloud in ``reasoning_content``, as
vLLM and SGLang with a reasoning parser do: ``x-demo-reasoning-tokens`` tokens (default 12),
counted in ``completion_tokens`` and spent from ``max_tokens`` like the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time

from aiohttp import web

from gateway.models import DEMO_MODEL_NAME
from gateway.serving.tokens import estimate_text_tokens

DEFAULT_ANSWER_TOKENS = 48
DEFAULT_REASONING_TOKENS = 12
DEFAULT_EMBEDDING_DIMENSIONS = 64
_THOUGHT_TEXT = (
    "The user wrote to the demo model. I have no real knowledge, so I will answer with my "
    "usual patient sentences about trying the platform end to end."
)
_THOUGHT = _THOUGHT_TEXT.split(" ")
_TEXT = (
    "This is the demo model of the platform. It runs inside the project, needs no GPU and "
    "answers every question with the same patient sentences, so that keys, quotas, rate "
    "limits, streaming and usage records can be tried end to end without a real model. "
    "Point the catalog at an OpenAI-compatible server to get real answers."
)
_WORDS = _TEXT.split(" ")


def prompt_tokens(messages) -> int:
    total = 0
    for message in messages if isinstance(messages, list) else ():
        total += 3
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += estimate_text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += estimate_text_tokens(part["text"])
    return total


def answer_pieces(n: int) -> list[str]:
    return [(" " if i else "") + _WORDS[i % len(_WORDS)] for i in range(n)]


def reasoning_pieces(n: int) -> list[str]:
    return [(" " if i else "") + _THOUGHT[i % len(_THOUGHT)] for i in range(n)]


def asked_to_reason(body: dict) -> bool:
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort not in ("none", "minimal"):
        return True
    kwargs = body.get("chat_template_kwargs")
    return isinstance(kwargs, dict) and kwargs.get("enable_thinking") is True


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": None}}, status=status
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    fault = request.headers.get("x-demo-fault", "")
    delay = int(request.headers.get("x-demo-delay-ms", "50" if fault == "slow" else "0")) / 1000
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    if fault == "error500":
        return _error(500, "the demo upstream was told to fail", "server_error")
    if fault == "overloaded":
        return _error(503, "the demo upstream was told it is overloaded", "server_error")
    if fault == "error400":
        return _error(400, "the demo upstream was told to refuse this request")
    if fault == "hang":
        await asyncio.sleep(3600)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages is required")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    natural = int(request.headers.get("x-demo-tokens", DEFAULT_ANSWER_TOKENS))
    thought = 0
    if asked_to_reason(body):
        thought = int(request.headers.get("x-demo-reasoning-tokens", DEFAULT_REASONING_TOKENS))
        if limit:
            thought = min(thought, int(limit))
    # Reasoning is output: it is spent from the same max_tokens as the answer.
    room = int(limit) - thought if limit else None
    count = min(natural, room) if room is not None else natural
    pieces = answer_pieces(count)
    thoughts = reasoning_pieces(thought)
    finish = "length" if room is not None and room < natural else "stop"
    usage = {
        "prompt_tokens": prompt_tokens(messages),
        "completion_tokens": thought + count,
        "total_tokens": prompt_tokens(messages) + thought + count,
    }
    cached = int(request.headers.get("x-demo-cached-tokens", "0"))
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, usage["prompt_tokens"])}
    model = body.get("model") or "demo"
    created = int(time.time())
    ident = f"chatcmpl-demo{created}{id(request) % 100000}"

    if request.headers.get("x-demo-echo") and not body.get("stream"):
        pieces, count, thoughts = [json.dumps(body)], 1, []
        usage["completion_tokens"], usage["total_tokens"] = 1, usage["prompt_tokens"] + 1

    if not body.get("stream"):
        if delay:
            await asyncio.sleep(delay)
        payload = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(pieces),
                        **({"reasoning_content": "".join(thoughts)} if thoughts else {}),
                    },
                    "finish_reason": finish,
                }
            ],
        }
        if fault != "nousage":
            payload["usage"] = usage
        return web.json_response(payload)

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    head = (
        f'{{"id":"{ident}","object":"chat.completion.chunk",'
        f'"created":{created},"model":{json.dumps(model)},'
    )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def event(choices: str, usage_value: str = "null") -> bytes:
        tail = f',"usage":{usage_value}' if include_usage else ""
        return f'data: {head}"choices":{choices}{tail}}}\n\n'.encode()

    # ConnectionError: the gateway (or its client) went away, nothing more to say.
    with contextlib.suppress(ConnectionError):
        await _stream(
            request, response, event, thoughts, pieces, delay, fault, finish, include_usage, usage
        )
    return response


async def _stream(
    request, response, event, thoughts, pieces, delay, fault, finish, include_usage, usage
):
    await response.write(
        event('[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]')
    )
    for thought in thoughts:
        if delay:
            await asyncio.sleep(delay)
        delta = json.dumps({"reasoning_content": thought})
        await response.write(event(f'[{{"index":0,"delta":{delta},"finish_reason":null}}]'))
    for i, piece in enumerate(pieces):
        if delay:
            await asyncio.sleep(delay)
        if fault == "cut" and i >= len(pieces) // 2:
            request.transport.close()
            return
        delta = json.dumps({"content": piece})
        await response.write(event(f'[{{"index":0,"delta":{delta},"finish_reason":null}}]'))
    await response.write(event(f'[{{"index":0,"delta":{{}},"finish_reason":"{finish}"}}]'))
    if include_usage and fault != "nousage":
        await response.write(event("[]", json.dumps(usage)))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


def demo_embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text`` (the same text, the same vector)."""
    values = []
    counter = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((byte - 127.5) / 127.5 for byte in digest)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


async def embeddings(request: web.Request) -> web.Response:
    """``POST /v1/embeddings``: a vector of ``dimensions`` floats (default 64) per input, usage
    counted as the gateway estimates text (token ids one each)."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "body is not JSON")
    value = body.get("input")
    inputs = (
        value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    )
    dimensions = int(body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS)
    data, tokens = [], 0
    for index, item in enumerate(inputs):
        text = item if isinstance(item, str) else " ".join(str(t) for t in item)
        tokens += estimate_text_tokens(item) if isinstance(item, str) else len(item)
        data.append(
            {"object": "embedding", "index": index, "embedding": demo_embedding(text, dimensions)}
        )
    payload = {"object": "list", "data": data, "model": body.get("model") or "demo"}
    if request.headers.get("x-demo-fault") != "nousage":
        payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response(payload)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": DEMO_MODEL_NAME, "object": "model", "created": 0, "owned_by": "demo"}],
        }
    )


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's ``POST /tokenize`` (beside ``/v1``): the count the demo reports as prompt tokens,
    for chat messages (vLLM's chat form) or a prompt string (its completion form)."""
    body = await request.json()
    if isinstance(body.get("messages"), list):
        count = prompt_tokens(body["messages"])
    elif isinstance(body.get("prompt"), str):
        count = estimate_text_tokens(body["prompt"])
    else:
        return web.json_response({"error": {"message": "messages or prompt"}}, status=400)
    return web.json_response({"count": count, "max_model_len": 131_072, "tokens": []})


def make_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/tokenize", tokenize)
    return app


def run(host: str = "127.0.0.1", port: int = 8100) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        pass
    web.run_app(make_app(), host=host, port=port, access_log=None, print=None)
