"""Claude Code itself (npm ``@anthropic-ai/claude-code``) against a live platform.

Runs when ``claude`` is on PATH (CI installs it from npm). Claude Code probes ``HEAD /anthropic``,
then streams ``POST /anthropic/v1/messages?beta=true`` with ~76 KB of system blocks and tools
and ``max_tokens`` 32000: all of that must work for ``claude -p`` to print the model's answer.
"""

import base64
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.docs.examples import live_platform

CLAUDE = shutil.which("claude")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CLAUDE is None, reason="Claude Code is not installed (npm i -g @anthropic-ai/claude-code)"
    ),
]

MODEL = "LongCat-Flash-Chat"


@pytest.fixture
def platform(transactional_db, tmp_path):
    from django.db import connection

    from gateway.services import catalog_bootstrap

    catalog_bootstrap()  # a transactional test starts from empty tables
    with live_platform(connection.settings_dict, tmp_path) as base_url:
        yield base_url


def claude(
    base_url: str, key: str, prompt: str, home, *, extra_env=None
) -> subprocess.CompletedProcess:
    home.mkdir(exist_ok=True)
    # Only what Claude Code needs: no ANTHROPIC_* from the machine, a throwaway HOME.
    env = {name: value for name, value in os.environ.items() if not name.startswith("ANTHROPIC")}
    env.update(
        HOME=str(home),
        ANTHROPIC_BASE_URL=f"{base_url}/anthropic",
        ANTHROPIC_AUTH_TOKEN=key,
        ANTHROPIC_MODEL=MODEL,
        DISABLE_TELEMETRY="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_AUTOUPDATER="1",
    )
    env.update(extra_env or {})
    return subprocess.run(
        [CLAUDE, "-p", prompt, "--output-format", "json"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_claude_code_answers_through_the_gateway_and_the_usage_is_recorded(platform, tmp_path):
    from accounts.services import account_create_with_key
    from usage.models import UsageRecord
    from usage.selectors import usage_today

    user, key = account_create_with_key(email="claude-code@example.com")
    result = claude(platform, key, "say hello", tmp_path / "home")
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    output = json.loads(result.stdout)
    assert output["is_error"] is False, output
    assert output["result"].startswith("This is the demo model"), output
    assert key not in result.stdout + result.stderr

    deadline = time.monotonic() + 10
    while not (rows := list(UsageRecord.objects.filter(user=user))):
        assert time.monotonic() < deadline, "no usage record was written"
        time.sleep(0.1)
    answered = [r for r in rows if r.status_code == 200]
    assert answered, [(r.status_code, r.error_code) for r in rows]
    assert {r.endpoint for r in rows} == {"anthropic.messages"}
    assert all(r.stream for r in answered)
    assert output["usage"]["output_tokens"] == sum(r.output_tokens for r in answered)
    # What the Usage page shows for today.
    today = usage_today(user=user)
    assert today.requests == len(rows)
    assert today.output_tokens == sum(r.output_tokens for r in rows)
    assert today.reserved_tokens == 0


def test_claude_code_stops_at_once_on_a_bad_key(platform, tmp_path):
    started = time.monotonic()
    result = claude(platform, "sk-" + "0" * 43, "say hello", tmp_path / "home")
    # x-should-retry: false keeps Claude Code from retrying a 401 ten times with back-off.
    assert time.monotonic() - started < 60
    output = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    assert result.returncode != 0 or output.get("is_error") is True, result.stdout[-2000:]


def scripted_upstream(received: list):
    """An OpenAI-compatible upstream that asks for Claude Code's Read tool on the first turn and,
    once the tool's result comes back, answers with what it read."""
    from aiohttp import web

    async def chat(request):
        body = await request.json()
        received.append(body)
        last = body["messages"][-1]
        if last["role"] == "tool":
            delta = {"content": f"The note says: {last['content'][-200:]}"}
            finish = "stop"
        else:
            path = body["messages"][-1]["content"].split("READ ")[-1].split()[0]
            arguments = json.dumps({"file_path": path})
            delta = {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_read_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": arguments},
                    }
                ]
            }
            finish = "tool_calls"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for choice in (
            {"index": 0, "delta": delta, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": finish},
        ):
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": 100, "completion_tokens": 12}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def test_claude_code_runs_a_tool_through_the_translation_and_answers(transactional_db, tmp_path):
    from django.db import connection

    from accounts.services import account_create_with_key
    from gateway.models import UpstreamEndpoint
    from gateway.services import catalog_bootstrap
    from tests.gateway.harness import DemoUpstreamThread
    from usage.models import UsageRecord

    received: list = []
    upstream = DemoUpstreamThread(app_factory=lambda: scripted_upstream(received)).start()
    try:
        catalog_bootstrap()
        UpstreamEndpoint.objects.filter(model__name=MODEL).update(
            kind=UpstreamEndpoint.Kind.OPENAI_COMPATIBLE, base_url=upstream.url
        )
        user, key = account_create_with_key(email="claude-tools@example.com")
        home = tmp_path / "home"
        home.mkdir()
        note = home / "note.txt"
        note.write_text("pineapple-42\n")
        with live_platform(connection.settings_dict, tmp_path) as base_url:
            result = claude(base_url, key, f"READ {note} and tell me what it says", home)
    finally:
        upstream.stop()

    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    output = json.loads(result.stdout)
    assert "pineapple-42" in output["result"], output
    assert len(received) == 2
    # The second upstream request carries the assistant's call and the tool's result, paired.
    messages = received[1]["messages"]
    call = next(m for m in messages if m.get("tool_calls"))
    assert call["tool_calls"][0]["id"] == "call_read_1"
    assert call["tool_calls"][0]["function"]["name"] == "Read"
    tool = next(m for m in messages if m["role"] == "tool")
    assert tool["tool_call_id"] == "call_read_1"
    assert "pineapple-42" in tool["content"]
    assert messages.index(tool) == messages.index(call) + 1
    deadline = time.monotonic() + 10
    while UsageRecord.objects.filter(user=user, status_code=200).count() < 2:
        assert time.monotonic() < deadline, "the two turns were not recorded"
        time.sleep(0.1)


def thinking_upstream(received: list):
    """An upstream with a reasoning parser (as vLLM's): it thinks aloud in ``reasoning_content``
    on every turn, asks for Claude Code's Read tool on the first, and once the tool's result
    comes back answers with the end of everything it was sent after its call."""
    from aiohttp import web

    async def chat(request):
        body = await request.json()
        received.append(body)
        messages = body["messages"]
        called = next((i for i, m in enumerate(messages) if m.get("tool_calls")), None)
        chunks = [{"reasoning_content": "The user wants the file read; "}]
        if called is None:
            path = messages[-1]["content"].split("READ ")[-1].split()[0]
            chunks += [
                {"reasoning_content": "I will use the Read tool."},
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_read_pdf",
                            "type": "function",
                            "function": {
                                "name": "Read",
                                "arguments": json.dumps({"file_path": path}),
                            },
                        }
                    ]
                },
            ]
            finish = "tool_calls"
        else:
            after = json.dumps(messages[called + 1 :], ensure_ascii=False)
            found = "pineapple-pdf-42" if "pineapple-pdf-42" in after else "nothing"
            chunks += [
                {"reasoning_content": "it has come back."},
                {"content": f"The PDF says {found}."},
            ]
            finish = "stop"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in chunks:
            choice = {"index": 0, "delta": delta, "finish_reason": None}
            await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        choice = {"index": 0, "delta": {}, "finish_reason": finish}
        await response.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        usage = {"prompt_tokens": 100, "completion_tokens": 20}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def test_claude_code_thinks_and_reads_a_pdf_through_the_gateway(transactional_db, tmp_path):
    """Thinking on (MAX_THINKING_TOKENS): the upstream is asked to think the way the catalog
    says, its reasoning reaches Claude Code as signed thinking blocks, and the second turn —
    which carries that thinking and the PDF Claude Code read back — is accepted."""
    from django.db import connection

    from accounts.services import account_create_with_key
    from gateway.models import Model, UpstreamEndpoint
    from gateway.services import catalog_bootstrap
    from tests.gateway.anthropic.test_request_translation import _pdf
    from tests.gateway.harness import DemoUpstreamThread
    from usage.models import UsageRecord

    received: list = []
    upstream = DemoUpstreamThread(app_factory=lambda: thinking_upstream(received)).start()
    try:
        catalog_bootstrap()
        UpstreamEndpoint.objects.filter(model__name=MODEL).update(
            kind=UpstreamEndpoint.Kind.OPENAI_COMPATIBLE, base_url=upstream.url
        )
        Model.objects.filter(name=MODEL).update(reasoning=Model.Reasoning.CHAT_TEMPLATE)
        user, key = account_create_with_key(email="claude-thinks@example.com")
        home = tmp_path / "home"
        home.mkdir()
        document = home / "report.pdf"
        document.write_bytes(base64.b64decode(_pdf("pineapple-pdf-42")))
        with live_platform(connection.settings_dict, tmp_path) as base_url:
            result = claude(
                base_url,
                key,
                f"READ {document} and tell me what it says",
                home,
                extra_env={"MAX_THINKING_TOKENS": "4096"},
            )
    finally:
        upstream.stop()

    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    output = json.loads(result.stdout)
    assert output["result"] == "The PDF says pineapple-pdf-42.", output
    assert len(received) == 2
    assert all(body["chat_template_kwargs"] == {"enable_thinking": True} for body in received)
    deadline = time.monotonic() + 10
    while UsageRecord.objects.filter(user=user).count() < 2:
        assert time.monotonic() < deadline, "the two turns were not recorded"
        time.sleep(0.1)
    assert [r.status_code for r in UsageRecord.objects.filter(user=user)] == [200, 200]
