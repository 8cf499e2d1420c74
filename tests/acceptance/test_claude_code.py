"""Claude Code itself (npm ``@anthropic-ai/claude-code``) against a live platform.

Runs when ``claude`` is on PATH (CI installs it from npm). Claude Code probes ``HEAD /anthropic``,
then streams ``POST /anthropic/v1/messages?beta=true`` with ~76 KB of system blocks and tools
and ``max_tokens`` 32000: all of that must work for ``claude -p`` to print the model's answer.
"""

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


def claude(base_url: str, key: str, prompt: str, home) -> subprocess.CompletedProcess:
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
