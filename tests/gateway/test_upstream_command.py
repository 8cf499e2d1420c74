"""manage.py upstream: list, add, set and disable a model's endpoints from the shell."""

import pytest
from django.core.management import CommandError, call_command

from gateway.models import UpstreamEndpoint
from gateway.serving.catalog import _build
from keys import crypto

MODEL = "LongCat-Flash-Chat"


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("upstream", *args, stdout=out)
    return out.getvalue()


def test_add_set_disable_and_list_reach_the_catalog(demo_model, monkeypatch):
    monkeypatch.setenv("GPU_A_KEY", "sk-gpu-a")
    out = run(
        "add", MODEL, "http://gpu-a.internal:8000/v1/", "--upstream-model", "longcat",
        "--key-env", "GPU_A_KEY", "--priority", "0", "--weight", "3", "--max-concurrency", "64",
    )  # fmt: skip
    endpoint = UpstreamEndpoint.objects.get(base_url="http://gpu-a.internal:8000/v1")
    assert f"Added endpoint {endpoint.pk}" in out
    assert (endpoint.weight, endpoint.max_concurrency, endpoint.upstream_model) == (
        3,
        64,
        "longcat",
    )
    assert crypto.decrypt_secret(endpoint.api_key_encrypted) == "sk-gpu-a"

    run("set", str(endpoint.pk), "--weight", "5", "--priority", "1")
    endpoint.refresh_from_db()
    assert (endpoint.weight, endpoint.priority) == (5, 1)
    served = {e.id: e for e in _build()[MODEL].endpoints}
    assert served[endpoint.pk].upstream_key == "sk-gpu-a" and served[endpoint.pk].weight == 5

    listing = run("list")
    assert "gpu-a.internal" in listing and "sk-gpu-a" not in listing
    assert endpoint.api_key_encrypted not in listing

    run("disable", str(endpoint.pk))
    assert endpoint.pk not in {e.id for e in _build()[MODEL].endpoints}
    assert "disabled" in run("list", "--model", MODEL)
    run("set", str(endpoint.pk), "--enable")
    assert endpoint.pk in {e.id for e in _build()[MODEL].endpoints}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "no-such-model", "http://x.internal/v1"), "No model named 'no-such-model'"),
        (("add", MODEL, "not a url"), "base_url"),
        (("add", MODEL, "ftp://x.internal/v1"), "http:// or https://"),
        (("add", MODEL), "A base URL is required"),
        (("add", MODEL, "http://x.internal/v1", "--weight", "0"), "weight"),
        (("add", MODEL, "http://x.internal/v1", "--max-concurrency", "0"), "max_concurrency"),
        (("add", MODEL, "http://x.internal/v1", "--key-env", "UNSET_VAR_FOR_TEST"), "not set"),
        (("set", "999999", "--weight", "2"), "No upstream endpoint with ID 999999"),
        (("disable", "999999"), "No upstream endpoint with ID 999999"),
        (("list", "--model", "no-such-model"), "No model named"),
    ],
)
def test_mistakes_are_refused_clearly_and_change_nothing(demo_model, args, message):
    before = list(UpstreamEndpoint.objects.values_list("pk", "base_url", "weight", "enabled"))
    with pytest.raises(CommandError, match=message):
        run(*args)
    after = list(UpstreamEndpoint.objects.values_list("pk", "base_url", "weight", "enabled"))
    assert after == before


def test_a_demo_endpoint_needs_no_url(demo_model):
    run("add", MODEL, "--kind", "demo", "--weight", "2")
    assert UpstreamEndpoint.objects.filter(model__name=MODEL, kind="demo", weight=2).exists()
