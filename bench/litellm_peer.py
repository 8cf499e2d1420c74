"""A peer in the gateway benchmark: LiteLLM's proxy over the same demo upstream and load.

Installed by the benchmark into its own throwaway virtualenv (``var/bench/litellm-venv``,
never the project's), started with one worker and a master key, and measured exactly like the
gateway and the bare proxy (server CPU from /proc, here summed over the proxy's process tree).

Budgets stay off, and the figure says so: LiteLLM enforces key and proxy budgets only with its
database, which it reaches through Prisma, and Prisma downloads its query engine from
binaries.prisma.sh on first use — not reachable from an offline machine. LiteLLM's figure is
therefore what it costs without any spend tracking, a lower bound for the comparison.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from bench.gateway import BASE_DIR, TICKS, free_port, wait_for_port

VERSION = "1.108.7"
VENV = BASE_DIR / "var" / "bench" / "litellm-venv"
MASTER_KEY = "sk-bench-litellm-master"


def install() -> Path | None:
    """The venv's python with LiteLLM's proxy installed, or None (with the reason printed)."""
    python = VENV / "bin" / "python"
    marker = VENV / f".litellm-{VERSION}"
    if marker.exists():
        return python
    print(f"  installing litellm[proxy]=={VERSION} into {VENV} (once) ...", flush=True)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"litellm[proxy]=={VERSION}"],
            check=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"  LiteLLM skipped: it could not be installed ({exc})")
        return None
    marker.touch()
    return python


def tree_cpu_seconds(pid: int) -> float:
    """User + system time of ``pid`` and every live descendant (LiteLLM may fork workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
        todo.extend(children.get(current, []))
    return total


def start(upstream: str, model: str, env: dict) -> tuple[subprocess.Popen, int] | None:
    python = install()
    if python is None:
        return None
    config = Path(tempfile.mkdtemp(prefix="bench-litellm-")) / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}\n"
        "      api_key: none\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n"
        "  set_verbose: false\n"
        "  telemetry: false\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            str(python.parent / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        cwd=config.parent,
        # Offline: the price list ships with the package instead of being fetched. Without
        # our DATABASE_URL, which LiteLLM would take for its own (Prisma) database: that needs
        # an engine downloaded at run time, and the proxy refuses to start without it.
        env={
            **{name: value for name, value in env.items() if name != "DATABASE_URL"},
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process, timeout=180)
    except RuntimeError as exc:
        process.kill()
        print(f"  LiteLLM skipped: its proxy did not start ({exc})")
        return None
    return process, port
