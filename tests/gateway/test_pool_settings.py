"""The pool's settings are checked, and UPSTREAM_BASE_URL still sets up the one-server case."""

import pytest

from gateway.checks import request_lifetime_check
from gateway.models import UpstreamEndpoint
from gateway.services import catalog_bootstrap


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("GATEWAY_UPSTREAM_ATTEMPTS", 0, "gateway.E004"),
        ("GATEWAY_UPSTREAM_EJECT_FAILURES", 0, "gateway.E004"),
        ("GATEWAY_UPSTREAM_FAILOVER_SECONDS", 0, "gateway.E005"),
        ("GATEWAY_UPSTREAM_EJECT_SECONDS", -1, "gateway.E005"),
        ("GATEWAY_UPSTREAM_EJECT_MAX_SECONDS", 1, "gateway.E005"),
        ("GATEWAY_UPSTREAM_QUEUE_MAX", -1, "gateway.E006"),
        ("GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS", 0, "gateway.E006"),
        ("GATEWAY_UPSTREAM_QUEUE_WAIT_SECONDS", 600, "gateway.E006"),  # = the stream limit
        ("GATEWAY_UPSTREAM_PROBE_SECONDS", -1, "gateway.E007"),
    ],
)
def test_a_pool_setting_that_cannot_work_is_refused(settings, name, value, code):
    assert request_lifetime_check(None) == []
    setattr(settings, name, value)
    assert [error.id for error in request_lifetime_check(None)] == [code]


def test_upstream_base_url_points_the_single_endpoint_and_leaves_a_pool_alone(db, settings):
    settings.UPSTREAM_BASE_URL = "http://one.internal:8000/v1/"
    settings.UPSTREAM_MODEL = "served-name"
    settings.UPSTREAM_API_KEY = ""
    model, _summary = catalog_bootstrap()
    endpoint = model.endpoints.get()
    assert (endpoint.kind, endpoint.base_url, endpoint.upstream_model) == (
        UpstreamEndpoint.Kind.OPENAI_COMPATIBLE,
        "http://one.internal:8000/v1",
        "served-name",
    )
    settings.UPSTREAM_BASE_URL = "http://two.internal:8000/v1"
    catalog_bootstrap()
    assert list(model.endpoints.values_list("base_url", flat=True)) == [
        "http://two.internal:8000/v1"
    ]
    model.endpoints.create(base_url="http://three.internal:8000/v1")
    _model, summary = catalog_bootstrap()
    assert "left as they are" in summary
    assert sorted(model.endpoints.values_list("base_url", flat=True)) == [
        "http://three.internal:8000/v1",
        "http://two.internal:8000/v1",
    ]
