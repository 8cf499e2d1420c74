"""Every example of the Quick Start runs, in both languages, as a reader would copy it."""

import importlib
import json
import shutil
import subprocess
import time

import pytest

from tests.docs.examples import extract_examples, installed_packages, live_platform, runnable

LANGUAGES = ["en", "zh-hans"]


def _quick_start(client, language: str) -> str:
    response = client.get(f"/docs/quick-start/?lang={language}")
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_quick_start_has_every_kind_of_example(client, settings, language):
    settings.PUBLIC_BASE_URL = "http://api.example.test"
    examples = runnable(extract_examples(_quick_start(client, language)))
    python = [e.code for e in examples if e.language == "python"]
    curl = [e.code for e in examples if e.language == "bash"]

    assert any("import requests" in code for code in python)
    assert any("from openai import OpenAI" in code and "stream=True" in code for code in python)
    assert any("from openai import OpenAI" in code and "stream=True" not in code for code in python)
    assert any("from anthropic import Anthropic" in code and ".stream(" in code for code in python)
    assert any("from anthropic import Anthropic" in code and ".create(" in code for code in python)
    assert any("/openai/v1/chat/completions" in code for code in curl)
    assert any("/anthropic/v1/messages" in code for code in curl)
    for example in examples:
        assert "YOUR_API_KEY" in example.code
        assert "http://api.example.test/" in example.code
        assert "{{" not in example.code


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_example_is_valid_python_or_shell(client, language):
    for example in runnable(extract_examples(_quick_start(client, language))):
        if example.language == "python":
            compile(example.code, "<example>", "exec")
        else:
            check = subprocess.run(
                ["bash", "-n"], input=example.code, capture_output=True, text=True
            )
            assert check.returncode == 0, (example.code, check.stderr)


@pytest.mark.django_db
@pytest.mark.parametrize("language", LANGUAGES)
def test_the_packages_the_quick_start_installs_are_the_ones_its_examples_import(client, language):
    examples = extract_examples(_quick_start(client, language))
    installs = [e for e in examples if e.is_install]
    assert len(installs) == 1
    packages = installed_packages(installs[0])
    assert sorted(packages) == ["anthropic", "openai", "requests"]
    for package in packages:
        importlib.import_module(package)  # the test environment has what the docs promise


def _check_output(example, result):
    assert result.returncode == 0, (example.code, result.stdout, result.stderr)
    output = result.stdout.strip()
    assert output, example.code
    if example.language == "bash":
        if '"stream": true' in example.code:
            assert "data: [DONE]" in output
        else:
            body = json.loads(output)
            assert "error" not in body, body
            assert body.get("choices") or body.get("content"), body


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_every_quick_start_example_runs_against_a_live_gateway(
    transactional_db, client, settings, tmp_path
):
    from django.db import connection

    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from usage.selectors import usage_today

    # A transactional test starts from empty tables: the catalog's migration row is gone.
    catalog_bootstrap()
    reader, key = account_create_with_key(email="reader@example.com")
    runs = 0
    with live_platform(connection.settings_dict, tmp_path) as base_url:
        settings.PUBLIC_BASE_URL = base_url
        for language in LANGUAGES:
            examples = runnable(extract_examples(_quick_start(client, language)))
            assert len(examples) >= 8
            for example in examples:
                assert base_url in example.code
                result = run_example_logged(example, key, tmp_path)
                _check_output(example, result)
                runs += 1
        # A stream's charge is settled just after its last event: give it a moment.
        deadline = time.monotonic() + 15
        while (today := usage_today(user=reader)).reserved_tokens and time.monotonic() < deadline:
            time.sleep(0.1)

    assert today.requests == runs
    assert today.input_tokens > 0
    assert today.output_tokens > 0
    assert today.reserved_tokens == 0


def run_example_logged(example, key, log_dir):
    from tests.docs.examples import run_example

    result = run_example(example, key)
    if result.returncode != 0:
        for name in ("uvicorn.log", "demo-upstream.log"):
            path = log_dir / name
            if path.exists():
                print(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
    # The key must not leak into what the example printed (the gateway never echoes it).
    assert key not in result.stdout
    assert key not in result.stderr
    return result


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("claude") is None, reason="Claude Code is not installed")
@pytest.mark.parametrize("language", LANGUAGES)
def test_claude_code_works_with_the_settings_json_from_the_docs(
    transactional_db, client, settings, tmp_path, language
):
    """Claude Code configured only by the docs' settings.json, checked with the docs' command."""
    import os

    from django.db import connection

    from accounts.services import account_create_with_key
    from gateway.services import catalog_bootstrap
    from usage.selectors import usage_today

    catalog_bootstrap()
    reader, key = account_create_with_key(email="claude-reader@example.com")
    with live_platform(connection.settings_dict, tmp_path) as base_url:
        settings.PUBLIC_BASE_URL = base_url
        response = client.get(f"/docs/claude-code/?lang={language}")
        examples = extract_examples(response.content.decode())
        settings_json = next(e for e in examples if e.language == "json")
        check = next(e for e in examples if e.code.lstrip().startswith("claude -p"))

        home = tmp_path / "home"
        (home / ".claude").mkdir(parents=True)
        (home / ".claude" / "settings.json").write_text(settings_json.with_key(key))
        # Nothing from this machine's environment: the settings file alone must be enough.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC", "CLAUDE"))}
        env.update(HOME=str(home), DISABLE_AUTOUPDATER="1")
        result = subprocess.run(
            ["bash", "-c", check.code],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    output = json.loads(result.stdout)
    assert output["is_error"] is False, output
    assert output["result"], output
    assert key not in result.stdout + result.stderr
    assert usage_today(user=reader).output_tokens > 0
