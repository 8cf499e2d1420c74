import json
import logging

import pytest

from observability.logging import JsonFormatter, PlainFormatter, bind, redact

KEY = "sk-" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcd"


def _lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_it_writes_one_json_object_per_line(json_log):
    logging.getLogger("portal.test").warning("two\nlines", extra={"model": "demo", "tokens": 3})
    (line,) = _lines(json_log)
    assert line["level"] == "WARNING"
    assert line["logger"] == "portal.test"
    assert line["message"] == "two\nlines"
    assert line["model"] == "demo"
    assert line["tokens"] == 3
    assert line["time"].endswith("+00:00")


def test_it_leaves_out_extras_that_are_not_plain_values(json_log):
    logging.getLogger("portal.test").info("with a request", extra={"request": object()})
    (line,) = _lines(json_log)
    assert "request" not in line


def test_it_masks_keys_in_messages_arguments_and_tracebacks(json_log):
    logger = logging.getLogger("portal.test")
    logger.info("got %s", KEY)
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        logger.exception("failed")
    output = json_log.getvalue()
    assert KEY not in output
    assert KEY[:12] not in output
    lines = _lines(json_log)
    assert lines[0]["message"] == "got sk-***"
    assert "ValueError: bad key sk-***" in lines[1]["exception"]


def test_the_plain_formatter_masks_keys_too():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key=%s", (KEY,), None)
    assert KEY not in PlainFormatter().format(record)


def test_it_masks_every_key_shaped_string():
    assert redact(f"a {KEY} b {KEY}") == "a sk-*** b sk-***"
    assert redact("sk-short") == "sk-short"  # not a key: too short to be one
    assert redact(f"prefix {KEY[:12]}") == f"prefix {KEY[:12]}"  # the public prefix stays


def test_bind_outside_a_request_does_nothing(json_log):
    bind(account_id=1)
    logging.getLogger("portal.test").info("no request")
    (line,) = _lines(json_log)
    assert "account_id" not in line


def test_it_returns_a_request_id_and_puts_it_on_every_line(asgi_get, json_log, db):
    response = asgi_get("/healthz")
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    lines = _lines(json_log)
    access = [line for line in lines if line["logger"] == "portal.access"]
    assert len(access) == 1
    assert access[0]["request_id"] == request_id
    assert access[0]["status"] == response.status_code
    assert access[0]["path"] == "/healthz"
    assert access[0]["duration_ms"] >= 0


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("trace-1234abcd", True),
        ("a" * 128, True),
        ("short", False),
        ("a" * 129, False),
        ("bad id with spaces", False),
        ('"><script>', False),
    ],
)
def test_it_takes_a_sane_incoming_request_id_only(asgi_get, db, incoming, kept):
    response = asgi_get("/healthz", headers={"X-Request-ID": incoming})
    assert (response.headers["x-request-id"] == incoming) is kept


def test_it_never_logs_the_api_key_of_a_request(asgi_get, json_log, db):
    from accounts.services import account_create_with_key

    _user, key = account_create_with_key(email="logs@example.com")
    # A key in the Authorization header, in x-api-key, and pasted into a URL by mistake.
    headers = {"Authorization": f"Bearer {key}", "x-api-key": f"Authorization: Bearer {key}"}
    for path in ("/openai/v1/models", "/anthropic/v1/messages", f"/no-such-page/{key}"):
        asgi_get(path, headers=headers)
    output = json_log.getvalue()
    assert output  # the requests were logged ...
    assert key not in output  # ... without the key
    assert key[12:] not in output  # not even the secret part after the public prefix
    assert len([line for line in _lines(json_log) if line["logger"] == "portal.access"]) == 3


def test_it_puts_the_signed_in_account_on_the_access_line(asgi_get, alice, json_log):
    from django.test import Client

    client = Client()
    client.force_login(alice)
    cookie = client.cookies["sessionid"].value
    asgi_get("/keys/", headers={"Cookie": f"sessionid={cookie}"})
    (access,) = [line for line in _lines(json_log) if line["logger"] == "portal.access"]
    assert access["account_id"] == alice.pk


def test_json_formatter_output_is_valid_json_for_odd_values():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s", ("ünïcode ✓",), None)
    record.weird = float("inf")
    assert json.loads(JsonFormatter().format(record))["message"] == "ünïcode ✓"


@pytest.mark.parametrize("debug", ["true", "false"])
def test_no_configured_handler_prints_a_key_unmasked(tmp_path, debug):
    """Django's own default handlers (a raw console printer under DEBUG) are replaced too."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import logging, django; django.setup()\n"
        "try:\n"
        f"    raise RuntimeError('refused {KEY}')\n"
        "except RuntimeError:\n"
        f"    logging.getLogger('django.request').exception('Internal Server Error: /x/{KEY}')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(VAR_DIR=str(tmp_path), DEBUG=debug, DJANGO_SETTINGS_MODULE="portal.settings")
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "RuntimeError: refused sk-***" in result.stderr
    assert KEY not in result.stderr + result.stdout


def test_the_access_line_can_be_switched_off(json_log, db):
    import httpx
    from asgiref.sync import async_to_sync
    from django.core.handlers.asgi import ASGIHandler

    from observability.logging import RequestContextMiddleware

    app = RequestContextMiddleware(ASGIHandler(), access_log=False)

    async def call():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return await c.get("/no-such-page/")

    response = async_to_sync(call)()
    assert response.headers["x-request-id"]  # the id is still given
    assert not [line for line in _lines(json_log) if line["logger"] == "portal.access"]


def test_it_leaves_out_uvicorns_coloured_copy_of_the_message(json_log):
    logging.getLogger("portal.test").info("Started", extra={"color_message": "\x1b[36mStarted"})
    (line,) = _lines(json_log)
    assert "color_message" not in line
