import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.demo_upstream import prompt_tokens
from gateway.serving.tokens import (
    estimate_chat_tokens,
    estimate_text_tokens,
    estimate_text_tokens_min,
)

messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}
    ),
    min_size=1,
    max_size=5,
)


@given(messages)
def test_it_never_estimates_less_than_the_demo_upstream_counts(messages):
    # Reservations must cover what the demo charges, or concurrent requests could overshoot.
    assert estimate_chat_tokens(messages) >= prompt_tokens(messages)


def test_it_counts_about_a_token_per_three_ascii_characters_and_one_per_cjk_character():
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("Hello, world!") == 13 // 3 + 1
    assert estimate_text_tokens("你好世界") == 4 + 1
    assert estimate_text_tokens("abc你好") == 1 + 2 + 1


def test_it_counts_tools_and_images():
    text = [{"role": "user", "content": "describe"}]
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        }
    ]
    assert estimate_chat_tokens(image) > estimate_chat_tokens(text) + 700
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    assert estimate_chat_tokens(text, tools=tools) > estimate_chat_tokens(text)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog. " * 20,
        "def handler(request):\n    return JsonResponse({'ok': True})\n" * 10,
        "模型接口平台的每日额度在北京时间午夜重置。" * 10,
        "Mixed 中文 and English 文本 with code `x = 1`." * 10,
    ],
)
def test_the_lower_bound_is_below_the_upper_estimate(text):
    from gateway.serving.tokens import estimate_text_tokens_min

    low, high = estimate_text_tokens_min(text), estimate_text_tokens(text)
    assert 0 < low < high
    # An English text at about 4 characters a token lies between the two.
    if text.isascii():
        assert low <= len(text) / 4 <= high


def test_the_chat_lower_bound_walks_the_same_messages():
    from gateway.serving.tokens import estimate_chat_tokens_min

    messages = [{"role": "user", "content": "word " * 600}]
    assert estimate_chat_tokens_min(messages) < estimate_chat_tokens(messages)
    assert estimate_chat_tokens_min([]) == estimate_chat_tokens([])  # the overhead alone


def test_a_run_of_indentation_is_not_counted_as_many_tokens_by_the_lower_bound():
    # A BPE vocabulary has single tokens for long runs of spaces: deeply indented code must
    # not look "certainly" longer than the model's context.
    flat = "if x:\n return y\n" * 100
    indented = "if x:\n" + "".join(
        " " * 24 + "return y\n" + " " * 20 + "if x:\n" for _ in range(50)
    )
    assert estimate_text_tokens_min(indented) <= estimate_text_tokens_min(flat) + 2
    assert estimate_text_tokens_min(" " * 600) <= 1
