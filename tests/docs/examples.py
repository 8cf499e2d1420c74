"""Pull the code examples out of a rendered docs page and run them as a reader would.

The examples are taken from the HTML the portal serves (after variables are filled in and
Pygments has highlighted them), so the test sees exactly the text a reader copies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from docs.rendering import KEY_PLACEHOLDER
from tests.acceptance.live import stop_process

BASE_DIR = Path(__file__).resolve().parents[2]
EXAMPLE_TIMEOUT_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class Example:
    language: str  # the fenced block's language: python, bash, json …
    code: str

    @property
    def is_install(self) -> bool:
        return self.language == "bash" and self.code.lstrip().startswith("pip install")

    def with_key(self, key: str) -> str:
        return self.code.replace(KEY_PLACEHOLDER, key)


class _CodeBlocks(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.examples: list[Example] = []
        self._in_pre = False
        self._language: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self._in_pre = True
        elif tag == "code" and self._in_pre:
            classes = (dict(attrs).get("class") or "").split()
            languages = [c.removeprefix("language-") for c in classes if c.startswith("language-")]
            self._language = languages[0] if languages else "text"
            self._text = []

    def handle_endtag(self, tag):
        if tag == "code" and self._language is not None:
            self.examples.append(Example(self._language, "".join(self._text)))
            self._language = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._language is not None:
            self._text.append(data)


def extract_examples(html: str) -> list[Example]:
    parser = _CodeBlocks()
    parser.feed(html)
    return parser.examples


def runnable(examples: list[Example]) -> list[Example]:
    """The examples a reader runs against the API: Python scripts and curl commands."""
    return [
        e
        for e in examples
        if e.language == "python" or (e.language == "bash" and e.code.lstrip().startswith("curl"))
    ]


def installed_packages(example: Example) -> list[str]:
    """The packages a ``pip install …`` example names."""
    words = shlex.split(example.code.strip())
    return [w for w in words[2:] if not w.startswith("-")]


def run_example(example: Example, key: str) -> subprocess.CompletedProcess:
    """Run one example with ``key`` in place of the placeholder, as its own process."""
    suffix = ".py" if example.language == "python" else ".sh"
    with tempfile.NamedTemporaryFile("w", suffix=suffix, delete=False, encoding="utf-8") as f:
        f.write(example.with_key(key))
        path = f.name
    try:
        command = [sys.executable, path] if example.language == "python" else ["bash", path]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT_SECONDS,
            env=env,
            cwd=tempfile.gettempdir(),
        )
    finally:
        os.unlink(path)


# --- a live platform: uvicorn serving portal.asgi and the demo upstream, both real processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL for the test database the current process uses."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    from urllib.parse import quote

    user = quote(settings_dict.get("USER") or "")
    password = quote(settings_dict.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


def _wait_until_up(url: str, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def live_platform(settings_dict: dict, log_dir: Path):
    """Start the demo upstream and the portal + gateway under uvicorn on free ports, on the
    test database; yield the base URL; stop both however the test ends."""
    demo_port, app_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(settings_dict),
        "DEMO_UPSTREAM_URL": f"http://127.0.0.1:{demo_port}/v1",
        "UPSTREAM_BASE_URL": "",
        "DEBUG": "true",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Generous limits: the examples must not trip over each other or other tests.
        "RATE_LIMIT_RPM": "10000",
        "RATE_LIMIT_TPM": "100000000",
        "PYTHONUNBUFFERED": "1",
    }
    processes = []
    try:
        with open(log_dir / "demo-upstream.log", "wb") as demo_log:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "demo_upstream", "--port", str(demo_port)],
                    cwd=BASE_DIR,
                    env=env,
                    stdout=demo_log,
                    stderr=subprocess.STDOUT,
                )
            )
        with open(log_dir / "uvicorn.log", "wb") as app_log:
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "portal.asgi:application",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(app_port),
                        "--log-level",
                        "warning",
                    ],
                    cwd=BASE_DIR,
                    env=env,
                    stdout=app_log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 60
        _wait_until_up(f"http://127.0.0.1:{demo_port}/v1/models", processes[0], deadline)
        _wait_until_up(f"http://127.0.0.1:{app_port}/anthropic", processes[1], deadline)
        yield f"http://127.0.0.1:{app_port}"
    finally:
        for process in reversed(processes):
            stop_process(process)
