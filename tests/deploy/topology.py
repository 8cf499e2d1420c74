"""Real processes for the deployment tests: a fresh PostgreSQL database, the production
topology started by ``scripts/run-prod.sh``, the demo upstream, a beat whose clock is moved,
readiness by polling ``/healthz``, and a teardown that always ends every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = str(Path(sys.executable).parent)
STOP_GRACE_SECONDS = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def production_secrets() -> dict[str, str]:
    return {
        "SECRET_KEY": uuid.uuid4().hex + uuid.uuid4().hex + "-topology-test",
        "KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "API_KEY_HMAC_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
    }


class FreshDatabase:
    """A new, empty PostgreSQL database beside the one ``DATABASE_URL`` names."""

    def __init__(self, database_url: str):
        import psycopg

        self._psycopg = psycopg
        parts = urlsplit(database_url)
        self.name = f"deploy_topo_{uuid.uuid4().hex[:10]}"
        self._admin_url = urlunsplit(parts._replace(path="/postgres"))
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))

    def create(self) -> FreshDatabase:
        with self._psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        with self._psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class Processes:
    """Started process groups, each logging to its own file; ``stop_all`` ends every one."""

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        self.env = env
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], **extra_env) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **extra_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: children are stopped with it
        )
        process.log_file = log
        self.started[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def logs(self) -> str:
        return "".join(self.log(name) for name in self.started)

    def stop_all(self) -> list[str]:
        """TERM every group, wait, KILL what is left. Returns the names that had to be killed."""
        for process in self.started.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        killed = []
        for name, process in self.started.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(name)
            # Whatever is left of the group (workers of a server that exited) goes too.
            _signal_group(process, signal.SIGKILL)
            if process.poll() is None:
                process.wait(timeout=10)
            process.log_file.close()
        return killed

    def any_alive(self) -> list[str]:
        """Names whose process group still has a live member. Zombies do not count: a killed
        server's children are reparented to init, which may reap them a moment later, and
        ``killpg(pgid, 0)`` would still see them."""
        groups = _live_process_groups()
        return [name for name, process in self.started.items() if process.pid in groups]


def _live_process_groups() -> set[int]:
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rpartition(")")[2].split()[:3]
        if state != "Z":
            groups.add(int(pgrp))
    return groups


def _signal_group(process: subprocess.Popen, sig) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def http(
    method: str,
    url: str,
    *,
    headers: dict | None = None,
    body: dict | None = None,
    timeout: float = 60,
) -> tuple[int, dict, bytes]:
    """One request without proxies; returns (status, headers, body) for every status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_healthy(port: int, processes: Processes, *, timeout: float = 240) -> dict:
    """Poll ``/healthz`` until it answers 200; fail early (with the logs) if a process died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name, process in processes.started.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited ({process.returncode}):\n{processes.logs()}")
        try:
            status, _headers, body = http("GET", f"http://127.0.0.1:{port}/healthz", timeout=5)
        except OSError as exc:
            last = repr(exc)
        else:
            last = body.decode(errors="replace")
            if status == 200:
                return json.loads(body)
        time.sleep(0.5)
    raise AssertionError(f"port {port} never became healthy ({last}):\n{processes.logs()}")


def django(env: dict[str, str], code: str, *, timeout: float = 120):
    """Run ``code`` in a Django process with ``env``; it sets ``result``, returned as JSON."""
    program = (
        "import json, django\ndjango.setup()\nresult = None\n"
        + code
        + "\nprint('RESULT:' + json.dumps(result, default=str))\n"
    )
    done = subprocess.run(
        [PYTHON, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise AssertionError(f"django helper failed:\n{done.stdout}\n{done.stderr}")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("RESULT:"))
    return json.loads(line.removeprefix("RESULT:"))
