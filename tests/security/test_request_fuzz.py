"""Hostile request bodies for both dialects: random JSON shapes, unicode, deep nesting, huge
numbers, wrong types. Always a 4xx naming what is wrong, never a 500.

The Anthropic request parser has its own property tests (tests/gateway/anthropic); these add
the OpenAI dialect, both dialects' full ``parse_chat`` (JSON decoding included) and the whole
pipeline for the nastiest shapes.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.serving.dialects.anthropic import dialect as anthropic
from gateway.serving.dialects.base import ChatRequest, UpstreamTarget
from gateway.serving.dialects.openai import dialect as openai
from gateway.serving.errors import GatewayError

SETTINGS = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
DIALECTS = {"openai": openai, "anthropic": anthropic}
PATHS = {"openai": "/openai/v1/chat/completions", "anthropic": "/anthropic/v1/messages"}

# Numbers JSON allows but Python or a schema may choke on.
numbers = (
    st.integers()
    | st.integers(min_value=10**18, max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324, 1e100])
)
unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30
) | st.sampled_from(["", "\x00", "\u202e", "\U0001d54f" * 10, "测试", "\ufeff", "a" * 300])
scalars = st.none() | st.booleans() | numbers | unicode_text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode_text, inner, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "tools",
    "tool_choice",
    "system",
    "stop_sequences",
    "metadata",
    "thinking",
    "seed",
]
VALID = {
    "openai": {
        "model": "LongCat-Flash-Chat",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 10,
    },
    "anthropic": {
        "model": "LongCat-Flash-Chat",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hello!"}],
    },
}


def assert_refused_with_a_field_or_parsed(dialect_name: str, body: bytes) -> None:
    dialect = DIALECTS[dialect_name]
    try:
        chat = dialect.parse_chat(body, b"")
    except GatewayError as error:
        assert 400 <= error.status < 500
        # A field name (param), or the body itself when it is not a JSON object at all.
        assert error.param or error.code == "invalid_json", error
        rendered = json.loads(dialect.render_error(error))
        assert rendered
        return
    assert isinstance(chat, ChatRequest)
    assert chat.input_tokens > 0
    # What parses must also turn into an upstream request that serialises.
    upstream = dialect.upstream_body(chat, UpstreamTarget(chat.model, chat.model, 10))
    json.dumps(upstream)


def _with_fields(dialect_name):
    return st.fixed_dictionaries({}, optional={name: values for name in FIELDS}) | st.builds(
        lambda base, extra: {**base, **extra},
        st.just(VALID[dialect_name]),
        st.dictionaries(st.sampled_from(FIELDS), values, max_size=3),
    )


@pytest.mark.parametrize("dialect_name", DIALECTS)
@SETTINGS
@given(data=st.data())
def test_any_json_is_parsed_or_refused_with_a_field_name(dialect_name, data):
    body = data.draw(values | _with_fields(dialect_name))
    assert_refused_with_a_field_or_parsed(dialect_name, json.dumps(body).encode())


@pytest.mark.parametrize("dialect_name", DIALECTS)
@SETTINGS
@given(data=st.data())
def test_any_bytes_are_parsed_or_refused(dialect_name, data):
    body = data.draw(st.binary(max_size=300) | unicode_text.map(str.encode))
    assert_refused_with_a_field_or_parsed(dialect_name, body)


def _nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


def _hostile(dialect_name: str) -> list[bytes]:
    valid = json.dumps(VALID[dialect_name])
    deep_lists = b"[" * 100_000 + b"]" * 100_000
    return [
        deep_lists,
        valid[:-1].encode() + b', "extra": ' + deep_lists + b"}",
        valid.replace(
            '"Hello!"', f'[{{"type": "text", "text": "x", "x": {_nested(995)}}}]'
        ).encode(),
        valid[:-1].encode() + f', "metadata": {_nested(995)}}}'.encode(),
        valid.replace('"max_tokens": 10', '"max_tokens": ' + "9" * 5000).encode(),
        valid.replace('"max_tokens": 10', '"max_tokens": 1e400').encode(),
        valid.replace('"max_tokens": 10', '"max_tokens": NaN').encode(),
        valid.replace('"max_tokens": 10', '"max_tokens": 10.5').encode(),
        valid.replace('"max_tokens": 10', '"max_tokens": "10"').encode(),
        valid.replace('"max_tokens": 10', '"max_tokens": true').encode(),
        valid.replace('"Hello!"', '"\\ud800"').encode(),
        valid.encode().replace(b"Hello!", b"\xff\xfe"),
        valid.replace('"user"', '"\\u0000"').encode(),
        valid.replace('"LongCat-Flash-Chat"', '"' + "m" * 100_000 + '"').encode(),
        valid.replace('"LongCat-Flash-Chat"', "null").encode(),
        valid.replace('"LongCat-Flash-Chat"', '["LongCat-Flash-Chat"]').encode(),
        b'{"model": "LongCat-Flash-Chat", "model": 7}',
        b"",
        b"null",
        b'"a string"',
        b"\xef\xbb\xbf" + valid.encode(),
    ]


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_hostile_bodies_are_refused_by_the_parser_with_a_field_name(dialect_name):
    for body in _hostile(dialect_name):
        assert_refused_with_a_field_or_parsed(dialect_name, body)


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_hostile_bodies_through_the_whole_gateway_are_4xx_never_500(gw, alice_key, dialect_name):
    from usage.models import Reservation

    _user, key = alice_key
    headers = {"anthropic-version": "2023-06-01"} if dialect_name == "anthropic" else {}
    for body in _hostile(dialect_name):
        result = gw.chat(key, body, path=PATHS[dialect_name], headers=headers)
        assert 200 <= result.status < 500, (body[:80], result.status, result.body[:300])
        if result.status >= 400:
            envelope = result.json()
            error = envelope["error"]
            assert error["message"]
            if dialect_name == "anthropic":
                assert envelope["type"] == "error"
    assert not Reservation.objects.exists()


@pytest.mark.parametrize("dialect_name", DIALECTS)
def test_a_nul_in_the_model_name_does_not_hold_up_the_usage_records(gw, alice_key, dialect_name):
    """The model name a client sends is recorded even when unknown (404). PostgreSQL refuses
    text with NUL, and the batching writer keeps retrying a failed batch: one such record
    must not keep every later record out of the database."""
    from usage.models import UsageRecord

    _user, key = alice_key
    headers = {"anthropic-version": "2023-06-01"} if dialect_name == "anthropic" else {}
    path = PATHS[dialect_name]
    body = {**VALID[dialect_name], "model": "Long\x00Cat"}
    assert gw.chat(key, body, path=path, headers=headers).status == 404
    assert gw.chat(key, VALID[dialect_name], path=path, headers=headers).status == 200
    gw.flush()
    assert sorted(UsageRecord.objects.values_list("status_code", flat=True)) == [200, 404]
    assert gw.gateway.recorder._rows == []


def test_a_record_the_database_refuses_is_dropped_alone(gw, alice_key):
    """Defence in depth behind the test above: whatever value PostgreSQL refuses in a batch
    (here a NUL that got past the pipeline), the other records are still written."""
    import dataclasses

    from django.db import connection

    from usage.models import UsageRecord

    if connection.vendor != "postgresql":
        pytest.skip("SQLite stores NUL in text: there is nothing to refuse")
    _user, key = alice_key
    gw.run(gw.app._started())
    recorder = gw.gateway.recorder
    gw.run(recorder.stop())  # no timer: nothing is written until flush() below
    assert gw.chat(key, VALID["openai"], path=PATHS["openai"]).status == 200
    good = recorder._rows[-1]
    recorder.add(dataclasses.replace(good, model="bad\x00model"))
    assert gw.chat(key, VALID["openai"], path=PATHS["openai"]).status == 200
    gw.flush()
    assert UsageRecord.objects.count() == 2
    assert recorder._rows == []
