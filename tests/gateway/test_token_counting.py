"""A model's own tokenizer in place of the estimate: the server's /tokenize (vLLM's chat form,
SGLang's prompt form), a tokenizer.json file, and the estimate standing in whenever either
cannot answer."""

import asyncio
import json
import logging

import pytest
from django.core.exceptions import ValidationError

from gateway.models import Model
from tests.gateway.harness import DemoUpstreamThread

LONG_PROMPT = "word " * 400  # far past a 100-token context by any estimate


class TokenizingServer:
    """The demo upstream's chat completions, and a /tokenize whose answer a test sets:
    ``count`` for the chat form, or for the prompt form only when ``chat_form`` is False;
    ``status`` to fail. Keeps the bodies /tokenize received."""

    def __init__(self):
        self.count = 20
        self.status = 200
        self.chat_form = True
        self.delay = 0.0
        self.asked: list[dict] = []
        self.thread = DemoUpstreamThread(app_factory=self._app).start()
        self.url = self.thread.url

    def _app(self):
        from aiohttp import web

        from gateway.demo_upstream import chat_completions

        async def tokenize(request):
            body = await request.json()
            self.asked.append(body)
            await asyncio.sleep(self.delay)
            if self.status != 200:
                return web.json_response({"error": "no"}, status=self.status)
            if "messages" in body and not self.chat_form:
                return web.json_response({"error": "prompt expected"}, status=400)
            return web.json_response({"count": self.count, "max_model_len": 100, "tokens": []})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat_completions)
        app.router.add_post("/tokenize", tokenize)
        return app


@pytest.fixture
def server():
    started = TokenizingServer()
    try:
        yield started
    finally:
        started.thread.stop()


@pytest.fixture
def small_model(demo_model, server, gateway_settings):
    """The demo model with a 100-token context, served by ``server``, counting with it."""
    gateway_settings.GATEWAY_TOKENIZE_RETRY_SECONDS = 60
    demo_model.context_window = 100
    demo_model.max_output_tokens = 10
    demo_model.token_counter = Model.TokenCounter.UPSTREAM
    demo_model.save()
    demo_model.endpoints.all().delete()
    demo_model.endpoints.create(base_url=server.url)
    return demo_model


def ask(gw, key, content=LONG_PROMPT, **extra):
    return gw.chat(
        key,
        {
            "model": "LongCat-Flash-Chat",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 10,
            **extra,
        },
    )


def error_code(result):
    return json.loads(result.body)["error"]["code"] if result.status != 200 else "ok"


def test_the_servers_count_replaces_the_estimate_both_ways(gw, alice_key, server, small_model):
    _user, key = alice_key
    assert error_code(ask(gw, key)) == "ok"  # 20 tokens by the tokenizer, not ~400
    server.count = 95  # a short prompt the model's tokenizer finds too long: 95 + 10 > 100
    assert error_code(ask(gw, key, content="Hi")) == "context_length_exceeded"
    # The server was asked with the chat messages and tools it is about to get (vLLM's form).
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    ask(gw, key, content="Hi", tools=tools)
    assert server.asked[-1]["messages"] == [{"role": "user", "content": "Hi"}]
    assert server.asked[-1]["tools"] == tools
    assert server.asked[-1]["add_generation_prompt"] is True


def test_the_anthropic_dialect_is_counted_in_the_chat_form_too(gw, alice_key, server, small_model):
    _user, key = alice_key
    result = gw.chat(
        key,
        {
            "model": "LongCat-Flash-Chat",
            "system": "Be brief.",
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": 10,
        },
        path="/anthropic/v1/messages",
        headers={"anthropic-version": "2023-06-01"},
    )
    assert result.status == 200, result.body
    assert server.asked[-1]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_server_that_takes_only_a_prompt_is_asked_so(gw, alice_key, server, small_model):
    _user, key = alice_key
    server.chat_form = False
    assert error_code(ask(gw, key)) == "ok"
    assert "messages" in server.asked[0] and server.asked[1]["prompt"].startswith("word word")
    # The form is remembered: the next request asks once, in the prompt form.
    ask(gw, key)
    assert len(server.asked) == 3 and "prompt" in server.asked[2]


