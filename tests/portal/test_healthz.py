from unittest import mock

import pytest

pytestmark = pytest.mark.django_db


def test_it_reports_healthy_services(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "cache": True,
        "broker": True,
    }


def test_it_answers_503_when_the_database_is_down(client):
    with mock.patch("portal.views._database_ok", side_effect=ConnectionError("db down")) as probe:
        probe.__name__ = "_database_ok"
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {
        "ok": False,
        "ms": body["checks"]["database"]["ms"],
        "error": "ConnectionError",
    }
    assert body["checks"]["cache"]["ok"] is True


def test_it_answers_503_when_the_cache_is_down(client):
    with mock.patch("django.core.cache.cache.set", side_effect=OSError("refused")):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["cache"]["ok"] is False


def test_it_never_shows_error_details(client):
    secret = "postgres://admin:hunter2@db"
    with mock.patch("portal.views._database_ok", side_effect=RuntimeError(secret)) as probe:
        probe.__name__ = "_database_ok"
        response = client.get("/healthz")
    assert secret not in response.content.decode()


def test_it_is_not_cached(client):
    response = client.get("/healthz")
    assert "no-cache" in response["Cache-Control"]


class _FakeGateway:
    def __init__(self, failures):
        self.failures = failures

    async def health(self):
        return self.failures


def test_it_reports_the_gateways_own_connections_and_catalog(client, monkeypatch):
    import gateway.serving.app

    monkeypatch.setattr(
        gateway.serving.app, "_serving", _FakeGateway({"ledger": None, "catalog": None})
    )
    body = client.get("/healthz").json()
    assert body["checks"]["gateway_ledger"]["ok"] is True
    assert body["checks"]["gateway_catalog"]["ok"] is True

    failures = {"ledger": None, "catalog": TimeoutError("postgres://admin:hunter2@db")}
    monkeypatch.setattr(gateway.serving.app, "_serving", _FakeGateway(failures))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["gateway_catalog"]["error"] == "TimeoutError"
    assert "hunter2" not in response.content.decode()
