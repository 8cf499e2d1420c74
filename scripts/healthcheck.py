"""Container health check: GET /healthz from this container's own server; exit 0 when healthy.

Sends a Host header the server accepts (the first of ALLOWED_HOSTS), so that the check passes
with production settings too. Standard library only: it runs every 30 seconds.
"""

import os
import sys
import urllib.request

TIMEOUT_SECONDS = 5


def main() -> int:
    port = os.environ.get("PORT", "8000")
    hosts = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = next((h.lstrip(".") for h in hosts if h != "*"), "localhost")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": host})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            healthy = response.status == 200
    except Exception as exc:  # any failure (refused, timeout, 503) means unhealthy
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
