"""The catalog's admin: the reasoning field is shown, set, and reaches the gateway's snapshot."""

import pytest
from django.urls import reverse

from gateway.models import Model
from gateway.serving.catalog import _build


@pytest.fixture
def superuser(db):
    from accounts.services import account_create

    return account_create(
        email="root@example.com", password="a-root-password", is_staff=True, is_superuser=True
    )


def _inline_forms(endpoints=(), aliases=()):
    """The admin's inline formsets: new endpoints and aliases given as dicts of fields."""
    data = {}
    for prefix, rows in (("endpoints", endpoints), ("aliases", aliases)):
        data.update(
            {
                f"{prefix}-TOTAL_FORMS": str(len(rows)),
                f"{prefix}-INITIAL_FORMS": "0",
                f"{prefix}-MIN_NUM_FORMS": "0",
                f"{prefix}-MAX_NUM_FORMS": "1000",
            }
        )
        for index, row in enumerate(rows):
            data.update({f"{prefix}-{index}-{field}": value for field, value in row.items()})
    return data


MODEL_FIELDS = {
    "name": "qwen3",
    "context_window": 32768,
    "max_output_tokens": 8192,
    "kind": "chat",
    "reasoning": "chat_template_kwargs",
    "token_counter": "heuristic",
    "enabled": "on",
    "sort_order": 0,
}


def test_it_shows_and_sets_how_a_model_reasons(client, superuser):
    client.force_login(superuser)
    model = Model.objects.create(name="qwen3", upstream_base_url="https://llm.example.com/v1")
    listing = client.get(reverse("admin:gateway_model_changelist")).content.decode()
    assert "Not asked (reasoning parameters are dropped)" in listing
    response = client.post(
        reverse("admin:gateway_model_change", args=[model.pk]),
        {**MODEL_FIELDS, **_inline_forms()},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    model.refresh_from_db()
    assert model.reasoning == Model.Reasoning.CHAT_TEMPLATE
    assert _build()["qwen3"].reasoning == "chat_template_kwargs"


def test_endpoints_and_aliases_are_edited_inline_and_the_key_never_shown(client, superuser):
    client.force_login(superuser)
    model = Model.objects.create(name="qwen3")
    endpoint = {"kind": "openai_compatible", "priority": 0, "weight": 3, "enabled": "on"}
    response = client.post(
        reverse("admin:gateway_model_change", args=[model.pk]),
        {
            **MODEL_FIELDS,
            **_inline_forms(
                endpoints=[
                    {**endpoint, "base_url": "https://a.example.com/v1", "api_key": "sk-inline"},
                    {**endpoint, "base_url": "", "upstream_model": "x"},
                ],
                aliases=[{"name": "qwen-latest", "listed": "on"}],
            ),
        },
    )
    # The second endpoint has no URL: refused, nothing saved.
    assert response.status_code == 200
    assert "A base URL is required for this kind." in response.content.decode()
    assert not model.endpoints.exists()
    response = client.post(
        reverse("admin:gateway_model_change", args=[model.pk]),
        {
            **MODEL_FIELDS,
            **_inline_forms(
                endpoints=[
                    {**endpoint, "base_url": "https://a.example.com/v1", "api_key": "sk-inline"}
                ],
                aliases=[{"name": "qwen-latest", "listed": "on"}],
            ),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    saved = model.endpoints.get()
    assert (saved.base_url, saved.weight) == ("https://a.example.com/v1", 3)
    assert saved.api_key_encrypted and "sk-inline" not in saved.api_key_encrypted
    page = client.get(reverse("admin:gateway_model_change", args=[model.pk])).content.decode()
    assert "sk-inline" not in page and saved.api_key_encrypted not in page
    snapshot = _build()
    assert snapshot["qwen-latest"] is snapshot["qwen3"]
    assert snapshot["qwen3"].endpoints[0].upstream_key == "sk-inline"
    assert snapshot["qwen3"].listed_aliases == ("qwen-latest",)


def test_strangers_to_the_admin_cannot_see_the_catalog(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:gateway_model_changelist"))
    assert response.status_code == 302


def test_an_anthropic_endpoint_is_added_inline_but_not_to_an_embedding_model(client, superuser):
    client.force_login(superuser)
    model = Model.objects.create(name="claude")
    endpoint = {
        "kind": "anthropic",
        "base_url": "https://api.anthropic.com",
        "upstream_model": "claude-sonnet-4-5",
        "priority": 0,
        "weight": 1,
        "enabled": "on",
    }
    url = reverse("admin:gateway_model_change", args=[model.pk])
    embedding = {**MODEL_FIELDS, "name": "claude", "kind": "embedding"}
    response = client.post(url, {**embedding, **_inline_forms(endpoints=[endpoint])})
    assert response.status_code == 200
    assert "An embedding model cannot be served by an Anthropic endpoint." in (
        response.content.decode()
    )
    assert not model.endpoints.exists()
    chat = {**MODEL_FIELDS, "name": "claude"}
    response = client.post(url, {**chat, **_inline_forms(endpoints=[endpoint])})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert _build()["claude"].endpoints[0].is_anthropic


def test_it_refuses_a_tokenizer_file_that_does_not_load(client, superuser, tmp_path):
    client.force_login(superuser)
    model = Model.objects.create(name="qwen3", upstream_base_url="https://llm.example.com/v1")
    url = reverse("admin:gateway_model_change", args=[model.pk])
    fields = {**MODEL_FIELDS, "token_counter": "file", **_inline_forms()}
    missing = str(tmp_path / "tokenizer.json")
    response = client.post(url, {**fields, "tokenizer_file": missing})
    assert response.status_code == 200
    assert "could not be loaded as a tokenizer" in response.content.decode()
    model.refresh_from_db()
    assert model.token_counter == "heuristic"


def test_an_openai_endpoint_is_marked_as_serving_the_responses_api_and_no_other(client, superuser):
    client.force_login(superuser)
    model = Model.objects.create(name="gpt")
    endpoint = {
        "kind": "anthropic",
        "base_url": "https://api.example.com/v1",
        "priority": 0,
        "weight": 1,
        "enabled": "on",
        "responses_api": "on",
    }
    url = reverse("admin:gateway_model_change", args=[model.pk])
    fields = {**MODEL_FIELDS, "name": "gpt"}
    response = client.post(url, {**fields, **_inline_forms(endpoints=[endpoint])})
    assert response.status_code == 200
    assert "Only an OpenAI-compatible server can serve the Responses API." in (
        response.content.decode()
    )
    assert not model.endpoints.exists()
    endpoint["kind"] = "openai_compatible"
    response = client.post(url, {**fields, **_inline_forms(endpoints=[endpoint])})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert model.endpoints.get().responses_api
    assert _build()["gpt"].endpoints[0].responses_api
