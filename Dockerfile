# syntax=docker/dockerfile:1
# One image for every part of the platform; compose.yaml runs it as web (uvicorn, several
# workers), Celery worker, Celery beat and the one-shot migration step.
#   docker build -t llm-portal .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=portal.settings \
    DEBUG=false \
    VAR_DIR=/app/var \
    STATIC_ROOT=/app/staticfiles \
    HOST=0.0.0.0 \
    PORT=8000

WORKDIR /app
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin app

# Dependencies first: this layer is rebuilt only when a lock changes. Every runtime package
# has a binary wheel for this platform, so no compiler is needed; every file is checked against
# the lock's hashes. The SMS providers' SDKs are optional: SMS_EXTRAS names the ones to add
# (comma-separated: sms-aliyun, sms-tencent, sms-twilio, or sms for all three), e.g.
#   docker build --build-arg SMS_EXTRAS=sms-aliyun -t llm-portal .
# Default: none, which is enough for SMS_BACKEND=console and email-only sign-in. An image
# without the SDK of the configured SMS_BACKEND fails `manage.py check` (accounts.E002).
ARG SMS_EXTRAS=""
# TOKENIZERS=1 adds the tokenizers package, for models that count input tokens with their own
# tokenizer.json (README, "Upstream pools").
ARG TOKENIZERS=""
COPY requirements.lock requirements-sms-aliyun.lock requirements-sms-tencent.lock \
     requirements-sms-twilio.lock requirements-tokenizers.lock ./
RUN pip install --require-hashes -r requirements.lock \
 && for extra in $(echo "$SMS_EXTRAS" | tr ',' ' '); do \
      case "$extra" in \
        sms) locks="requirements-sms-aliyun.lock requirements-sms-tencent.lock requirements-sms-twilio.lock" ;; \
        sms-aliyun|sms-tencent|sms-twilio) locks="requirements-$extra.lock" ;; \
        *) echo "SMS_EXTRAS: unknown extra '$extra' (sms, sms-aliyun, sms-tencent, sms-twilio)" >&2; exit 1 ;; \
      esac; \
      for lock in $locks; do pip install --require-hashes -r requirements.lock -r "$lock" || exit 1; done; \
    done \
 && if [ -n "$TOKENIZERS" ]; then \
      pip install --require-hashes -r requirements.lock -r requirements-tokenizers.lock; \
    fi

# The code belongs to root and is read-only to the app user; only var/ is writable.
COPY . .

# Static files are collected (hashed, compressed) into the image. The settings demand secrets
# when DEBUG=false, so this one step gets throwaway values that never reach the final image.
RUN SECRET_KEY=build-only-not-used-at-run-time \
    KEY_ENCRYPTION_KEY=build-only-not-used-at-run-time \
    API_KEY_HMAC_SECRET=build-only-not-used-at-run-time \
    ALLOWED_HOSTS=build.invalid \
    VAR_DIR=/tmp/build-var \
    python manage.py collectstatic --noinput -v1 \
 && rm -rf /tmp/build-var \
 && mkdir -p /app/var \
 && chown app:app /app/var

USER app
EXPOSE 8000

# Only meaningful for the web server; compose.yaml gives the worker its own and turns it off
# for beat and the migration step.
HEALTHCHECK --interval=30s --timeout=6s --start-period=30s --retries=3 \
  CMD ["python", "scripts/healthcheck.py"]

# uvicorn through portal.serve (with the WEB_* limits from the settings), uvloop + httptools,
# WEB_WORKERS processes (default: one per CPU).
CMD ["bash", "scripts/serve-web.sh"]
