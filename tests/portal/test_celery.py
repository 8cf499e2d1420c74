import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def _env(var_dir, **extra):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1", **extra)
    return env


def _send_ping_and_wait(env, payload):
    code = (
        "import django; django.setup(); from portal.tasks import ping; "
        f"print(ping.delay({payload!r}).get(timeout=60))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=90
    )


def _broker_envs():
    yield pytest.param({}, id="embedded")
    redis_url = os.environ.get("REDIS_URL")
    yield pytest.param(
        {"REDIS_URL": redis_url} if redis_url else None,
        id="redis",
        marks=pytest.mark.skipif(not redis_url, reason="REDIS_URL is not set"),
    )


@pytest.mark.parametrize("extra_env", list(_broker_envs()))
def test_a_real_worker_process_executes_a_task(tmp_path, extra_env):
    # A queue of its own: the shared Redis may hold tasks other tests' servers queued for a
    # database this worker does not have.
    queue = f"test-{os.getpid()}-{time.monotonic_ns()}"
    env = _env(tmp_path, CELERY_DEFAULT_QUEUE=queue, **extra_env)
    worker = subprocess.Popen(
        [CELERY, "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO",
         "-n", f"test-{os.getpid()}@%h", "-Q", queue],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        result = _send_ping_and_wait(env, "hello from the test")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().splitlines()[-1] == "hello from the test"
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
    assert "Traceback" not in output, output


def test_beat_starts_and_loads_the_static_schedule(tmp_path):
    from django.conf import settings

    from portal.celery import app

    assert app.conf.timezone == "Asia/Shanghai"
    assert app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
    beat = subprocess.Popen(
        [CELERY, "-A", "portal", "beat", "--loglevel", "DEBUG"],
        env=_env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(beat.stdout), daemon=True)
    reader.start()
    try:
        # Beat logs its whole schedule at DEBUG once it has loaded it; wait for that, not a guess.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(
            any(name in line for line in lines) for name in settings.CELERY_BEAT_SCHEDULE
        ):
            assert beat.poll() is None, "".join(lines)
            time.sleep(0.2)
    finally:
        beat.terminate()
        beat.wait(timeout=30)
        reader.join(timeout=10)
    output = "".join(lines)
    assert "beat: Starting..." in output
    for name in settings.CELERY_BEAT_SCHEDULE:
        assert name in output, output
    assert "Traceback" not in output, output


# --- the embedded broker under concurrent producers and consumers --------------------------

MESSAGES_PER_PRODUCER = 300


def _produce(folder, producer):
    from kombu import Connection

    import portal.celery  # noqa: F401  (registers the portalfs transport)

    opts = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "c"}
    with Connection("portalfs://", transport_options=opts) as conn:
        queue = conn.SimpleQueue("loop")
        for i in range(MESSAGES_PER_PRODUCER):
            # Payloads large enough that a reader could catch a write half done.
            queue.put({"id": f"{producer}-{i}", "pad": "x" * 20_000})
        queue.close()


def _consume(folder, out_path, stop_after_idle_seconds=3.0):
    from queue import Empty

    from kombu import Connection

    import portal.celery  # noqa: F401

    opts = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "c"}
    seen = []
    with Connection("portalfs://", transport_options=opts) as conn:
        queue = conn.SimpleQueue("loop")
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < stop_after_idle_seconds:
            try:
                message = queue.get(block=True, timeout=0.05)
            except Empty:
                continue
            assert len(message.payload["pad"]) == 20_000
            seen.append(message.payload["id"])
            message.ack()
            idle_since = time.monotonic()
        queue.close()
    Path(out_path).write_text(json.dumps(seen))


BIND_ROUNDS = 60


def _bind_and_read(folder, name, start_together, rounds=BIND_ROUNDS):
    from kombu import Connection

    from portal.celery_broker import Channel

    opts = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "c"}
    with Connection("portalfs://", transport_options=opts) as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        # A new exchange each round: every process races to create its table at once.
        for n in range(rounds):
            start_together.wait(timeout=20)
            channel._queue_bind(f"x{n}", name, None, name)
            assert name in {q.queue for q in channel.get_table(f"x{n}")}


def test_concurrent_bindings_never_tear_the_exchange_table(tmp_path):
    # kombu's own filesystem transport truncates the table file before locking it: a process
    # binding a queue while another read the table crashed with a JSONDecodeError.
    folder = str(tmp_path / "queue")
    os.makedirs(folder)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    workers = [
        ctx.Process(target=_bind_and_read, args=(folder, f"p{n}", barrier)) for n in range(4)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    from kombu import Connection

    import portal.celery  # noqa: F401

    opts = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "c"}
    with Connection("portalfs://", transport_options=opts) as conn:
        tables = [conn.default_channel.get_table(f"x{n}") for n in range(BIND_ROUNDS)]
    # No binding lost either (a late creator used to truncate an early one's entry away).
    assert all({q.queue for q in table} == {f"p{p}" for p in range(4)} for table in tables)


def test_the_embedded_broker_never_loses_duplicates_or_tears_messages(tmp_path):
    folder = str(tmp_path / "queue")
    os.makedirs(folder)
    ctx = multiprocessing.get_context("spawn")
    consumers = [
        ctx.Process(target=_consume, args=(folder, tmp_path / f"seen-{n}.json")) for n in range(3)
    ]
    producers = [ctx.Process(target=_produce, args=(folder, n)) for n in range(3)]
    for process in consumers + producers:
        process.start()
    for process in producers + consumers:
        process.join(timeout=120)
        assert process.exitcode == 0
    seen = []
    for n in range(3):
        seen += json.loads((tmp_path / f"seen-{n}.json").read_text())
    expected = {f"{p}-{i}" for p in range(3) for i in range(MESSAGES_PER_PRODUCER)}
    assert len(seen) == len(expected)  # nothing delivered twice
    assert set(seen) == expected  # nothing lost
