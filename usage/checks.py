"""System checks for the usage settings."""

from __future__ import annotations

import math

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def cached_input_token_weight_check(app_configs, **kwargs) -> list:
    """A weight outside 0..1 would make cached input cost more than uncached (or refund it)."""
    weight = settings.CACHED_INPUT_TOKEN_WEIGHT
    if isinstance(weight, int | float) and math.isfinite(weight) and 0 <= weight <= 1:
        return []
    return [
        checks.Error(
            f"CACHED_INPUT_TOKEN_WEIGHT must be a number from 0 to 1 (it is {weight!r}).",
            hint="1 charges cached input tokens in full (the default), 0.1 a tenth, 0 nothing.",
            id="usage.E001",
        )
    ]
