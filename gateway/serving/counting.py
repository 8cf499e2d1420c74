"""A prompt's tokens counted by the model's own tokenizer, where its catalog entry names one.

The built-in estimate (``gateway.serving.tokens``) errs high on purpose and needs nothing. An
operator can do better per model (``gateway.models.Model.TokenCounter``):

* ``upstream``: ask the model server. vLLM serves ``POST /tokenize`` beside ``/v1`` and takes
  the chat messages themselves (its count includes the chat template, so it equals the
  ``prompt_tokens`` it will report); SGLang's takes a ``prompt`` string, so a server that
  refuses the messages form is asked with the texts joined, plus the estimate's per-message
  overhead. A call is bounded by ``GATEWAY_TOKENIZE_TIMEOUT_SECONDS``; a server that fails or
  has no such route is left alone for ``GATEWAY_TOKENIZE_RETRY_SECONDS`` (one wasted call a
  minute, not one per request) and the estimate stands in, so counting never fails a request.
* ``file``: a Hugging Face ``tokenizer.json`` on the gateway hosts, loaded once per process
  (the optional ``tokenizers`` package: ``pip install '.[tokenizers]'``). Texts are counted
  exactly; the chat template's markers by the estimate's per-message overhead, an image at
  the estimate's fixed cost. A file that does not load is logged once and tried again after
  ``GATEWAY_TOKENIZE_RETRY_SECONDS``.

The count replaces both bounds of the estimate: the context check and the reservation then
use the same, real number. Charges still come from what the server reports.
"""

from __future__ import annotations

import json
import logging
import time
from functools import lru_cache

import aiohttp
from django.conf import settings
from django.utils.translation import gettext as _

from gateway.selectors import CatalogEndpoint, CatalogModel
from gateway.serving.dialects.base import ChatRequest, Dialect, UpstreamTarget
from gateway.serving.tokens import (
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    REQUEST_OVERHEAD_TOKENS,
    estimate_chat_tokens,
)

log = logging.getLogger(__name__)

HEURISTIC = "heuristic"
UPSTREAM = "upstream"
FILE = "file"

# The forms of /tokenize a server took: vLLM's chat form, else the prompt form.
_CHAT_FORM = "messages"
_PROMPT_FORM = "prompt"


def tokenizer_file_problem(path: str) -> str:
    """Why ``path`` cannot serve as a tokenizer file here, or "" when it can."""
    if not path:
        return _("Give the path of the model's tokenizer.json.")
    try:
        _load(path)
    except ImportError:
        return _(
            "The tokenizers package is not installed on this host "
            "(pip install '.[tokenizers]', or the image's TOKENIZERS build argument)."
        )
    except Exception as failure:  # the library raises its own exception types
        return _("The file could not be loaded as a tokenizer (%(error)s).") % {
            "error": failure.__class__.__name__
        }
    return ""


@lru_cache(maxsize=16)
def _load(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def _tokenize_url(endpoint: CatalogEndpoint) -> str:
    """vLLM and SGLang serve /tokenize at the server's root, beside /v1."""
    base = endpoint.base_url
    return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/tokenize"


def _tokenizing_endpoint(model: CatalogModel) -> CatalogEndpoint | None:
    """The best endpoint that may serve /tokenize: an OpenAI-format server (vLLM, SGLang, the
    demo) whose key this process can read. Anthropic's API has its own count_tokens."""
    return next(
        (
            endpoint
            for endpoint in model.endpoints
            if endpoint.upstream_key is not None and endpoint.base_url and not endpoint.is_anthropic
        ),
        None,
    )


def _joined_text(messages: list, tools) -> tuple[str, int]:
    """The prompt form for servers without the chat form: every text, and what the estimate
    adds for the rest (the chat template's markers, each image at its fixed cost)."""
    texts = []
    overhead = REQUEST_OVERHEAD_TOKENS
    for message in messages:
        overhead += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, dict) else message
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in (None, "text"):
                    texts.append(str(part.get("text") or "") if isinstance(part, dict) else "")
                elif kind in ("image_url", "image", "input_image"):
                    overhead += IMAGE_TOKENS
                else:
                    texts.append(json.dumps(part, ensure_ascii=False))
        elif content is not None:
            texts.append(json.dumps(content, ensure_ascii=False))
        if isinstance(message, dict) and message.get("tool_calls"):
            texts.append(json.dumps(message["tool_calls"], ensure_ascii=False))
    if tools:
        texts.append(json.dumps(tools, ensure_ascii=False))
    return "\n".join(texts), overhead


