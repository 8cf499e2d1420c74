"""``python -m portal.serve [uvicorn options]``: uvicorn serving ``portal.asgi`` with the
server limits from ``portal.settings`` (one place: ``WEB_*`` in ``.env.example``).

Every launcher goes through here (``scripts/serve-web.sh`` for the container and ``make
run-prod``, ``scripts/run-dev.sh`` for ``make run``), so that no way of starting the server
leaves it without limits. Options given on the command line come after ours and win.
"""

from __future__ import annotations

import os
import sys

APPLICATION = "portal.asgi:application"
PROTOCOL = "portal.server:LimitedHttpToolsProtocol"


def limit_options(settings) -> list[str]:
    return [
        # Past this many connections or requests in flight a worker answers 503 at once,
        # instead of queueing (and opening database connections for) an unbounded burst.
        "--limit-concurrency",
        str(settings.WEB_LIMIT_CONCURRENCY),
        "--backlog",
        str(settings.WEB_BACKLOG),
        "--timeout-keep-alive",
        str(settings.WEB_KEEP_ALIVE_SECONDS),
        # httptools plus the head size and time limits it lacks (portal.server); the h11
        # option bounds the same for anyone who picks --http h11.
        "--http",
        PROTOCOL,
        "--h11-max-incomplete-event-size",
        str(settings.WEB_MAX_HEADER_BYTES),
    ]


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    # Worker processes import the application (and the settings) again; the current
    # directory must be importable for them as it is for uvicorn's own command.
    sys.path.insert(0, os.getcwd())
    import uvicorn
    from django.conf import settings

    uvicorn.main.main(args=[APPLICATION, *limit_options(settings), *argv], prog_name="uvicorn")


if __name__ == "__main__":
    main(sys.argv[1:])
