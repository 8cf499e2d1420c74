"""Codex CLI itself (npm ``@openai/codex``) against a live platform, over the Responses API.

Runs when ``codex`` is on PATH (CI installs it from npm). ``codex exec`` is pointed at the
platform by a custom provider (``wire_api = "responses"``) in a throwaway ``CODEX_HOME``; a
scripted chat-only upstream first asks for a shell command, then answers with what it printed:
the round trip runs through the Responses translation both ways.
"""

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.acceptance.scripted import scripted_upstream
from tests.docs.examples import live_platform

CODEX = shutil.which("codex")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CODEX is None, reason="Codex CLI is not installed (npm i -g @openai/codex)"),
]

MODEL = "LongCat-Flash-Chat"
KEY_VARIABLE = "PLATFORM_API_KEY"


def codex_config(base_url: str) -> str:
    return f"""\
model = "{MODEL}"
model_provider = "platform"
approval_policy = "never"
sandbox_mode = "danger-full-access"

[model_providers.platform]
name = "Model API Platform"
base_url = "{base_url}/openai/v1"
env_key = "{KEY_VARIABLE}"
wire_api = "responses"
"""


def codex(base_url: str, key: str, prompt: str, home, workdir) -> subprocess.CompletedProcess:
    codex_home = home / ".codex"
    codex_home.mkdir(parents=True, exist_ok=True)
    (codex_home / "config.toml").write_text(codex_config(base_url))
    # Only what Codex needs: no OPENAI_* or CODEX_* from the machine, a throwaway home.
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI", "CODEX"))
    }
    env.update(HOME=str(home), CODEX_HOME=str(codex_home), **{KEY_VARIABLE: key})
    return subprocess.run(
        [CODEX, "exec", "--skip-git-repo-check", "--json", prompt],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def shell_arguments(note):
    """Arguments for whichever shell tool Codex offers first (its shape changes by version)."""

    def arguments(body) -> dict:
        parameters = body["tools"][0]["function"].get("parameters") or {}
        command = (parameters.get("properties") or {}).get("command") or {}
        if command.get("type") == "array":
            return {"command": ["cat", str(note)]}
        if "cmd" in (parameters.get("properties") or {}):
            return {"cmd": f"cat {note}"}
        return {"command": f"cat {note}"}

    return arguments


def test_codex_runs_a_shell_command_through_the_responses_api(transactional_db, tmp_path):
    from django.db import connection

    from accounts.services import account_create_with_key
    from gateway.models import UpstreamEndpoint
    from gateway.services import catalog_bootstrap
    from tests.gateway.harness import DemoUpstreamThread
    from usage.models import UsageRecord

    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    note = work / "note.txt"
    note.write_text("pineapple-42\n")
    received: list = []
    upstream = DemoUpstreamThread(
        app_factory=lambda: scripted_upstream(received, shell_arguments(note))
    ).start()
    try:
        catalog_bootstrap()
        UpstreamEndpoint.objects.filter(model__name=MODEL).update(
            kind=UpstreamEndpoint.Kind.OPENAI_COMPATIBLE, base_url=upstream.url
        )
        user, key = account_create_with_key(email="codex@example.com")
        with live_platform(connection.settings_dict, tmp_path) as base_url:
            result = codex(base_url, key, f"Show me what {note.name} says.", home, work)
    finally:
        upstream.stop()

    debug = (result.stdout[-3000:], result.stderr[-3000:], [b.get("tools") for b in received][:1])
    assert result.returncode == 0, debug
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert key not in result.stdout + result.stderr
    assert len(received) >= 2, debug
    # The second upstream request carries the shell call and what the command printed.
    messages = received[1]["messages"]
    call = next(m for m in messages if m.get("tool_calls"))
    tool = next(m for m in messages if m["role"] == "tool")
    assert tool["tool_call_id"] == call["tool_calls"][0]["id"]
    assert "pineapple-42" in tool["content"], debug
    items = [e["item"] for e in events if e.get("type") == "item.completed"]
    [command] = [i for i in items if i["type"] == "command_execution"]
    assert command["exit_code"] == 0 and "pineapple-42" in command["aggregated_output"]
    [answer] = [i for i in items if i["type"] == "agent_message"]
    assert answer["text"].startswith("The tool said:") and "pineapple-42" in answer["text"]
    [done] = [e for e in events if e.get("type") == "turn.completed"]
    assert done["usage"]["cached_input_tokens"] == 128  # two turns, 64 cached each
    deadline = time.monotonic() + 10
    while UsageRecord.objects.filter(user=user, status_code=200).count() < 2:
        assert time.monotonic() < deadline, "the two turns were not recorded"
        time.sleep(0.1)
    assert {r.endpoint for r in UsageRecord.objects.filter(user=user)} == {"openai.responses"}
