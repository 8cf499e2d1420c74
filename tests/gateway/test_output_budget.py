"""The output budget a request asks the upstream for, before the quota caps it."""

import pytest

from gateway.selectors import CatalogModel
from gateway.serving.dialects.base import ChatRequest
from gateway.serving.errors import GatewayError
from gateway.serving.pipeline import output_budget


def _model(*, context_window=1000, max_output_tokens=300):
    return CatalogModel(
        name="m",
        description="",
        is_demo=False,
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        created=0,
        owned_by="platform",
    )


def _chat(*, input_tokens, max_tokens=None):
    return ChatRequest(
        model="m", stream=False, max_tokens=max_tokens, input_tokens=input_tokens, body=None
    )


@pytest.mark.parametrize(
    ("input_tokens", "max_tokens", "budget"),
    [
        (100, None, 300),  # absent: the model's limit
        (800, None, 200),  # absent: what still fits the context
        (999, None, 1),
        (100, 50, 50),  # asked for less than the limit: as asked
        (100, 32_000, 300),  # asked for more: clamped to the model's limit, not refused
        (700, 300, 300),  # exactly fills the context
    ],
)
def test_the_budget_is_the_request_clamped_to_the_model(input_tokens, max_tokens, budget):
    assert (
        output_budget(_chat(input_tokens=input_tokens, max_tokens=max_tokens), _model()) == budget
    )


@pytest.mark.parametrize(
    ("input_tokens", "max_tokens", "reported_max"),
    [
        (1000, None, 300),  # nothing fits: the error names the model's limit
        (1200, None, 300),
        (800, 250, 250),  # the clamped request does not fit: the error names it
        (900, 32_000, 300),
    ],
)
def test_a_budget_that_does_not_fit_the_context_is_a_400(input_tokens, max_tokens, reported_max):
    with pytest.raises(GatewayError) as refused:
        output_budget(_chat(input_tokens=input_tokens, max_tokens=max_tokens), _model())
    assert (refused.value.status, refused.value.code) == (400, "context_length_exceeded")
    assert f"{input_tokens} + {reported_max} > 1000" in refused.value.message


# --- honest estimates: refuse by the lower bound, reserve by the upper one ----------------------
def _bounded(*, input_tokens, input_tokens_min, max_tokens=None):
    return ChatRequest(
        model="m",
        stream=False,
        max_tokens=max_tokens,
        input_tokens=input_tokens,
        input_tokens_min=input_tokens_min,
        body=None,
    )


def test_a_prompt_only_the_high_estimate_finds_too_long_is_not_refused():
    # 1,200 by the high estimate, 700 by the low one, in a 1,000-token window.
    chat = _bounded(input_tokens=1200, input_tokens_min=700, max_tokens=250)
    assert output_budget(chat, _model()) == 250


def test_a_prompt_certainly_too_long_is_refused_naming_the_certain_count():
    chat = _bounded(input_tokens=1500, input_tokens_min=800, max_tokens=250)
    with pytest.raises(GatewayError) as refused:
        output_budget(chat, _model())
    assert "800 + 250 > 1000" in refused.value.message


def test_an_absent_max_tokens_fills_what_surely_fits_else_what_may():
    surely = _bounded(input_tokens=800, input_tokens_min=500)
    assert output_budget(surely, _model()) == 200
    maybe = _bounded(input_tokens=1100, input_tokens_min=900)
    assert output_budget(maybe, _model()) == 100


@pytest.mark.parametrize(
    ("input_tokens", "max_tokens", "budget", "needed"),
    [
        (800, 150, 150, False),
        (800, None, 200, False),
        (1100, 150, 150, True),
        (1100, None, 300, True),
    ],
)
def test_the_lower_bound_is_computed_only_for_a_prompt_the_upper_estimate_does_not_fit(
    input_tokens, max_tokens, budget, needed
):
    asked = []

    def estimate_min():
        asked.append(True)
        return 500

    chat = _bounded(input_tokens=input_tokens, input_tokens_min=None, max_tokens=max_tokens)
    chat.estimate_min = estimate_min
    assert output_budget(chat, _model()) == budget
    assert asked == ([True] if needed else [])
