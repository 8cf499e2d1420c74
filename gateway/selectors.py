"""Reads of the model catalog (for the gateway and for pages that list models)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.models import Model


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """One enabled model: what clients see of it and, for the gateway, where it is served."""

    name: str
    description: str
    is_demo: bool
    context_window: int
    max_output_tokens: int
    created: int
    owned_by: str
    # gateway.models.Model.Reasoning: how the upstream is asked to reason.
    reasoning: str = "none"
    # gateway.models.Model.Kind: "chat" or "embedding".
    kind: str = "chat"
    # Filled in by the gateway's catalog snapshot (gateway.serving.catalog) only.
    base_url: str = ""
    upstream_model: str = ""
    # None: stored under a key this process no longer has (gateway.serving.catalog).
    upstream_key: str | None = ""


def model_list_enabled() -> list[Model]:
    return list(Model.objects.filter(enabled=True).order_by("sort_order", "name"))


def catalog_model(model: Model, **upstream) -> CatalogModel:
    """``model`` as a ``CatalogModel``; ``upstream`` gives the serving fields."""
    return CatalogModel(
        name=model.name,
        description=model.description,
        is_demo=model.is_demo,
        context_window=model.context_window,
        max_output_tokens=model.max_output_tokens,
        created=int(model.created_at.timestamp()),
        owned_by="demo" if model.is_demo else "platform",
        reasoning=model.reasoning,
        kind=model.kind,
        **upstream,
    )
