"""Reads of the model catalog (for the gateway and for pages that list models)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.models import Model, UpstreamEndpoint


@dataclass(frozen=True, slots=True)
class CatalogEndpoint:
    """One upstream endpoint as the gateway's snapshot holds it (key decrypted)."""

    # None: the implicit endpoint of a model that has no endpoint rows (its own fields).
    id: int | None
    kind: str
    base_url: str
    upstream_model: str
    # None: stored under a key this process no longer has (gateway.serving.catalog).
    upstream_key: str | None = ""
    priority: int = 0
    weight: int = 1
    max_concurrency: int | None = None
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    # An OpenAI-compatible server that also serves the Responses API (``/responses``).
    responses_api: bool = False

    @property
    def is_demo(self) -> bool:
        return self.kind == UpstreamEndpoint.Kind.DEMO

    @property
    def is_anthropic(self) -> bool:
        return self.kind == UpstreamEndpoint.Kind.ANTHROPIC

    @property
    def label(self) -> str:
        """For logs and metrics: the id and host, never a path or key."""
        host = urlsplit(self.base_url).netloc or self.kind
        return f"{self.id if self.id is not None else '-'}:{host}"


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
    # gateway.models.Model.TokenCounter, and the tokenizer file it may name.
    token_counter: str = "heuristic"  # noqa: S105 - a counter's name, not a secret
    tokenizer_file: str = ""
    # Filled in by the gateway's catalog snapshot (gateway.serving.catalog) only: the enabled
    # endpoints, best priority first.
    endpoints: tuple[CatalogEndpoint, ...] = ()
    # Aliases the operator marked listed (shown in /v1/models).
    listed_aliases: tuple[str, ...] = ()


def model_list_enabled(*, aliases: bool = True) -> list[Model]:
    """Enabled models with their endpoints (one more query) and, unless ``aliases`` is False,
    their aliases (another) prefetched."""
    related = ("endpoints", "aliases") if aliases else ("endpoints",)
    return list(
        Model.objects.filter(enabled=True).prefetch_related(*related).order_by("sort_order", "name")
    )


def endpoint_list(*, model_name: str | None = None) -> list[UpstreamEndpoint]:
    queryset = UpstreamEndpoint.objects.select_related("model").order_by(
        "model__sort_order", "model__name", "priority", "id"
    )
    if model_name is not None:
        queryset = queryset.filter(model__name=model_name)
    return list(queryset)


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
        token_counter=model.token_counter,
        tokenizer_file=model.tokenizer_file,
        **upstream,
    )
