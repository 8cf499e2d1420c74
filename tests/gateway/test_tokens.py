from hypothesis import given
from hypothesis import strategies as st

from gateway.demo_upstream import prompt_tokens
from gateway.serving.tokens import estimate_chat_tokens, estimate_text_tokens

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
