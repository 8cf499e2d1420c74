import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.db import connection
from django.utils import timezone

from portal.celery import app as celery_app
from usage.models import DailyRollup, DailyUsage, QuotaReset, Reservation

from .conftest import record_request, reserve

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))


def test_the_static_entry_fires_at_midnight_beijing_time():
    entry = settings.CELERY_BEAT_SCHEDULE["usage-daily-reset"]
    assert entry["task"] == "usage.tasks.daily_reset"
    assert celery_app.conf.timezone == "Asia/Shanghai"
    schedule = entry["schedule"]
    schedule.app = celery_app
    last_run = dt.datetime(2026, 3, 1, 16, 0, 5, tzinfo=dt.UTC)  # just after 00:00 on March 2
    with time_machine.travel(dt.datetime(2026, 3, 2, 15, 59, 59, tzinfo=dt.UTC), tick=False):
        due, _next = schedule.is_due(last_run)
        assert not due
    with time_machine.travel(dt.datetime(2026, 3, 2, 16, 0, 1, tzinfo=dt.UTC), tick=False):
        due, _next = schedule.is_due(last_run)
        assert due


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_beat_hands_the_daily_reset_to_a_real_worker(tmp_path, alice):
    yesterday = timezone.now() - dt.timedelta(days=1)
    record_request(alice, input_tokens=70, output_tokens=7, when=yesterday, rollup=False)
    stale = reserve(alice, 900, when=timezone.now() - dt.timedelta(hours=2))

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL")}
    # Same database as this test; an embedded broker of its own in a fresh VAR_DIR.
    env.update(VAR_DIR=str(tmp_path), DATABASE_URL=_database_url(), PYTHONUNBUFFERED="1")
    worker = subprocess.Popen(
        [CELERY, "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO",
         "-n", f"usage-test-{os.getpid()}@%h"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    beat = subprocess.Popen(
        [CELERY, "-A", "tests.usage.beat_app", "beat", "--loglevel", "INFO",
         "--schedule", str(tmp_path / "beat-schedule")],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not QuotaReset.objects.exists():
            assert worker.poll() is None and beat.poll() is None, "a Celery process exited"
            time.sleep(0.5)
    finally:
        for process in (beat, worker):
            process.terminate()
        outputs = [p.communicate(timeout=30)[0] for p in (beat, worker)]
    beat_log, worker_log = outputs
    run = QuotaReset.objects.order_by("started_at").first()
    assert run is not None, f"no reset ran\n--- beat\n{beat_log}\n--- worker\n{worker_log}"
    assert "Sending due task usage-daily-reset-soon (usage.tasks.daily_reset)" in beat_log
    assert "usage.tasks.daily_reset" in worker_log and "succeeded" in worker_log
    assert "Traceback" not in worker_log, worker_log
    assert (run.reservations_released, run.tokens_released) == (1, 900)
    assert not Reservation.objects.exists()
    assert DailyUsage.objects.get(user=alice, day=stale.day).reserved_tokens == 0
    slot = DailyRollup.objects.get(user=alice, day=run.day)
    assert (slot.requests, slot.input_tokens, slot.output_tokens) == (1, 70, 7)
