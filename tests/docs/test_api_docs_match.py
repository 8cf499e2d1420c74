"""The streaming sequences the API Docs show are the ones the gateway really sends."""

import json
import re

import pytest

from docs import pages


def _documented_events(language: str) -> list[str]:
    source = (pages.CONTENT_DIR / language / "api.md").read_text(encoding="utf-8")
    return re.findall(r"^event: (\w+)$", source, flags=re.MULTILINE)


def _documented_openai_chunks(language: str) -> list:
    source = (pages.CONTENT_DIR / language / "api.md").read_text(encoding="utf-8")
    return [
        "[DONE]" if line == "data: [DONE]" else json.loads(line[6:])
        for line in source.splitlines()
        if (line.startswith("data: ") and '"chat.completion.chunk"' in line)
        or line == "data: [DONE]"
    ]


def _collapse(names: list[str]) -> list[str]:
    """Runs of the same event (many deltas) count once."""
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


@pytest.fixture
def gateway_client(transactional_db, settings):
    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from tests.gateway.harness import DemoUpstreamThread, GatewayClient

    demo = DemoUpstreamThread().start()
    settings.DEMO_UPSTREAM_URL = demo.url
    settings.UPSTREAM_BASE_URL = ""
    catalog_bootstrap()
    _user, key = account_create_with_key(email="docs-reader@example.com")
    client = GatewayClient()
    try:
        yield client, key
    finally:
        client.close()
        demo.stop()


def test_the_anthropic_event_order_in_the_docs_is_what_the_gateway_streams(gateway_client):
    client, key = gateway_client
    result = client.request(
        "POST",
        "/anthropic/v1/messages",
        headers={"x-api-key": key, "content-type": "application/json"},
        body=json.dumps(
            {
                "model": "LongCat-Flash-Chat",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "Hello"}],
            }
        ).encode(),
    )
    assert result.status == 200
    sent = [
        line.removeprefix("event: ")
        for line in result.body.decode().splitlines()
        if line.startswith("event: ") and line != "event: ping"
    ]
    for language in ("en", "zh-hans"):
        assert _collapse(_documented_events(language)) == _collapse(sent)


def test_the_openai_chunk_sequence_in_the_docs_is_what_the_gateway_streams(gateway_client):
    client, key = gateway_client
    result = client.chat(
        key,
        {
            "model": "LongCat-Flash-Chat",
            "max_tokens": 50,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Hello"}],
        },
    )
    assert result.status == 200
    sent = result.events()

    def shape(events):
        # role first, then content deltas, then a finish_reason, a usage chunk and [DONE]
        out = []
        for event in events:
            if event == "[DONE]":
                out.append("done")
            elif not event["choices"]:
                out.append("usage" if event.get("usage") else "empty")
            else:
                choice = event["choices"][0]
                if choice.get("finish_reason"):
                    out.append("finish")
                elif "role" in choice["delta"]:
                    out.append("role")
                else:
                    out.append("content")
        return _collapse(out)

    for language in ("en", "zh-hans"):
        assert shape(_documented_openai_chunks(language)) == shape(sent)


def test_the_documented_429_body_and_headers_are_what_the_gateway_sends(gateway_client, settings):
    client, key = gateway_client
    settings.RATE_LIMIT_RPM = 1
    first = client.chat(key)
    assert first.status == 200
    source = (pages.CONTENT_DIR / "en" / "api.md").read_text(encoding="utf-8")
    documented_headers = set(re.findall(r"^\| `(x-ratelimit-[a-z-]+)` \|", source, re.MULTILINE))
    assert len(documented_headers) == 6
    assert documented_headers <= set(first.headers)

    limited = client.chat(key)
    assert limited.status == 429
    assert {"retry-after", "retry-after-ms"} <= set(limited.headers)
    for language in ("en", "zh-hans"):
        quick_start = (pages.CONTENT_DIR / language / "quick-start.md").read_text(encoding="utf-8")
        block = re.search(r"```json\n(\{\n  \"error\".*?)```", quick_start, re.DOTALL).group(1)
        documented = json.loads(block)["error"]
        sent = limited.json()["error"]
        assert set(documented) == set(sent)
        assert (documented["code"], documented["type"]) == (sent["code"], sent["type"])
        assert documented["message"].split(" Wait")[0] == sent["message"].split(" Wait")[0]
