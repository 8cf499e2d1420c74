#!/usr/bin/env bash
# Runs the whole platform in the foreground on embedded defaults: the ASGI server, a Celery
# worker and beat, and the demo upstream. Ctrl-C stops all of them.
set -uo pipefail
BIN=${BIN:-.venv/bin}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
DEMO_PORT=${DEMO_PORT:-8100}
export DEMO_UPSTREAM_URL=${DEMO_UPSTREAM_URL:-http://127.0.0.1:${DEMO_PORT}/v1}

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "Stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null
  wait
}
trap stop INT TERM EXIT

# The built-in demo upstream (an OpenAI-compatible server behind the demo model), unless the
# catalog points at a real server (UPSTREAM_BASE_URL).
if [ -z "${UPSTREAM_BASE_URL:-}" ]; then
  "$BIN/python" manage.py demo_upstream --host 127.0.0.1 --port "$DEMO_PORT" &
  pids+=($!)
fi
"$BIN/celery" -A portal worker --loglevel INFO --concurrency 2 &
pids+=($!)
"$BIN/celery" -A portal beat --loglevel INFO &
pids+=($!)
# portal.serve: uvicorn with the same server limits as production (portal.settings, WEB_*).
"$BIN/python" -m portal.serve --host "$HOST" --port "$PORT" --log-level info &
pids+=($!)

sleep 2
cat <<MSG

  ${PLATFORM_NAME:-The platform} is running at  http://$HOST:$PORT/
  Verification codes (SMS and email) are printed in this terminal.
  Model API:  http://$HOST:$PORT/openai  and  http://$HOST:$PORT/anthropic
  Press Ctrl-C to stop everything.

MSG
# Stop everything as soon as any one part exits.
wait -n
