"""Responses API *upstreams*, without any I/O: a Responses client passed through to an
OpenAI-compatible endpoint that serves ``/responses`` itself (``UpstreamEndpoint.responses_api``:
OpenAI, recent vLLM), instead of the translation to chat completions.

``passthrough_body`` is the client's validated JSON with the upstream's model name, the granted
output budget and ``store: false`` (the gateway refuses ``previous_response_id``, so nothing
stored upstream could ever be used). What would reach the operator's upstream account rather
than the model is left out, as the translation leaves it out: hosted tools (web and file search,
code interpreter, MCP …, which run and bill there), files stored there (``file_id``), stored
prompts (``prompt``) and the ``service_tier`` (a price). Reasoning items without
``encrypted_content`` are dropped: only a stored response gives them meaning (the gateway's own,
from a chat upstream, carry none), and an upstream not storing would refuse them.

Usage: ``input_tokens`` (its ``input_tokens_details.cached_tokens`` read from the prompt cache)
and ``output_tokens``, on the Response object and on a stream's final event.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.serving.dialects.base import Usage
from gateway.serving.tokens import estimate_text_tokens

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

RESPONSES_PATH = "/responses"
# A stream's last event: the answer (complete, cut short by its budget, or failed upstream).
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Events whose ``response`` names the model.
RESPONSE_EVENTS = FINAL_EVENTS | {"response.created", "response.in_progress", "response.queued"}
# Stream events that deliver output, by the field holding it.
OUTPUT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.refusal.delta",
    }
)
_NOT_PASSED = ("prompt", "service_tier")


# --- request -------------------------------------------------------------------------------
def _content(content: Any) -> Any:
    """A message's content without references to files stored upstream (as the translation
    does, a note says a file was left out)."""
    if not isinstance(content, list):
        return content
    return [
        {
            "type": "input_text",
            "text": f"[file not included: {str(part.get('filename') or part['file_id'])[:200]}]",
        }
        if isinstance(part, dict) and part.get("type") == "input_file" and part.get("file_id")
        else part
        for part in content
    ]


def _input(items: Any) -> Any:
    if not isinstance(items, list):
        return items
    out = []
    for item in items:
        if isinstance(item, dict) and item.get("type") == "reasoning":
            if not item.get("encrypted_content"):
                continue
        elif isinstance(item, dict):
            # A message's content, or a function call's output given as parts.
            item = {
                **item,
                **{name: _content(item[name]) for name in ("content", "output") if name in item},
            }
        out.append(item)
    return out


def passthrough_body(native: dict, *, model: str, max_output_tokens: int) -> dict:
    """The Responses client's validated request for a native upstream's ``model``."""
    body = {name: value for name, value in native.items() if name not in _NOT_PASSED}
    body["model"] = model
    body["max_output_tokens"] = max_output_tokens
    body["store"] = False
    body["input"] = _input(native["input"])
    tools = [
        tool
        for tool in native.get("tools") or ()
        if isinstance(tool, dict) and tool.get("type") == "function"
    ]
    if tools:
        body["tools"] = tools
    else:
        # Without a function tool the choice has nothing to name (the hosted ones are out).
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            body.pop(name, None)
    return body


# --- response ------------------------------------------------------------------------------
def _count(usage: dict, name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """A Responses ``usage`` object as the gateway charges it (None when there is none)."""
    if not isinstance(usage, dict):
        return None
    input_tokens = _count(usage, "input_tokens")
    details = usage.get("input_tokens_details")
    cached = _count(details, "cached_tokens") if isinstance(details, dict) else 0
    return Usage(
        input_tokens,
        _count(usage, "output_tokens"),
        cached_input_tokens=min(cached, input_tokens),
    )


def with_model(response: dict, model: str) -> dict:
    """``response`` (a Response object) naming ``model`` instead of the upstream's name."""
    response["model"] = model
    return response


def _texts(item: dict) -> list[str]:
    texts = []
    if isinstance(item.get("arguments"), str):
        texts.append(item["arguments"])
    for group in ("content", "summary"):
        for part in item.get(group) or ():
            if isinstance(part, dict):
                text = part.get("text") or part.get("refusal")
                if isinstance(text, str):
                    texts.append(text)
    return texts


def output_tokens(response: dict) -> int:
    """The estimated output of a Response object (text, reasoning, function-call arguments)."""
    return sum(
        estimate_text_tokens(text)
        for item in response.get("output") or ()
        if isinstance(item, dict)
        for text in _texts(item)
        if text
    )


def delta_tokens(event: dict) -> int:
    """The estimated output of one stream event (0 for events that deliver none)."""
    if event.get("type") not in OUTPUT_DELTAS:
        return 0
    delta = event.get("delta")
    return estimate_text_tokens(delta) if isinstance(delta, str) and delta else 0


# --- stream --------------------------------------------------------------------------------
def sse_event(kind: str, sequence: int, **data) -> bytes:
    payload = {"type": kind, "sequence_number": sequence, **data}
    return b"event: " + kind.encode() + b"\ndata: " + _dumps(payload).encode() + b"\n\n"


def failure_events(
    *, response: dict, sequence: int, code: str, message: str, param: str | None = None
) -> bytes:
    """The end of a stream that failed after it started, as the translated stream ends
    (``ResponseStreamTranslator.fail``): an ``error`` event (the gateway's own code), then
    ``response.failed`` (``response`` as relayed so far, whose ``error.code`` is one of the
    Responses API's own), numbered on from ``sequence``."""
    failed = "rate_limit_exceeded" if code == "rate_limit_exceeded" else "server_error"
    response = {**response, "status": "failed", "error": {"code": failed, "message": message}}
    return sse_event("error", sequence, code=code, message=message, param=param) + sse_event(
        "response.failed", sequence + 1, response=response
    )
