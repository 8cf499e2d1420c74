#!/usr/bin/env bash
# Serves the portal and the model API with uvicorn and several worker processes, as in
# production: the container's command (Dockerfile) and one server of `make run-prod`.
#
#   HOST (0.0.0.0)  PORT (8000)  WEB_WORKERS (CPU count)  BIN (empty: programs on PATH)
#   WEB_* limits: read by portal.serve from portal.settings (see .env.example).
#   PROMETHEUS_MULTIPROC_DIR: where the workers share their metrics (one folder per server).
#   FORWARDED_ALLOW_IPS: proxies trusted for X-Forwarded-For/-Proto (uvicorn reads it itself).
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${HOST:-0.0.0.0}
PORT=${PORT:-8000}
WEB_WORKERS=${WEB_WORKERS:-$(nproc 2>/dev/null || echo 2)}
PYTHON=${BIN:+$BIN/}python

if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
  # Counts from an earlier run of this server would otherwise be added to the new ones.
  mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete
fi

# The same default as portal.settings: JSON lines unless DEBUG is on.
case "${DEBUG:-true}" in
  [Ff]alse | 0 | [Nn]o | [Oo]ff) default_format=json ;;
  *) default_format=plain ;;
esac
log_args=()
if [ "${LOG_FORMAT:-$default_format}" = "json" ]; then
  # JSON from uvicorn's own start-up lines too, before Django takes over the logging.
  log_args=(--log-config portal/uvicorn_logging.json)
fi

# portal.serve: uvicorn with the server limits from portal.settings (WEB_LIMIT_CONCURRENCY,
# WEB_KEEP_ALIVE_SECONDS, WEB_MAX_HEADER_BYTES, WEB_HEADER_TIMEOUT_SECONDS, WEB_BACKLOG) and
# httptools with the head limits uvicorn lacks; the options below come after them.
# --no-access-log: observability.logging writes the access line (with request id, account, key prefix).
# The graceful timeout lets streams in flight finish on a deploy.
exec "$PYTHON" -m portal.serve \
  --host "$HOST" --port "$PORT" --workers "$WEB_WORKERS" \
  --loop uvloop \
  --no-access-log --timeout-graceful-shutdown "${WEB_GRACEFUL_SECONDS:-30}" \
  "${log_args[@]}"