class TokenCounter:
    """Counts for the models that name a tokenizer; one per gateway process."""

    def __init__(self, upstream, clock=time.monotonic):
        self._upstream = upstream
        self._clock = clock
        # Per endpoint URL: the form its /tokenize takes; per URL or tokenizer file: until when
        # it is left alone after a failure.
        self._forms: dict[str, str] = {}
        self._resting_until: dict[str, float] = {}
        self._files_reported: set[str] = set()

    async def count(self, model: CatalogModel, dialect: Dialect, chat: ChatRequest) -> int | None:
        """The prompt's tokens by the model's tokenizer, or None for the estimate to stand."""
        if model.token_counter == HEURISTIC or model.kind != "chat":
            return None
        # The body an OpenAI-format upstream would get: every dialect's messages in
        # chat-completions form.
        endpoint = _tokenizing_endpoint(model)
        target = UpstreamTarget(
            model.name,
            endpoint.upstream_model if endpoint else model.name,
            1,
            base_url=endpoint.base_url if endpoint else "",
            reasoning=model.reasoning,
        )
        body = dialect.upstream_body(chat, target)
        return await self.count_messages(model, body.get("messages") or [], body.get("tools"))

    async def count_messages(self, model: CatalogModel, messages: list, tools) -> int | None:
        """The tokens of chat-completions ``messages`` and ``tools`` by the model's tokenizer,
        or None for the estimate to stand."""
        if model.token_counter == FILE:
            return self._count_with_file(model.tokenizer_file, messages, tools)
        if model.token_counter == UPSTREAM:
            endpoint = _tokenizing_endpoint(model)
            if endpoint is not None:
                return await self._count_upstream(endpoint, messages, tools)
        return None

    def _count_with_file(self, path: str, messages: list, tools) -> int | None:
        if self._clock() < self._resting_until.get(path, 0.0):
            return None
        try:
            tokenizer = _load(path)
        except Exception as failure:
            # Tried again after the retry interval (a file being replaced), not per request.
            self._resting_until[path] = self._clock() + settings.GATEWAY_TOKENIZE_RETRY_SECONDS
            if path not in self._files_reported:
                self._files_reported.add(path)
                log.error(
                    "tokenizer file %s cannot be loaded (%s): the estimate stands in",
                    path,
                    failure.__class__.__name__,
                )
            return None

        def text_tokens(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

        return estimate_chat_tokens(messages, tools=tools, text_tokens=text_tokens)

    async def _count_upstream(self, endpoint: CatalogEndpoint, messages: list, tools):
        url = _tokenize_url(endpoint)
        if self._clock() < self._resting_until.get(url, 0.0):
            return None
        headers = {"Content-Type": "application/json"}
        if endpoint.upstream_key:
            headers["Authorization"] = f"Bearer {endpoint.upstream_key}"
        form = self._forms.get(url, _CHAT_FORM)
        try:
            count = await self._ask(url, headers, endpoint, form, messages, tools)
            if count is None and form == _CHAT_FORM:
                form = _PROMPT_FORM
                count = await self._ask(url, headers, endpoint, form, messages, tools)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as failure:
            count, reason = None, failure.__class__.__name__
        else:
            reason = "no usable count"
        if count is None:
            self._resting_until[url] = self._clock() + settings.GATEWAY_TOKENIZE_RETRY_SECONDS
            log.warning(
                "upstream endpoint %s: /tokenize failed (%s); the estimate stands in for %d s",
                endpoint.label,
                reason,
                settings.GATEWAY_TOKENIZE_RETRY_SECONDS,
            )
            return None
        self._forms[url] = form
        return count

    async def _ask(self, url, headers, endpoint, form, messages, tools) -> int | None:
        """The count in one form; None when the server refused that form (4xx)."""
        if form == _CHAT_FORM:
            payload = {
                "model": endpoint.upstream_model,
                "messages": messages,
                "add_generation_prompt": True,
            }
            if tools:
                payload["tools"] = tools
            overhead = 0
        else:
            prompt, overhead = _joined_text(messages, tools)
            payload = {"model": endpoint.upstream_model, "prompt": prompt}
        timeout = aiohttp.ClientTimeout(total=settings.GATEWAY_TOKENIZE_TIMEOUT_SECONDS)
        async with self._upstream.session.post(
            url,
            data=json.dumps(payload, ensure_ascii=False).encode(),
            headers=headers,
            timeout=timeout,
        ) as response:
            if 400 <= response.status < 500:
                await response.read()
                return None
            response.raise_for_status()
            answer = await response.json(content_type=None)
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError("no count in the answer")
        return count + overhead
