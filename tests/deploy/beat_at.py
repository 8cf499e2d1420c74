"""Run ``celery beat`` with its clock moved to a given moment (and ticking on from there).

    python tests/deploy/beat_at.py 2026-01-01T23:59:56+08:00 -A portal beat --loglevel INFO

Lets a test watch beat fire the midnight (Asia/Shanghai) reset a few seconds after start,
without touching the static schedule. Only beat's clock moves; the workers keep real time.
"""

import datetime as dt
import sys

import time_machine


def main() -> None:
    moment = dt.datetime.fromisoformat(sys.argv[1])
    time_machine.travel(moment, tick=True).start()
    from celery.__main__ import main as celery_main

    sys.argv = ["celery", *sys.argv[2:]]
    celery_main()


if __name__ == "__main__":
    main()
