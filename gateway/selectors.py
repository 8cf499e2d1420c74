"""Reads of the model catalog (for the gateway and for pages that list models)."""

from gateway.models import Model


def model_list_enabled() -> list[Model]:
    return list(Model.objects.filter(enabled=True).order_by("sort_order", "name"))
