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


def test_it_shows_and_sets_how_a_model_reasons(client, superuser):
    client.force_login(superuser)
    model = Model.objects.create(name="qwen3", upstream_base_url="https://llm.example.com/v1")
    listing = client.get(reverse("admin:gateway_model_changelist")).content.decode()
    assert "Not asked (reasoning parameters are dropped)" in listing
    response = client.post(
        reverse("admin:gateway_model_change", args=[model.pk]),
        {
            "name": "qwen3",
            "upstream_kind": "openai_compatible",
            "upstream_base_url": "https://llm.example.com/v1",
            "context_window": 32768,
            "max_output_tokens": 8192,
            "kind": "chat",
            "reasoning": "chat_template_kwargs",
            "enabled": "on",
            "sort_order": 0,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    model.refresh_from_db()
    assert model.reasoning == Model.Reasoning.CHAT_TEMPLATE
    assert _build()["qwen3"].reasoning == "chat_template_kwargs"


def test_strangers_to_the_admin_cannot_see_the_catalog(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:gateway_model_changelist"))
    assert response.status_code == 302
