"""Development secrets, generated once into ``var/`` so that a fresh clone runs with no set-up.

Production takes every secret from the environment; ``portal.checks`` refuses to start
with ``DEBUG=false`` while any of them still comes from here.
"""

import base64
import contextlib
import json
import os
import secrets
from pathlib import Path

_GENERATORS = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(50),
    "API_KEY_HMAC_SECRET": lambda: secrets.token_urlsafe(32),
    # A Fernet key: 32 url-safe base64-encoded bytes.
    "KEY_ENCRYPTION_KEY": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
}


def dev_secret(var_dir: Path, name: str) -> str:
    path = var_dir / "dev-secrets.json"
    if not path.exists():
        _create(path)
    return json.loads(path.read_text())[name]


def _create(path: Path) -> None:
    """Write all secrets to a private temp file, then link it into place.

    ``os.link`` fails if the file exists, so when the web server, the worker and beat
    start together exactly one set of secrets wins and every process reads that one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({name: make() for name, make in _GENERATORS.items()}, f)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink()
