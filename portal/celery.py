import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

# The embedded broker for `make run` (no Redis, no RabbitMQ): kombu's filesystem
# transport, made safe against its write/read race (see portal.celery_broker).
TRANSPORT_ALIASES["portalfs"] = "portal.celery_broker:Transport"

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
