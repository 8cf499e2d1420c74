"""Run the daily reset in this process and stop dead after it closes its first day.

``python tests/reliability/reset_until_killed.py``: prints ``closed <day>`` after the first
day's rollups commit, then sleeps until the test kills it with SIGKILL (as an OOM killer or a
lost machine would kill a Celery worker mid-task).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

import django

django.setup()

from usage.ledger import upkeep  # noqa: E402

_finalise = upkeep.usage_day_finalise


def _finalise_then_hang(*, day):
    corrected = _finalise(day=day)
    print(f"closed {day.isoformat()}", flush=True)
    time.sleep(600)
    return corrected


upkeep.usage_day_finalise = _finalise_then_hang
upkeep.usage_daily_reset()
