"""Error reporting: off (and not even imported) without SENTRY_DSN; with it, events reach the
server and carry no API key."""

import gzip
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from portal.sentry import scrub_event

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210_-wxyz"

pytestmark = pytest.mark.slow


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.pop("SENTRY_DSN", None)
    env.update(VAR_DIR=str(tmp_path / "var"), **extra)
    return env


def test_it_does_not_even_import_the_sdk_without_a_dsn(tmp_path):
    code = "import django, sys; django.setup(); print('sentry_sdk' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


class _FakeSentry(BaseHTTPRequestHandler):
    received: list  # set per server

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append((self.path, body.decode("utf-8", "replace")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


_REPORT = f"""
import logging, django, sentry_sdk
django.setup()
try:
    raise RuntimeError("upstream refused key {KEY}")
except RuntimeError:
    logging.getLogger("gateway.serving.upstream").exception("the upstream call failed")
sentry_sdk.flush(timeout=10)
"""


def test_it_reports_errors_to_the_dsn_without_the_key(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeSentry)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dsn = f"http://publickey@127.0.0.1:{server.server_port}/42"
        result = subprocess.run(
            [sys.executable, "-c", _REPORT], env=_env(tmp_path, SENTRY_DSN=dsn),
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    events = [body for path, body in server.received if path.startswith("/api/42/")]
    assert any("RuntimeError" in body for body in events), (server.received, result.stderr)
    assert all(KEY not in body for body in events)
    assert any("upstream refused key sk-***" in body for body in events)


def test_scrub_event_masks_keys_everywhere():
    event = {
        "message": f"key {KEY}",
        "extra": {"nested": [KEY, {"deeper": f"Bearer {KEY}"}], "count": 3},
        "breadcrumbs": ({"message": KEY},),
    }
    scrubbed = scrub_event(event)
    assert KEY not in repr(scrubbed)
    assert scrubbed["extra"]["count"] == 3
