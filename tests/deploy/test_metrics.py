import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from observability import metrics

ROOT = Path(__file__).resolve().parents[2]


def _samples(text, name):
    """{labels-tuple: value} of one metric's samples in an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _value(text, name, **labels):
    return _samples(text, name).get(tuple(sorted(labels.items())), 0.0)


def test_it_is_not_found_unless_enabled(client, settings):
    settings.METRICS_ENABLED = False
    assert client.get("/metrics").status_code == 404


def test_it_serves_the_exposition_format_when_enabled(client, settings):
    settings.METRICS_ENABLED = True
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "portal_http_requests_total" in response.content.decode()
    assert "no-cache" in response["Cache-Control"]


def test_it_wants_the_token_when_one_is_set(client, settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = "scrape-secret-123"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics").headers["WWW-Authenticate"].startswith("Bearer")
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    basic = client.get("/metrics", headers={"Authorization": "Basic scrape-secret-123"})
    assert basic.status_code == 401
    right = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret-123"})
    assert right.status_code == 200


def test_it_serves_only_allowed_addresses_when_a_list_is_set(client, settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "192.0.2.7"]
    assert client.get("/metrics").status_code == 403  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.8").status_code == 403


def test_it_needs_both_when_both_are_set(client, settings):
    settings.METRICS_ENABLED = True
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    settings.METRICS_TOKEN = "scrape-secret-123"
    assert client.get("/metrics").status_code == 401
    token = {"Authorization": "Bearer scrape-secret-123"}
    assert client.get("/metrics", headers=token).status_code == 200
    assert client.get("/metrics", headers=token, REMOTE_ADDR="10.0.0.1").status_code == 403


def test_it_refuses_other_methods(client, settings):
    settings.METRICS_ENABLED = True
    assert client.post("/metrics").status_code == 405


def test_it_counts_requests_by_route_and_status_with_latency(asgi_get, settings, db):
    settings.METRICS_ENABLED = True
    before = metrics.render_latest().decode()
    asgi_get("/healthz", metrics=True)
    asgi_get("/keys/00000000-0000-0000-0000-000000000000/", metrics=True)
    asgi_get("/openai/v1/models", metrics=True)
    after = metrics.render_latest().decode()

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    ok = {"route": "/healthz", "method": "GET", "status": "200"}
    assert delta("portal_http_requests_total", **ok) == 1
    latency = {"route": "/healthz", "method": "GET"}
    assert delta("portal_http_request_duration_seconds_count", **latency) == 1
    # Paths with ids are counted under their pattern, never one series per id.
    routes = {dict(labels)["route"] for labels in _samples(after, "portal_http_requests_total")}
    assert not any("00000000" in route for route in routes)
    assert "/openai/v1/models" in routes


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/healthz", "/healthz"),
        ("/openai/v1/chat/completions", "/openai/v1/chat/completions"),
        ("/openai/v1/whatever/123", "/openai/*"),
        ("/anthropic/v1/messages", "/anthropic/v1/messages"),
        ("/anthropic/x", "/anthropic/*"),
        ("/static/css/portal.abc123.css", "/static/*"),
        ("/no/such/page/sk-secret-in-a-path", "<unmatched>"),
    ],
)
def test_it_labels_routes_with_a_bounded_set_of_values(path, route):
    assert metrics.route_label(path) == route


def _gateway(**outcome):
    request = {"dialect": "openai", "model": "m", "status": 200, "error_code": ""}
    request |= {"input_tokens": 0, "output_tokens": 0} | outcome
    metrics.record_gateway_request(**request)


def test_gateway_counters_move_only_when_enabled(settings):
    settings.METRICS_ENABLED = False
    before = metrics.render_latest().decode()
    _gateway(model="m-off", input_tokens=5, output_tokens=7)
    after = metrics.render_latest().decode()
    tokens = {"direction": "input", "model": "m-off"}
    assert _value(after, "portal_gateway_tokens_total", **tokens) == _value(
        before, "portal_gateway_tokens_total", **tokens
    )


def test_gateway_outcomes_land_in_their_counters(settings):
    settings.METRICS_ENABLED = True
    before = metrics.render_latest().decode()
    _gateway(model="m-on", input_tokens=5, output_tokens=7)
    _gateway(model="m-on", status=504, error_code="upstream_timeout", input_tokens=5)
    _gateway(model="m-on", status=502, error_code="upstream_error")
    _gateway(dialect="anthropic", model="m-on", status=429, error_code="insufficient_quota")
    _gateway(model="whatever-a-client-sent", status=429, error_code="rate_limit_exceeded")
    after = metrics.render_latest().decode()

    def delta(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("portal_gateway_tokens_total", direction="input", model="m-on") == 10
    assert delta("portal_gateway_tokens_total", direction="output", model="m-on") == 7
    assert delta("portal_gateway_upstream_errors_total", model="m-on", code="upstream_timeout") == 1
    assert delta("portal_gateway_upstream_errors_total", model="m-on", code="upstream_error") == 1
    assert delta("portal_gateway_quota_rejections_total", dialect="anthropic") == 1
    assert delta("portal_gateway_rate_limit_rejections_total", dialect="openai") == 1
    ok = {"dialect": "openai", "status": "200", "code": ""}
    assert delta("portal_gateway_requests_total", **ok) == 1
    # A rejected request's model name (whatever the client sent) makes no token series.
    assert "whatever-a-client-sent" not in after


_RECORD = """
import django; django.setup()
from observability import metrics
metrics.record_gateway_request(
    dialect="openai", model="shared", status=200, error_code="", input_tokens={n}, output_tokens=1
)
metrics.observe_request(path="/healthz", method="GET", status=200, seconds=0.01)
"""

_RENDER = "import django; django.setup(); from observability import metrics; " + (
    "import sys; sys.stdout.write(metrics.render_latest().decode())"
)


def test_it_sums_every_worker_process_in_multiprocess_mode(tmp_path):
    env = {
        **os.environ,
        "VAR_DIR": str(tmp_path / "var"),
        "METRICS_ENABLED": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
    }
    for n in (100, 20, 3):  # three "workers", each exiting before the scrape
        subprocess.run([sys.executable, "-c", _RECORD.format(n=n)], env=env, cwd=ROOT, check=True)
    scrape = subprocess.run(
        [sys.executable, "-c", _RENDER], env=env, cwd=ROOT, check=True, capture_output=True
    ).stdout.decode()
    assert _value(scrape, "portal_gateway_tokens_total", direction="input", model="shared") == 123
    assert _value(scrape, "portal_gateway_tokens_total", direction="output", model="shared") == 3
    requests = {"route": "/healthz", "method": "GET", "status": "200"}
    assert _value(scrape, "portal_http_requests_total", **requests) == 3


def test_the_checks_warn_about_open_metrics_in_production(settings):
    from portal.checks import production_settings_check

    settings.PRODUCTION = True
    settings.METRICS_ENABLED = True
    ids = {message.id for message in production_settings_check(None)}
    assert "portal.W003" in ids
    settings.METRICS_TOKEN = "scrape-secret-123"
    assert "portal.W003" not in {m.id for m in production_settings_check(None)}
    settings.METRICS_ALLOWED_IPS = ["not-an-address"]
    assert "portal.E007" in {m.id for m in production_settings_check(None)}
    settings.METRICS_ENABLED = False
    ids = {m.id for m in production_settings_check(None)}
    assert not ids & {"portal.W003", "portal.E007"}
