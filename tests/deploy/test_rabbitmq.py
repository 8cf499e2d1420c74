"""Celery on RabbitMQ: the same code with ``CELERY_BROKER_URL=amqp://...``."""

import os
import uuid

import pytest

from tests.deploy.topology import BIN, Processes, django, port_answers

pytestmark = pytest.mark.slow


def test_celery_works_on_rabbitmq(tmp_path):
    if not port_answers("127.0.0.1", 5672):
        pytest.skip("RabbitMQ does not answer on 127.0.0.1:5672")
    queue = f"rabbit-{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//",
        CELERY_RESULT_BACKEND="rpc://",
        CELERY_DEFAULT_QUEUE=queue,
        VAR_DIR=str(tmp_path / "var"),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="portal.settings",
    )
    processes = Processes(tmp_path, env)
    try:
        processes.start(
            "worker",
            [f"{BIN}/celery", "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO",
             "-n", f"{queue}@%h"],
        )  # fmt: skip
        result = django(
            env,
            "from portal.tasks import ping\nresult = ping.delay('over amqp').get(timeout=60)",
            timeout=120,
        )
        assert result == "over amqp"
        # The health check's broker probe answers on RabbitMQ too.
        assert django(env, "from portal.views import _broker_ok\n_broker_ok()\nresult = True")
    finally:
        processes.stop_all()
    assert "amqp://guest:**@127.0.0.1:5672//" in processes.log("worker")
    assert "Traceback" not in processes.log("worker")
