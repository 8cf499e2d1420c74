"""Static files in production: collected with hashed names, compressed, cached for a year."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# What the test asks of the production server, run in a process with production settings.
_PROBE = """
import json, django
django.setup()
from django.template import Context, Template
from django.test import Client

url = Template("{% load static %}{% static 'css/portal.css' %}").render(Context())
client = Client()
hashed = client.get(url, secure=True, headers={"Accept-Encoding": "gzip"})
plain = client.get("/static/css/portal.css", secure=True)
print(json.dumps({
    "url": url,
    "hashed": {"status": hashed.status_code, "headers": dict(hashed.headers)},
    "plain": {"status": plain.status_code, "headers": dict(plain.headers)},
}))
"""


def production_env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DEBUG="false",
        SECRET_KEY="x" * 20 + "test-only-secret-key-with-enough-variety-0123456789",
        KEY_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        API_KEY_HMAC_SECRET="h" * 16 + "0123456789abcdefghij",
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        VAR_DIR=str(tmp_path / "var"),
        STATIC_ROOT=str(tmp_path / "static"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def test_production_static_files_are_hashed_compressed_and_cached_for_a_year(tmp_path):
    env = production_env(tmp_path)
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert collect.returncode == 0, collect.stderr
    static_root = tmp_path / "static"
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    hashed_name = manifest["css/portal.css"]
    assert re.fullmatch(r"css/portal\.[0-9a-f]{12}\.css", hashed_name)
    assert (static_root / hashed_name).exists()
    assert (static_root / f"{hashed_name}.gz").exists()

    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    assert result["url"] == f"/static/{hashed_name}"
    hashed = result["hashed"]
    assert hashed["status"] == 200
    assert hashed["headers"]["Content-Encoding"] == "gzip"
    cache_control = hashed["headers"]["Cache-Control"]
    assert "immutable" in cache_control
    assert int(re.search(r"max-age=(\d+)", cache_control).group(1)) >= 365 * 24 * 3600
    # The unhashed name still works (for links outside templates) but is not cached for long.
    plain = result["plain"]
    assert plain["status"] == 200
    assert int(re.search(r"max-age=(\d+)", plain["headers"]["Cache-Control"]).group(1)) <= 3600