@pytest.mark.parametrize("status", [404, 500])
def test_a_server_without_a_working_tokenize_is_left_alone_and_the_estimate_stands(
    gw, alice_key, server, small_model, status, caplog
):
    _user, key = alice_key
    server.status = status
    with caplog.at_level(logging.WARNING, logger="gateway.serving.counting"):
        # The estimate finds the long prompt too long, as it would without a tokenizer.
        assert error_code(ask(gw, key)) == "context_length_exceeded"
        asked = len(server.asked)
        assert error_code(ask(gw, key, content="Hi")) == "ok"
    assert len(server.asked) == asked  # not asked again within the retry interval
    assert sum("/tokenize failed" in r.getMessage() for r in caplog.records) == 1


def test_a_slow_tokenize_is_given_up_for_the_estimate(
    gw, alice_key, server, small_model, gateway_settings
):
    _user, key = alice_key
    gateway_settings.GATEWAY_TOKENIZE_TIMEOUT_SECONDS = 0.05
    server.delay = 5
    # Had the server's 20 tokens been waited for, the long prompt would fit.
    assert error_code(ask(gw, key)) == "context_length_exceeded"
    assert len(server.asked) == 1


@pytest.fixture
def tokenizer_file(tmp_path):
    """A tiny word-level tokenizer.json: one token per whitespace-separated word."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, "word": 1, "hi": 2}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    return str(path)


def test_a_tokenizer_file_counts_each_word_once(gw, alice_key, small_model, tokenizer_file):
    _user, key = alice_key
    small_model.token_counter = Model.TokenCounter.FILE
    small_model.tokenizer_file = tokenizer_file
    small_model.save()
    # 40 words: 40 + the estimate's 4 per message and 3 per request = 47, well inside 100.
    assert error_code(ask(gw, key, content="word " * 40)) == "ok"
    # 90 words: 97 + 10 output tokens > 100, though the estimate's lower bound (~75) fits.
    assert error_code(ask(gw, key, content="word " * 90)) == "context_length_exceeded"


def test_an_unloadable_tokenizer_file_is_refused_in_the_admin_and_skipped_at_run_time(
    gw, alice_key, small_model, tmp_path, caplog
):
    _user, key = alice_key
    small_model.token_counter = Model.TokenCounter.FILE
    small_model.tokenizer_file = str(tmp_path / "missing.json")
    with pytest.raises(ValidationError) as refused:
        small_model.full_clean()
    assert "tokenizer_file" in refused.value.message_dict
    small_model.save()  # written past the admin: the gateway falls back to the estimate
    with caplog.at_level(logging.ERROR, logger="gateway.serving.counting"):
        assert error_code(ask(gw, key, content="Hi")) == "ok"
        assert error_code(ask(gw, key, content="Hi")) == "ok"
    assert sum("cannot be loaded" in r.getMessage() for r in caplog.records) == 1


def test_a_tokenizer_file_counts_an_image_at_the_estimates_fixed_cost(tokenizer_file):
    from gateway.serving.counting import TokenCounter
    from gateway.serving.tokens import IMAGE_TOKENS

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi word"}, image]}]
    counted = TokenCounter(upstream=None)._count_with_file(tokenizer_file, messages, None)
    assert counted == 2 + IMAGE_TOKENS + 4 + 3


def test_count_tokens_answers_the_models_own_count(gw, alice_key, server, small_model):
    _user, key = alice_key
    server.count = 42
    result = gw.chat(
        key,
        {"model": "LongCat-Flash-Chat", "messages": [{"role": "user", "content": "Hi"}]},
        path="/anthropic/v1/messages/count_tokens",
        headers={"anthropic-version": "2023-06-01"},
    )
    assert result.status == 200, result.body
    assert json.loads(result.body) == {"input_tokens": 42}
    assert server.asked[-1]["messages"] == [{"role": "user", "content": "Hi"}]


def test_the_prompt_form_counts_an_image_at_the_estimates_fixed_cost():
    from gateway.serving.counting import _joined_text
    from gateway.serving.tokens import IMAGE_TOKENS

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    prompt, overhead = _joined_text(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}, image]}], None
    )
    assert prompt == "Hi" and overhead == 3 + 4 + IMAGE_TOKENS
