"""Review: an OpenAI-format client on an Anthropic-native endpoint that reports no usage."""

from tests.gateway.test_anthropic_upstream import (  # noqa: F401  (fixtures)
    MODEL,
    _books_exact,
    _record,
    native,
    upstreams,
)


def test_a_translated_answer_without_usage_is_charged_by_estimate(gw, alice_key, native):  # noqa: F811
    """chat_completion_from_message always writes a usage object (zeros when the message had
    none), so Exchange.completion never falls back to its estimate: the request is free."""
    user, key = alice_key
    a, _b = native
    a.mode = "nousage"
    payload = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    result = gw.chat(key, payload, path="/openai/v1/chat/completions")
    assert result.status == 200
    record = _record(gw, user)
    assert (record.input_tokens, record.output_tokens) != (0, 0)
    assert record.estimated and record.input_tokens > 0
    assert 0 < record.output_tokens <= 10
    _books_exact(user)
