"""Run ``celery beat`` with its clock set just before the next midnight in Beijing.

    python -m tests.deploy.beat_at SECONDS -A portal beat --loglevel INFO

The clock is moved when beat starts its scheduler (the ``beat_init`` signal), to SECONDS before
the next 00:00 Asia/Shanghai, and ticks on from there; so however long start-up takes, beat fires
the midnight reset a few seconds later. The static schedule is untouched, and only beat's clock
moves: the workers keep real time.
"""

import datetime as dt
import sys
from zoneinfo import ZoneInfo

import time_machine


def _before_next_midnight_in_beijing(seconds: float) -> dt.datetime:
    beijing = ZoneInfo("Asia/Shanghai")
    now = dt.datetime.now(beijing)
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(0), tzinfo=beijing)
    return midnight - dt.timedelta(seconds=seconds)


def main() -> None:
    seconds = float(sys.argv[1])
    from celery.__main__ import main as celery_main
    from celery.signals import beat_init

    @beat_init.connect(weak=False)
    def move_the_clock(**kwargs):
        time_machine.travel(_before_next_midnight_in_beijing(seconds), tick=True).start()

    sys.argv = ["celery", *sys.argv[2:]]
    celery_main()


if __name__ == "__main__":
    main()
