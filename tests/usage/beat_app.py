"""The portal's Celery app with a test-only beat schedule, for ``test_beat_and_worker``.

Production keeps its static schedule (``CELERY_BEAT_SCHEDULE``: 00:00 Asia/Shanghai); this
module runs the same task every two seconds so a test can watch beat hand it to a worker.
Run as ``celery -A tests.usage.beat_app beat``.
"""

from portal.celery import app

app.conf.beat_schedule = {
    "usage-daily-reset-soon": {"task": "usage.tasks.daily_reset", "schedule": 2.0},
}
