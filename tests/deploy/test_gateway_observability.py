"""The model API's requests through the request-context wrapper: their log lines name the
account and the key's public prefix but never the key, and their outcomes reach the metrics."""

import json

import pytest

from observability import metrics
from observability.logging import RequestContextMiddleware
from tests.gateway.harness import DemoUpstreamThread, GatewayClient, asgi_call

MODEL = "LongCat-Flash-Chat"


@pytest.fixture(scope="module")
def upstream():
    server = DemoUpstreamThread().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gateway(transactional_db, settings, upstream):
    from gateway.services import catalog_bootstrap

    settings.DEMO_UPSTREAM_URL = upstream.url
    settings.UPSTREAM_BASE_URL = ""
    settings.RATE_LIMIT_RPM = 1000
    settings.METRICS_ENABLED = True
    catalog_bootstrap()
    client = GatewayClient()
    wrapped = RequestContextMiddleware(client.app, access_log=True, metrics=True)

    def post(path, *, headers, payload):
        body = json.dumps(payload).encode()
        all_headers = {"content-type": "application/json", **headers}
        return client.run(asgi_call(wrapped, "POST", path, headers=all_headers, body=body))

    client.post = post
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def account(transactional_db):
    from accounts.services import account_create_with_key

    return account_create_with_key(email="observed@example.com")


def _chat(max_tokens=8):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
    }


def _value(name, **labels):
    from prometheus_client.parser import text_string_to_metric_families

    wanted = tuple(sorted(labels.items()))
    for family in text_string_to_metric_families(metrics.render_latest().decode()):
        for sample in family.samples:
            if sample.name == name and tuple(sorted(sample.labels.items())) == wanted:
                return sample.value
    return 0.0


def test_gateway_lines_name_the_account_and_key_prefix_never_the_key(gateway, account, json_log):
    user, key = account
    ok = gateway.post(
        "/openai/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        payload=_chat(),
    )
    assert ok.status == 200
    anthropic = gateway.post(
        "/anthropic/v1/messages",
        headers={"x-api-key": f"Authorization: Bearer {key}"},
        payload=_chat(),
    )
    assert anthropic.status == 200
    wrong = gateway.post(
        "/openai/v1/chat/completions",
        headers={"authorization": f"Bearer {key[:-4]}zzzz"},
        payload=_chat(),
    )
    assert wrong.status == 401

    output = json_log.getvalue()
    assert key not in output
    assert key[12:] not in output  # the secret part after the public prefix
    lines = [json.loads(line) for line in output.splitlines()]
    access = [line for line in lines if line["logger"] == "portal.access"]
    assert [line["status"] for line in access] == [200, 200, 401]
    for line, response in zip(access[:2], (ok, anthropic), strict=True):
        assert line["account_id"] == user.pk
        assert line["key_prefix"] == key[:12]
        assert line["request_id"] == response.headers["x-request-id"]
    assert "account_id" not in access[2]  # an unknown key names nobody


def test_gateway_outcomes_are_counted(gateway, account):
    user, key = account
    auth = {"authorization": f"Bearer {key}"}
    tokens_in = _value("portal_gateway_tokens_total", direction="input", model=MODEL)
    tokens_out = _value("portal_gateway_tokens_total", direction="output", model=MODEL)
    quota = _value("portal_gateway_quota_rejections_total", dialect="openai")
    route = {"route": "/openai/v1/chat/completions", "method": "POST", "status": "200"}
    requests = _value("portal_http_requests_total", **route)

    ok = gateway.post("/openai/v1/chat/completions", headers=auth, payload=_chat())
    assert ok.status == 200
    usage = ok.json()["usage"]
    user.daily_quota = 1
    user.save(update_fields=["daily_quota"])
    refused = gateway.post("/openai/v1/chat/completions", headers=auth, payload=_chat())
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"

    in_delta = _value("portal_gateway_tokens_total", direction="input", model=MODEL) - tokens_in
    assert in_delta == usage["prompt_tokens"]
    out_delta = _value("portal_gateway_tokens_total", direction="output", model=MODEL) - tokens_out
    assert out_delta == usage["completion_tokens"]
    assert _value("portal_gateway_quota_rejections_total", dialect="openai") == quota + 1
    assert _value("portal_http_requests_total", **route) == requests + 1
