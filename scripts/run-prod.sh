#!/usr/bin/env bash
# The production topology on one machine (`make run-prod`): migrations, static files and the
# deploy checks first, then one or more uvicorn servers (each with several workers), one or more
# Celery workers and exactly one beat, all on PostgreSQL and Redis. Ctrl-C or SIGTERM stops
# everything; so does any one part exiting.
#
#   WEB_PORTS ("8000")        one uvicorn server per port, e.g. "8000 8001" behind a balancer
#   WEB_WORKERS (2)           uvicorn worker processes per server
#   CELERY_WORKERS (1)        Celery worker instances; CELERY_CONCURRENCY (2) processes each
#   RUN_BEAT (true)           false only where another machine runs the one beat
#   SKIP_MIGRATE (false)      true where another step already migrated
#   HOST (127.0.0.1)          the address the servers bind
# Settings come from the environment and .env (the environment wins), as for the app itself.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}

if [ -f .env ]; then
  while IFS='=' read -r name value; do
    [[ "$name" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
    [ -n "${!name+set}" ] && continue
    value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
    export "$name=$value"
  done <.env
fi

export DEBUG=${DEBUG:-false}
case "$DEBUG" in
  [Ff]alse | 0 | [Nn]o | [Oo]ff) ;;
  *) echo "run-prod: DEBUG must be false (production settings); use make run for development" >&2; exit 2 ;;
esac
HOST=${HOST:-127.0.0.1}
WEB_PORTS=${WEB_PORTS:-8000}
WEB_WORKERS=${WEB_WORKERS:-2}
CELERY_WORKERS=${CELERY_WORKERS:-1}
CELERY_CONCURRENCY=${CELERY_CONCURRENCY:-2}
RUN_BEAT=${RUN_BEAT:-true}
VAR_DIR=${VAR_DIR:-var}

case "${DATABASE_URL:-}" in
  postgres://* | postgresql://* | pgsql://*) ;;
  *) echo "run-prod: set DATABASE_URL to PostgreSQL (postgres://user:password@host:5432/db)" >&2; exit 2 ;;
esac
case "${REDIS_URL:-}" in
  redis://* | rediss://*) ;;
  *) echo "run-prod: set REDIS_URL (redis://host:6379/0): rate limits and the cache are shared there" >&2; exit 2 ;;
esac

manage() { "$BIN/python" manage.py "$@"; }
if [ "${SKIP_MIGRATE:-false}" != "true" ]; then
  manage migrate --noinput || exit 1
  if [ -n "${UPSTREAM_BASE_URL:-}" ]; then
    manage bootstrap_demo || exit 1  # point the default model at UPSTREAM_BASE_URL
  fi
fi
manage collectstatic --noinput -v0 || exit 1
# Refuses development secrets, an empty ALLOWED_HOSTS and the like (warnings are printed);
# --database: also stored secrets that no configured KEY_ENCRYPTION_KEY decrypts.
manage check --deploy --database default --fail-level ERROR || exit 1

pids=()
stop() {
  trap - INT TERM EXIT
  echo "run-prod: stopping..." >&2
  kill -TERM "${pids[@]}" 2>/dev/null
  wait
}
trap stop INT TERM EXIT

for port in $WEB_PORTS; do
  metrics_dir=
  case "${METRICS_ENABLED:-false}" in
    [Tt]rue | 1 | [Yy]es | [Oo]n) metrics_dir="$VAR_DIR/prometheus/web-$port" ;;
  esac
  HOST=$HOST PORT=$port WEB_WORKERS=$WEB_WORKERS BIN=$BIN \
    PROMETHEUS_MULTIPROC_DIR=$metrics_dir bash scripts/serve-web.sh &
  pids+=($!)
done
for n in $(seq "$CELERY_WORKERS"); do
  "$BIN/celery" -A portal --quiet worker --loglevel INFO --concurrency "$CELERY_CONCURRENCY" \
    -n "worker$n@%h" &
  pids+=($!)
done
if [ "$RUN_BEAT" = "true" ]; then
  # Exactly one beat for the whole deployment: two would send every scheduled task twice.
  "$BIN/celery" -A portal --quiet beat --loglevel INFO &
  pids+=($!)
fi

echo "run-prod: serving on $(for p in $WEB_PORTS; do printf 'http://%s:%s/ ' "$HOST" "$p"; done)" >&2
wait -n
