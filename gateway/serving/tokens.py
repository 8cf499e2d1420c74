"""Local token estimates: used to reserve quota before the upstream answers.

Charges come from the upstream's reported usage; these estimates only size the reservation,
the context-length check and the rate limiter, and stand in (flagged ``estimated``) when an
upstream reports nothing. No tokenizer ships offline (tiktoken downloads its tables at run
time), so this is a heuristic that errs high: BPE tokenizers average about 4 characters per
token on English and code and about one token per CJK character; we count one token per 3
ASCII characters and one per wide character, plus a per-message overhead for role markers.
Reserving a little too much costs nothing (the excess is released at settlement); reserving
too little could let concurrent requests overshoot the quota.

Erring high is wrong for one decision: refusing a prompt as too long for the model's context.
For that there is a lower bound (``estimate_chat_tokens_min``): one token per 6 ASCII
characters and per 2 wide characters, a run of whitespace counting as one character (a BPE
vocabulary has tokens for long runs of indentation). The pipeline refuses
``context_length_exceeded`` only when even that does not fit, and reserves with the upper
estimate. ``bench/estimates.py`` measures both against Qwen's tokenizer on this repository's
English and Chinese docs and its code: the upper estimate came out 1.10-2.17x the real count
(median 1.29 English, 1.23 Chinese, 1.47 code), the lower bound 0.49-0.83x (README,
"Architecture").

The output estimates (``completion_output_tokens``, ``streamed_output_tokens``) stand in for
an upstream that reports no usage: every text a client receives counts, at least a token for
each part that carries any.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 3
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def estimate_text_tokens(text: str) -> int:
    """Tokens in ``text`` by the heuristic (0 for empty text)."""
    if not text:
        return 0
    chars = len(text)
    if text.isascii():
        return chars // 3 + 1
    # Characters outside ASCII take 2 to 4 bytes in UTF-8; CJK takes 3. Count them one token each.
    wide = (len(text.encode()) - chars + 1) // 2
    return (chars - wide) // 3 + wide + 1


def estimate_text_tokens_min(text: str) -> int:
    """A lower bound of the tokens in ``text`` (0 for empty text): see the module docstring."""
    if not text:
        return 0
    # A run of spaces or newlines can be a single token (indented code): count it as one
    # character, or heavily indented code would be "certainly" longer than it is.
    text = _WHITESPACE_RUN.sub(" ", text)
    chars = len(text)
    if text.isascii():
        return chars // 6
    wide = (len(text.encode()) - chars + 1) // 2
    return (chars - wide) // 6 + wide // 2


# Images cost a fixed amount upstream; 765 tokens is a high-detail 512px tile set (the lower
# bound takes half: a small or low-detail image costs less).
IMAGE_TOKENS = 765
# Anthropic bills an image by its size, up to about 1,600 tokens (it scales larger ones down
# to about 1.15 megapixels): an image it fetches by URL, which the gateway cannot measure,
# is reserved at that.
ANTHROPIC_IMAGE_TOKENS = 1_600
_IMAGE = object()


def _content_parts(content: Any) -> Iterable[Any]:
    """The texts of a message's content, and ``_IMAGE`` for each image in it."""
    if content is None:
        return
    if isinstance(content, str):
        yield content
        return
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                if kind in (None, "text", "input_text"):
                    yield str(part.get("text") or "")
                elif kind in ("image_url", "image", "input_image"):
                    yield _IMAGE
                else:
                    yield json.dumps(part, ensure_ascii=False)
            else:
                yield str(part)
        return
    yield json.dumps(content, ensure_ascii=False)


def estimate_chat_tokens(
    messages: Iterable[Any],
    *,
    tools: Any = None,
    text_tokens=estimate_text_tokens,
    image_tokens: int = IMAGE_TOKENS,
) -> int:
    """Input tokens of OpenAI-style ``messages`` (dicts), plus tool definitions if any, each
    text counted by ``text_tokens`` (the upper estimate unless told), each image as
    ``image_tokens``."""
    total = REQUEST_OVERHEAD_TOKENS
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        if not isinstance(message, dict):
            total += text_tokens(str(message))
            continue
        for part in _content_parts(message.get("content")):
            total += image_tokens if part is _IMAGE else text_tokens(part)
        if message.get("tool_calls"):
            total += text_tokens(json.dumps(message["tool_calls"], ensure_ascii=False))
        if message.get("name"):
            total += text_tokens(str(message["name"]))
    if tools:
        total += text_tokens(json.dumps(tools, ensure_ascii=False))
    return total


def estimate_chat_tokens_min(messages: Iterable[Any], *, tools: Any = None) -> int:
    """A lower bound of ``estimate_chat_tokens``' count: for the context-length check only."""
    return estimate_chat_tokens(
        messages,
        tools=tools,
        text_tokens=estimate_text_tokens_min,
        image_tokens=IMAGE_TOKENS // 2,
    )


# Every field of a delta (or message) whose text reaches the client, in either dialect: the
# Anthropic stream shows reasoning as thinking and tool-call arguments as input_json deltas.
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning")


def _text_tokens(part: dict) -> int:
    """The estimated tokens of the text in one delta or message; at least 1 if it has any."""
    tokens = 0
    carried = False
    for name in _TEXT_FIELDS:
        text = part.get(name)
        if isinstance(text, str) and text:
            carried = True
            tokens += estimate_text_tokens(text)
    for call in part.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for name in ("name", "arguments"):
                text = function.get(name)
                if isinstance(text, str) and text:
                    carried = True
                    tokens += estimate_text_tokens(text)
    return max(tokens, 1) if carried else tokens


def streamed_output_tokens(chunks: list[bytes]) -> int:
    """The estimated output of a stream from its upstream ``data:`` payloads."""
    tokens = 0
    for data in chunks:
        # Runs while settling a failed stream too: a chunk of the wrong shape counts nothing
        # instead of raising out of the settlement.
        try:
            for choice in json.loads(data).get("choices") or ():
                tokens += _text_tokens(choice.get("delta") or {})
        except (ValueError, TypeError, AttributeError):
            continue
    return tokens


def completion_output_tokens(obj: dict) -> int:
    """The estimated output of an upstream chat completion."""
    tokens = 0
    for choice in obj.get("choices") or ():
        tokens += _text_tokens(choice.get("message") or {})
    return tokens
